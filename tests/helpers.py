"""Tiny fixtures shared by the tests: documents and inputs written inline."""

from __future__ import annotations

import gzip
import json
from pathlib import Path


def write_jsonl_gz(path: Path, lines: list[bytes | dict]) -> Path:
    body = b"".join((json.dumps(l).encode() if isinstance(l, dict) else l) + b"\n" for l in lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as f:
        f.write(body)
    return path


def doc_line(n: int, words: int = 60) -> dict:
    return {"url": f"https://example.com/{n}", "title": f"t{n}", "text": " ".join(f"word{n}x{i}" for i in range(words))}
