"""Prompt sets: dialogues that end with a user turn, for a chat model to answer.

A prompt set is a JSON lines file of ``{"messages": [{"role": ..., "content": ...}, ...], ...}``
(other keys are kept out of the prompt), each dialogue kept to the rules of
:func:`~tasks.dialogues.records.dialogue_problem` except that it ends with the user turn to answer.
An optional ``"unsafe": true`` tags a prompt as adversarial (Llama 2's PPO gates its reward on it:
the safety reward model's score counts for such a prompt); it must be a JSON boolean. An
optional ``"answer"`` string is the prompt's right answer, for a verifiable task (exact match).
A line that is not such a record is a :class:`~tasks.benchmarks.RecordProblem` naming the file and
line, refused or skipped by the benchmarks' ``Policy``, never answered.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tasks.benchmarks import BadInput, Policy, RecordProblem, report_problem
from tasks.dialogues.records import Message, Problem, as_messages, dialogue_problem

MESSAGES_FIELD = "messages"
UNSAFE_FIELD = "unsafe"
REFERENCE_FIELD = "answer"


@dataclass(frozen=True)
class ChatPrompt:
    where: str  # "<file>:<line>", which also names the prompt across models' reports
    messages: tuple[Message, ...]
    unsafe: bool = False  # tagged adversarial in the prompt set
    reference: str | None = None  # the right answer, where the prompt has one (a verifiable task)

    def as_dicts(self) -> list[dict[str, str]]:
        """The messages as `tasks.chat_format` takes them."""
        return [{"role": m.role, "content": m.content} for m in self.messages]


def read_prompts(path: str | Path, policy: Policy = "refuse") -> tuple[list[ChatPrompt], list[RecordProblem]]:
    """The prompt set's good prompts, in file order, and the problems of the lines skipped (policy
    ``skip``; ``refuse`` raises BadInput on the first)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such prompt set (JSON lines of {{\"messages\": [...]}})")
    prompts: list[ChatPrompt] = []
    problems: list[RecordProblem] = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            parsed = _prompt_messages(line)
            if isinstance(parsed, Problem):
                report_problem(RecordProblem(where, str(parsed)), policy, problems)
            else:
                prompts.append(ChatPrompt(where, *parsed))
    if not prompts:
        raise BadInput(f"{path}: no usable prompts")
    return prompts, problems


def _prompt_messages(line: str) -> tuple[tuple[Message, ...], bool, str | None] | Problem:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        return Problem("invalid_json", f"not JSON: {error.msg} (column {error.colno})")
    if not isinstance(record, dict):
        return Problem("not_an_object", f"a prompt is a JSON object, got {type(record).__name__}")
    if MESSAGES_FIELD not in record:
        return Problem("no_messages", f"field {MESSAGES_FIELD!r} missing")
    unsafe = record.get(UNSAFE_FIELD, False)
    if not isinstance(unsafe, bool):
        return Problem("unsafe_not_a_bool", f"field {UNSAFE_FIELD!r} is a JSON boolean, got {json.dumps(unsafe)}")
    reference = record.get(REFERENCE_FIELD)
    if reference is not None and not isinstance(reference, str):
        return Problem("answer_not_a_string", f"field {REFERENCE_FIELD!r} is the right answer as a JSON string, got "
                                              f"{json.dumps(reference)[:80]}")
    messages = as_messages(record[MESSAGES_FIELD])
    if isinstance(messages, Problem):
        return messages
    return dialogue_problem(messages, last_role="user") or (messages, unsafe, reference)
