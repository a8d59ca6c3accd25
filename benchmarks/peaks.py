"""Peak dense FLOP/s of the default device for MFU: the datasheet of an accelerator
(``hdvila_jax.accelerators``), a measured matmul on CPU."""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from hdvila_jax.accelerators import chip_of


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
    chip = chip_of(device.device_kind)
    if chip is None:
        return None, f"unknown device {device.device_kind!r}"
    return chip.peak_flops.get(dtype), f"{chip.name} datasheet"
