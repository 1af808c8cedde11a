"""Chat metrics: a chat model's answers to a prompt set, judged by reward models (Llama 2, 3.4.1).

Each prompt (`tasks.dialogues.prompts`: a dialogue ending with a user turn) is encoded as Llama
2's chat format gives a prompt (`tasks.chat_format.encode_prompt`) and answered by the model,
greedily by default or by seeded sampling, until EOS or `max_new_tokens`. Every reward model
given by name (say "helpfulness" and "safety") scores each answer as it was trained to: the chat
encoding of the whole dialogue with the answer as its last turn (`encode_dialogue`), the reward
read at the answer's closing EOS. The answer is scored as text, decoded and encoded again within
the dialogue, as the reward model's training answers were encoded. The report gives each reward model's mean reward; `win_rate`
compares two models' answers prompt by prompt, the share where the first gets the higher reward,
ties counted half (so a model against itself, or a reward model that cannot tell, gives 0.5).

A reward model reads the chat model's token ids, so it must share its tokenizer: a reward model
whose embedding table differs in size from the chat model's is refused before anything is
generated (the sizes are what the weights tell; two tokenizers of one size are not told apart). A prompt that leaves no room for `max_new_tokens` and the answer's EOS within the chat
model's or a reward model's context is a problem with its file and line, refused or skipped by
`policy` as benchmark records are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from modeling.evaluate import fits_context, generate_in_batches
from modeling.generate import GREEDY, Sampling
from modeling.llama import Llama
from modeling.reward import RewardModel, score_sequences
from tasks.benchmarks import Policy, RecordProblem
from tasks.chat_format import encode_dialogue, encode_prompt
from tasks.dialogues.prompts import ChatPrompt
from tasks.tokenizer import Tokenizer


@dataclass
class ChatReport:
    """The prompts answered (in prompt-set order), their answers, and each reward model's rewards."""

    prompts: list[ChatPrompt]
    answers: list[str]
    rewards: dict[str, np.ndarray]  # reward model name -> (len(prompts),) rewards
    skipped: list[RecordProblem] = field(default_factory=list)

    def mean_rewards(self) -> dict[str, float]:
        return {name: float(scores.mean()) for name, scores in self.rewards.items()}

    def exact_match(self) -> float | None:
        """The share of the prompts with a right answer (`ChatPrompt.reference`) answered exactly so,
        surrounding whitespace aside; None when no prompt has one."""
        checked = [(p.reference, a) for p, a in zip(self.prompts, self.answers) if p.reference is not None]
        if not checked:
            return None
        return sum(reference.strip() == answer.strip() for reference, answer in checked) / len(checked)

    def rewards_by_prompt(self) -> dict[str, dict[str, float]]:
        """name -> {prompt's file:line -> reward}: how reports of several models line up their prompts."""
        return {name: {prompt.where: float(reward) for prompt, reward in zip(self.prompts, rewards)}
                for name, rewards in self.rewards.items()}

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON: prompts counted, mean rewards, and rewards and answers by prompt."""
        return {"prompts": len(self.prompts), "mean_rewards": self.mean_rewards(), "exact_match": self.exact_match(),
                "rewards": self.rewards_by_prompt(),
                "answers": {prompt.where: answer for prompt, answer in zip(self.prompts, self.answers)},
                "skipped": [str(problem) for problem in self.skipped]}


def check_vocabularies(model: Llama, reward_models: Mapping[str, RewardModel]) -> None:
    """Refuse any reward model that cannot read the chat model's ids as the same tokens."""
    for name, reward_model in reward_models.items():
        if reward_model.config.vocab_size != model.config.vocab_size:
            raise ValueError(f"reward model {name!r} has a vocabulary of {reward_model.config.vocab_size} tokens, the "
                             f"chat model {model.config.vocab_size}: a reward model must use the chat model's "
                             f"tokenizer to read its answers")


def prompts_that_fit(tokenizer: Tokenizer, prompts: Sequence[ChatPrompt], context: int, max_new_tokens: int,
                     policy: Policy) -> tuple[list[ChatPrompt], list[list[int]], list[RecordProblem]]:
    """The prompts with room for `max_new_tokens` and the EOS that closes a scored answer, their
    ids, and the problems of those skipped (policy `refuse` raises on the first)."""
    problems: list[RecordProblem] = []
    kept, ids = [], []
    for prompt in prompts:
        prompt_ids = encode_prompt(tokenizer, prompt.as_dicts())
        if fits_context(len(prompt_ids), max_new_tokens + 2, context, prompt.where, policy, problems):
            kept.append(prompt)
            ids.append(prompt_ids)
    return kept, ids, problems


def answer_prompts(model: Llama, tokenizer: Tokenizer, prompt_ids: Sequence[Sequence[int]], *, max_new_tokens: int,
                   sampling: Sampling = GREEDY, seed: int | None = None, batch_size: int = 16) -> list[list[int]]:
    """Each prompt's answer ids, ending with EOS unless `max_new_tokens` came first."""
    return generate_in_batches(model, tokenizer, prompt_ids, batch_size=batch_size, max_new_tokens=max_new_tokens,
                               stop_tokens=[tokenizer.eos_id], sampling=sampling, seed=seed)


def answer_text(tokenizer: Tokenizer, answer_ids: Sequence[int]) -> str:
    return tokenizer.decode([i for i in answer_ids if i != tokenizer.eos_id])


@torch.inference_mode()
def score_answers(reward_model: RewardModel, tokenizer: Tokenizer, prompts: Sequence[ChatPrompt],
                  answers: Sequence[str], *, batch_size: int = 16) -> np.ndarray:
    """(len(prompts),) rewards of each prompt's dialogue closed by its answer, read at the answer's EOS."""
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    sequences = [encode_dialogue(tokenizer, [*prompt.as_dicts(), {"role": "assistant", "content": answer}]).ids
                 for prompt, answer in zip(prompts, answers)]
    # Batches of like lengths pad little; each reward is put back at its prompt's place.
    order = sorted(range(len(sequences)), key=lambda n: len(sequences[n]))
    rewards = np.zeros(len(sequences), dtype=np.float64)
    reward_model.eval()
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        scores = score_sequences(reward_model, [sequences[n] for n in batch], pad_id=tokenizer.eos_id)
        rewards[batch] = scores.double().cpu().numpy()
    return rewards


def evaluate_chat(model: Llama, tokenizer: Tokenizer, prompts: Sequence[ChatPrompt],
                  reward_models: Mapping[str, RewardModel], *, max_new_tokens: int = 128,
                  sampling: Sampling = GREEDY, seed: int | None = None, batch_size: int = 16,
                  policy: Policy = "refuse") -> ChatReport:
    """The model's answer to every prompt that fits, and each reward model's rewards of them."""
    if not reward_models:
        raise ValueError("chat metrics need at least one reward model")
    check_vocabularies(model, reward_models)
    context = min(model.config.max_seq_len, *(r.config.max_seq_len for r in reward_models.values()))
    kept, ids, problems = prompts_that_fit(tokenizer, prompts, context, max_new_tokens, policy)
    if not kept:
        raise ValueError(f"no prompt leaves room for {max_new_tokens} new tokens within a context of {context}")
    answers = [answer_text(tokenizer, answer) for answer in
               answer_prompts(model, tokenizer, ids, max_new_tokens=max_new_tokens, sampling=sampling, seed=seed,
                              batch_size=batch_size)]
    rewards = {name: score_answers(reward_model, tokenizer, kept, answers, batch_size=batch_size)
               for name, reward_model in reward_models.items()}
    return ChatReport(kept, answers, rewards, problems)


def win_rate(a_scores: Sequence[float] | np.ndarray, b_scores: Sequence[float] | np.ndarray) -> float:
    """The share of prompts where answer a gets the higher reward than answer b, a tie counting half."""
    a, b = np.asarray(a_scores, dtype=np.float64), np.asarray(b_scores, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"win_rate compares the rewards of the same prompts: {a.shape} and {b.shape} rewards")
    if not a.size:
        raise ValueError("win_rate needs at least one prompt")
    return float(((a > b).sum() + 0.5 * (a == b).sum()) / a.size)


def win_rate_by_prompt(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    """`win_rate` on the prompts (by file:line) both were scored on; a model may have skipped some."""
    shared = [where for where in a if where in b]
    if not shared:
        raise ValueError("the two reports share no prompt to compare")
    return win_rate([a[where] for where in shared], [b[where] for where in shared])
