"""Our train step vs the original PyTorch HD-VILA's, on this CPU, in one run.

    python -m benchmarks.vs_reference [--stages=1,2] [--steps=15] [--steps_per_turn=5] [--warmup=2] [--threads=N]
        [--json=out.json]
    python -m benchmarks.vs_reference --quick      # CI-sized: the plain tiny config, 2 steps
    python -m benchmarks.vs_reference --convs=onednn,xla    # ours with oneDNN's / XLA's convolutions

Ours is the trainer's jitted step as ``benchmarks.train_step`` builds it; the original's is
forward, backward, gradient clipping and AdamW of our PyTorch port (``benchmarks.torch_port``)
with as many threads as XLA:CPU, in a worker process (``benchmarks.torch_process`` says why).
Stage 2 trains the cross-modal layers and heads only, the frozen towers run forward only on both
sides. Both run the same shapes (``benchmarks.settings``: the issue-10 tiny setting, float32) and
the same random batch. The sides take turns, so that load from other jobs hits both alike: each
turn is ``--warmup`` untimed steps, then ``--steps_per_turn`` timed ones, until each side has
``--steps`` timed steps; times are medians. ratio = ours examples/s / original's. ``--convs`` builds our step once per
convolution path (``model.onednn_conv``: ``hdvila_jax.kernels.onednn_conv``, an opt-in extra); all of them and the
original alternate in one run, one row each.
"""
from __future__ import annotations

import time

import jax
from absl import app, flags

from benchmarks.interleave import time_interleaved
from benchmarks.reporting import print_markdown_table, report
from benchmarks.settings import pin_cpus, tiny_setting
from hdvila_jax.train.step_builder import build_step
from benchmarks.torch_process import step_process

_STAGES = flags.DEFINE_list("stages", ["1", "2"], "Stages to compare.")
_STEPS = flags.DEFINE_integer("steps", 15, "Timed steps of each side.")
_STEPS_PER_TURN = flags.DEFINE_integer("steps_per_turn", 5, "Timed steps of a side in a row.")
# The first step of a side after the other side's turn is slow (fresh memory after the other
# process churned through it): untimed.
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps at the start of each turn of each side.")
_QUICK = flags.DEFINE_bool("quick", False, "CI-sized: the plain tiny config, 2 timed steps, 1 warm-up.")
_THREADS = flags.DEFINE_integer("threads", 0, "Run on this many CPUs, both sides (0: all this process may use).")
_CONVS = flags.DEFINE_list("convs", ["xla"], "Our CPU convolutions: xla (XLA's own, the default), onednn.")
_JSON = flags.DEFINE_string("json", None, "Write the rows as JSON to this file.")


def build_with(config, conv: str):
    """Our step built with ``conv`` convolutions on CPU: "xla" (XLA's own, the default) or
    "onednn" (``hdvila_jax.kernels``, opted in by ``config.model.onednn_conv``)."""
    config = config.copy_and_resolve_references()
    config.model.onednn_conv = conv == "onednn"
    return build_step(config)


def compare(stage: int, steps: int, steps_per_turn: int, warmup: int, quick: bool, threads: int,
            convs: list[str]) -> list[dict]:
    """One row per convolution path: step time and examples/s of ours and of the original for
    ``stage`` on ``threads`` threads, all timed in one run."""
    config = tiny_setting(stage, quick)
    built = {conv: build_with(config, conv) for conv in convs}
    compiled, compile_s = {}, {}
    for conv in convs:
        lowered = built[conv].lower()
        start = time.perf_counter()
        compiled[conv] = lowered.compile()
        compile_s[conv] = time.perf_counter() - start
    batch = built[convs[0]].random_batch()
    states = {conv: built[conv].init_state() for conv in convs}
    losses = {}

    def ours(conv):
        def step():
            states[conv], metrics = compiled[conv](states[conv], batch)
            losses[conv] = float(metrics["loss"])
        return step

    with step_process(stage, quick) as original:
        def theirs():
            losses["original"] = original.request("step")

        per_turn = min(steps, steps_per_turn)
        seconds = time_interleaved({**{conv: ours(conv) for conv in convs}, "original": theirs}, -(-steps // per_turn),
                                   warmup=0, untimed_per_turn=warmup, timed_per_turn=per_turn)
    b = config.batch_size
    return [dict(stage=stage, convs=conv, batch_size=b, clips=config.data.train_n_clips, threads=threads,
                 device_kind=jax.devices()[0].device_kind, compile_s=compile_s[conv],
                 ours_step_ms=1e3 * seconds[conv], ours_examples_per_s=b / seconds[conv],
                 original_step_ms=1e3 * seconds["original"], original_examples_per_s=b / seconds["original"],
                 ratio=seconds["original"] / seconds[conv], ours_loss=losses[conv],
                 original_loss=losses["original"]) for conv in convs]


def print_table(rows: list[dict]) -> None:
    print_markdown_table(
        ["stage", "convolutions", "batch x clips", "threads", "ours ms/step", "ours examples/s", "original ms/step",
         "original examples/s", "ours / original"],
        [[r["stage"], r["convs"], f"{r['batch_size']} x {r['clips']}", r["threads"], f"{r['ours_step_ms']:.0f}",
          f"{r['ours_examples_per_s']:.2f}", f"{r['original_step_ms']:.0f}", f"{r['original_examples_per_s']:.2f}",
          f"{r['ratio']:.2f}x"] for r in rows])


def main(argv):
    del argv
    threads = pin_cpus(_THREADS.value)
    steps, warmup = (2, 1) if _QUICK.value else (_STEPS.value, _WARMUP.value)
    if steps < 1 or _STEPS_PER_TURN.value < 1 or warmup < 0:
        raise app.UsageError("--steps and --steps_per_turn must be at least 1, --warmup at least 0")
    if set(_CONVS.value) - {"onednn", "xla"}:
        raise app.UsageError(f"--convs: {_CONVS.value}; each must be onednn or xla")
    rows = [row for s in _STAGES.value
            for row in compare(int(s), steps, _STEPS_PER_TURN.value, warmup, _QUICK.value, threads, _CONVS.value)]
    report(rows, print_table, _JSON.value)


if __name__ == "__main__":
    app.run(main)
