"""The per-chip batch that fits on TPU topologies, with and without remat, from ahead-of-time
compiles (``python -m hdvila_jax.aot``; libtpu on any host, no TPU needed).

    python -m benchmarks.aot_table [--configs=stage1,stage2,msrvtt,msrvtt_qa]
        [--topologies=v5e:2x4,v5p:2x2x1,v5p:4x4x4,v6e:2x4] [--remat=elementwise,none,stage] [--batches=16,8,4,2,1]
        [--json=out.json]

For each (config, topology, remat) the per-chip batches are tried from the largest down, each a
fresh ``hdvila_jax.aot`` process, until one fits; its row is printed. All-FSDP mesh
(``mesh.data=1, mesh.fsdp=-1``), the paper configs' bf16 compute. A paper-size compile takes
10-20 minutes on a 2-core host: pick the rows you need.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from absl import app, flags

from benchmarks.reporting import print_markdown_table, report

CONFIGS = {"stage1": "configs/stage1.py", "stage2": "configs/stage2.py", "msrvtt": "configs/retrieval.py:msrvtt",
           "msrvtt_qa": "configs/qa.py:msrvtt_qa"}
_CONFIGS = flags.DEFINE_list("configs", list(CONFIGS), f"Configs, from {sorted(CONFIGS)}.")
_TOPOLOGIES = flags.DEFINE_list("topologies", ["v5e:2x4", "v5p:2x2x1", "v5p:4x4x4", "v6e:2x4"], "TPU topologies.")
_REMAT = flags.DEFINE_list("remat", ["elementwise", "none", "stage"], "'none' or a model.remat_policy.")
_BATCHES = flags.DEFINE_list("batches", ["16", "8", "4", "2", "1"], "Per-chip batches to try, largest first.")
_EVAL = flags.DEFINE_bool("eval", False, "Also compile the eval step.")
_JSON = flags.DEFINE_string("json", None, "Write the rows as JSON to this file.")
GIB = 2 ** 30


def compile_row(config: str, topology: str, remat: str, per_chip: int, with_eval: bool) -> dict | None:
    """The ``hdvila_jax.aot`` report of one compile (None when the compile itself failed)."""
    overrides = ["--config.mesh.data=1", "--config.mesh.fsdp=-1", f"--config.model.remat={remat != 'none'}"]
    if remat != "none":
        overrides.append(f"--config.model.remat_policy={remat}")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "report.json")
        command = [sys.executable, "-m", "hdvila_jax.aot", f"--config={config}", f"--topology={topology}",
                   f"--per_chip_batch={per_chip}", f"--eval={with_eval}", f"--json={out}", *overrides]
        result = subprocess.run(command, capture_output=True, text=True,
                                env=dict(os.environ, ALLOW_MULTIPLE_LIBTPU_LOAD="1"))
        if not os.path.exists(out):
            print(f"{config} {topology} remat={remat} batch {per_chip}: compile failed\n{result.stderr[-3000:]}",
                  file=sys.stderr)
            return None
        with open(out) as f:
            return json.load(f)


def largest_fitting(config: str, topology: str, remat: str, batches: list[int], with_eval: bool) -> dict:
    """The row of the largest per-chip batch in ``batches`` that fits (or of the smallest tried)."""
    row = None
    for per_chip in batches:
        row = compile_row(config, topology, remat, per_chip, with_eval)
        if row is None:
            continue
        print(f"{config} {topology} remat={remat} batch {per_chip}/chip: {_needs(row)} -> "
              f"{'fits' if row['fits'] else 'too large'} (compile {row['compile_s']:.0f} s)", flush=True)
        if row["fits"]:
            break
    return dict(row or {}, config=config, topology=topology, remat=remat)


def _needs(row: dict) -> str:
    """The memory a row's step needs: its peak, or the temporaries libtpu named when it refused to compile it."""
    if row.get("peak_bytes_per_chip") is not None:
        return f"peak {row['peak_bytes_per_chip'] / GIB:.1f} GiB"
    if row.get("temporaries_bytes_per_chip") is not None:
        return f"refused by libtpu: {row['temporaries_bytes_per_chip'] / GIB:.1f} GiB of temporaries"
    return f"refused by libtpu ({row.get('compile_refused')})"


def print_table(rows: list[dict]) -> None:
    def cell(row, key, fmt):
        return fmt(row[key]) if row.get(key) is not None else "-"

    print_markdown_table(
        ["config", "topology", "remat", "per-chip batch", "fits", "peak GiB / chip", "HBM GiB", "TFLOP / chip-step",
         "XLA estimate s", "MFU at estimate", "memory-bound s", "compute-bound s"],
        [[r["config"], r["topology"], r["remat"], cell(r, "per_chip_batch", lambda v: f"{v:g}"),
          cell(r, "fits", lambda v: "yes" if v else "no"),
          cell(r, "peak_bytes_per_chip", lambda v: f"{v / GIB:.1f}") if "compile_refused" not in r
          else f"> {r['temporaries_bytes_per_chip'] / GIB:.1f} (refused)" if r.get("temporaries_bytes_per_chip")
          else "refused",
          cell(r, "hbm_bytes_per_chip", lambda v: f"{v / GIB:.0f}"),
          cell(r, "flops_per_chip_step", lambda v: f"{v / 1e12:.2f}"),
          cell(r, "xla_estimated_step_s", lambda v: f"{v:.3f}"),
          cell(r, "mfu_at_xla_estimate", lambda v: f"{100 * v:.0f}%"),
          cell(r, "memory_bound_s", lambda v: f"{v:.3f}"), cell(r, "compute_bound_s", lambda v: f"{v:.3f}")]
         for r in rows])


def main(argv):
    del argv
    unknown = sorted(set(_CONFIGS.value) - set(CONFIGS))
    if unknown:
        raise app.UsageError(f"--configs: unknown {unknown}; known: {sorted(CONFIGS)}")
    batches = [int(b) for b in _BATCHES.value]
    rows = [largest_fitting(CONFIGS[name], topology, remat, batches, _EVAL.value)
            for name in _CONFIGS.value for topology in _TOPOLOGIES.value for remat in _REMAT.value]
    report(rows, print_table, _JSON.value)


if __name__ == "__main__":
    app.run(main)
