"""Peak dense FLOP/s of common accelerators (vendor datasheets, no sparsity), and a measured
CPU peak, for MFU."""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp

# device_kind substring -> {dtype: peak FLOP/s per chip}
PEAK_FLOPS = {
    "H200": {"bfloat16": 989e12, "float32": 67e12},
    "H100": {"bfloat16": 989e12, "float32": 67e12},   # SXM; PCIe is 756e12 / 51e12
    "A100": {"bfloat16": 312e12, "float32": 19.5e12},
    "L4": {"bfloat16": 121e12, "float32": 30e12},
    "V100": {"float16": 125e12, "float32": 15.7e12},
    "TPU v5p": {"bfloat16": 459e12},
    "TPU v5 lite": {"bfloat16": 197e12},
    "TPU v5e": {"bfloat16": 197e12},
    "TPU v4": {"bfloat16": 275e12},
    "TPU v3": {"bfloat16": 123e12},
}


def measured_matmul_peak(dtype: str, size: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of a jitted ``size x size`` matmul on the default device (best of ``repeats``)."""
    x = jnp.ones((size, size), dtype)
    matmul = jax.jit(lambda a: a @ a)
    matmul(x).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(x).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def peak_flops(dtype: str) -> tuple[float | None, str]:
    """(peak FLOP/s per device, where the number comes from) for the default device and ``dtype``."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        return measured_matmul_peak(dtype), "measured matmul"
    for name, peaks in PEAK_FLOPS.items():
        if name.lower() in device.device_kind.lower():
            return peaks.get(dtype), f"{name} datasheet"
    return None, f"unknown device {device.device_kind!r}"
