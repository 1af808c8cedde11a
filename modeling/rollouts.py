"""PPO rollouts: sampled answers scored by every role, made into one iteration's training stage.

A PPO iteration (`modeling.ppo_training` says how a flow drives them) starts from its samples,
each a prompt (`tasks.dialogues.prompts.ChatPrompt`), the ids the policy was prompted with, the
answer ids it drew (ending with EOS unless the answer ran out of tokens) and the prompt's unsafe
tag. They come from a sampling stage; this module depends on none. Each role scores them with a
model-level function that a Ray actor can run on its own model:

- `answer_logprobs_of(policy, ...)`: per answer token, log pi(a_t) under the sampling
  distribution (logits / temperature): the old log-probs of the iteration's policy, and with the
  frozen reference model (the round's starting model) the reference log-probs;
- `answer_values(value_model, ...)`: per answer token, the value model's estimate at the state
  that predicts it (`modeling.reward.RewardModel` read at every position);
- `answer_scores(reward_model, ...)`: one raw score per answer from the helpfulness or safety
  reward model, read at the answer's closing EOS in the chat encoding of the whole dialogue, as
  `modeling.chat_eval.score_answers` does (which it calls).

`assemble_rollouts` turns these into the PPO targets (`modeling.ppo`): the gated score and which
model gave it, its whitened value, per-token KL and rewards, GAE advantages (whitened over the
batch's answer tokens) and returns. `score_rollouts` runs all of it in one process.

`write_rollouts` writes iteration i's stage `<rollouts root>/iteration-NNNN/`: `part-00000.parquet`
(one row per sample, in sample order), `_manifest.json` (the iteration's mean rewards: helpful,
safety, gated; KL; response length; the share gated to safety; the bounds) and `_SUCCESS`. A
rollout whose mean KL to the reference or mean answer length exceeds its bound is refused with
`RolloutBlewUp`: the manifest is written, for the figures, but the stage is not marked finished,
so no training reads it. In training, sequences are laid out as `answer_layout` gives (prompt and
answer right-padded, positions predicting answer tokens marked), the same in scoring and training.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor

from modeling.chat_eval import answer_text, score_answers
from modeling.llama import IGNORE_INDEX, Llama
from modeling.ppo import (
    SAFETY_THRESHOLD,
    answer_logprobs,
    gated_scores,
    generalized_advantages,
    kl_estimate,
    token_rewards,
    whiten,
)
from modeling.reward import RewardModel
from tasks.dialogues.prompts import ChatPrompt
from tasks.executor import WHOLE_STAGE, fingerprint, mark, read_marker
from tasks.shards import MANIFEST
from tasks.storage import Location, atomic_output, resolve, write_json_atomic
from tasks.tokenizer import Tokenizer

PART = "part-00000.parquet"
PER_TOKEN = ("old_logprobs", "ref_logprobs", "values", "rewards", "advantages", "returns")


class RolloutBlewUp(RuntimeError):
    """An iteration's mean KL or answer length beyond its bound: the run stops there."""


@dataclass(frozen=True)
class RolloutSample:
    prompt: ChatPrompt  # the dialogue the reward models read the answer within
    prompt_ids: Sequence[int]  # what the policy was prompted with (tasks.chat_format.encode_prompt)
    answer_ids: Sequence[int]  # what it drew
    unsafe: bool = False  # the prompt is tagged unsafe: the safety reward model scores it

    def __post_init__(self) -> None:
        if not self.prompt_ids or not self.answer_ids:
            raise ValueError(f"{self.prompt.where}: a sample needs prompt ids and at least one answer token")


@dataclass(frozen=True)
class RolloutSettings:
    """What turns scores into PPO targets, and the bounds an iteration must stay within."""

    beta: float = 0.01  # KL penalty (Llama 2: 0.01 for 7B/13B, 0.005 for 34B/70B)
    gamma: float = 1.0
    lam: float = 0.95
    temperature: float = 1.0  # the sampling temperature: log-probs are of logits / temperature
    safety_threshold: float = SAFETY_THRESHOLD
    max_mean_kl: float = 30.0  # nats per answer, summed over its tokens, averaged over the iteration
    max_mean_length: float = 1024.0  # answer tokens, averaged over the iteration

    def __post_init__(self) -> None:
        for name in ("beta", "gamma", "lam", "temperature", "safety_threshold", "max_mean_kl", "max_mean_length"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"rollout setting {name} must be a finite number >= 0, got {value}")
        if not (self.temperature > 0 and self.gamma <= 1 and self.lam <= 1 and 0 < self.safety_threshold < 1):
            raise ValueError(f"rollout settings out of range: temperature > 0, gamma and lam <= 1, "
                             f"0 < safety_threshold < 1: {self}")


# ---------------------------------------------------------------------------------- the layout


@dataclass
class AnswerLayout:
    """Prompt + answer sequences right-padded: inputs are each sequence but its last token, targets
    the next ids at positions that predict an answer token (IGNORE_INDEX elsewhere)."""

    inputs: Tensor  # (B, T)
    targets: Tensor  # (B, T)
    starts: list[int]  # per row, the position predicting its first answer token (prompt length - 1)
    lengths: list[int]  # per row, its answer's tokens

    @property
    def mask(self) -> Tensor:
        return self.targets != IGNORE_INDEX

    def spread(self, per_answer: Sequence[Sequence[float]], dtype: torch.dtype = torch.float32) -> Tensor:
        """Per-answer-token values (one list per row) placed at their positions in (B, T), 0 elsewhere."""
        out = torch.zeros(self.inputs.shape, dtype=dtype)
        for row, (start, values) in enumerate(zip(self.starts, per_answer)):
            out[row, start:start + len(values)] = torch.as_tensor(np.asarray(values), dtype=dtype)
        return out.to(self.inputs.device)

    def gather(self, tensor: Tensor) -> list[np.ndarray]:
        """The inverse of `spread`: each row's values at its answer positions."""
        values = tensor.detach().float().cpu().numpy()
        return [values[row, start:start + length] for row, (start, length) in enumerate(zip(self.starts, self.lengths))]


def answer_layout(prompt_ids: Sequence[Sequence[int]], answer_ids: Sequence[Sequence[int]],
                  device: torch.device | str = "cpu", pad_id: int = 0) -> AnswerLayout:
    """Causal attention never lets a real token see the padding after it, so pad_id is never read."""
    sequences = [list(p) + list(a) for p, a in zip(prompt_ids, answer_ids)]
    T = max(len(s) for s in sequences) - 1
    inputs = torch.full((len(sequences), T), pad_id, dtype=torch.long)
    targets = torch.full((len(sequences), T), IGNORE_INDEX, dtype=torch.long)
    starts, lengths = [], []
    for row, (prompt, answer, sequence) in enumerate(zip(prompt_ids, answer_ids, sequences)):
        inputs[row, :len(sequence) - 1] = torch.tensor(sequence[:-1])
        start = len(prompt) - 1
        targets[row, start:start + len(answer)] = torch.tensor(list(answer))
        starts.append(start)
        lengths.append(len(answer))
    return AnswerLayout(inputs.to(device), targets.to(device), starts, lengths)


# ---------------------------------------------------------------------------------- each role's scores


def _batches(samples: Sequence[RolloutSample], batch_size: int):
    for start in range(0, len(samples), batch_size):
        yield samples[start:start + batch_size]


@torch.inference_mode()
def answer_logprobs_of(model: Llama, samples: Sequence[RolloutSample], *, temperature: float = 1.0,
                       batch_size: int = 16) -> list[np.ndarray]:
    """Per sample, (answer length,) log-probs of its answer tokens under `model` at `temperature`."""
    model.eval()
    device = model.tok_embeddings.weight.device
    out: list[np.ndarray] = []
    for batch in _batches(samples, batch_size):
        layout = answer_layout([s.prompt_ids for s in batch], [s.answer_ids for s in batch], device)
        logits = model(layout.inputs).logits
        out += layout.gather(answer_logprobs(logits, layout.targets, temperature))
    return out


@torch.inference_mode()
def answer_values(value_model: RewardModel, samples: Sequence[RolloutSample], *, batch_size: int = 16) -> list[np.ndarray]:
    """Per sample, (answer length,) value estimates at the positions predicting its answer tokens."""
    value_model.eval()
    device = value_model.score.weight.device
    out: list[np.ndarray] = []
    for batch in _batches(samples, batch_size):
        layout = answer_layout([s.prompt_ids for s in batch], [s.answer_ids for s in batch], device)
        out += layout.gather(values_at_every_position(value_model, layout.inputs))
    return out


def values_at_every_position(value_model: RewardModel, inputs: Tensor) -> Tensor:
    """(B, T) the value model's score read at every position of the (B, T) inputs."""
    B, T = inputs.shape
    positions = torch.arange(T, device=inputs.device).expand(B, T)
    return value_model(inputs, positions)


def answer_scores(reward_model: RewardModel, tokenizer: Tokenizer, samples: Sequence[RolloutSample], *,
                  batch_size: int = 16) -> np.ndarray:
    """(len(samples),) raw scores of each answer (its text, in the chat encoding of its dialogue)."""
    answers = [answer_text(tokenizer, s.answer_ids) for s in samples]
    return score_answers(reward_model, tokenizer, [s.prompt for s in samples], answers, batch_size=batch_size)


# ---------------------------------------------------------------------------------- PPO's targets


@dataclass
class Rollouts:
    """An iteration's samples and, per sample, its scores and per-answer-token PPO targets."""

    samples: list[RolloutSample]
    helpful: np.ndarray  # (N,) raw helpfulness scores
    safety: np.ndarray  # (N,) raw safety scores
    gated: np.ndarray  # (N,) logit(R_c)
    used_safety: np.ndarray  # (N,) bool
    score: np.ndarray  # (N,) whiten(logit(R_c)) over the iteration
    per_token: dict[str, list[np.ndarray]]  # PER_TOKEN name -> per sample (answer length,)

    @property
    def kl(self) -> np.ndarray:
        """(N,) each answer's KL to the reference: its per-token estimates summed."""
        return np.array([float(np.sum(lp.astype(np.float64) - ref)) for lp, ref in
                         zip(self.per_token["old_logprobs"], self.per_token["ref_logprobs"])])

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(s.answer_ids) for s in self.samples])

    def summary(self) -> dict[str, float]:
        lengths = self.lengths
        return {"samples": len(self.samples), "reward_helpful": float(self.helpful.mean()),
                "reward_safety": None if np.isnan(self.safety).all() else float(self.safety.mean()),
                "reward_gated": float(self.gated.mean()),
                "safety_share": float(self.used_safety.mean()), "kl": float(self.kl.mean()),
                "kl_per_token": float(self.kl.sum() / lengths.sum()), "response_length": float(lengths.mean()),
                "max_sequence_tokens": int(max(len(s.prompt_ids) + len(s.answer_ids) for s in self.samples))}

    def table(self) -> pa.Table:
        columns: dict[str, Any] = {
            "where": [s.prompt.where for s in self.samples], "unsafe": [bool(s.unsafe) for s in self.samples],
            "prompt_ids": pa.array([list(s.prompt_ids) for s in self.samples], pa.list_(pa.int32())),
            "answer_ids": pa.array([list(s.answer_ids) for s in self.samples], pa.list_(pa.int32())),
            "helpful": self.helpful, "safety": self.safety, "gated": self.gated, "used_safety": self.used_safety,
            "score": self.score, "kl": self.kl, "length": self.lengths.astype(np.int32)}
        for name in PER_TOKEN:
            columns[name] = pa.array([v.astype(np.float32) for v in self.per_token[name]], pa.list_(pa.float32()))
        return pa.table(columns)


def padded(per_sample: Sequence[Sequence[float]]) -> tuple[Tensor, Tensor]:
    """Per-sample lists as (N, L) float64, right-padded with 0, and the (N, L) mask of their entries."""
    width = max(len(v) for v in per_sample)
    values = torch.zeros(len(per_sample), width, dtype=torch.float64)
    mask = torch.zeros(len(per_sample), width, dtype=torch.bool)
    for row, v in enumerate(per_sample):
        values[row, :len(v)] = torch.as_tensor(np.asarray(v, dtype=np.float64))
        mask[row, :len(v)] = True
    return values, mask


def assemble_rollouts(samples: Sequence[RolloutSample], old_logprobs: Sequence[np.ndarray], ref_logprobs: Sequence[np.ndarray],
                      values: Sequence[np.ndarray], helpful: np.ndarray, safety: np.ndarray | None,
                      settings: RolloutSettings) -> Rollouts:
    """PPO's targets from each role's scores (all in sample order), computed in float64. Without a
    safety model (`safety` None) R_c is the helpfulness score everywhere, and a prompt tagged unsafe,
    which only the safety model may judge, is refused."""
    lengths = [len(s.answer_ids) for s in samples]
    for name, arrays in (("old_logprobs", old_logprobs), ("ref_logprobs", ref_logprobs), ("values", values)):
        got = [len(a) for a in arrays]
        if got != lengths:
            raise ValueError(f"{name}: one value per answer token of each sample is needed; lengths {got[:8]} "
                             f"against answers of {lengths[:8]} tokens")
    helpfulness_only = safety is None
    if helpfulness_only:
        unsafe_prompts = [s.prompt.where for s in samples if s.unsafe]
        if unsafe_prompts:
            raise ValueError(f"{len(unsafe_prompts)} prompts are tagged unsafe (e.g. {unsafe_prompts[0]}) but there is "
                             f"no safety reward model to judge their answers")
        safety = np.full(len(samples), np.nan)
    if len(helpful) != len(samples) or len(safety) != len(samples):
        raise ValueError(f"{len(samples)} samples but {len(helpful)} helpfulness and {len(safety)} safety scores")
    logprobs, mask = padded(old_logprobs)
    reference, _ = padded(ref_logprobs)
    value, _ = padded(values)
    unsafe = torch.tensor([bool(s.unsafe) for s in samples])
    if helpfulness_only:
        gated, used_safety = torch.as_tensor(np.asarray(helpful, np.float64)), torch.zeros(len(samples), dtype=torch.bool)
    else:
        gated, used_safety = gated_scores(torch.as_tensor(np.asarray(helpful, np.float64)),
                                          torch.as_tensor(np.asarray(safety, np.float64)), unsafe,
                                          settings.safety_threshold)
    score = whiten(gated)
    kl = kl_estimate(logprobs, reference, mask)
    rewards = token_rewards(kl, score, mask, settings.beta)
    advantages, returns = generalized_advantages(rewards, value, mask, gamma=settings.gamma, lam=settings.lam)
    advantages = whiten(advantages, mask)

    def rows(tensor: Tensor) -> list[np.ndarray]:
        return [tensor[row, :n].numpy().astype(np.float32) for row, n in enumerate(lengths)]

    per_token = {"old_logprobs": [np.asarray(a, np.float32) for a in old_logprobs],
                 "ref_logprobs": [np.asarray(a, np.float32) for a in ref_logprobs],
                 "values": [np.asarray(a, np.float32) for a in values],
                 "rewards": rows(rewards), "advantages": rows(advantages), "returns": rows(returns)}
    return Rollouts(list(samples), np.asarray(helpful, np.float64), np.asarray(safety, np.float64), gated.numpy(),
                    used_safety.numpy(), score.numpy(), per_token)


ROLES = ("policy", "reference", "value", "helpfulness", "safety")


def score_role(samples: Sequence[RolloutSample], role: str, folder: str, *, temperature: float = 1.0,
               batch_size: int = 16, device: str = "cpu") -> list[np.ndarray] | np.ndarray:
    """One role's scores of the samples, its model loaded from `folder` onto `device` (what a Ray
    task of the flow runs for each role at once): `policy` and `reference` answer log-probs (a
    language model folder), `value` values and `helpfulness` / `safety` scores (a reward model folder)."""
    from modeling.model_folders import load_model
    from modeling.reward import load_reward_hf
    from modeling.sft import base_model_folder

    if role in ("policy", "reference"):
        return answer_logprobs_of(load_model(folder, device=device), samples, temperature=temperature,
                                  batch_size=batch_size)
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; the roles are {', '.join(ROLES)}")
    export = base_model_folder(folder)
    model = load_reward_hf(export, device=device)
    if role == "value":
        return answer_values(model, samples, batch_size=batch_size)
    return answer_scores(model, Tokenizer.load(export / "tokenizer.model"), samples, batch_size=batch_size)


def score_rollouts(samples: Sequence[RolloutSample], *, policy: Llama, reference: Llama, value_model: RewardModel,
                   helpful_model: RewardModel, safety_model: RewardModel, tokenizer: Tokenizer,
                   settings: RolloutSettings, batch_size: int = 16) -> Rollouts:
    """Every role's scores in this process, then PPO's targets."""
    old = answer_logprobs_of(policy, samples, temperature=settings.temperature, batch_size=batch_size)
    ref = answer_logprobs_of(reference, samples, temperature=settings.temperature, batch_size=batch_size)
    values = answer_values(value_model, samples, batch_size=batch_size)
    helpful = answer_scores(helpful_model, tokenizer, samples, batch_size=batch_size)
    safety = answer_scores(safety_model, tokenizer, samples, batch_size=batch_size)
    return assemble_rollouts(samples, old, ref, values, helpful, safety, settings)


# ---------------------------------------------------------------------------------- the stage


def iteration_stage(root: str, iteration: int) -> Location:
    if not 0 <= iteration <= 9999:
        raise ValueError(f"PPO iteration out of range 0..9999: {iteration}")
    return resolve(root).join(f"iteration-{iteration:04d}")


def write_rollouts(root: str, iteration: int, rollouts: Rollouts, settings: RolloutSettings,
                   provenance: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Iteration `iteration`'s stage under `root` (any earlier attempt's files replaced); returns its
    manifest. Raises RolloutBlewUp, the stage left unmarked, when the mean KL or length is out of bounds.
    provenance: what the flow wants recorded (the policy and reference folders, the sampling stage)."""
    stage = iteration_stage(root, iteration)
    stage.delete()
    table = rollouts.table()
    with atomic_output(stage.join(PART)) as stream:
        pq.write_table(table, stream, compression="zstd")
    summary = rollouts.summary()
    problems = []
    if summary["kl"] > settings.max_mean_kl:
        problems.append(f"the mean KL to the reference, {summary['kl']:.4g} nats an answer, exceeds its bound "
                        f"{settings.max_mean_kl:g} (max_mean_kl)")
    if summary["response_length"] > settings.max_mean_length:
        problems.append(f"the mean answer length, {summary['response_length']:.4g} tokens, exceeds its bound "
                        f"{settings.max_mean_length:g} (max_mean_length)")
    manifest = {"iteration": iteration, **summary, "settings": asdict(settings), "provenance": dict(provenance or {}),
                "within_bounds": not problems, "problems": problems}
    write_json_atomic(stage.join(MANIFEST), manifest)
    if problems:
        raise RolloutBlewUp(f"PPO iteration {iteration} ({stage.uri}): " + "; and ".join(problems) +
                            ". The policy has drifted from the reference: stopping here. Lower the lr, raise beta or "
                            "restart from an earlier iteration's checkpoint")
    mark(stage, {WHOLE_STAGE: fingerprint(manifest)})
    return manifest


def finished_rollouts(root: str, iteration: int) -> dict[str, Any] | None:
    """The manifest of iteration `iteration`'s finished stage, None when there is none."""
    stage = iteration_stage(root, iteration)
    if WHOLE_STAGE not in read_marker(stage).fingerprints:
        return None
    return stage.join(MANIFEST).read_json()


def read_rollouts(root: str, iteration: int) -> pa.Table:
    """Iteration `iteration`'s rows (Rollouts.table's columns), or a clear error when it is not finished."""
    if finished_rollouts(root, iteration) is None:
        stage = iteration_stage(root, iteration)
        raise FileNotFoundError(f"{stage.uri}: no finished rollouts of PPO iteration {iteration}: write them "
                                f"(modeling.rollouts.write_rollouts) before training on them")
    with iteration_stage(root, iteration).join(PART).open_random_access() as f:
        return pq.read_table(f)
