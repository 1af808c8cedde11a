"""Synthetic inputs with known ground truth, one module per source."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def write_files(folder: str, files: Iterable[tuple[str, bytes]]) -> list[str]:
    """Write (name, bytes) pairs into ``folder``; return the paths in the same order."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in files:
        path = root / name
        path.write_bytes(data)
        paths.append(str(path))
    return paths
