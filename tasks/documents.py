"""The document record every data stage reads and writes, and its Arrow schema.

A document is ``id``, ``source``, ``text`` and ``meta``; ``meta`` is a JSON object (url, title,
timestamp, language, licence, provenance, ...) stored as a string so that every source can carry
its own keys without widening the schema. Stages may add typed columns of their own.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

DOCUMENT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("meta", pa.string(), nullable=False),
    ]
)
REQUIRED_COLUMNS = tuple(DOCUMENT_SCHEMA.names)
# The k-th occurrence (k >= 2) of a natural key in a stage is named "<id>~k" (tasks.unique_ids);
# an id made by make_doc_id ends in hex digits, so it never looks like a repeat.
REPEAT_MARK = "~"
REPEAT_SUFFIX = r"~([2-9]|[1-9][0-9]+)$"  # Python's and RE2's (Arrow's) syntax alike
_REPEAT_SUFFIX = re.compile(REPEAT_SUFFIX)


def make_doc_id(source: str, natural_key: str) -> str:
    """A stable id from the source and its natural key (URL + record id, page id, ...).

    128 bits of BLAKE2b: collisions between distinct keys are negligible at trillions of documents,
    and the same input gives the same id on every rerun and every machine. A key that repeats in
    the inputs gives the same id twice: the stage runner renames the later occurrences
    (:mod:`tasks.unique_ids`), so ids are unique within a stage.
    """
    if not source or not natural_key:
        raise ValueError(f"a document id needs a source and a natural key, got {source!r}, {natural_key!r}")
    digest = hashlib.blake2b(f"{source}\x00{natural_key}".encode(), digest_size=16).hexdigest()
    return f"{source}-{digest}"


def repeat_id(natural: str, number: int) -> str:
    """The id of the ``number``-th occurrence of a natural key whose first occurrence is ``natural``."""
    if number < 1:
        raise ValueError(f"occurrences are numbered from 1, got {number}")
    return natural if number == 1 else f"{natural}{REPEAT_MARK}{number}"


def split_repeat(doc_id: str) -> tuple[str, int]:
    """(natural id, occurrence number): the inverse of :func:`repeat_id`."""
    match = _REPEAT_SUFFIX.search(doc_id)
    if match is None:
        return doc_id, 1
    return doc_id[: match.start()], int(match.group(1))


@dataclass(slots=True)
class Document:
    id: str
    source: str
    text: str
    meta: dict[str, Any] = field(default_factory=dict)
    # Typed columns a stage adds beyond the four base ones (language score, perplexity, ...).
    columns: dict[str, Any] = field(default_factory=dict)

    def meta_json(self) -> str:
        # sort_keys: byte-identical shards on rerun whatever order a reader filled meta in.
        return json.dumps(self.meta, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


@dataclass(slots=True, frozen=True)
class BadRecord:
    """A raw input record that could not become a document: it goes to the stage's quarantine."""

    locator: str  # file and record position, enough to find it again (e.g. "x.jsonl.gz:line 17")
    error: str
    raw: str  # the raw record (truncated), enough to reproduce the failure
    # A short stable name of the failure's kind ("invalid_json", "control_tag"), where the reader
    # has one: receipts and manifests count quarantined records by it.
    reason: str = ""


def document_schema(extra: pa.Schema | None = None) -> pa.Schema:
    if extra is None:
        return DOCUMENT_SCHEMA
    clash = set(extra.names) & set(REQUIRED_COLUMNS)
    if clash:
        raise ValueError(f"extra columns may not redefine the document columns: {sorted(clash)}")
    return pa.schema(list(DOCUMENT_SCHEMA) + list(extra))
