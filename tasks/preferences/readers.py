"""Comparison readers (the :class:`~tasks.stage.Reader` protocol) for two JSON-lines forms.

- :class:`ComparisonReader`, our form, one comparison a line::

      {"context": [{"role": "user", "content": "..."}, ...], "chosen": "...", "rejected": "...",
       "rating": "better", "chosen_safe": true, "rejected_safe": false, "split": "train", ...}

  ``context`` is the dialogue up to the answers (ending with a user turn). ``rating`` is one of
  :data:`~tasks.preferences.records.RATINGS`, null or absent for an unrated pair; ``chosen_safe``
  and ``rejected_safe`` are booleans, null or absent where there is no safety label; ``split``
  is ``train`` or ``test``, absent to have the reader assign it (:func:`held_out_split`). Other
  fields go into ``meta``.
- :class:`HHPairReader`: Anthropic HH, ``{"chosen": transcript, "rejected": transcript}``. The
  two transcripts share the dialogue up to the last Assistant turn: each is split into that
  context and its final answer, and a pair whose contexts differ is quarantined
  (``contexts_differ``). HH has no rating and no safety label: ``rating`` is None, so the pair
  gets margin 0 (:func:`~tasks.preferences.records.margin`), and both labels are None; its split
  is assigned.

Lines are read as the dialogue readers read them (:func:`~tasks.dialogues.readers.json_records`:
gzip, the record size bound, corrupt input), ids derive as theirs do
(:func:`~tasks.dialogues.readers.record_id`), and every malformed comparison is quarantined with
the reason :func:`~tasks.preferences.records.comparison_problem` or the reader gives.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tasks.dialogues.readers import json_records, parse_hh_transcript, record_id
from tasks.dialogues.records import Message, Problem, as_messages
from tasks.documents import BadRecord, Document
from tasks.preferences.records import Comparison, comparison_problem, held_out_split
from tasks.sources import MAX_RECORD_BYTES
from tasks.stage import ShardUnit

COMPARISON_FIELDS = ("context", "chosen", "rejected", "rating", "chosen_safe", "rejected_safe", "split")
HELD_OUT_FRACTION = 0.05


@dataclass(frozen=True)
class ComparisonReader:
    id_field: str | None = None  # a field naming each comparison; None: file name and line
    held_out_fraction: float = HELD_OUT_FRACTION  # of the comparisons without a split of their own
    split_seed: int = 0
    max_record_bytes: int = MAX_RECORD_BYTES

    def read(self, unit: ShardUnit) -> Iterator[Document | BadRecord]:
        def parse(locator: str, record: dict[str, Any], raw: str) -> Document | BadRecord:
            meta = {k: v for k, v in record.items() if k not in COMPARISON_FIELDS}
            context = as_messages(record["context"]) if "context" in record else Problem("no_context", "field 'context' missing")
            answers = [record.get(side) for side in ("chosen", "rejected")]
            if not isinstance(context, Problem) and not all(isinstance(a, str) for a in answers):
                context = Problem("answer_not_a_string", "fields 'chosen' and 'rejected' must both be strings")
            if isinstance(context, Problem):
                return BadRecord(locator, str(context), raw, context.reason)
            labels = {k: record.get(k) for k in ("rating", "chosen_safe", "rejected_safe", "split")}
            return _comparison(self, unit, locator, raw, meta, context, *answers, **labels)

        return json_records(unit, self.max_record_bytes, parse)


@dataclass(frozen=True)
class HHPairReader:
    id_field: str | None = None
    held_out_fraction: float = HELD_OUT_FRACTION
    split_seed: int = 0
    max_record_bytes: int = MAX_RECORD_BYTES

    def read(self, unit: ShardUnit) -> Iterator[Document | BadRecord]:
        def parse(locator: str, record: dict[str, Any], raw: str) -> Document | BadRecord:
            meta = {k: v for k, v in record.items() if k not in ("chosen", "rejected")}
            sides = [_context_and_answer(side, record.get(side)) for side in ("chosen", "rejected")]
            problem = next((s for s in sides if isinstance(s, Problem)), None)
            if problem is None and sides[0][0] != sides[1][0]:
                problem = _contexts_differ(sides[0][0], sides[1][0])
            if problem is not None:
                return BadRecord(locator, str(problem), raw, problem.reason)
            (context, chosen), (_, rejected) = sides
            return _comparison(self, unit, locator, raw, meta, context, chosen, rejected)

        return json_records(unit, self.max_record_bytes, parse)


def _context_and_answer(side: str, transcript: Any) -> tuple[tuple[Message, ...], str] | Problem:
    """An HH transcript split into the turns before its last and the last, an assistant turn."""
    if not isinstance(transcript, str):
        return Problem("no_transcript", f"field {side!r} missing or not a string")
    messages = parse_hh_transcript(transcript)
    if isinstance(messages, Problem):
        return Problem(messages.reason, f"{side}: {messages.detail}")
    if messages[-1].role != "assistant":
        return Problem("ends_without_assistant", f"{side}: the last turn is {messages[-1].role}, not an answer")
    return messages[:-1], messages[-1].content


def _contexts_differ(chosen: tuple[Message, ...], rejected: tuple[Message, ...]) -> Problem:
    first = next((n for n, (a, b) in enumerate(zip(chosen, rejected)) if a != b), min(len(chosen), len(rejected)))
    return Problem(
        "contexts_differ",
        f"the transcripts differ before their answers: {len(chosen)} and {len(rejected)} turns of context, "
        f"first difference at turn {first}",
    )


def _comparison(
    reader: ComparisonReader | HHPairReader,
    unit: ShardUnit,
    locator: str,
    raw: str,
    meta: dict[str, Any],
    context: tuple[Message, ...],
    chosen: str,
    rejected: str,
    rating: Any = None,
    chosen_safe: Any = None,
    rejected_safe: Any = None,
    split: Any = None,
) -> Document | BadRecord:
    """The comparison's document, its split assigned where the record has none, or its BadRecord."""
    if split is None:
        split = held_out_split(context, reader.split_seed, reader.held_out_fraction)
    problem = comparison_problem(context, chosen, rejected, rating, chosen_safe, rejected_safe, split)
    if problem is not None:
        return BadRecord(locator, str(problem), raw, problem.reason)
    doc_id = record_id(unit, locator, meta, reader.id_field, suffix="")
    if isinstance(doc_id, Problem):
        return BadRecord(locator, str(doc_id), raw, doc_id.reason)
    meta = {**meta, "provenance": locator}
    comparison = Comparison(doc_id, unit.source, context, chosen, rejected, rating, chosen_safe, rejected_safe, split, meta)
    return comparison.to_document()
