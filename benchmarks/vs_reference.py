"""Our train step vs the original PyTorch HD-VILA's, on this CPU, in one run.

    python -m benchmarks.vs_reference [--stages=1,2] [--steps=10] [--warmup=2] [--threads=N] [--json=out.json]
    python -m benchmarks.vs_reference --quick      # CI-sized: the plain tiny config, 2 steps

Ours is the trainer's jitted step as ``benchmarks.train_step`` builds it; the original's is
forward, backward, gradient clipping and AdamW of our PyTorch port (``benchmarks.torch_port``)
with as many threads as XLA:CPU. Stage 2 trains the cross-modal layers and heads only, the
frozen towers run forward only on both sides. Both run the same shapes
(``benchmarks.settings``: the issue-10 tiny setting, float32) and the same random batch,
alternately, so load from other jobs hits both alike. ratio = ours examples/s / original's.
"""
from __future__ import annotations

import time

import jax
import numpy as np
from absl import app, flags

from benchmarks.interleave import time_interleaved
from benchmarks.reporting import report
from benchmarks.settings import tiny_setting
from benchmarks.step_builder import build_step
from benchmarks.torch_port import TorchTrainStep, set_threads, torch_batch

_STAGES = flags.DEFINE_list("stages", ["1", "2"], "Stages to compare.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps of each side.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps of each side first.")
_QUICK = flags.DEFINE_bool("quick", False, "CI-sized: the plain tiny config, 2 timed steps, 1 warm-up.")
_THREADS = flags.DEFINE_integer("threads", 0, "Run on this many CPUs, both sides (0: all this process may use).")
_JSON = flags.DEFINE_string("json", None, "Write the rows as JSON to this file.")


def compare(stage: int, steps: int, warmup: int, quick: bool, threads: int) -> dict:
    """One row: step time and examples/s of ours and of the original for ``stage`` on ``threads`` threads."""
    config = tiny_setting(stage, quick)
    built = build_step(config)
    start = time.perf_counter()
    compiled = built.step.lower(built.abstract_state(), built.abstract_batch()).compile()
    compile_s = time.perf_counter() - start
    state, batch = built.init_state(), built.random_batch()
    original = TorchTrainStep(config, built.model_cfg)
    original_batch = torch_batch({k: np.asarray(v) for k, v in batch.items()})
    losses = {}

    def ours():
        nonlocal state
        state, metrics = compiled(state, batch)
        losses["ours"] = float(metrics["loss"])

    def theirs():
        losses["original"] = original(original_batch)

    seconds = time_interleaved(dict(ours=ours, original=theirs), steps, warmup)
    b = config.batch_size
    return dict(stage=stage, batch_size=b, clips=config.data.train_n_clips, threads=threads,
                device_kind=jax.devices()[0].device_kind, compile_s=compile_s,
                ours_step_ms=1e3 * seconds["ours"], ours_examples_per_s=b / seconds["ours"],
                original_step_ms=1e3 * seconds["original"], original_examples_per_s=b / seconds["original"],
                ratio=seconds["original"] / seconds["ours"], ours_loss=losses["ours"],
                original_loss=losses["original"])


def print_table(rows: list[dict]) -> None:
    print("| stage | batch x clips | threads | ours ms/step | ours examples/s | original ms/step | "
          "original examples/s | ours / original |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['stage']} | {r['batch_size']} x {r['clips']} | {r['threads']} | {r['ours_step_ms']:.0f} | "
              f"{r['ours_examples_per_s']:.2f} | {r['original_step_ms']:.0f} | {r['original_examples_per_s']:.2f} | "
              f"{r['ratio']:.2f}x |")


def main(argv):
    del argv
    threads = set_threads(_THREADS.value)
    steps, warmup = (2, 1) if _QUICK.value else (_STEPS.value, _WARMUP.value)
    rows = [compare(int(s), steps, warmup, _QUICK.value, threads) for s in _STAGES.value]
    report(rows, print_table, _JSON.value)


if __name__ == "__main__":
    app.run(main)
