"""Largest per-device batch of a train step that fits the accelerator, then its speed.

    python -m benchmarks.gpu_fit --config=configs/stage1.py [--batches=16,12,8,6,4,2] [--steps=10]

Walks the candidate batch sizes from the largest down, compiling each step (without running
it) until XLA's memory analysis says it fits in the device's memory (with a 5% margin); then
runs the benchmark row of ``benchmarks.train_step`` for that batch and prints it.
"""
from __future__ import annotations

import jax
from absl import app, flags
from ml_collections import config_flags

from benchmarks.reporting import report
from hdvila_jax.train.step_builder import build_step, memory_per_device
from benchmarks.step_timing import measure, print_table

_CONFIG = config_flags.DEFINE_config_file("config", None, "Trainer config file[:variant].")
_BATCHES = flags.DEFINE_list("batches", ["16", "12", "8", "6", "4", "2", "1"], "Per-device batches to try.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps.")
_JSON = flags.DEFINE_string("json", None, "Write the row as JSON to this file.")
MARGIN = 0.95


def device_memory_bytes() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("bytes_limit")


def fits(config) -> tuple[bool, float]:
    """(whether the compiled step fits, its peak GiB per device)."""
    built = build_step(config)
    peak = memory_per_device(built.lower().compile())["peak"]
    limit = device_memory_bytes()
    return (limit is None or peak <= MARGIN * limit), peak / 2**30


def main(argv):
    del argv
    config = _CONFIG.value
    devices = jax.device_count()
    for per_device in (int(b) for b in _BATCHES.value):
        config.batch_size = per_device * devices
        ok, peak = fits(config)
        print(f"per-device batch {per_device}: peak {peak:.1f} GiB of {(device_memory_bytes() or 0) / 2**30:.1f} GiB"
              f" -> {'fits' if ok else 'too large'}", flush=True)
        if ok:
            report([measure(config, config.model.dtype, _STEPS.value, 2)], print_table, _JSON.value)
            return
    raise SystemExit("no candidate batch fits")


if __name__ == "__main__":
    app.run(main)
