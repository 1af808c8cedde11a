"""Byte-range splits of files made of independently compressed members (gzip WARC members, bz2
streams of a multistream Wikipedia dump), shared by the readers that can split such files.

A file is cut into even byte ranges; a split owns the members that start in its range. A reader
finds its first member from any offset by scanning for the member's magic bytes and checking that
a member really starts there (the magic also occurs by chance inside compressed data): each format
says how to find candidates in a window of bytes and how to check one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

SCAN_WINDOW = 1 << 20


def even_ranges(size: int, target_bytes: int) -> list[tuple[int, int]]:
    """[start, end) ranges of about `target_bytes` covering a file of `size` bytes."""
    edges = [*range(0, size, max(1, target_bytes)), size]
    return list(zip(edges, edges[1:]))


def covers_whole(byte_range: tuple[int, int] | None, size: int) -> bool:
    return byte_range is None or (byte_range[0] == 0 and byte_range[1] >= size)


def next_member(probe: Any, offset: int, candidates: Callable[[bytes], Iterable[int]],
                starts_member: Callable[[Any, int], bool], magic_bytes: int) -> int | None:
    """The offset of the first member at or after `offset`, or None: `candidates(window)` gives the
    offsets in a window where the magic is, `starts_member(probe, offset)` checks one. Windows
    overlap by the magic's length less one, so a magic across their edge is found."""
    position = offset
    while True:
        probe.seek(position)
        window = probe.read(SCAN_WINDOW)
        for found in candidates(window):
            if starts_member(probe, position + found):
                return position + found
        if len(window) < SCAN_WINDOW:
            return None
        position += len(window) - magic_bytes + 1
