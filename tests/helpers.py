"""Helpers shared by the tests: documents and inputs written inline, what a reader must keep."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tasks.documents import Document, make_doc_id
from tasks.stage import ShardUnit
from tasks.steps import Drop


def write_jsonl_gz(path: Path, lines: list[bytes | dict]) -> Path:
    body = b"".join((json.dumps(l).encode() if isinstance(l, dict) else l) + b"\n" for l in lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as f:
        f.write(body)
    return path


def doc_line(n: int, words: int = 60) -> dict:
    return {"url": f"https://example.com/{n}", "title": f"t{n}", "text": " ".join(f"word{n}x{i}" for i in range(words))}


@dataclass(frozen=True)
class InlineReader:
    """A reader of documents written in the test: ``corpus[(source, part)]`` holds each part's texts."""

    corpus: dict[tuple[str, int], tuple[str, ...]]

    def read(self, unit: ShardUnit) -> Iterator[Document]:
        for row, text in enumerate(self.corpus[(unit.source, unit.index)]):
            yield Document(make_doc_id(unit.source, f"{unit.index}-{row}"), unit.source, text, {"row": row})


def split_invariant(item) -> tuple:
    """What a reader's item must keep whatever the splitting of its input (a split names its
    records by byte offset, not by number, so provenance may differ)."""
    if isinstance(item, Document):
        return ("doc", item.id, item.text, {k: v for k, v in item.meta.items() if k != "provenance"})
    if isinstance(item, Drop):
        return ("drop", item.reason)
    return ("bad", item.error, item.raw)
