"""The comparison record reward models train on, its Arrow columns, its rules and its split.

A comparison is a dialogue context (an optional system message, then user and assistant turns
ending with a user turn), the ``chosen`` and the ``rejected`` answer to it, the annotator's
``rating`` of how much better the chosen one is, for safety data each answer's safe/unsafe label,
and the ``split`` it belongs to. In a stage it is a :class:`~tasks.documents.Document` whose typed
extra columns (:data:`COMPARISON_COLUMNS`) hold those fields, whose ``meta`` holds the rest
(provenance, the input's other fields), and whose ``text`` is a plain rendering for the steps
that read text.

Ratings are Llama 2's (:data:`RATINGS`); the margin of the reward-model loss
``-log(sigmoid(r_chosen - r_rejected - m(rating)))`` is :func:`margin`. A comparison without a
rating (Anthropic HH, most open-source data) has ``rating`` None and margin 0: the margin table is
defined by rating only, and 0 is what the table gives the least confident ratings, so an unrated
pair is trained with the plain binary ranking loss (InstructGPT's), never with a margin it was
not annotated with.

:func:`comparison_problem` says why a comparison cannot be trained on: the dialogue rules of
:func:`~tasks.dialogues.records.dialogue_problem` applied to context + answer for each answer,
an empty answer, equal answers, an unknown rating or split, a safety label that is not a boolean,
and (as Llama 2 excludes them) a chosen answer labelled unsafe against a safe rejected one.

:func:`held_out_split` puts a comparison in ``test`` or ``train`` by a seeded hash of its
dialogue's opening (system message and first user turn): every comparison collected for one
prompt, and every continuation of one conversation, lands in the same split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from tasks.dialogues.records import MESSAGE_TYPE, Message, Problem, dialogue_problem, render_text
from tasks.documents import Document
from tasks.shards import read_part
from tasks.storage import Location, resolve

RATINGS = ("significantly_better", "better", "slightly_better", "negligibly_better", "unsure")
# Llama 2's margin m(rating) of the reward-model loss (RECIPE.md, reward models): (small, large).
MARGINS = {
    "significantly_better": (1.0, 3.0),
    "better": (2 / 3, 2.0),
    "slightly_better": (1 / 3, 1.0),
    "negligibly_better": (0.0, 0.0),
    "unsure": (0.0, 0.0),
}
SPLITS = ("train", "test")

COMPARISON_COLUMNS = pa.schema(
    [
        pa.field("context", pa.list_(MESSAGE_TYPE), nullable=False),
        pa.field("chosen", pa.string(), nullable=False),
        pa.field("rejected", pa.string(), nullable=False),
        pa.field("rating", pa.string()),  # None: unrated
        pa.field("chosen_safe", pa.bool_()),  # None: no safety label
        pa.field("rejected_safe", pa.bool_()),
        pa.field("split", pa.string(), nullable=False),
    ]
)

# The reasons comparison_problem gives beyond dialogue_problem's, each a stable name receipts count.
PROBLEM_REASONS = ("empty_answer", "same_answers", "unknown_rating", "bad_safety_label", "unsafe_chosen_over_safe", "unknown_split")


@dataclass(frozen=True, slots=True)
class Comparison:
    id: str
    source: str
    context: tuple[Message, ...]
    chosen: str
    rejected: str
    rating: str | None
    chosen_safe: bool | None
    rejected_safe: bool | None
    split: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_document(self) -> Document:
        columns = {
            "context": [{"role": m.role, "content": m.content} for m in self.context],
            "chosen": self.chosen,
            "rejected": self.rejected,
            "rating": self.rating,
            "chosen_safe": self.chosen_safe,
            "rejected_safe": self.rejected_safe,
            "split": self.split,
        }
        text = f"{render_text(self.context)}\n\nchosen: {self.chosen}\n\nrejected: {self.rejected}"
        return Document(self.id, self.source, text, dict(self.meta), columns)

    @classmethod
    def from_document(cls, doc: Document) -> Comparison:
        missing = [name for name in COMPARISON_COLUMNS.names if name not in doc.columns]
        if missing:
            raise ValueError(f"document {doc.id} lacks the comparison columns {missing}: not a comparison")
        c = doc.columns
        context = tuple(Message(t["role"], t["content"]) for t in c["context"])
        return cls(
            doc.id, doc.source, context, c["chosen"], c["rejected"], c["rating"], c["chosen_safe"], c["rejected_safe"],
            c["split"], doc.meta,
        )


def margin(rating: str | None, large: bool = False) -> float:
    """m(rating) of the reward-model loss, from Llama 2's small or large margin table; 0 unrated."""
    if rating is None:
        return 0.0
    return MARGINS[rating][1 if large else 0]


def read_comparisons(part: str | Location) -> Iterator[Comparison]:
    """The comparisons of one part of a finished comparison stage (a manifest's ``parts[*].path``), in row order."""
    location = resolve(part) if isinstance(part, str) else part
    for doc in read_part(location):
        yield Comparison.from_document(doc)


def comparison_problem(
    context: Sequence[Message],
    chosen: str,
    rejected: str,
    rating: Any = None,
    chosen_safe: Any = None,
    rejected_safe: Any = None,
    split: Any = "train",
) -> Problem | None:
    """Why the comparison cannot be trained on (the first problem found), or None."""
    for side, answer in (("chosen", chosen), ("rejected", rejected)):
        if not answer.strip():
            return Problem("empty_answer", f"the {side} answer is empty or whitespace")
    for side, answer in (("chosen", chosen), ("rejected", rejected)):
        problem = dialogue_problem((*context, Message("assistant", answer)))
        if problem is not None:
            return Problem(problem.reason, f"context + {side} answer: {problem.detail}")
    if chosen.strip() == rejected.strip():
        return Problem("same_answers", "the chosen and the rejected answer are the same text")
    if rating is not None and rating not in RATINGS:
        return Problem("unknown_rating", f"rating {rating!r}; ratings are {', '.join(RATINGS)} or null (unrated)")
    for side, label in (("chosen_safe", chosen_safe), ("rejected_safe", rejected_safe)):
        if label is not None and not isinstance(label, bool):
            return Problem("bad_safety_label", f"{side} is {label!r}, not true, false or null")
    if chosen_safe is False and rejected_safe is True:
        return Problem("unsafe_chosen_over_safe", "the chosen answer is labelled unsafe, the rejected one safe")
    if split not in SPLITS:
        return Problem("unknown_split", f"split {split!r}; splits are {', '.join(SPLITS)}")
    return None


def held_out_split(context: Sequence[Message], seed: int, fraction: float) -> str:
    """``test`` for a seeded-hash ``fraction`` of dialogue openings (a leading system message and
    the turn after it; in a valid context, the first user turn), else ``train``."""
    opening = context[:2] if context and context[0].role == "system" else context[:1]
    key = "\x00".join(f"{m.role}\x00{m.content}" for m in opening)
    digest = hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=8).digest()
    return "test" if int.from_bytes(digest, "big") < fraction * 2**64 else "train"
