"""Benchmarks whose answers are known by construction: ground truth for the evaluation code.

Three small tasks in `tasks.benchmarks`' format, one per kind, each answer following from one or
two words of its question by a rule a debug LLaMA learns in a few hundred CPU steps:

- ``colours`` (multiple_choice): "What colour is the <adjective> <thing>?", four colours, the
  thing's colour right whatever the adjective; each colour is the answer of exactly a quarter of
  the test records, so a model that always picks one choice (as an untrained one nearly does)
  scores exactly 25%.
- ``homes`` (qa): "Where does <name> the <trade> live?", the town of that trade (one of eight).
- ``doubles`` (math): "What is twice a?" for a digit a: ten facts, learnt by heart, so its train
  split holds the test facts too (few-shot prompts never show the asked question:
  `tasks.benchmarks.Task.prompt`).

Names are syllables drawn from a seeded generator: the same seed gives the same tasks. Colours'
and homes' test and train records differ (other adjectives, other names). :func:`corpus_documents` renders train records
as training text, question and answer as in a few-shot prompt.
"""

from __future__ import annotations

import random
from pathlib import Path

from tasks.benchmarks import EXAMPLE_SEPARATOR, Task, load_task, question_text, write_task

COLOURS = ("red", "green", "blue", "yellow")
# Four things of each colour: a record's answer is its thing's colour, whatever the adjective.
THINGS = {
    "red": ("cherry", "tomato", "ruby", "brick"),
    "green": ("leaf", "frog", "lime", "moss"),
    "blue": ("sky", "sea", "sapphire", "jeans"),
    "yellow": ("lemon", "banana", "sun", "corn"),
}
ADJECTIVES = ("big", "small", "old", "new", "wet", "dry", "round", "long")
TOWNS = ("Avon", "Brill", "Corfe", "Dent", "Eye", "Frome", "Goole", "Hythe")
JOBS = ("baker", "smith", "tailor", "miller", "potter", "weaver", "mason", "cooper")  # the i-th lives in TOWNS[i]
SYLLABLES = "ba ko ri zu me ta lo ni pe su da vo ki ra fu gi".split()


def made_up_names(n: int, seed: int) -> list[str]:
    """`n` distinct capitalised three-syllable names."""
    rng = random.Random(seed)
    names: list[str] = []
    while len(names) < n:
        name = "".join(rng.choice(SYLLABLES) for _ in range(3)).title()
        if name not in names:
            names.append(name)
    return names


def colours_records() -> list[dict]:
    """All 128 (adjective, thing) questions: each colour the answer of exactly a quarter."""
    return [{"question": f"What colour is the {adjective} {thing}?", "choices": list(COLOURS),
             "answer": COLOURS.index(colour)}
            for colour, things in THINGS.items() for thing in things for adjective in ADJECTIVES]


def homes_records(n: int, seed: int) -> list[dict]:
    """Where a person lives follows from their trade; names are made up, so records differ."""
    return [{"question": f"Where does {name} the {JOBS[i % len(JOBS)]} live?", "answers": [TOWNS[i % len(TOWNS)]]}
            for i, name in enumerate(made_up_names(n, seed))]


def doubles_records() -> list[dict]:
    """Twice each digit: ten facts, each answer following from one token of its question."""
    return [{"question": f"What is twice {a}?", "answer": str(2 * a)} for a in range(10)]


def write_synthetic_tasks(root: str | Path, n: int = 64, seed: int = 0) -> dict[str, Task]:
    """The three tasks under `root`: homes `n` test and `n` train records; colours 64 and 64 (its
    test records the things with the first four adjectives, a quarter of them of each colour);
    doubles its ten facts in both, as a times table is learnt by heart."""
    root = Path(root)
    colours = sorted(colours_records(), key=lambda r: r["question"].split()[4] not in ADJECTIVES[:4])
    # Test and train records come from one draw, so the two splits never share a record.
    homes = homes_records(2 * n, seed + 1)
    doubles = doubles_records()
    folders = {
        "colours": write_task(root / "colours", "colours", "multiple_choice", colours[:64], colours[64:]),
        "homes": write_task(root / "homes", "homes", "qa", homes[:n], homes[n:]),
        "doubles": write_task(root / "doubles", "doubles", "math", doubles,
                              random.Random(seed).sample(doubles, len(doubles))),
    }
    return {name: load_task(folder) for name, folder in folders.items()}


def corpus_documents(tasks: dict[str, Task], n_documents: int, per_document: int = 4, seed: int = 0) -> list[str]:
    """`n_documents` texts of `per_document` train records each, answered, drawn at random (so a
    model learns the facts, not one order of them): a task, then one of its records, so a task
    with few records is seen as often as the others. A model trained on them has seen no test
    record of colours or homes."""
    shown = [[question_text(r) + " " + r.target_text(task.kind) for r in task.train] for task in tasks.values()]
    rng = random.Random(seed)
    return [EXAMPLE_SEPARATOR.join(rng.choice(rng.choice(shown)) for _ in range(per_document))
            for _ in range(n_documents)]
