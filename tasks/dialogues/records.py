"""The dialogue record, its Arrow column, and the rules a dialogue must keep to be trained on.

A dialogue is a list of messages, each a ``role`` (``system``, ``user``, ``assistant``) and a
``content`` string, plus per-dialogue metadata (source, language, safety tags, provenance). In a
stage it is a :class:`~tasks.documents.Document` whose typed extra column ``messages``
(:data:`MESSAGES_COLUMNS`) holds the turns, whose ``meta`` holds the metadata, and whose ``text``
is a plain rendering (:func:`render_text`) for the steps that read text (dedup, PII): so every
document stage, the executor, receipts and manifests serve dialogues unchanged.

:func:`dialogue_problem` says why a dialogue is malformed: an optional single system message
first, then user and assistant strictly alternating from a user turn, ending with an assistant
turn (the one trained on; a prompt to answer ends with a user turn instead); every content a
non-blank string without Llama 2's control tags, which our chat format places around turns, so a
turn holding one could forge a turn boundary.

``meta[TRAIN_ON]`` says which answers a dialogue trains on: ``all_answers`` (the default, also
when the key is absent) or ``last_answer`` (Ghost Attention's dialogues: the earlier turns,
answers included, are context only). :func:`train_on` reads it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from tasks.documents import Document
from tasks.shards import read_part
from tasks.storage import Location, resolve

ROLES = ("system", "user", "assistant")
CONTROL_TAGS = ("[INST]", "[/INST]", "<<SYS>>", "<</SYS>>")
MESSAGE_TYPE = pa.struct([pa.field("role", pa.string(), nullable=False), pa.field("content", pa.string(), nullable=False)])
MESSAGES_COLUMNS = pa.schema([pa.field("messages", pa.list_(MESSAGE_TYPE), nullable=False)])

# Every reason dialogue_problem gives, each a stable name that receipts count.
PROBLEM_REASONS = (
    "messages_not_a_list",
    "no_messages",
    "not_a_message",
    "unknown_role",
    "content_not_a_string",
    "empty_turn",
    "control_tag",
    "no_assistant_turn",
    "roles_out_of_order",
    "ends_without_assistant",
    "ends_without_user",
)

TRAIN_ON = "train_on"
TRAIN_ON_VALUES = ("all_answers", "last_answer")


@dataclass(frozen=True, slots=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a dialogue is malformed: ``reason`` (one of :data:`PROBLEM_REASONS`) and where."""

    reason: str
    detail: str

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


@dataclass(frozen=True, slots=True)
class Dialogue:
    id: str
    source: str
    messages: tuple[Message, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_document(self) -> Document:
        turns = [{"role": m.role, "content": m.content} for m in self.messages]
        return Document(self.id, self.source, render_text(self.messages), dict(self.meta), {"messages": turns})

    @classmethod
    def from_document(cls, doc: Document) -> Dialogue:
        turns = doc.columns.get("messages")
        if turns is None:
            raise ValueError(f"document {doc.id} has no messages column: not a dialogue")
        return cls(doc.id, doc.source, tuple(Message(t["role"], t["content"]) for t in turns), doc.meta)


def train_on(meta: dict[str, Any]) -> str:
    """The dialogue's ``meta[TRAIN_ON]``, ``all_answers`` when absent; ValueError for any other value."""
    value = meta.get(TRAIN_ON, "all_answers")
    if value not in TRAIN_ON_VALUES:
        raise ValueError(f"meta {TRAIN_ON!r} is {value!r}; it is one of {', '.join(TRAIN_ON_VALUES)}")
    return value


def render_text(messages: Sequence[Message]) -> str:
    """The dialogue as plain text, one ``role: content`` paragraph a turn."""
    return "\n\n".join(f"{m.role}: {m.content}" for m in messages)


def read_dialogues(part: str | Location) -> Iterator[Dialogue]:
    """The dialogues of one part of a finished dialogue stage (a manifest's ``parts[*].path``), in row order."""
    location = resolve(part) if isinstance(part, str) else part
    for doc in read_part(location):
        yield Dialogue.from_document(doc)


def as_messages(raw: Any) -> tuple[Message, ...] | Problem:
    """Typed messages from decoded JSON (a list of ``{"role", "content"}`` objects), or the
    problem that keeps them from being messages at all; the dialogue rules are :func:`dialogue_problem`'s."""
    if not isinstance(raw, list):
        return Problem("messages_not_a_list", f"messages is {type(raw).__name__}, not a list")
    messages = []
    for n, item in enumerate(raw):
        if not isinstance(item, dict) or set(item) != {"role", "content"}:
            shape = sorted(item) if isinstance(item, dict) else type(item).__name__
            return Problem("not_a_message", f"message {n} is {shape}, not an object of exactly role and content")
        role, content = item["role"], item["content"]
        if not isinstance(role, str) or role not in ROLES:
            return Problem("unknown_role", f"message {n} has role {role!r}; roles are {', '.join(ROLES)}")
        if not isinstance(content, str):
            return Problem("content_not_a_string", f"message {n} ({role}) has content of type {type(content).__name__}")
        messages.append(Message(role, content))
    return tuple(messages)


def dialogue_problem(messages: Sequence[Message] | Any, *, last_role: str = "assistant") -> Problem | None:
    """Why the dialogue is malformed (the first problem found), or None for a well-formed one.

    ``messages``: :class:`Message` objects, or decoded JSON (a list of role/content objects).
    ``last_role``: ``assistant`` for a dialogue to train on, ``user`` for a prompt to answer.
    A Problem is truthy and its ``str`` is ``"<reason>: <detail>"``.
    """
    typed = isinstance(messages, list | tuple) and all(isinstance(m, Message) for m in messages)
    if not typed:
        messages = as_messages(messages)
        if isinstance(messages, Problem):
            return messages
    if not messages:
        return Problem("no_messages", "the dialogue has no messages")
    for n, message in enumerate(messages):
        if not message.content.strip():
            return Problem("empty_turn", f"message {n} ({message.role}) is empty or whitespace")
        for tag in CONTROL_TAGS:
            if tag in message.content:
                return Problem("control_tag", f"message {n} ({message.role}) holds the chat-format tag {tag}")
    roles = [m.role for m in messages]
    if last_role == "assistant" and "assistant" not in roles:
        return Problem("no_assistant_turn", f"roles {_sequence(roles)}")
    turns = roles[1:] if roles[0] == "system" else roles
    for n, role in enumerate(turns):
        expected = "user" if n % 2 == 0 else "assistant"
        if role != expected:
            position = n + len(roles) - len(turns)
            return Problem("roles_out_of_order", f"message {position} is {role}, expected {expected}: roles {_sequence(roles)}")
    if roles[-1] != last_role:
        return Problem(f"ends_without_{last_role}", f"the last turn is {roles[-1]}: roles {_sequence(roles)}")
    return None


def _sequence(roles: Sequence[str], limit: int = 12) -> str:
    shown = ",".join(roles[:limit])
    return shown + (f",... ({len(roles)} turns)" if len(roles) > limit else "")
