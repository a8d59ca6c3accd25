"""Timing several callables side by side: one call of each per round, so that load from other
jobs on a shared machine hits all of them alike."""
from __future__ import annotations

import statistics
import time
from typing import Callable


def time_interleaved(fns: dict[str, Callable[[], object]], reps: int, warmup: int = 1,
                     untimed_per_turn: int = 0) -> dict[str, float]:
    """Median seconds per call of each of ``fns`` (each must block until its work is done) over
    ``reps`` rounds, after ``warmup`` untimed rounds; a round calls every function once, in order,
    each first ``untimed_per_turn`` more times untimed: the first call after another function's can
    pay for what that one left behind (``benchmarks.vs_reference``: fresh huge pages after another
    process's step, we believe)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(warmup + reps):
        for name, fn in fns.items():
            for _ in range(untimed_per_turn):
                fn()
            start = time.perf_counter()
            fn()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}
