"""Dialogue readers (the :class:`~tasks.stage.Reader` protocol) for two JSON-lines forms.

- :class:`MessagesReader`: ``{"messages": [{"role": ..., "content": ...}, ...], ...}``, the other
  fields going into ``meta``.
- :class:`HHReader`: Anthropic HH, a transcript string ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``
  in a named field (``chosen`` or ``rejected``), split into user and assistant turns.

Both read lines as :mod:`tasks.sources.jsonl` does (gzip, the record size bound, corrupt input)
and quarantine a malformed dialogue with the reason :func:`~tasks.dialogues.records.dialogue_problem`
gives. A dialogue's id derives from the unit's source and its natural key: the record's
``id_field`` when the reader names one, else the input's file name and line (and, for HH, the
transcript field), so a moved input keeps its ids.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from tasks.dialogues.records import Dialogue, Message, Problem, as_messages, dialogue_problem
from tasks.documents import BadRecord, Document, make_doc_id
from tasks.sources import MAX_RECORD_BYTES
from tasks.sources.jsonl import json_lines, json_object
from tasks.stage import ShardUnit

# A speaker label opens a turn only at the transcript's start or after a blank line: HH turns
# quote "Human:" and "Assistant:" mid-text (a model answering as the human), which stay text.
HH_TURN = re.compile(r"(?:\A|\n\n)(Human|Assistant):")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}
Parsed = TypeVar("Parsed")


@dataclass(frozen=True)
class MessagesReader:
    messages_field: str = "messages"
    id_field: str | None = None  # a field naming each dialogue; None: file name and line
    max_record_bytes: int = MAX_RECORD_BYTES

    def read(self, unit: ShardUnit) -> Iterator[Document | BadRecord]:
        def parse(locator: str, record: dict[str, Any], raw: str) -> Document | BadRecord:
            if self.messages_field in record:
                messages = as_messages(record.pop(self.messages_field))
            else:
                messages = Problem("no_messages", f"field {self.messages_field!r} missing")
            return _dialogue(unit, locator, raw, record, messages, self.id_field, suffix="")

        return json_records(unit, self.max_record_bytes, parse)


@dataclass(frozen=True)
class HHReader:
    field: str = "chosen"  # the transcript this reader takes
    # Transcript fields left out of meta: the pair's other side is a dialogue of its own.
    transcript_fields: tuple[str, ...] = ("chosen", "rejected")
    id_field: str | None = None
    max_record_bytes: int = MAX_RECORD_BYTES

    def read(self, unit: ShardUnit) -> Iterator[Document | BadRecord]:
        def parse(locator: str, record: dict[str, Any], raw: str) -> Document | BadRecord:
            transcript = record.get(self.field)
            meta = {k: v for k, v in record.items() if k not in self.transcript_fields and k != self.field}
            meta["transcript_field"] = self.field
            if not isinstance(transcript, str):
                messages: tuple[Message, ...] | Problem = Problem(
                    "no_transcript", f"field {self.field!r} missing or not a string"
                )
            else:
                messages = parse_hh_transcript(transcript)
            return _dialogue(unit, locator, raw, meta, messages, self.id_field, suffix=f":{self.field}")

        return json_records(unit, self.max_record_bytes, parse)


def parse_hh_transcript(transcript: str) -> tuple[Message, ...] | Problem:
    """The turns of an HH transcript, each stripped of the whitespace around it.

    Turns are kept as labelled, empty and repeated-speaker ones included, for
    :func:`dialogue_problem` to judge; text before the first label is a problem here.
    """
    text = transcript.strip()
    labels = list(HH_TURN.finditer(text))
    if not labels:
        return Problem("no_speaker_label", "no 'Human:' or 'Assistant:' turn in the transcript")
    if labels[0].start() != 0:
        return Problem("text_before_first_turn", f"{labels[0].start()} characters before the first speaker label")
    ends = [label.start() for label in labels[1:]] + [len(text)]
    return tuple(
        Message(HH_ROLES[label.group(1)], text[label.end() : end].strip()) for label, end in zip(labels, ends)
    )


def json_records(unit: ShardUnit, max_record_bytes: int, parse: Callable[[str, dict[str, Any], str], Parsed]
                 ) -> Iterator[Parsed | BadRecord]:
    """`parse(locator, decoded object, line)` for each JSON object line of the unit's input, else its BadRecord."""
    if unit.input is None:
        raise ValueError(f"{unit.source} part {unit.index}: a dialogue reader needs an input file")
    for item in json_lines(unit.input.uri, max_record_bytes):
        if isinstance(item, BadRecord):
            yield item
            continue
        locator, raw = item
        record = json_object(locator, raw)
        yield record if isinstance(record, BadRecord) else parse(locator, record, raw.decode())


def _dialogue(
    unit: ShardUnit,
    locator: str,
    raw: str,
    meta: dict[str, Any],
    messages: tuple[Message, ...] | Problem,
    id_field: str | None,
    suffix: str,
) -> Document | BadRecord:
    problem = messages if isinstance(messages, Problem) else dialogue_problem(messages)
    if problem is not None:
        return BadRecord(locator, str(problem), raw, problem.reason)
    doc_id = record_id(unit, locator, meta, id_field, suffix)
    if isinstance(doc_id, Problem):
        return BadRecord(locator, doc_id.detail, raw, doc_id.reason)
    meta = {**meta, "provenance": locator}
    return Dialogue(doc_id, unit.source, messages, meta).to_document()


def record_id(unit: ShardUnit, locator: str, meta: dict[str, Any], id_field: str | None, suffix: str) -> str | Problem:
    """The record's id from its natural key: ``meta[id_field]``, or the input's file name and line
    when ``id_field`` is None; ``suffix`` tells apart records made from one line. A ``bad_id``
    Problem when the named field is no non-empty string or integer."""
    if id_field is None:
        key = f"{posixpath.basename(unit.input.uri)}:{locator.rsplit(':', 1)[1]}{suffix}"
    else:
        value = meta.get(id_field)
        if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
            return Problem("bad_id", f"id field {id_field!r} is {json.dumps(value)[:80]}, not a non-empty string or integer")
        key = f"{value}{suffix}"
    return make_doc_id(unit.source, key)
