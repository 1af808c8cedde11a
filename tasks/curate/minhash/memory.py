"""A task's own peak memory, from /proc: what the clustering bench reports per task."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any



def _memory_reset() -> int:
    """Reset this process's peak RSS to its current RSS (Linux); return the current RSS in bytes."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        return _proc_status_bytes("VmRSS")
    except OSError:
        return 0


def _proc_status_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {field}")


def _peak_rss() -> int:
    try:
        return _proc_status_bytes("VmHWM")
    except OSError:  # not Linux: the worker process's lifetime peak, an upper bound
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measured(function: Callable, *args: Any) -> tuple[Any, dict[str, int]]:
    """``function(*args)`` and the peak RSS of the process while it ran (the task's memory)."""
    start = _memory_reset()
    result = function(*args)
    return result, {"start_rss": start, "peak_rss": _peak_rss()}

