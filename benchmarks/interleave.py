"""Timing several callables side by side: one call of each per round, so that load from other
jobs on a shared machine hits all of them alike."""
from __future__ import annotations

import statistics
import time
from typing import Callable


def median_interleaved(timers: dict[str, Callable[[], float]], reps: int, warmup: int = 1,
                       untimed_per_turn: int = 0, timed_per_turn: int = 1) -> dict[str, float]:
    """Median of what each of ``timers`` returns (each runs its work once and returns the seconds
    it took) over ``reps`` rounds, after ``warmup`` untimed rounds. A round gives every timer one
    turn, in order: ``untimed_per_turn`` untimed calls, then ``timed_per_turn`` timed ones. The
    first calls after another timer's turn can pay for what that one left behind
    (``benchmarks.vs_reference``: fresh huge pages after another process's steps, we believe)."""
    times: dict[str, list[float]] = {name: [] for name in timers}
    for i in range(warmup + reps):
        for name, timer in timers.items():
            for _ in range(untimed_per_turn):
                timer()
            seconds = [timer() for _ in range(timed_per_turn)]
            if i >= warmup:
                times[name].extend(seconds)
    return {name: statistics.median(t) for name, t in times.items()}


def wall_clock(fn: Callable[[], object]) -> Callable[[], float]:
    """A timer for ``median_interleaved``: calls ``fn`` (which must block until its work is done)
    and returns the seconds it took."""
    def timer() -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    return timer


def time_interleaved(fns: dict[str, Callable[[], object]], reps: int, warmup: int = 1,
                     untimed_per_turn: int = 0, timed_per_turn: int = 1) -> dict[str, float]:
    """``median_interleaved`` of the wall-clock time of each of ``fns`` (each must block until its
    work is done)."""
    return median_interleaved({name: wall_clock(fn) for name, fn in fns.items()}, reps, warmup, untimed_per_turn,
                              timed_per_turn)
