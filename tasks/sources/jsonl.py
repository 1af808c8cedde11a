"""JSON-lines documents (optionally gzip-compressed): one object per line with a text field.

A line that is not a JSON object, or lacks a string text, becomes a :class:`BadRecord` naming the
file and line; the other fields go into ``meta``. So does a line longer than ``max_record_bytes``:
lines are read with that bound, and the rest of a longer one is skipped, never held.

:func:`json_lines` and :func:`json_object` are the line reading and parsing every JSON-lines
reader shares (the dialogue readers of :mod:`tasks.dialogues` too).
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tasks.documents import BadRecord, Document, make_doc_id
from tasks.shards import RAW_EXCERPT_CHARS
from tasks.sources import MAX_RECORD_BYTES, over_size
from tasks.stage import ShardUnit
from tasks.storage import resolve

SKIP_CHUNK = 1 << 20


@dataclass(frozen=True)
class JsonlReader:
    text_field: str = "text"
    key_field: str = "url"  # the natural key the document id derives from
    max_record_bytes: int = MAX_RECORD_BYTES  # of one line, without its line end

    def read(self, unit: ShardUnit) -> Iterator[Document | BadRecord]:
        if unit.input is None:
            raise ValueError(f"{unit.source} part {unit.index}: a JSON-lines unit needs an input file")
        for item in json_lines(unit.input.uri, self.max_record_bytes):
            yield item if isinstance(item, BadRecord) else self._parse(unit, *item)

    def _parse(self, unit: ShardUnit, locator: str, raw: bytes) -> Document | BadRecord:
        record = json_object(locator, raw)
        if isinstance(record, BadRecord):
            return record
        text = record.pop(self.text_field, None)
        if not isinstance(text, str):
            return BadRecord(locator, f"field {self.text_field!r} missing or not a string", raw.decode(), "missing_text")
        key = record.get(self.key_field)
        if not isinstance(key, str) or not key:
            return BadRecord(locator, f"natural key field {self.key_field!r} missing or empty", raw.decode(), "missing_key")
        meta = dict(record)
        meta["provenance"] = locator
        return Document(id=make_doc_id(unit.source, key), source=unit.source, text=text, meta=meta)


def json_lines(uri: str, max_record_bytes: int) -> Iterator[tuple[str, bytes] | BadRecord]:
    """``(locator, line)`` for every non-blank line of the file (gunzipped when it ends in .gz),
    the locator naming the file and line number; a BadRecord for a line over ``max_record_bytes``
    (skipped, never held) and for the rest of a file whose compression breaks off."""
    location = resolve(uri)
    number = 0
    with location.open_input() as raw:
        stream = gzip.GzipFile(fileobj=raw) if location.path.endswith(".gz") else raw
        lines = io.BufferedReader(stream)
        try:
            while line := lines.readline(max_record_bytes + 1):
                number += 1
                locator = f"{uri}:line {number}"
                if len(line) > max_record_bytes and not line.endswith(b"\n"):
                    size = len(line) + _skip_line(lines)
                    excerpt = line[:RAW_EXCERPT_CHARS].decode("utf-8", errors="backslashreplace")
                    yield BadRecord(locator, over_size(size, max_record_bytes), excerpt, "record_too_large")
                elif line.strip():
                    yield locator, line
        except (OSError, EOFError) as exc:  # truncated or corrupt compression: the rest is unreadable
            yield BadRecord(f"{uri}:after line {number}", f"unreadable input: {exc}", "", "unreadable_input")


def json_object(locator: str, raw: bytes) -> dict[str, Any] | BadRecord:
    """The JSON object one line holds, or why it holds none."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return BadRecord(locator, f"not UTF-8: {exc}", raw.decode("utf-8", errors="backslashreplace"), "not_utf8")
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        return BadRecord(locator, f"invalid JSON: {exc}", line, "invalid_json")
    if not isinstance(record, dict):
        return BadRecord(locator, f"expected a JSON object, got {type(record).__name__}", line, "not_an_object")
    return record


def _skip_line(lines: io.BufferedReader) -> int:
    """Read past the end of the current line, a chunk at a time; the bytes skipped, line end excluded."""
    skipped = 0
    while chunk := lines.readline(SKIP_CHUNK):
        if chunk.endswith(b"\n"):
            return skipped + len(chunk) - 1
        skipped += len(chunk)
    return skipped
