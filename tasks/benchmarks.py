"""Benchmark tasks from local JSON lines: the file format, its checks, prompts and few-shot picks.

Nothing is downloaded. A task is a folder (put real benchmarks, converted to this format, under
``<data root>/benchmarks/<task>/``)::

    <task>/task.json      {"kind": "multiple_choice" | "qa" | "math", "name": ..., optional settings}
    <task>/test.jsonl     the scored records, one JSON object a line
    <task>/train.jsonl    optional: the pool few-shot examples are drawn from (never scored)

Records, by kind (other keys are kept but unused):

- ``multiple_choice``: ``{"question": str, "choices": [str, ...], "answer": int}``, the answer an
  index into choices (ARC, HellaSwag, PIQA... converted). Scored by the log-likelihood of each
  ``" " + choice`` after the prompt.
- ``qa``: ``{"question": str, "answers": [str, ...]}``, any one right (TriviaQA, Natural Questions
  closed book). Scored by exact match of a greedy answer, cut at the first stop string.
- ``math``: ``{"question": str, "answer": str}``, the final answer a number (GSM8K's after
  ``####``). Scored by majority of k sampled answers, each answer's last number.

The prompt of a record is ``Question: <question>\\nAnswer:``; a k-shot prompt puts k train
records, each followed by its answer and a blank line, before it. The k examples of test record i
are drawn from the train pool (less any record asking the same question) by a generator seeded
with (seed, i): the same for every model and run, and the same for record i whatever else the
file holds.

Bad input never turns into a score: a line that is not a JSON object, a missing or mistyped field,
an answer index out of range is a :class:`RecordProblem` naming the file and line. With policy
``"refuse"`` (the default) loading raises on the first; with ``"skip"`` the record is left out and
its problem listed in the report. The same holds later for a prompt that does not fit the model's
context (``modeling.evaluate``).
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

KINDS = ("multiple_choice", "qa", "math")
POLICIES = ("refuse", "skip")
Policy = Literal["refuse", "skip"]
TASK_FILE = "task.json"
TEST_FILE = "test.jsonl"
TRAIN_FILE = "train.jsonl"
EXAMPLE_SEPARATOR = "\n\n"
QA_STOP = ("\n",)
MATH_STOP = ("\n\n", "Question:")


class BadInput(ValueError):
    """Input refused by the ``refuse`` policy; the message names the file and line."""


@dataclass(frozen=True)
class RecordProblem:
    where: str  # "<file>:<line>"
    error: str

    def __str__(self) -> str:
        return f"{self.where}: {self.error}"


@dataclass(frozen=True)
class Record:
    """One checked benchmark record; `where` is its file and line."""

    where: str
    question: str
    choices: tuple[str, ...] = ()  # multiple_choice
    answer: int | str | None = None  # multiple_choice: index; math: the number as text
    answers: tuple[str, ...] = ()  # qa: every accepted answer

    def target_text(self, kind: str) -> str:
        """What follows "Answer:" in a few-shot example."""
        if kind == "multiple_choice":
            return self.choices[self.answer]
        if kind == "qa":
            return self.answers[0]
        return str(self.answer)


@dataclass(frozen=True)
class Task:
    """A benchmark read from its folder (or built in code): records checked, problems listed."""

    name: str
    kind: str
    test: tuple[Record, ...]
    train: tuple[Record, ...] = ()
    problems: tuple[RecordProblem, ...] = ()  # records skipped under the "skip" policy
    settings: dict[str, Any] = field(default_factory=dict)

    def prompt(self, index: int, shots: int = 0, seed: int = 0) -> str:
        """The prompt of test record `index` with `shots` seeded train examples before it."""
        record = self.test[index]
        # A train record asking the very question would give its answer away.
        pool = [r for r in self.train if r.question != record.question]
        examples = few_shot_examples(pool, shots, seed, index)
        shown = [question_text(e) + " " + e.target_text(self.kind) for e in examples]
        return EXAMPLE_SEPARATOR.join([*shown, question_text(record)])


def question_text(record: Record) -> str:
    return f"Question: {record.question}\nAnswer:"


def few_shot_examples(pool: Sequence[Record], shots: int, seed: int, index: int) -> list[Record]:
    if shots < 0:
        raise ValueError(f"shots must be >= 0, got {shots}")
    if shots > len(pool):
        raise ValueError(f"{shots}-shot prompts need {shots} train records, the pool has {len(pool)}")
    # A generator per test record: its examples do not depend on how many records came before.
    return random.Random(f"{seed}:{index}").sample(list(pool), shots) if shots else []


# ---------------------------------------------------------------------------------- reading files


def load_task(folder: str | Path, policy: Policy = "refuse") -> Task:
    """A task folder (task.json, test.jsonl, optional train.jsonl); problems handled by `policy`."""
    folder = Path(folder)
    task_file = folder / TASK_FILE
    if not task_file.is_file():
        raise FileNotFoundError(f"{task_file}: no task description (a {TASK_FILE} naming the kind)")
    try:
        settings = json.loads(task_file.read_text())
    except json.JSONDecodeError as error:
        raise BadInput(f"{task_file}:{error.lineno}: not JSON: {error.msg}") from None
    kind = settings.get("kind") if isinstance(settings, dict) else None
    if kind not in KINDS:
        raise BadInput(f"{task_file}:1: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    problems: list[RecordProblem] = []
    test = read_records(folder / TEST_FILE, kind, policy, problems)
    train_file = folder / TRAIN_FILE
    train = read_records(train_file, kind, policy, problems) if train_file.exists() else []
    name = settings.get("name", folder.name)
    return Task(name, kind, tuple(test), tuple(train), tuple(problems), settings)


def read_records(path: str | Path, kind: str, policy: Policy, problems: list[RecordProblem]) -> list[Record]:
    """Every good record of a JSON lines file; a bad one raises (refuse) or joins `problems` (skip)."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such records file")
    records = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                records.append(parse_record(line, kind, where))
            except BadInput as error:
                report_problem(RecordProblem(where, str(error)), policy, problems)
    if not records:
        raise BadInput(f"{path}: no usable records")
    return records


def report_problem(problem: RecordProblem, policy: Policy, problems: list[RecordProblem]) -> None:
    if policy == "refuse":
        raise BadInput(str(problem))
    problems.append(problem)


def parse_record(line: str, kind: str, where: str = "<record>") -> Record:
    """One line of a records file as a checked Record; BadInput says what is wrong."""
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as error:
        raise BadInput(f"not JSON: {error.msg} (column {error.colno})") from None
    if not isinstance(raw, dict):
        raise BadInput(f"a record is a JSON object, got {type(raw).__name__}")
    question = _field(raw, "question", str)
    if kind == "multiple_choice":
        choices = _field(raw, "choices", list)
        if len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
            raise BadInput("choices must be a list of at least two non-empty strings")
        answer = _field(raw, "answer", int)
        if isinstance(answer, bool) or not 0 <= answer < len(choices):
            raise BadInput(f"answer index {answer!r} is out of range for {len(choices)} choices")
        return Record(where, question, choices=tuple(choices), answer=answer)
    if kind == "qa":
        answers = _field(raw, "answers", list)
        if not answers or not all(isinstance(a, str) and normalise_answer(a) for a in answers):
            raise BadInput("answers must be a non-empty list of non-empty strings")
        return Record(where, question, answers=tuple(answers))
    if kind == "math":
        answer = raw.get("answer")
        if isinstance(answer, (int, float)) and not isinstance(answer, bool):
            answer = str(answer)
        if not isinstance(answer, str) or parse_number(answer) is None:
            raise BadInput(f"answer must be a number (or its text), got {answer!r}")
        return Record(where, question, answer=answer.strip())
    raise ValueError(f"unknown task kind {kind!r}; known: {', '.join(KINDS)}")


def _field(raw: dict, name: str, kind: type) -> Any:
    if name not in raw:
        raise BadInput(f"missing field {name!r}")
    value = raw[name]
    if not isinstance(value, kind) or (kind is str and not value.strip()):
        raise BadInput(f"field {name!r} must be a non-empty {kind.__name__}, got {value!r}")
    return value


# ---------------------------------------------------------------------------------- answers


def normalise_answer(text: str) -> str:
    """Lower case, punctuation at the ends dropped, runs of whitespace as one space."""
    return " ".join(text.lower().split()).strip(" .,;:!?\"'")


def exact_match(prediction: str, answers: Sequence[str]) -> bool:
    return normalise_answer(prediction) in {normalise_answer(a) for a in answers}


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def parse_number(text: str) -> float | None:
    """The last number in `text` (commas as thousands separators), or None."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    value = float(found[-1].replace(",", ""))
    return value if math.isfinite(value) else None


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to the first occurrence of any stop string."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=len(text))
    return text[:cut]


# ---------------------------------------------------------------------------------- writing files


def write_task(folder: str | Path, name: str, kind: str, test: Sequence[dict], train: Sequence[dict] = (),
               **settings: Any) -> Path:
    """Write a task folder in the format above (synthetic tasks, conversions of real ones)."""
    if kind not in KINDS:
        raise ValueError(f"unknown task kind {kind!r}; known: {', '.join(KINDS)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / TASK_FILE).write_text(json.dumps({"kind": kind, "name": name, **settings}, indent=2) + "\n")
    for file, records in ((TEST_FILE, test), (TRAIN_FILE, train)):
        if records:
            (folder / file).write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder
