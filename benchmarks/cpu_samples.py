"""Where the CPU time of a train step goes, ours and the original's, by library: Linux ``perf``.

    python -m benchmarks.cpu_samples [--stages=1,2] [--steps=10] [--warmup=3] [--threads=N] [--json=out.json]

Each side runs ``--warmup`` untimed steps, then ``perf record`` samples its process (every thread,
user and kernel code, ``perf_report.FREQUENCY`` times a second per running thread) for ``--steps`` steps: ours
in this process, the original (``benchmarks.torch_process``) in its worker, one side after the
other. The table gives each library's share of the samples, its CPU ms per step and its busiest
function. Where ``benchmarks.profile_step`` times parts of the model, this shows what kind of work
fills the cores: ``[JIT]`` is code generated at run time, which is XLA's fused loops on our side
and oneDNN's convolution kernels on the original's. Needs ``perf`` (linux-perf) and permission to
attach to one's own processes (``kernel.perf_event_paranoid`` <= 2).
"""
from __future__ import annotations

import os
import shutil

import numpy as np
from absl import app, flags

from benchmarks.interleave import wall_clock
from benchmarks.perf_report import by_library, sample
from benchmarks.reporting import print_markdown_table, report
from benchmarks.settings import pin_cpus, tiny_setting
from benchmarks.step_builder import build_step
from benchmarks.torch_process import step_process
from hdvila_jax.huge_page_malloc import reexec_with_huge_page_malloc

_STAGES = flags.DEFINE_list("stages", ["1", "2"], "Stages to sample.")
_STEPS = flags.DEFINE_integer("steps", 10, "Sampled steps of each side.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps of each side before sampling.")
_THREADS = flags.DEFINE_integer("threads", 0, "Run on this many CPUs, both sides (0: all this process may use).")
_TOP = flags.DEFINE_integer("top", 6, "Libraries listed per side; the rest are summed as 'other'.")
_JSON = flags.DEFINE_string("json", None, "Write the rows as JSON to this file.")


def sample_stage(stage: int, steps: int, warmup: int, top: int, threads: int) -> list[dict]:
    """Rows for ``stage``: per side, the libraries that ran its sampled steps."""
    built = build_step(tiny_setting(stage))
    compiled = built.lower().compile()
    batch = built.random_batch()
    state = [built.init_state()]

    def ours():
        state[0], metrics = compiled(state[0], batch)
        float(metrics["loss"])

    rows = []
    with step_process(stage, False) as original:
        sides = {"ours": (os.getpid(), ours), "original": (original.pid, lambda: original.request("step"))}
        for side, (pid, step) in sides.items():
            timer = wall_clock(step)
            for _ in range(warmup):
                timer()
            samples, seconds = sample(pid, lambda: [timer() for _ in range(steps)])
            step_ms = 1e3 * float(np.median(seconds))
            for row in by_library(samples, steps, top):
                rows.append(dict(stage=stage, side=side, threads=threads, step_ms=step_ms, **row))
    return rows


def print_table(rows: list[dict]) -> None:
    print_markdown_table(
        ["stage", "side", "ms/step", "library", "share of CPU samples", "CPU ms/step", "busiest function (share)"],
        [[r["stage"], r["side"], f"{r['step_ms']:.0f}", r["library"], f"{100 * r['share']:.1f}%",
          f"{r['cpu_ms_per_step']:.0f}", f"{r['top_function'][:60]} ({100 * r['top_function_share']:.1f}%)"
          if r["top_function"] else ""] for r in rows])


def main(argv):
    del argv
    if not shutil.which("perf"):
        raise app.UsageError("benchmarks.cpu_samples needs Linux perf on the PATH (Debian: apt install linux-perf)")
    if _STEPS.value < 1 or _WARMUP.value < 0 or _TOP.value < 1:
        raise app.UsageError("--steps and --top must be at least 1, --warmup at least 0")
    threads = pin_cpus(_THREADS.value)
    rows = [row for s in _STAGES.value for row in sample_stage(int(s), _STEPS.value, _WARMUP.value, _TOP.value, threads)]
    report(rows, print_table, _JSON.value)


if __name__ == "__main__":
    reexec_with_huge_page_malloc()  # as the trainer runs: hdvila_jax/main.py
    app.run(main)
