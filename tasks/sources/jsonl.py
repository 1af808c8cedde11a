"""JSON-lines documents (optionally gzip-compressed): one object per line with a text field.

A line that is not a JSON object, or lacks a string text, becomes a :class:`BadRecord` naming the
file and line; the other fields go into ``meta``.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass

from tasks.documents import BadRecord, Document, make_doc_id
from tasks.stage import ShardUnit
from tasks.storage import resolve


@dataclass(frozen=True)
class JsonlReader:
    text_field: str = "text"
    key_field: str = "url"  # the natural key the document id derives from

    def read(self, unit: ShardUnit) -> Iterator[Document | BadRecord]:
        if unit.input is None:
            raise ValueError(f"{unit.source} part {unit.index}: a JSON-lines unit needs an input file")
        location = resolve(unit.input.uri)
        number = 0
        with location.open_input() as raw:
            stream = gzip.GzipFile(fileobj=raw) if location.path.endswith(".gz") else raw
            lines = io.BufferedReader(stream)
            try:
                for number, line in enumerate(lines, 1):
                    if line.strip():
                        yield self._parse(unit, f"{unit.input.uri}:line {number}", line)
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
