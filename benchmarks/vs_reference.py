"""Our train step vs the original PyTorch HD-VILA's, on this CPU, in one run.

    python -m benchmarks.vs_reference [--stages=1,2] [--steps=10] [--warmup=2] [--threads=N] [--json=out.json]
    python -m benchmarks.vs_reference --quick      # CI-sized: the plain tiny config, 2 steps
    python -m benchmarks.vs_reference --xla_variants=default,ynn_graphs   # ours under XLA:CPU options

Ours is the trainer's jitted step as ``benchmarks.train_step`` builds it; the original's is
forward, backward, gradient clipping and AdamW of our PyTorch port (``benchmarks.torch_port``)
with as many threads as XLA:CPU. Stage 2 trains the cross-modal layers and heads only, the
frozen towers run forward only on both sides. Both run the same shapes
(``benchmarks.settings``: the issue-10 tiny setting, float32) and the same random batch,
alternately, so load from other jobs hits both alike. ratio = ours examples/s / original's.
``--xla_variants`` compiles our step once per named set of XLA:CPU compile options
(``benchmarks.settings.XLA_CPU_VARIANTS``); all of them and the original alternate in one run,
one row per variant.
"""
from __future__ import annotations

import time

import jax
import numpy as np
from absl import app, flags

from benchmarks.interleave import time_interleaved
from benchmarks.reporting import print_markdown_table, report
from benchmarks.settings import XLA_CPU_VARIANTS, tiny_setting
from benchmarks.step_builder import build_step
from benchmarks.torch_port import TorchTrainStep, set_threads, torch_batch
from hdvila_jax.huge_page_malloc import reexec_with_huge_page_malloc

_STAGES = flags.DEFINE_list("stages", ["1", "2"], "Stages to compare.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps of each side.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps of each side first.")
_QUICK = flags.DEFINE_bool("quick", False, "CI-sized: the plain tiny config, 2 timed steps, 1 warm-up.")
_THREADS = flags.DEFINE_integer("threads", 0, "Run on this many CPUs, both sides (0: all this process may use).")
_VARIANTS = flags.DEFINE_list("xla_variants", ["default"],
                              f"Compile options of our step, from {sorted(XLA_CPU_VARIANTS)}.")
_JSON = flags.DEFINE_string("json", None, "Write the rows as JSON to this file.")


def compare(stage: int, steps: int, warmup: int, quick: bool, threads: int, variants: list[str]) -> list[dict]:
    """One row per variant: step time and examples/s of ours (compiled with the variant's XLA:CPU
    options) and of the original for ``stage`` on ``threads`` threads, all timed in one run."""
    config = tiny_setting(stage, quick)
    built = build_step(config)
    lowered = built.lower()
    compiled, compile_s = {}, {}
    for name in variants:
        start = time.perf_counter()
        compiled[name] = lowered.compile(compiler_options=XLA_CPU_VARIANTS[name] or None)
        compile_s[name] = time.perf_counter() - start
    batch = built.random_batch()
    states = {name: built.init_state() for name in variants}
    original = TorchTrainStep(config, built.model_cfg)
    original_batch = torch_batch({k: np.asarray(v) for k, v in batch.items()})
    losses = {}

    def ours(name: str):
        def step():
            states[name], metrics = compiled[name](states[name], batch)
            losses[name] = float(metrics["loss"])
        return step

    def theirs():
        losses["original"] = original(original_batch)

    seconds = time_interleaved({**{name: ours(name) for name in variants}, "original": theirs}, steps, warmup)
    b = config.batch_size
    return [dict(stage=stage, xla_variant=name, batch_size=b, clips=config.data.train_n_clips, threads=threads,
                 device_kind=jax.devices()[0].device_kind, compile_s=compile_s[name],
                 ours_step_ms=1e3 * seconds[name], ours_examples_per_s=b / seconds[name],
                 original_step_ms=1e3 * seconds["original"], original_examples_per_s=b / seconds["original"],
                 ratio=seconds["original"] / seconds[name], ours_loss=losses[name],
                 original_loss=losses["original"]) for name in variants]


def print_table(rows: list[dict]) -> None:
    print_markdown_table(
        ["stage", "XLA:CPU options", "batch x clips", "threads", "ours ms/step", "ours examples/s", "original ms/step",
         "original examples/s", "ours / original"],
        [[r["stage"], r["xla_variant"], f"{r['batch_size']} x {r['clips']}", r["threads"], f"{r['ours_step_ms']:.0f}",
          f"{r['ours_examples_per_s']:.2f}", f"{r['original_step_ms']:.0f}", f"{r['original_examples_per_s']:.2f}",
          f"{r['ratio']:.2f}x"] for r in rows])


def main(argv):
    del argv
    threads = set_threads(_THREADS.value)
    steps, warmup = (2, 1) if _QUICK.value else (_STEPS.value, _WARMUP.value)
    unknown = sorted(set(_VARIANTS.value) - set(XLA_CPU_VARIANTS))
    if unknown:
        raise app.UsageError(f"--xla_variants: unknown {unknown}; known: {sorted(XLA_CPU_VARIANTS)}")
    rows = [row for s in _STAGES.value
            for row in compare(int(s), steps, warmup, _QUICK.value, threads, _VARIANTS.value)]
    report(rows, print_table, _JSON.value)


if __name__ == "__main__":
    reexec_with_huge_page_malloc()  # as the trainer runs: hdvila_jax/main.py
    app.run(main)
