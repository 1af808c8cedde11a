"""Comparisons whose better answer is known: ground truth for reward models on a CPU.

Each comparison asks one of `tasks.synthetic.instructions`' checkable tasks; the chosen answer is
the right one, the rejected one is wrong by a known amount, and the rating says how much:

- significantly_better: the rejected answer answers another task (a number for a word list, ...);
- better: it answers the same task for another prompt (the right form, the wrong content);
- slightly_better: it is the right answer with one mistake (a number off by one, one word
  replaced or two swapped, capitals in lower case).

A reward model that learns the tasks ranks held-out pairs right more often the larger the gap.
Records are in our comparison form (`tasks.preferences.readers.ComparisonReader`) with `split`
given by the prompt as `instructions.split_heldout` chooses it, and `task` as metadata.
Comparison `i` of a seed is drawn from its own generator, so it is the same whatever `n` is.
"""

from __future__ import annotations

import json
import random

from tasks.storage import atomic_output, resolve
from tasks.synthetic.instructions import TASKS, WORDS, make_instructions, split_heldout

GAP_RATINGS = ("significantly_better", "better", "slightly_better")


def slightly_wrong(answer: str, rng: random.Random) -> str:
    """The answer with one mistake."""
    if answer.isdigit():
        return str(int(answer) + 1) if answer == "0" or rng.random() < 0.5 else str(int(answer) - 1)
    if answer.isupper():
        return answer.lower()
    words = answer.split()
    if len(words) > 1 and len(set(words)) > 1 and rng.random() < 0.5:
        at = rng.randrange(len(words) - 1)
        while words[at] == words[at + 1]:
            at = rng.randrange(len(words) - 1)
        words[at], words[at + 1] = words[at + 1], words[at]
    else:
        at = rng.randrange(len(words))
        words[at] = rng.choice([w for w in WORDS if w != words[at]])
    return " ".join(words)


def make_comparisons(n: int, seed: int, heldout_share: float = 0.2) -> list[dict[str, object]]:
    """`n` single-turn comparisons, ratings in turn; about `heldout_share` of the prompts are in
    split `test`."""
    names = sorted(TASKS)
    records = []
    dialogues = make_instructions(n, seed, system_share=0.2, multi_turn_share=0.0)
    for index, dialogue in enumerate(dialogues):
        rng = random.Random(f"comparisons:{seed}:{index}")
        *context, answer = dialogue["messages"]
        right, task = answer["content"], str(dialogue["task"])
        rating = GAP_RATINGS[index % len(GAP_RATINGS)]
        if rating == "significantly_better":
            wrong = TASKS[rng.choice([name for name in names if name != task])](rng)[1]
        elif rating == "better":
            wrong = TASKS[task](rng)[1]
        else:
            wrong = slightly_wrong(right, rng)
        if wrong == right:  # another prompt of the same task can share the answer (a count, a sum)
            wrong, rating = slightly_wrong(right, rng), "slightly_better"
        _, held_out = split_heldout([dialogue], heldout_share, seed)
        records.append({"id": f"comparisons-{seed}-{index:06d}", "context": context, "chosen": right,
                        "rejected": wrong, "rating": rating, "split": "test" if held_out else "train", "task": task})
    return records


def write_inputs(folder: str, seed: int = 0, n: int = 600) -> list[str]:
    """``n`` comparisons as one ``comparisons.jsonl`` under ``folder`` (a path or URI), the demo's
    preference input; returns its URI."""
    target = resolve(folder).join("comparisons.jsonl")
    with atomic_output(target) as stream:
        stream.write("".join(json.dumps(record, sort_keys=True) + "\n" for record in make_comparisons(n, seed)).encode())
    return [target.uri]
