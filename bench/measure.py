"""Timing and memory helpers the benchmarks share (they run as python bench/<name>.py)."""

from __future__ import annotations

import time
import tracemalloc


def timed(fn, jobs) -> float:
    started = time.perf_counter()
    for job in jobs:
        fn(job)
    return time.perf_counter() - started


def peak_mb(fn, jobs) -> float:
    """The largest peak of traced memory any one job reached (tracing slows it: not timed)."""
    peak = 0
    for job in jobs:
        tracemalloc.start()
        fn(job)
        peak = max(peak, tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    return peak / 1e6
