"""Linux ``perf``: sample a process's CPU time while a function runs, and sum the samples by library."""
from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import tempfile
import time
from typing import Callable, Iterable

FREQUENCY = 499  # samples per second of CPU time per thread (prime: no lockstep with periodic work)
SEPARATOR = "\x1f"  # perf report's field separator: a character no symbol name holds
UNNAMED = "(no symbol)"  # what perf shows as a bare address: code generated at run time
ATTACH_S = 0.5  # perf record -p starts sampling a moment after it starts


def parse_report(text: str) -> list[tuple[int, str, str]]:
    """``(samples, library, function)`` rows of ``perf report -F sample,dso,sym -t SEPARATOR`` output;
    JIT code's per-thread names (``[JIT] tid 123``) become one ``[JIT]``; function names lose
    their ``[.]``/``[k]`` mark and their argument lists, bare addresses become ``UNNAMED``."""
    rows = []
    for line in text.splitlines():
        if line.startswith("#") or line.count(SEPARATOR) != 2:
            continue
        samples, library, function = (field.strip() for field in line.split(SEPARATOR))
        if not samples.isdigit():
            continue
        library = re.sub(r"^\[JIT\] tid \d+$", "[JIT]", library)
        function = re.sub(r"^\[[.k]\] ", "", function)
        function = UNNAMED if re.fullmatch(r"0x[0-9a-f]+", function) else short_name(function)
        rows.append((int(samples), library, function))
    return rows


def short_name(function: str) -> str:
    """A C++ function name without its template and call arguments (``ns::f<T>(int) const`` -> ``ns::f``)."""
    depth, out = 0, []
    for char in function:
        if char in "<(":
            depth += 1
        elif char in ">)":
            depth -= 1
        elif depth == 0:
            out.append(char)
    return "".join(out).removesuffix(" const").strip() or function


def by_library(rows: Iterable[tuple[int, str, str]], steps: int, top: int) -> list[dict]:
    """Per library, busiest first: its share of all samples, CPU ms per step, and its busiest
    function with that function's share; libraries after the ``top`` busiest summed as "other"."""
    per_library: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for samples, library, function in rows:
        per_library[library][function] += samples
    totals = {library: sum(functions.values()) for library, functions in per_library.items()}
    total = sum(totals.values())
    ranked = sorted(totals, key=totals.get, reverse=True)

    def row(library: str, samples: int, function: str = "", function_samples: int = 0) -> dict:
        return dict(library=library, share=samples / total, cpu_ms_per_step=1e3 * samples / FREQUENCY / steps,
                    top_function=function, top_function_share=function_samples / total)

    out = [row(library, totals[library], *per_library[library].most_common(1)[0]) for library in ranked[:top]]
    rest = sum(totals[library] for library in ranked[top:])
    if rest:
        out.append(row("other", rest))
    return out


def sample(pid: int, run_steps: Callable[[], list[float]]) -> tuple[list[tuple[int, str, str]], list[float]]:
    """Sample process ``pid`` with ``perf record`` while ``run_steps`` runs; the report's rows and
    the step times ``run_steps`` returned."""
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "perf.data")
        perf = subprocess.Popen(["perf", "record", "-F", str(FREQUENCY), "-p", str(pid), "-o", data],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(ATTACH_S)
        if perf.poll() is not None:
            raise RuntimeError(f"perf record -p {pid} exited ({perf.returncode}): {perf.stderr.read()[-2000:]}")
        seconds = run_steps()
        perf.send_signal(signal.SIGINT)
        _, errors = perf.communicate()
        if perf.returncode not in (0, -signal.SIGINT) or not os.path.exists(data):  # perf re-raises SIGINT
            raise RuntimeError(f"perf record -p {pid} failed ({perf.returncode}): {errors[-2000:]}")
        text = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "-F", "sample,dso,sym",
                               "-t", SEPARATOR], capture_output=True, text=True, check=True).stdout
    return parse_report(text), seconds
