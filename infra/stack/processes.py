"""Which recorded processes still run, read from /proc, and stopping exactly their process groups."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from infra.stack.state import Launched, State, StateDir, boot_id, load_state

STOP_GRACE_SECONDS = 15.0


@dataclass(frozen=True)
class ProcInfo:
    ppid: int
    pgid: int
    start_ticks: int


def read_proc(pid: int) -> ProcInfo | None:
    """The process, or None when it is gone or a zombie (it holds nothing any more)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # the command name may contain spaces and ')'
    if fields[0] in ("Z", "X"):
        return None
    return ProcInfo(ppid=int(fields[1]), pgid=int(fields[2]), start_ticks=int(fields[19]))


def process_table() -> dict[int, ProcInfo]:
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (info := read_proc(int(entry.name))):
            table[int(entry.name)] = info
    return table


def is_ours(record: Launched, table: dict[int, ProcInfo]) -> bool:
    info = table.get(record.pid)
    return info is not None and info.start_ticks == record.start_ticks


def live(paths: StateDir) -> State | None:
    """The recorded state when any recorded process still runs (on this boot)."""
    state = load_state(paths)
    if state is None or state.boot_id != boot_id():
        return None
    table = process_table()
    state.processes = {name: record for name, record in state.processes.items() if is_ours(record, table)}
    return state if state.processes else None


def _our_groups(records: Iterable[Launched], table: dict[int, ProcInfo]) -> set[int]:
    """Process groups holding anything we started.

    A recorded group outlives its leader (Ray's gcs_server can outlive `ray start`), and Prefect
    starts every flow run in a session of its own, so descendants' groups count too.
    """
    children: dict[int, list[int]] = {}
    for pid, info in table.items():
        children.setdefault(info.ppid, []).append(pid)
    groups, roots = set(), []
    for record in records:
        if is_ours(record, table):
            roots.append(record.pid)
            groups.add(record.pgid)
        elif record.pid not in table and _orphans_of(record, table):
            groups.add(record.pgid)
    while roots:
        pid = roots.pop()
        groups.add(table[pid].pgid)
        roots.extend(children.get(pid, []))
    return groups


def _orphans_of(record: Launched, table: dict[int, ProcInfo]) -> list[int]:
    return [
        pid for pid, info in table.items() if info.pgid == record.pgid and info.start_ticks >= record.start_ticks
    ]


def _members(groups: set[int], table: dict[int, ProcInfo]) -> list[int]:
    return [pid for pid, info in table.items() if info.pgid in groups]


def _signal_groups(groups: set[int], sig: signal.Signals) -> None:
    for group in groups:
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            pass


def stop(records: list[Launched], grace: float) -> list[int]:
    """SIGTERM every group of ours, SIGKILL what is left after ``grace`` seconds; return survivors."""
    groups = _our_groups(records, process_table())
    _signal_groups(groups, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        table = process_table()
        groups |= _our_groups(records, table)  # children spawned while shutting down
        if not _members(groups, table):
            return []
        time.sleep(0.2)
    _signal_groups(groups, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while (survivors := _members(groups, process_table())) and time.monotonic() < deadline:
        time.sleep(0.2)
    return survivors
