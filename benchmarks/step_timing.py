"""Timing one train-step configuration: the row that ``benchmarks.train_step`` and
``benchmarks.gpu_fit`` print."""
from __future__ import annotations

import time

import jax

from benchmarks.model_flops import train_flops
from benchmarks.peaks import peak_flops
from benchmarks.reporting import print_markdown_table
from hdvila_jax.aot import cost_of
from hdvila_jax.train.step_builder import build_step


def measure(config, dtype: str, steps: int, warmup: int) -> dict:
    """One benchmark row for ``config`` with compute ``dtype``."""
    config = config.copy_and_resolve_references()
    config.model.dtype = dtype
    built = build_step(config)
    start = time.perf_counter()
    compiled = built.lower().compile()
    compile_s = time.perf_counter() - start
    state, batch = built.init_state(), built.random_batch()
    for _ in range(warmup):
        state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    # As the trainer runs: steps dispatched back to back, the host waiting only at the end.
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    step_s = (time.perf_counter() - start) / steps
    cfg = built.model_cfg
    tokens = cfg.pixel_random_sampling_size if config.stage == 2 else None
    analytic = config.batch_size * train_flops(cfg, config.stage, config.data.train_n_clips, config.data.max_txt_len,
                                                tokens)
    peak, peak_source = peak_flops(dtype)
    devices = built.mesh.size
    return dict(stage=config.stage, dtype=dtype, devices=devices, device_kind=jax.devices()[0].device_kind,
                batch_size=config.batch_size, compile_s=compile_s, step_ms=1e3 * step_s,
                examples_per_s=config.batch_size / step_s, xla_gflop_per_step=cost_of(compiled).get("flops", 0) / 1e9,
                analytic_gflop_per_step=analytic / 1e9, tflops_per_s=analytic / step_s / 1e12,
                peak_tflops_per_device=(peak or 0) / 1e12, peak_source=peak_source,
                mfu=(analytic / step_s / (peak * devices)) if peak else None,
                loss=float(metrics["loss"]))


def print_table(rows: list[dict]) -> None:
    print_markdown_table(
        ["stage", "dtype", "devices", "batch", "compile s", "step ms", "examples/s", "XLA GFLOP/step",
         "analytic GFLOP/step", "TFLOP/s", "peak TFLOP/s/dev", "MFU"],
        [[r["stage"], r["dtype"], r["devices"], r["batch_size"], f"{r['compile_s']:.1f}", f"{r['step_ms']:.1f}",
          f"{r['examples_per_s']:.2f}", f"{r['xla_gflop_per_step']:.1f}", f"{r['analytic_gflop_per_step']:.1f}",
          f"{r['tflops_per_s']:.3f}", f"{r['peak_tflops_per_device']:.2f} ({r['peak_source']})",
          f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"] for r in rows])
