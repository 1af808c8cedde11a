"""Instruction/answer dialogues whose answers are exactly checkable: ground truth for SFT on a CPU.

Each task asks something with one right answer that a tiny model can learn from a few hundred
steps: copy, reverse, count, first or last item of a short word list, add two digits, say a word in
capitals. Vocabularies are a few dozen words and answers a few tokens, so a debug LLaMA fine-tuned
on them answers held-out prompts exactly where the base model almost never does.

Dialogues are in the common ``messages`` form (an optional system turn, then user/assistant
rounds; a share of them has two rounds) with ``id`` and ``task`` (the task of the final round) as
metadata. :func:`make_conversations` gives longer dialogues, up to 20 rounds and no system turn,
for Ghost Attention's multi-turn sampling and metric. :func:`split_heldout` keeps every held-out final prompt out of the training dialogues;
:func:`check_answer` and :func:`exact_match_rate` score generations against the final answer.
:func:`write_jsonl` writes dialogues as JSON lines; :func:`write_inputs` is the demo's dialogue input;
:func:`write_prompts` a prompt set of them for chat metrics.
Dialogue ``i`` of a seed is drawn from its own generator, so it is the same whatever ``n`` is.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from tasks.storage import atomic_output, resolve

WORDS = (
    "kiwi plum fig pear lime date apple grape melon peach berry mango "
    "lemon olive cherry guava bean corn rice nut pea oat leek kale"
).split()
SAY_WORDS = ["yes", "no", "ok", "hello", "thanks", "sure", "maybe", "never", *WORDS]
MAX_ADDEND = 9
SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "Answer briefly.",
    "Reply with the answer only.",
    "You are a careful assistant who answers exactly.",
]
# Llama 2's chat tags: a message containing one would be ambiguous once rendered.
CHAT_TAGS = ("[INST]", "[/INST]", "<<SYS>>", "<</SYS>>")

Dialogue = dict[str, object]


def _word_list(rng: random.Random, shortest: int = 2, longest: int = 4) -> list[str]:
    return rng.sample(WORDS, rng.randint(shortest, longest))


def _repeat(rng: random.Random) -> tuple[str, str]:
    words = _word_list(rng)
    return f"Repeat: {' '.join(words)}", " ".join(words)


def _reverse(rng: random.Random) -> tuple[str, str]:
    words = _word_list(rng)
    return f"Reverse: {' '.join(words)}", " ".join(reversed(words))


def _count(rng: random.Random) -> tuple[str, str]:
    words = _word_list(rng, 1, 6)
    return f"How many words: {' '.join(words)}", str(len(words))


def _first(rng: random.Random) -> tuple[str, str]:
    words = _word_list(rng)
    return f"First word: {' '.join(words)}", words[0]


def _last(rng: random.Random) -> tuple[str, str]:
    words = _word_list(rng)
    return f"Last word: {' '.join(words)}", words[-1]


def _add(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, MAX_ADDEND), rng.randint(0, MAX_ADDEND)
    return f"What is {a} + {b}?", str(a + b)


def _capitals(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(SAY_WORDS)
    return f"Say {word} in capitals", word.upper()


# Task name -> generator of one (prompt, answer) pair.
TASKS: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "repeat": _repeat,
    "reverse": _reverse,
    "count": _count,
    "first": _first,
    "last": _last,
    "add": _add,
    "capitals": _capitals,
}


def make_instructions(
    n: int,
    seed: int,
    tasks: Sequence[str] | Mapping[str, float] | None = None,
    system_share: float = 0.2,
    multi_turn_share: float = 0.2,
) -> list[Dialogue]:
    """``n`` dialogues; ``tasks``: names (equal shares) or name -> weight, all of TASKS by default.

    ``system_share`` of the dialogues open with a system prompt, ``multi_turn_share`` have two
    user/assistant rounds (each round's task drawn from the mix). Deterministic for ``seed``.
    """
    weights = _task_weights(tasks)
    for name, share in (("system_share", system_share), ("multi_turn_share", multi_turn_share)):
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"{name} must be within [0, 1], got {share}")
    names = sorted(weights)
    name_weights = [weights[name] for name in names]
    dialogues = []
    for index in range(n):
        rng = random.Random(f"instructions:{seed}:{index}")
        messages = []
        if rng.random() < system_share:
            messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        for _ in range(2 if rng.random() < multi_turn_share else 1):
            task = rng.choices(names, weights=name_weights)[0]
            prompt, answer = TASKS[task](rng)
            messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        dialogues.append({"id": f"instructions-{seed}-{index:06d}", "task": task, "messages": messages})
    return dialogues


def make_conversations(n: int, seed: int, min_turns: int = 2, max_turns: int = 20,
                       tasks: Sequence[str] | Mapping[str, float] | None = None) -> list[Dialogue]:
    """``n`` dialogues of ``min_turns`` to ``max_turns`` user/assistant rounds (uniformly), each
    round's task drawn from ``tasks`` as in :func:`make_instructions`; no system turn (Ghost
    Attention puts its instruction there). Deterministic for ``seed``; dialogue ``i`` whatever ``n`` is."""
    if not 1 <= min_turns <= max_turns:
        raise ValueError(f"turns must satisfy 1 <= min_turns <= max_turns, got {min_turns} and {max_turns}")
    weights = _task_weights(tasks)
    names = sorted(weights)
    dialogues = []
    for index in range(n):
        rng = random.Random(f"conversations:{seed}:{index}")
        messages = []
        for _ in range(rng.randint(min_turns, max_turns)):
            task = rng.choices(names, weights=[weights[name] for name in names])[0]
            prompt, answer = TASKS[task](rng)
            messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        dialogues.append({"id": f"conversations-{seed}-{index:06d}", "task": task, "messages": messages})
    return dialogues


def _task_weights(tasks: Sequence[str] | Mapping[str, float] | None) -> dict[str, float]:
    if tasks is None:
        tasks = list(TASKS)
    weights = dict(tasks) if isinstance(tasks, Mapping) else {name: 1.0 for name in tasks}
    unknown = sorted(set(weights) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown instruction tasks {unknown}; known: {sorted(TASKS)}")
    if not weights or any(weight < 0 for weight in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"task weights must be non-negative with a positive sum, got {weights}")
    return weights


def write_jsonl(path: str | Path, dialogues: Sequence[Dialogue]) -> Path:
    """One JSON object per line, keys sorted, so the same dialogues give byte-identical files."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(_jsonl(dialogues))
    return target


def write_inputs(folder: str, seed: int = 0, n: int = 200) -> list[str]:
    """``n`` dialogues as one ``instructions.jsonl`` under ``folder`` (a path or URI), the demo's
    dialogue input; returns its URI."""
    target = resolve(folder).join("instructions.jsonl")
    with atomic_output(target) as stream:
        stream.write(_jsonl(make_instructions(n, seed)))
    return [target.uri]


def _jsonl(dialogues: Sequence[Dialogue]) -> bytes:
    lines = [json.dumps(dialogue, ensure_ascii=False, sort_keys=True, separators=(",", ":")) for dialogue in dialogues]
    return "".join(line + "\n" for line in lines).encode("utf-8")


def write_prompts(path: str | Path, n: int = 32, seed: int = 0) -> Path:
    """``n`` dialogues as a prompt set (`tasks.dialogues.prompts`): each less its final answer,
    which it keeps as ``answer``, for a chat model to answer and reward models to judge."""
    prompts = [{**dialogue, "messages": dialogue["messages"][:-1], "answer": final_answer(dialogue)}
               for dialogue in make_instructions(n, seed)]
    return write_jsonl(path, prompts)


def user_prompts(dialogue: Dialogue) -> list[str]:
    return [message["content"] for message in dialogue["messages"] if message["role"] == "user"]


def final_answer(dialogue: Dialogue) -> str:
    return [message["content"] for message in dialogue["messages"] if message["role"] == "assistant"][-1]


def split_heldout(dialogues: Sequence[Dialogue], share: float, seed: int) -> tuple[list[Dialogue], list[Dialogue]]:
    """(train, heldout): about ``share`` of the distinct prompts are held out, chosen by seed.

    A dialogue is held out when its final prompt is; it trains only when none of its prompts is,
    so a dialogue that asks a held-out prompt in an earlier round is in neither (the model would
    otherwise see that prompt's answer). Choosing by a hash of the prompt, not by position, keeps
    a prompt on the same side whatever other dialogues are split with it.
    """

    def held_out(prompt: str) -> bool:
        digest = hashlib.sha256(f"heldout:{seed}:{prompt}".encode()).digest()
        return int.from_bytes(digest[:8], "big") < share * 2**64

    train, heldout = [], []
    for dialogue in dialogues:
        prompts = user_prompts(dialogue)
        if held_out(prompts[-1]):
            heldout.append(dialogue)
        elif not any(held_out(prompt) for prompt in prompts):
            train.append(dialogue)
    return train, heldout


def check_answer(dialogue: Dialogue, generated_text: str) -> bool:
    """Whether the generation is exactly the final answer, surrounding whitespace aside."""
    return generated_text.strip() == final_answer(dialogue).strip()


def exact_match_rate(dialogues: Sequence[Dialogue], generations: Sequence[str]) -> float:
    if len(dialogues) != len(generations):
        raise ValueError(f"{len(dialogues)} dialogues but {len(generations)} generations")
    if not dialogues:
        raise ValueError("no dialogues to score")
    return sum(map(check_answer, dialogues, generations)) / len(dialogues)


def tokenizer_texts(n: int = 2000, seed: int = 0) -> list[str]:
    """Texts covering the task vocabulary and the chat tags, to train a small SentencePiece model on.

    Dialogues are laid out as Llama 2's chat template lays them out, so the pieces learnt around
    the tags are those that SFT rows contain; word lists of every form come first so that no
    vocabulary item depends on the sample drawing it.
    """
    texts = [" ".join(WORDS), " ".join(word.upper() for word in SAY_WORDS), " ".join(CHAT_TAGS)]
    texts.append(" ".join(str(number) for number in range(2 * MAX_ADDEND + 1)))
    for dialogue in make_instructions(n, seed, system_share=0.5, multi_turn_share=0.5):
        messages = dialogue["messages"]
        system = ""
        if messages[0]["role"] == "system":
            system = f"<<SYS>>\n{messages[0]['content']}\n<</SYS>>\n\n"
            messages = messages[1:]
        rounds = []
        for user, assistant in zip(messages[::2], messages[1::2]):
            rounds.append(f"[INST] {system}{user['content']} [/INST] {assistant['content']}")
            system = ""
        texts.append(" ".join(rounds))
    return texts
