"""Train-step speed: compiled step time, examples/s, FLOPs (XLA cost analysis and analytic) and MFU.

    python -m benchmarks.train_step --config=configs/stage1.py:tiny [--config.batch_size=8 ...]
        [--dtypes=float32,bfloat16] [--steps=20] [--warmup=3] [--json=out.json]
    python -m benchmarks.train_step --config=configs/stage2.py:tiny --quick

Runs the trainer's own jitted, sharded train step (random data, a random model) over all
local devices. Step time is the wall time of ``--steps`` steps dispatched back to back (the host
waits once, at the end, as the trainer's loop between log steps) over their count, after
``--warmup`` untimed ones; compile time is reported separately. MFU = analytic model FLOPs per second /
peak FLOP/s of all devices (datasheet table, or a measured matmul on CPU).
"""
from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from benchmarks.reporting import report
from benchmarks.step_timing import measure, print_table

_CONFIG = config_flags.DEFINE_config_file("config", None, "Trainer config file[:variant].")
_DTYPES = flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "Compute dtypes to measure.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")
_QUICK = flags.DEFINE_bool("quick", False, "CI-sized run: 2 timed steps, 1 warm-up.")
_JSON = flags.DEFINE_string("json", None, "Write the rows as JSON to this file.")


def main(argv):
    del argv
    if _CONFIG.value is None:
        raise app.UsageError("--config is required, e.g. --config=configs/stage1.py:tiny")
    steps, warmup = (2, 1) if _QUICK.value else (_STEPS.value, _WARMUP.value)
    report([measure(_CONFIG.value, dtype, steps, warmup) for dtype in _DTYPES.value], print_table, _JSON.value)


if __name__ == "__main__":
    app.run(main)
