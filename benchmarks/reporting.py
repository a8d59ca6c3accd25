"""Shared plumbing of the benchmark scripts (and of tests that run code on forced CPU devices): child
processes on forced CPU devices, and output."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, Callable, Iterable, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROW_PREFIX = "ROW "  # a benchmark worker's rows (emit_row)
RESULT_MARKER = "RESULT"  # a test child's result (run_on_forced_devices)
CODE_TIMEOUT_S = 600


def emit_row(row: dict) -> None:
    """Print one result row for the parent process (see :func:`run_on_forced_devices`)."""
    print(ROW_PREFIX + json.dumps(row), flush=True)


def run_on_forced_devices(code: str | None = None, devices: int = 8, *, module: str | None = None,
                          args: Sequence[str] = (), timeout: float | None = None) -> Any:
    """Run a child python on ``devices`` forced CPU devices, in the repository with it on the path, and
    return what the child reported:

    - ``code`` (the tests): ``python -c code args``, which prints its result as JSON after the marker
      ``RESULT``; the JSON after the last marker.
    - ``module`` (the benchmark workers): ``python -m module args``, which prints rows with :func:`emit_row`;
      the list of its rows.

    XLA's own convolutions in every child (``ModelConfig.onednn_conv`` is off unless a config turns it on):
    oneDNN's run on one device only (hdvila_jax.models.conv), and runs on different device counts must
    differ in nothing else. A child that fails raises RuntimeError with the end of its stderr; one that
    outlives ``timeout`` seconds (default: 600 for ``code``, no limit for a benchmark's ``module``) raises
    subprocess.TimeoutExpired."""
    if (code is None) == (module is None):
        raise ValueError("run_on_forced_devices: give either code or module")
    argv = ["-c", code] if module is None else ["-m", module]
    if timeout is None and module is None:
        timeout = CODE_TIMEOUT_S
    path = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, PYTHONPATH=path, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    result = subprocess.run([sys.executable, *argv, *args], env=env, cwd=REPO, capture_output=True, text=True,
                            timeout=timeout)
    if result.returncode:
        child = " ".join(["python", *(["-c", "CODE"] if module is None else argv), *args])
        raise RuntimeError(f"{child} on {devices} forced CPU devices failed (exit {result.returncode}):\n"
                           f"{result.stderr[-5000:]}")
    if module is None:
        return parse_result(result.stdout)
    return [json.loads(line[len(ROW_PREFIX):]) for line in result.stdout.splitlines() if line.startswith(ROW_PREFIX)]


def parse_result(stdout: str) -> Any:
    """The JSON a test child printed after its last marker ``RESULT``."""
    return json.loads(stdout.split(RESULT_MARKER)[-1])


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
