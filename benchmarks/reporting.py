"""Shared plumbing of the benchmark scripts: worker processes (some on forced CPU devices), and output."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Callable, Iterable, Sequence

from hdvila_jax.models.conv import ONEDNN_OPT_IN

ROW_PREFIX = "ROW "


def emit_row(row: dict) -> None:
    """Print one result row for the parent process (see :func:`run_worker`)."""
    print(ROW_PREFIX + json.dumps(row), flush=True)


def run_worker(module: str, args: list[str], env: dict[str, str]) -> list[dict]:
    """Run ``python -m module args`` with ``env`` added to this process's environment; the rows it
    printed with :func:`emit_row`."""
    result = subprocess.run([sys.executable, "-m", module, *args], env={**os.environ, **env}, capture_output=True,
                            text=True)
    if result.returncode:
        raise RuntimeError(f"{module} worker {args} with {env} failed:\n{result.stderr[-4000:]}")
    return [json.loads(line[len(ROW_PREFIX):]) for line in result.stdout.splitlines() if line.startswith(ROW_PREFIX)]


def run_on_forced_devices(module: str, devices: int, args: list[str]) -> list[dict]:
    """Run ``python -m module --worker ... args`` with ``devices`` forced CPU devices; its rows.
    XLA's own convolutions in every worker: oneDNN's run on one device only (hdvila_jax.models.conv),
    and runs on different device counts must differ in nothing else."""
    return run_worker(module, args, {"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
                                     "JAX_PLATFORMS": "cpu", ONEDNN_OPT_IN: "0"})


def print_markdown_table(header: list[str], rows: Iterable[Sequence[object]]) -> None:
    """Print a Markdown table: ``header``, then one line per row of formatted cells."""
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for cells in rows:
        print("| " + " | ".join(str(c) for c in cells) + " |")


def report(rows: list[dict], print_table: Callable[[list[dict]], None], json_path: str | None) -> None:
    """Print the table of ``rows`` and, when asked, write them as JSON."""
    print_table(rows)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(rows, f, indent=2)
