"""Ghost Attention with a model: sampling its training dialogues, and the turn-by-turn metric.

Both answer dialogues turn after turn (:func:`answer_turn_by_turn`): the user turns come from
the given dialogues (their own answers and system message are not used), the model's answers
are kept in the context, every answer is decoded to text and enters the next prompt as text, as
a chat user would see it. All dialogues at a turn are answered in batches (`modeling.generate`,
left padding, seeded sampling; turn t samples with seed ``seed + t * SEED_STRIDE``), until EOS or
``max_new_tokens``. A turn is answered only if its prompt (`tasks.chat_format.encode_prompt`)
and ``max_new_tokens`` fit the model's context; from the first turn that does not, the dialogue
stops, counted ``out_of_context``, never as a failure.

- :func:`turn_adherence`, the paper's measure: the instruction once, as the system message; at
  each turn t = 1..max_turns the share of the dialogues answered at t whose answers 1..t all
  follow the constraint (`tasks.dialogues.constraints`), with how many were answered at t (a
  dialogue with fewer user turns, or out of context, is not measured there).
- :func:`sample_gatt_dialogues`: the latest model answers with the instruction in every user turn
  (`tasks.dialogues.ghost_attention.with_instruction_every_turn`); the answered turns become
  training dialogues (`build_gatt_dialogues`: instruction in the system message only, the loss
  on the last answer). A dialogue whose first turn does not fit is dropped
  (``prompt_exceeds_context``); one stopped later keeps the turns answered. An answer cut at
  ``max_new_tokens`` is kept as cut (its training record closes it with EOS). The default
  sampling (temperature 0.7, top-p 0.9) is ours: the paper does not give GAtt's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modeling.chat_eval import answer_text
from modeling.evaluate import generate_in_batches
from modeling.generate import GREEDY, Sampling
from modeling.llama import Llama
from tasks.chat_format import encode_prompt
from tasks.dialogues.constraints import Constraint
from tasks.dialogues.ghost_attention import (
    GattDialogues,
    SampledDialogue,
    build_gatt_dialogues,
    with_instruction_every_turn,
)
from tasks.tokenizer import Tokenizer

SEED_STRIDE = 1_000_003  # turns' seeds apart by more than any batch offset
OUT_OF_CONTEXT = "prompt_exceeds_context"

DialogueInput = Mapping[str, Any] | Sequence[Mapping[str, str]]


@dataclass
class AnsweredDialogue:
    """One dialogue as the model answered it: the user turns asked and the answers given, and
    ``stopped``: ``ended`` (no user turn left or ``max_turns`` reached) or ``out_of_context``."""

    id: str
    constraint: Constraint
    users: list[str]
    answers: list[str] = field(default_factory=list)
    stopped: str = "ended"

    def turns(self) -> list[dict[str, str]]:
        """The answered turns, plain: user and assistant messages alternating."""
        turns = []
        for user, answer in zip(self.users, self.answers):
            turns += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        return turns

    def messages(self, instruct_every_turn: bool) -> list[dict[str, str]]:
        """The answered turns, the instruction in every user turn or once as the system message."""
        return _framed(self.turns(), self.constraint, instruct_every_turn)


def answer_turn_by_turn(model: Llama, tokenizer: Tokenizer, dialogues: Sequence[DialogueInput],
                        constraints: Constraint | Sequence[Constraint], *, instruct_every_turn: bool,
                        max_turns: int = 20, max_new_tokens: int = 32, sampling: Sampling = GREEDY,
                        seed: int = 0, batch_size: int = 16) -> list[AnsweredDialogue]:
    """Each dialogue answered turn after turn, at most ``max_turns`` turns, in input order."""
    if max_turns < 1:
        raise ValueError(f"max_turns must be >= 1, got {max_turns}")
    answered = [AnsweredDialogue(dialogue_id, constraint, users[:max_turns])
                for dialogue_id, users, constraint in _inputs(dialogues, constraints)]
    context = model.config.max_seq_len
    was_training = model.training
    model.eval()
    for turn in range(max_turns):
        asking, prompts = [], []
        for dialogue in answered:
            if dialogue.stopped != "ended" or turn >= len(dialogue.users):
                continue
            asked = [*dialogue.turns(), {"role": "user", "content": dialogue.users[turn]}]
            prompt = encode_prompt(tokenizer, _framed(asked, dialogue.constraint, instruct_every_turn))
            if len(prompt) + max_new_tokens > context:
                dialogue.stopped = "out_of_context"
                continue
            asking.append(dialogue)
            prompts.append(prompt)
        if not asking:
            break
        outputs = generate_in_batches(model, tokenizer, prompts, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                      stop_tokens=[tokenizer.eos_id], sampling=sampling, seed=seed + turn * SEED_STRIDE)
        for dialogue, output in zip(asking, outputs):
            dialogue.answers.append(answer_text(tokenizer, output))
    model.train(was_training)
    return answered


@dataclass
class TurnAdherence:
    """Per turn t = 1..max_turns (index t - 1): dialogues answered at t (``measured``), those
    whose answers 1..t all follow (``still_following``), those whose answer t follows
    (``answer_following``), and those stopped at t for want of context (``out_of_context``)."""

    dialogues: int
    measured: list[int]
    still_following: list[int]
    answer_following: list[int]
    out_of_context: list[int]
    answered: list[AnsweredDialogue] = field(repr=False, default_factory=list)

    def shares(self) -> list[float | None]:
        """The share still following at each turn; None where no dialogue was measured."""
        return [following / measured if measured else None
                for following, measured in zip(self.still_following, self.measured)]

    def as_dict(self) -> dict[str, Any]:
        return {"dialogues": self.dialogues, "turns": list(range(1, len(self.measured) + 1)),
                "share_still_following": self.shares(), "measured": self.measured,
                "still_following": self.still_following, "answer_following": self.answer_following,
                "out_of_context": self.out_of_context}


def turn_adherence(model: Llama, tokenizer: Tokenizer, dialogues: Sequence[DialogueInput],
                   constraints: Constraint | Sequence[Constraint], max_turns: int = 20, *, max_new_tokens: int = 32,
                   sampling: Sampling = GREEDY, seed: int = 0, batch_size: int = 16) -> TurnAdherence:
    """How many dialogues still follow their constraint, given once as the system message, at each turn."""
    answered = answer_turn_by_turn(model, tokenizer, dialogues, constraints, instruct_every_turn=False,
                                   max_turns=max_turns, max_new_tokens=max_new_tokens, sampling=sampling, seed=seed,
                                   batch_size=batch_size)
    measured, still, each, out = ([0] * max_turns for _ in range(4))
    for dialogue in answered:
        following = True
        for turn, answer in enumerate(dialogue.answers):
            follows = dialogue.constraint.follows(answer)
            following &= follows
            measured[turn] += 1
            still[turn] += following
            each[turn] += follows
        if dialogue.stopped == "out_of_context":
            out[len(dialogue.answers)] += 1
    return TurnAdherence(len(answered), measured, still, each, out, answered)


def sample_gatt_dialogues(model: Llama, tokenizer: Tokenizer, dialogues: Sequence[DialogueInput],
                          constraints: Constraint | Sequence[Constraint], seed: int, *, max_turns: int = 20,
                          max_new_tokens: int = 32, sampling: Sampling = Sampling(temperature=0.7, top_p=0.9),
                          batch_size: int = 16, every_prefix: bool = False,
                          require_following: bool = False) -> GattDialogues:
    """Ghost Attention's training records from the model's answers with the instruction in every
    user turn; every dialogue kept or dropped with its reason (:class:`GattDialogues`)."""
    answered = answer_turn_by_turn(model, tokenizer, dialogues, constraints, instruct_every_turn=True,
                                   max_turns=max_turns, max_new_tokens=max_new_tokens, sampling=sampling, seed=seed,
                                   batch_size=batch_size)
    sampled = [SampledDialogue(d.id, tuple(d.messages(instruct_every_turn=True)), d.constraint)
               for d in answered if d.answers]
    built = build_gatt_dialogues(sampled, every_prefix=every_prefix, require_following=require_following)
    unanswered = {d.id: OUT_OF_CONTEXT for d in answered if not d.answers}
    built.dropped = dict(sorted({**built.dropped, **unanswered}.items()))
    return built


def _framed(turns: list[dict[str, str]], constraint: Constraint, instruct_every_turn: bool) -> list[dict[str, str]]:
    if instruct_every_turn:
        return with_instruction_every_turn(turns, constraint)
    return [{"role": "system", "content": constraint.text}, *turns]


def _inputs(dialogues: Sequence[DialogueInput], constraints: Constraint | Sequence[Constraint]
            ) -> list[tuple[str, list[str], Constraint]]:
    if isinstance(constraints, Constraint):
        constraints = [constraints] * len(dialogues)
    if len(constraints) != len(dialogues):
        raise ValueError(f"{len(dialogues)} dialogues but {len(constraints)} constraints")
    inputs = []
    for n, (dialogue, constraint) in enumerate(zip(dialogues, constraints)):
        messages = dialogue["messages"] if isinstance(dialogue, Mapping) else dialogue
        dialogue_id = str(dialogue.get("id", n)) if isinstance(dialogue, Mapping) else str(n)
        users = [m["content"] for m in messages if m["role"] == "user"]
        if not users:
            raise ValueError(f"dialogue {dialogue_id} has no user turn to answer")
        inputs.append((dialogue_id, users, constraint))
    return inputs


# ---------------------------------------------------------------------------------- as stages

GATT_FILE = "gatt.jsonl"  # the training records, in the `messages` form dialogue ingest reads
GATT_REPORT = "gatt.json"


def synthetic_conversations(n: int, seed: int, *, kinds: Sequence[str], min_turns: int,
                            max_turns: int) -> tuple[list[dict[str, Any]], list[Constraint]]:
    """`n` synthetic many-turn conversations (`tasks.synthetic.instructions.make_conversations`) and
    a constraint for each, drawn from `kinds`; the same for a seed."""
    import random

    from tasks.dialogues.constraints import draw_constraint
    from tasks.synthetic.instructions import make_conversations

    conversations = make_conversations(n, seed, min_turns=min_turns, max_turns=max_turns)
    rng = random.Random(f"gatt-constraints:{seed}")
    return conversations, [draw_constraint(rng, kinds) for _ in conversations]


def gatt_stage(model_folder: str, out_dir: str, *, dialogues: int, seed: int, kinds: Sequence[str],
               min_turns: int, max_turns: int, max_new_tokens: int, every_prefix: bool = True,
               require_following: bool = False, batch_size: int = 16) -> dict[str, Any]:
    """Ghost Attention's training records sampled from the model in `model_folder` (the latest model)
    on synthetic conversations: `GATT_FILE` and the counts in `GATT_REPORT` (every conversation kept
    or dropped with its reason). A folder stage made in one go (`tasks.executor.run_once`), redone
    only when the model's files or a setting changed."""
    from modeling.model_folders import folder_checkpoints, model_digest
    from modeling.sft import base_model_folder
    from tasks.dialogues.ghost_attention import write_gatt_jsonl
    from tasks.executor import fingerprint, run_once
    from tasks.storage import resolve, write_json_atomic

    settings = {"dialogues": dialogues, "seed": seed, "kinds": list(kinds), "min_turns": min_turns,
                "max_turns": max_turns, "max_new_tokens": max_new_tokens, "every_prefix": every_prefix,
                "require_following": require_following}
    folder = resolve(out_dir)

    def work() -> dict[str, Any]:
        model, tokenizer = folder_checkpoints(model_folder)[0].load()
        conversations, constraints = synthetic_conversations(dialogues, seed, kinds=kinds, min_turns=min_turns,
                                                             max_turns=max_turns)
        built = sample_gatt_dialogues(model, tokenizer, conversations, constraints, seed, max_turns=max_turns,
                                      max_new_tokens=max_new_tokens, batch_size=batch_size,
                                      every_prefix=every_prefix, require_following=require_following)
        write_gatt_jsonl(folder.join(GATT_FILE).path, built.records)
        report = {**built.counts(), "settings": settings, "model": model_folder,
                  "constraints": sorted({c.id for c in constraints})}
        write_json_atomic(folder.join(GATT_REPORT), report)
        return built.counts()

    expected = fingerprint({"model": model_digest(base_model_folder(model_folder)), **settings})
    run_once(folder, expected, work)
    return folder.join(GATT_REPORT).read_json()


def adherence_of(model_folder: str, *, dialogues: int, seed: int, kinds: Sequence[str], min_turns: int,
                 max_turns: int, max_new_tokens: int, batch_size: int = 16) -> dict[str, Any]:
    """`turn_adherence` of the model in `model_folder` on held-out synthetic conversations (greedy)."""
    from modeling.model_folders import folder_checkpoints

    model, tokenizer = folder_checkpoints(model_folder)[0].load()
    conversations, constraints = synthetic_conversations(dialogues, seed, kinds=kinds, min_turns=min_turns,
                                                         max_turns=max_turns)
    return turn_adherence(model, tokenizer, conversations, constraints, max_turns=max_turns,
                          max_new_tokens=max_new_tokens, batch_size=batch_size).as_dict()
