"""Ghost Attention's dialogues (Llama 2, 3.3): sampled with the instruction in every user turn,
trained with it in the first turn only and the loss on the last answer alone.

A Ghost Attention dialogue has two forms:

- :func:`with_instruction_every_turn`: the constraint's text opens every user turn (followed by
  :data:`SEPARATOR`), the form the latest model answers in, so that its answers keep the
  instruction however long the dialogue gets.
- :func:`gatt_training_dialogue`: the same user turns without it, the sampled answers kept, and
  the instruction once, as the system message (after a system message the dialogue already has,
  on a line of its own). Its record says ``train_on: last_answer``
  (`tasks.dialogues.records.TRAIN_ON`), so the fine-tuning rows (`tasks.sft_tokens`) put no loss
  on the earlier turns, answers included: the model learns to keep the instruction from the
  system message alone, across answers that it only reads.

:func:`build_gatt_dialogues` turns sampled dialogues into records, one per dialogue or, with
``every_prefix`` (as the paper does), one per prefix ending at each of its T answers, each
training on its own last answer. Every sampled dialogue ends in one place: kept, or dropped with
the reason :func:`~tasks.dialogues.records.dialogue_problem` gives (an empty answer, say), or
``answer_breaks_constraint`` when ``require_following`` is asked and one of its answers does not
follow the constraint. Llama 2 describes no such filter (it samples and trains on the samples);
the filter is off by default. Records are in the ``messages`` form that
`tasks.dialogues.readers.MessagesReader` ingests, every other key kept as the dialogue's meta;
:func:`write_gatt_jsonl` writes them byte-identically for the same input.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.dialogues.constraints import Constraint
from tasks.dialogues.records import TRAIN_ON, as_messages, dialogue_problem

SEPARATOR = "\n\n"
BREAKS_CONSTRAINT = "answer_breaks_constraint"

Messages = Sequence[Mapping[str, str]]


def with_instruction_every_turn(messages: Messages, constraint: Constraint) -> list[dict[str, str]]:
    """The messages with the constraint's text opening every user turn; other turns unchanged."""
    return [{"role": m["role"], "content": _instructed(m["content"], constraint) if m["role"] == "user" else m["content"]}
            for m in messages]


def without_instruction(messages: Messages, constraint: Constraint) -> list[dict[str, str]]:
    """The messages with the opening that :func:`with_instruction_every_turn` adds taken off each
    user turn that has it."""
    opening = constraint.text + SEPARATOR
    return [{"role": m["role"], "content": m["content"][len(opening):]
             if m["role"] == "user" and m["content"].startswith(opening) else m["content"]} for m in messages]


def gatt_training_dialogue(sampled_messages: Messages, constraint: Constraint) -> list[dict[str, str]]:
    """The training form of a sampled dialogue (the instructed form or the plain one): the
    instruction as the system message only, user turns plain, answers as sampled. Its record
    trains on the last answer only (:func:`gatt_record`)."""
    messages = without_instruction(sampled_messages, constraint)
    if messages and messages[0]["role"] == "system":
        system = messages[0]["content"] + "\n" + constraint.text
        return [{"role": "system", "content": system}, *messages[1:]]
    return [{"role": "system", "content": constraint.text}, *messages]


def gatt_record(dialogue_id: str, messages: Messages, constraint: Constraint) -> dict[str, Any]:
    """A JSON-lines record of a training dialogue: its messages and, as meta, ``train_on:
    last_answer``, the constraint's id and kind, the sampled dialogue's id and the turns kept."""
    turns = sum(m["role"] == "assistant" for m in messages)
    return {"id": f"{dialogue_id}:gatt:{turns}", "messages": [dict(m) for m in messages], TRAIN_ON: "last_answer",
            "constraint": constraint.id, "constraint_kind": constraint.kind, "gatt_source": dialogue_id,
            "turns": turns}


def gatt_training_dialogues(dialogue_id: str, sampled_messages: Messages, constraint: Constraint, *,
                            every_prefix: bool = False) -> list[dict[str, Any]]:
    """The records of one sampled dialogue: the whole dialogue, or with ``every_prefix`` one record
    per prefix ending at each answer (T answers, T records, shortest first)."""
    messages = gatt_training_dialogue(sampled_messages, constraint)
    answer_ends = [n + 1 for n, m in enumerate(messages) if m["role"] == "assistant"]
    ends = answer_ends if every_prefix else answer_ends[-1:]
    return [gatt_record(dialogue_id, messages[:end], constraint) for end in ends]


@dataclass
class GattDialogues:
    """The training records, and where each sampled dialogue ended: kept, or dropped with a reason."""

    records: list[dict[str, Any]] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)  # sampled dialogue id -> reason

    def counts(self) -> dict[str, Any]:
        reasons: dict[str, int] = {}
        for reason in self.dropped.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        return {"dialogues": len(self.kept) + len(self.dropped), "kept": len(self.kept),
                "dropped": dict(sorted(reasons.items())), "records": len(self.records)}


@dataclass(frozen=True)
class SampledDialogue:
    """A dialogue the latest model answered: its id, its messages (answers sampled) and constraint."""

    id: str
    messages: tuple[Mapping[str, str], ...]
    constraint: Constraint


def build_gatt_dialogues(sampled: Sequence[SampledDialogue], *, every_prefix: bool = False,
                         require_following: bool = False) -> GattDialogues:
    """The training records of sampled dialogues, each dialogue kept or dropped with its reason."""
    built = GattDialogues()
    seen: set[str] = set()
    for dialogue in sampled:
        if dialogue.id in seen:
            raise ValueError(f"sampled dialogue id {dialogue.id!r} appears twice")
        seen.add(dialogue.id)
        reason = drop_reason(dialogue, require_following)
        if reason is not None:
            built.dropped[dialogue.id] = reason
            continue
        built.kept.append(dialogue.id)
        built.records += gatt_training_dialogues(dialogue.id, dialogue.messages, dialogue.constraint,
                                                 every_prefix=every_prefix)
    return built


def drop_reason(dialogue: SampledDialogue, require_following: bool) -> str | None:
    """Why a sampled dialogue gives no training record, or None."""
    messages = gatt_training_dialogue(dialogue.messages, dialogue.constraint)
    typed = as_messages([dict(m) for m in messages])
    problem = typed if not isinstance(typed, tuple) else dialogue_problem(typed)
    if problem is not None:
        return problem.reason
    if require_following and not all(dialogue.constraint.follows(m["content"]) for m in messages
                                     if m["role"] == "assistant"):
        return BREAKS_CONSTRAINT
    return None


def write_gatt_jsonl(path: str | Path, records: Sequence[Mapping[str, Any]]) -> Path:
    """One record a line, keys sorted, UTF-8: the same records give byte-identical files."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(record, ensure_ascii=False, sort_keys=True, separators=(",", ":")) for record in records]
    target.write_bytes("".join(line + "\n" for line in lines).encode("utf-8"))
    return target


def _instructed(content: str, constraint: Constraint) -> str:
    return constraint.text + SEPARATOR + content
