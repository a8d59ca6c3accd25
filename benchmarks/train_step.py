"""Train-step speed: compiled step time, examples/s, FLOPs (XLA cost analysis and analytic) and MFU.

    python -m benchmarks.train_step --config=configs/stage1.py:tiny [--config.batch_size=8 ...]
        [--dtypes=float32,bfloat16] [--steps=20] [--warmup=3] [--json=out.json]
    python -m benchmarks.train_step --config=configs/stage2.py:tiny --quick

Runs the trainer's own jitted, sharded train step (random data, a random model) over all
local devices. Step time is the median over ``--steps`` timed steps after ``--warmup``
untimed ones; compile time is reported separately. MFU = analytic model FLOPs per second /
peak FLOP/s of all devices (datasheet table, or a measured matmul on CPU).
"""
from __future__ import annotations

import json
import statistics
import time

import jax
from absl import app, flags
from ml_collections import config_flags

from benchmarks.model_flops import train_flops
from benchmarks.peaks import peak_flops
from benchmarks.step_builder import build_step

_CONFIG = config_flags.DEFINE_config_file("config", None, "Trainer config file[:variant].")
_DTYPES = flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "Compute dtypes to measure.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")
_QUICK = flags.DEFINE_bool("quick", False, "CI-sized run: 2 timed steps, 1 warm-up.")
_JSON = flags.DEFINE_string("json", None, "Write the rows as JSON to this file.")


def xla_flops(compiled) -> float | None:
    """FLOPs of one step per XLA's cost analysis of the compiled program (None if unavailable)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    return float(analysis["flops"]) if analysis and "flops" in analysis else None


def measure(config, dtype: str, steps: int, warmup: int) -> dict:
    """One benchmark row for ``config`` with compute ``dtype``."""
    config = config.copy_and_resolve_references()
    config.model.dtype = dtype
    built = build_step(config)
    start = time.perf_counter()
    compiled = built.step.lower(built.abstract_state(), built.abstract_batch()).compile()
    compile_s = time.perf_counter() - start
    state, batch = built.init_state(), built.random_batch()
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))
        if i >= warmup:
            times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    cfg = built.model_cfg
    tokens = cfg.pixel_random_sampling_size if config.stage == 2 else None
    analytic = config.batch_size * train_flops(cfg, config.stage, config.data.train_n_clips, config.data.max_txt_len,
                                                tokens)
    peak, peak_source = peak_flops(dtype)
    devices = built.mesh.size
    return dict(stage=config.stage, dtype=dtype, devices=devices, device_kind=jax.devices()[0].device_kind,
                batch_size=config.batch_size, compile_s=compile_s, step_ms=1e3 * step_s,
                examples_per_s=config.batch_size / step_s, xla_gflop_per_step=(xla_flops(compiled) or 0) / 1e9,
                analytic_gflop_per_step=analytic / 1e9, tflops_per_s=analytic / step_s / 1e12,
                peak_tflops_per_device=(peak or 0) / 1e12, peak_source=peak_source,
                mfu=(analytic / step_s / (peak * devices)) if peak else None,
                loss=float(metrics["loss"]))


def print_table(rows: list[dict]) -> None:
    print("| stage | dtype | devices | batch | compile s | step ms | examples/s | XLA GFLOP/step | "
          "analytic GFLOP/step | TFLOP/s | peak TFLOP/s/dev | MFU |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        print(f"| {r['stage']} | {r['dtype']} | {r['devices']} | {r['batch_size']} | {r['compile_s']:.1f} | "
              f"{r['step_ms']:.1f} | {r['examples_per_s']:.2f} | {r['xla_gflop_per_step']:.1f} | "
              f"{r['analytic_gflop_per_step']:.1f} | {r['tflops_per_s']:.3f} | {r['peak_tflops_per_device']:.2f} "
              f"({r['peak_source']}) | {mfu} |")


def main(argv):
    del argv
    if _CONFIG.value is None:
        raise app.UsageError("--config is required, e.g. --config=configs/stage1.py:tiny")
    steps, warmup = (2, 1) if _QUICK.value else (_STEPS.value, _WARMUP.value)
    rows = [measure(_CONFIG.value, dtype, steps, warmup) for dtype in _DTYPES.value]
    print_table(rows)
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    app.run(main)
