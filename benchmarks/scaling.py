"""Scaling on forced CPU devices: the same global batch on 1/2/4/8 devices, data-parallel (DP)
and fully sharded (FSDP), must give the same step; and which collectives XLA inserts.

    python -m benchmarks.scaling [--config=stage1] [--devices=1,2,4,8] [--batch_size=8] [--json=out.json]
    python -m benchmarks.scaling --quick     # CI-sized: DP on 1 device vs FSDP on 2

Each device count runs in a subprocess with ``--xla_force_host_platform_device_count``. Per
run: the loss and gradient norm of one train step from the same random state and batch (the
same seed), the relative difference of the parameter update from the 1-device run's (over
all parameters together: Adam turns round-off gradients of parameters whose true gradient
is zero, such as attention key biases, into full-size updates of either sign, so single
parameters can differ completely), and the collectives of the compiled step (count and
bytes of their results, per device).
"""
from __future__ import annotations

import collections
import os
import re

import numpy as np
from absl import app, flags

from benchmarks.reporting import emit_row, print_markdown_table, report, run_on_forced_devices

_CONFIG = flags.DEFINE_enum("config", "stage1", ["stage1", "stage2"], "Trainer config (tiny variant).")
_DEVICES = flags.DEFINE_list("devices", ["1", "2", "4", "8"], "Device counts.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Global batch (divisible by every device count).")
_QUICK = flags.DEFINE_bool("quick", False, "DP on 1 device and FSDP on 2 only (for CI).")
_JSON = flags.DEFINE_string("json", None, "Write the rows as JSON to this file.")
_WORKER = flags.DEFINE_string("worker", None, "Internal: run one device count, write params to this .npz.")
_MODE = flags.DEFINE_enum("mode", "dp", ["dp", "fsdp"], "Internal, with --worker: data-parallel or FSDP mesh.")

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "s8": 1, "u8": 1, "pred": 1, "f64": 8, "s64": 8}
_OP = re.compile(r"=\s*(.+?)\s+(" + "|".join(COLLECTIVES) + r")(-start)?\(")
_SHAPE = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([\d,]*)\]")


def collectives_of(hlo_text: str) -> dict[str, dict[str, int]]:
    """``op -> {'count', 'bytes'}`` of the collectives in compiled HLO text (result sizes, per device)."""
    stats = collections.defaultdict(lambda: {"count": 0, "bytes": 0})
    for line in hlo_text.splitlines():
        match = _OP.search(line)
        if not match or "-done" in line:
            continue
        op = match.group(2)
        stats[op]["count"] += 1
        for dtype, dims in _SHAPE.findall(match.group(1)):
            stats[op]["bytes"] += _DTYPE_BYTES[dtype] * int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
    return dict(stats)


def worker(config_name: str, devices: int, batch_size: int, mode: str, out_path: str) -> None:
    import jax
    from flax import traverse_util
    from hdvila_jax.train.step_builder import build_step
    from configs import stage1, stage2
    config = (stage1 if config_name == "stage1" else stage2).get_config("tiny")
    config.batch_size = batch_size
    config.mesh.data, config.mesh.fsdp = (devices, 1) if mode == "dp" else (1, devices)
    config.fsdp_min_size = 1
    built = build_step(config)
    compiled = built.lower().compile()
    state = built.init_state()
    before = traverse_util.flatten_dict(jax.device_get(state["params"]), sep="/")
    state, metrics = compiled(state, built.random_batch(seed=3))
    after = traverse_util.flatten_dict(jax.device_get(state["params"]), sep="/")
    sharded = sum(1 for leaf in jax.tree.leaves(state["params"]) if not leaf.sharding.is_fully_replicated)
    np.savez(out_path, **{k: after[k] - before[k] for k in after})
    emit_row(dict(devices=devices, mode=mode, loss=float(metrics["loss"]), grad_norm=float(metrics["grad_norm"]),
                  sharded_params=sharded, collectives=collectives_of(compiled.as_text())))


def relative_update_difference(path: str, reference: str) -> float:
    """``||u - u_ref|| / ||u_ref||`` over all parameter updates together."""
    with np.load(path) as a, np.load(reference) as b:
        diff = sum(float(np.sum((a[k].astype(np.float64) - b[k]) ** 2)) for k in b.files)
        norm = sum(float(np.sum(b[k].astype(np.float64) ** 2)) for k in b.files)
    return (diff / norm) ** 0.5


def scaling_rows(config_name: str, runs: list[tuple[str, int]], batch_size: int, workdir: str) -> list[dict]:
    """One row per ``(mode, device count)`` run, compared with the first (1-device DP) run."""
    reference = os.path.join(workdir, "%s_%d.npz" % runs[0])
    rows = []
    for mode, n in runs:
        out = os.path.join(workdir, f"{mode}_{n}.npz")
        (row,) = run_on_forced_devices(module="benchmarks.scaling", devices=n, args=[
            f"--worker={out}", f"--config={config_name}", f"--devices={n}", f"--batch_size={batch_size}",
            f"--mode={mode}"])
        base = rows[0] if rows else row
        row["loss_rel_diff"] = abs(row["loss"] - base["loss"]) / abs(base["loss"])
        row["update_rel_diff"] = relative_update_difference(out, reference)
        rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    def collectives(r: dict) -> str:
        return ", ".join(f"{op} {s['count']} ({s['bytes'] / 2**20:.2f})"
                         for op, s in sorted(r["collectives"].items())) or "none"

    print_markdown_table(
        ["mode", "devices", "sharded params", "loss", "loss rel. diff", "update rel. diff",
         "collectives per step (count, MiB per device)"],
        [[r["mode"], r["devices"], r["sharded_params"], f"{r['loss']:.6f}", f"{r['loss_rel_diff']:.1e}",
          f"{r['update_rel_diff']:.1e}", collectives(r)] for r in rows])


def main(argv):
    del argv
    import tempfile
    if _WORKER.value:
        worker(_CONFIG.value, int(_DEVICES.value[0]), _BATCH.value, _MODE.value, _WORKER.value)
        return
    devices = [int(d) for d in _DEVICES.value]
    runs = [("dp", 1), ("fsdp", 2)] if _QUICK.value else \
        [("dp", n) for n in devices] + [("fsdp", n) for n in devices if n > 1]
    with tempfile.TemporaryDirectory() as workdir:
        rows = scaling_rows(_CONFIG.value, runs, _BATCH.value, workdir)
    report(rows, print_table, _JSON.value)


if __name__ == "__main__":
    app.run(main)
