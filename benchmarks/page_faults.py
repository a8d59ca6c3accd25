"""What the host costs our CPU train step, with glibc malloc on 4 KiB pages, on transparent huge
pages (``hdvila_jax/huge_page_malloc.py``), and on huge pages with the block cache preloaded
(``hdvila_jax/block_cache.py``; the last is what the trainer and the timing benchmarks run): step
time, CPU cores busy, the kernel's share of them, minor page faults per step, and the size of the
step's XLA temporaries, which are what faults in.

    python -m benchmarks.page_faults [--stages=1,2] [--steps=6] [--rounds=2] [--json=out.json]
    python -m benchmarks.page_faults --quick    # CI-sized: the plain tiny stage-1 config, 2 steps, 1 round

glibc reads its tunables when a process starts, so each measurement is a fresh process with
``GLIBC_TUNABLES=glibc.malloc.hugetlb=0`` or ``=1`` (and ``LD_PRELOAD``); the settings alternate ``--rounds`` times so that
load from other jobs hits both alike. The step is the one ``benchmarks.vs_reference`` times
(``benchmarks.settings``), after 2 untimed steps.
"""
from __future__ import annotations

import os
import resource
import time

import jax
from absl import app, flags

from benchmarks.reporting import emit_row, print_markdown_table, report, run_worker
from benchmarks.settings import tiny_setting
from benchmarks.step_builder import build_step
from hdvila_jax import block_cache
from hdvila_jax.huge_page_malloc import THP_MODE_FILE, TUNABLE, kernel_thp_mode


def malloc_settings() -> dict[str, dict[str, str]]:
    """The measured malloc settings, as the environment of a fresh process."""
    huge = {"GLIBC_TUNABLES": f"{TUNABLE}=1"}
    return {"4 KiB pages": {"GLIBC_TUNABLES": f"{TUNABLE}=0"}, "huge pages": huge,
            "huge pages + block cache": {**huge, block_cache.PRELOAD: str(block_cache.library())}}


_STAGES = flags.DEFINE_list("stages", ["1", "2"], "Stages to measure.")
_STEPS = flags.DEFINE_integer("steps", 6, "Timed steps per measurement.")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Measurements of each malloc setting, alternating.")
_QUICK = flags.DEFINE_bool("quick", False, "CI-sized: the plain tiny stage-1 config, 2 timed steps, 1 round.")
_WORKER_STAGE = flags.DEFINE_integer("worker_stage", 0, "Internal: measure this stage in this process.")
_JSON = flags.DEFINE_string("json", None, "Write the rows as JSON to this file.")


def measure(stage: int, steps: int, quick: bool) -> dict:
    """Step time and this process's CPU time, kernel time and minor page faults over ``steps`` steps."""
    built = build_step(tiny_setting(stage, quick))
    compiled = built.lower().compile()
    state, batch = built.init_state(), built.random_batch()

    def run(n: int) -> None:
        nonlocal state
        for _ in range(n):
            state, metrics = compiled(state, batch)
            jax.block_until_ready(metrics)

    run(2)
    start, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    run(steps)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    kernel_s = after.ru_stime - before.ru_stime
    return dict(stage=stage, glibc_tunables=os.environ.get("GLIBC_TUNABLES", ""),
                preloaded=os.path.basename(os.environ.get(block_cache.PRELOAD, "")), steps=steps,
                step_ms=1e3 * wall / steps, cpu_cores=(after.ru_utime - before.ru_utime + kernel_s) / wall,
                kernel_cores=kernel_s / wall, minor_faults_per_step=(after.ru_minflt - before.ru_minflt) / steps,
                temp_mib=compiled.memory_analysis().temp_size_in_bytes / 2**20)


def print_table(rows: list[dict]) -> None:
    print_markdown_table(
        ["stage", "malloc", "round", "ms/step", "CPU cores busy", "of them kernel", "minor page faults per step",
         "XLA temporaries MiB"],
        [[r["stage"], r["malloc"], r["round"], f"{r['step_ms']:.0f}", f"{r['cpu_cores']:.2f}",
          f"{r['kernel_cores']:.2f}", f"{r['minor_faults_per_step']:.0f}", f"{r['temp_mib']:.0f}"] for r in rows])


def main(argv):
    del argv
    steps, rounds = (2, 1) if _QUICK.value else (_STEPS.value, _ROUNDS.value)
    if _WORKER_STAGE.value:
        emit_row(measure(_WORKER_STAGE.value, steps, _QUICK.value))
        return
    print(f"transparent huge pages ({THP_MODE_FILE}): {kernel_thp_mode() or 'unknown'}")
    rows, settings = [], malloc_settings()
    for stage in (["1"] if _QUICK.value else _STAGES.value):
        for round_ in range(1, rounds + 1):
            for name, env in settings.items():
                args = [f"--worker_stage={stage}", f"--steps={steps}", f"--quick={_QUICK.value}"]
                (row,) = run_worker("benchmarks.page_faults", args, {block_cache.PRELOAD: "", **env})
                rows.append(dict(row, malloc=name, round=round_))
    report(rows, print_table, _JSON.value)


if __name__ == "__main__":
    app.run(main)
