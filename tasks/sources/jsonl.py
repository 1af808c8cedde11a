"""JSON-lines documents (optionally gzip-compressed): one object per line with a text field.

A line that is not a JSON object, or lacks a string text, becomes a :class:`BadRecord` naming the
file and line; the other fields go into ``meta``. So does a line longer than ``max_record_bytes``:
lines are read with that bound, and the rest of a longer one is skipped, never held.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass

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
        location = resolve(unit.input.uri)
        number = 0
        with location.open_input() as raw:
            stream = gzip.GzipFile(fileobj=raw) if location.path.endswith(".gz") else raw
            lines = io.BufferedReader(stream)
            try:
                while line := lines.readline(self.max_record_bytes + 1):
                    number += 1
                    locator = f"{unit.input.uri}:line {number}"
                    if len(line) > self.max_record_bytes and not line.endswith(b"\n"):
                        size = len(line) + _skip_line(lines)
                        excerpt = line[:RAW_EXCERPT_CHARS].decode("utf-8", errors="backslashreplace")
                        yield BadRecord(locator, over_size(size, self.max_record_bytes), excerpt)
                    elif line.strip():
                        yield self._parse(unit, locator, line)
            except (OSError, EOFError) as exc:  # truncated or corrupt compression: the rest is unreadable
                yield BadRecord(f"{unit.input.uri}:after line {number}", f"unreadable input: {exc}", "")

    def _parse(self, unit: ShardUnit, locator: str, raw: bytes) -> Document | BadRecord:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return BadRecord(locator, f"not UTF-8: {exc}", raw.decode("utf-8", errors="backslashreplace"))
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            return BadRecord(locator, f"invalid JSON: {exc}", line)
        if not isinstance(record, dict):
            return BadRecord(locator, f"expected a JSON object, got {type(record).__name__}", line)
        text = record.pop(self.text_field, None)
        if not isinstance(text, str):
            return BadRecord(locator, f"field {self.text_field!r} missing or not a string", line)
        key = record.get(self.key_field)
        if not isinstance(key, str) or not key:
            return BadRecord(locator, f"natural key field {self.key_field!r} missing or empty", line)
        meta = dict(record)
        meta["provenance"] = locator
        return Document(id=make_doc_id(unit.source, key), source=unit.source, text=text, meta=meta)


def _skip_line(lines: io.BufferedReader) -> int:
    """Read past the end of the current line, a chunk at a time; the bytes skipped, line end excluded."""
    skipped = 0
    while chunk := lines.readline(SKIP_CHUNK):
        if chunk.endswith(b"\n"):
            return skipped + len(chunk) - 1
        skipped += len(chunk)
    return skipped
