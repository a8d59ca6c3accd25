"""Our train step vs the original PyTorch HD-VILA's, on this CPU, in one run.

    python -m benchmarks.vs_reference [--stages=1,2] [--steps=15] [--steps_per_turn=5] [--warmup=2] [--threads=N]
        [--json=out.json]
    python -m benchmarks.vs_reference --quick      # CI-sized: the plain tiny config, 2 steps
    python -m benchmarks.vs_reference --xla_variants=default,ynn_graphs   # ours under XLA:CPU options
    python -m benchmarks.vs_reference --convs=onednn,xla    # ours with oneDNN's / XLA's convolutions

Ours is the trainer's jitted step as ``benchmarks.train_step`` builds it; the original's is
forward, backward, gradient clipping and AdamW of our PyTorch port (``benchmarks.torch_port``)
with as many threads as XLA:CPU, in a worker process (``benchmarks.torch_process`` says why).
Stage 2 trains the cross-modal layers and heads only, the frozen towers run forward only on both
sides. Both run the same shapes (``benchmarks.settings``: the issue-10 tiny setting, float32) and
the same random batch. The sides take turns, so that load from other jobs hits both alike: each
turn is ``--warmup`` untimed steps, then ``--steps_per_turn`` timed ones, until each side has
``--steps`` timed steps; times are medians. ratio = ours examples/s / original's. ``--xla_variants`` compiles our step once per named set of XLA:CPU compile options
(``benchmarks.settings.XLA_CPU_VARIANTS``) and ``--convs`` traces it once per convolution path
(``hdvila_jax.kernels.onednn_conv``); all of them and the original alternate in one run, one row
each.
"""
from __future__ import annotations

import time

import jax
from absl import app, flags

from benchmarks.interleave import time_interleaved
from benchmarks.reporting import print_markdown_table, report
from benchmarks.settings import XLA_CPU_VARIANTS, pin_cpus, tiny_setting
from benchmarks.step_builder import build_step
from benchmarks.torch_process import step_process
from hdvila_jax.huge_page_malloc import reexec_with_huge_page_malloc
from hdvila_jax.kernels import onednn_conv

_STAGES = flags.DEFINE_list("stages", ["1", "2"], "Stages to compare.")
_STEPS = flags.DEFINE_integer("steps", 15, "Timed steps of each side.")
_STEPS_PER_TURN = flags.DEFINE_integer("steps_per_turn", 5, "Timed steps of a side in a row.")
# The first step of a side after the other side's turn is slow: timed alone in turns of 15, our
# stage-1 step's first took 1708-2135 ms and its next ones about 1000 ms; the original's first took
# up to 1240 ms. We take it to be the kernel finding fresh huge pages after the other process
# churned through memory (README, Performance). Neither side pays it when it runs alone.
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps at the start of each turn of each side.")
_QUICK = flags.DEFINE_bool("quick", False, "CI-sized: the plain tiny config, 2 timed steps, 1 warm-up.")
_THREADS = flags.DEFINE_integer("threads", 0, "Run on this many CPUs, both sides (0: all this process may use).")
_VARIANTS = flags.DEFINE_list("xla_variants", ["default"],
                              f"Compile options of our step, from {sorted(XLA_CPU_VARIANTS)}.")
_CONVS = flags.DEFINE_list("convs", ["xla"], "Our CPU convolutions: xla (XLA's own, the default), onednn.")
_JSON = flags.DEFINE_string("json", None, "Write the rows as JSON to this file.")


def lower(built, conv: str) -> jax.stages.Lowered:
    """Our step lowered with ``conv`` convolutions on CPU: "xla" (XLA's own, the default) or
    "onednn" (``hdvila_jax.kernels``, opted in)."""
    with onednn_conv.used(conv == "onednn"):
        return built.lower()


def compare(stage: int, steps: int, steps_per_turn: int, warmup: int, quick: bool, threads: int,
            variants: list[str], convs: list[str]) -> list[dict]:
    """One row per (convolution path, XLA:CPU variant): step time and examples/s of ours and of the
    original for ``stage`` on ``threads`` threads, all timed in one run."""
    config = tiny_setting(stage, quick)
    built = build_step(config)
    keys = [(conv, variant) for conv in convs for variant in variants]
    compiled, compile_s = {}, {}
    for conv in convs:
        lowered = lower(built, conv)
        for variant in variants:
            start = time.perf_counter()
            compiled[conv, variant] = lowered.compile(compiler_options=XLA_CPU_VARIANTS[variant] or None)
            compile_s[conv, variant] = time.perf_counter() - start
    batch = built.random_batch()
    states = {key: built.init_state() for key in keys}
    losses = {}

    def ours(key):
        def step():
            states[key], metrics = compiled[key](states[key], batch)
            losses[key] = float(metrics["loss"])
        return step

    with step_process(stage, quick) as original:
        def theirs():
            losses["original"] = original.request("step")

        per_turn = min(steps, steps_per_turn)
        seconds = time_interleaved({**{key: ours(key) for key in keys}, "original": theirs}, -(-steps // per_turn),
                                   warmup=0, untimed_per_turn=warmup, timed_per_turn=per_turn)
    b = config.batch_size
    return [dict(stage=stage, convs=conv, xla_variant=variant, batch_size=b, clips=config.data.train_n_clips,
                 threads=threads, device_kind=jax.devices()[0].device_kind, compile_s=compile_s[conv, variant],
                 ours_step_ms=1e3 * seconds[conv, variant], ours_examples_per_s=b / seconds[conv, variant],
                 original_step_ms=1e3 * seconds["original"], original_examples_per_s=b / seconds["original"],
                 ratio=seconds["original"] / seconds[conv, variant], ours_loss=losses[conv, variant],
                 original_loss=losses["original"]) for conv, variant in keys]


def print_table(rows: list[dict]) -> None:
    print_markdown_table(
        ["stage", "convolutions", "XLA:CPU options", "batch x clips", "threads", "ours ms/step", "ours examples/s", "original ms/step",
         "original examples/s", "ours / original"],
        [[r["stage"], r["convs"], r["xla_variant"], f"{r['batch_size']} x {r['clips']}", r["threads"], f"{r['ours_step_ms']:.0f}",
          f"{r['ours_examples_per_s']:.2f}", f"{r['original_step_ms']:.0f}", f"{r['original_examples_per_s']:.2f}",
          f"{r['ratio']:.2f}x"] for r in rows])


def main(argv):
    del argv
    threads = pin_cpus(_THREADS.value)
    steps, warmup = (2, 1) if _QUICK.value else (_STEPS.value, _WARMUP.value)
    if steps < 1 or _STEPS_PER_TURN.value < 1 or warmup < 0:
        raise app.UsageError("--steps and --steps_per_turn must be at least 1, --warmup at least 0")
    unknown = sorted(set(_VARIANTS.value) - set(XLA_CPU_VARIANTS))
    if unknown:
        raise app.UsageError(f"--xla_variants: unknown {unknown}; known: {sorted(XLA_CPU_VARIANTS)}")
    if set(_CONVS.value) - {"onednn", "xla"}:
        raise app.UsageError(f"--convs: {_CONVS.value}; each must be onednn or xla")
    rows = [row for s in _STAGES.value
            for row in compare(int(s), steps, _STEPS_PER_TURN.value, warmup, _QUICK.value, threads, _VARIANTS.value,
                               _CONVS.value)]
    report(rows, print_table, _JSON.value)


if __name__ == "__main__":
    reexec_with_huge_page_malloc()  # as the trainer runs: hdvila_jax/main.py
    app.run(main)
