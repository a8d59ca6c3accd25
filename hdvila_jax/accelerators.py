"""What an accelerator chip offers, by jax ``device_kind``: dense bf16 peak FLOP/s and HBM per chip
(vendor datasheets, no sparsity), for memory-fit checks and MFU."""
from __future__ import annotations

import dataclasses

GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
    """One chip: its marketing name, peak FLOP/s per dtype, high-bandwidth memory and its bandwidth."""

    name: str
    peak_flops: dict[str, float]
    hbm_bytes: int
    hbm_bytes_per_s: float


# device_kind as jax reports it -> the chip
CHIPS = {
    "TPU v4": Chip("TPU v4", {"bfloat16": 275e12}, 32 * GIB, 1.2e12),
    "TPU v5 lite": Chip("TPU v5e", {"bfloat16": 197e12}, 16 * GIB, 8.19e11),
    "TPU v5e": Chip("TPU v5e", {"bfloat16": 197e12}, 16 * GIB, 8.19e11),
    "TPU v5": Chip("TPU v5p", {"bfloat16": 459e12}, 95 * GIB, 2.765e12),
    "TPU v5p": Chip("TPU v5p", {"bfloat16": 459e12}, 95 * GIB, 2.765e12),
    "TPU v6 lite": Chip("TPU v6e", {"bfloat16": 918e12}, 32 * GIB, 1.64e12),
    "TPU v6e": Chip("TPU v6e", {"bfloat16": 918e12}, 32 * GIB, 1.64e12),
    "NVIDIA H200": Chip("H200", {"bfloat16": 989e12, "float32": 67e12}, 141 * GIB, 4.8e12),
    "NVIDIA H100 80GB HBM3": Chip("H100 SXM", {"bfloat16": 989e12, "float32": 67e12}, 80 * GIB, 3.35e12),
    "NVIDIA H100 PCIe": Chip("H100 PCIe", {"bfloat16": 756e12, "float32": 51e12}, 80 * GIB, 2.0e12),
    "NVIDIA A100-SXM4-80GB": Chip("A100 80GB", {"bfloat16": 312e12, "float32": 19.5e12}, 80 * GIB, 2.04e12),
    "NVIDIA A100-SXM4-40GB": Chip("A100 40GB", {"bfloat16": 312e12, "float32": 19.5e12}, 40 * GIB, 1.555e12),
    "NVIDIA L4": Chip("L4", {"bfloat16": 121e12, "float32": 30e12}, 24 * GIB, 3.0e11),
}


def chip_of(device_kind: str) -> Chip | None:
    """The chip of a ``device_kind``: an exact match, else the longest known kind it starts with
    (``NVIDIA H100 80GB HBM3`` variants), else None."""
    if device_kind in CHIPS:
        return CHIPS[device_kind]
    prefixes = [kind for kind in CHIPS if device_kind.startswith(kind)]
    return CHIPS[max(prefixes, key=len)] if prefixes else None
