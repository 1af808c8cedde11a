"""PPO's arithmetic for Llama 2-Chat (section 3.2.3), each step a pure function of tensors.

Per-token tensors are (B, L): a batch of answers laid out along L with a boolean `mask` marking
the answer's (response) tokens; everything outside the mask is ignored and comes out 0. A
sample's reward is read in three steps:

- `gated_scores`: Llama 2's R_c, the safety reward model's score where the prompt is tagged
  unsafe or the safety model judges the answer unsafe (sigmoid(score) < 0.15), else the
  helpfulness model's. Our reward models output the raw linear score r, with R = sigmoid(r), so
  logit(R_c) is r itself: the gated raw score is what Llama 2 whitens.
- `whiten` over the batch: mean 0, unit variance (population variance, eps inside the root).
- `token_rewards`: -beta * KL at every answer token, plus the whitened score at the last one,
  with the per-token KL `kl_estimate` = log pi(a_t) - log pi_0(a_t) of the sampled tokens (k1,
  Schulman's unbiased estimator of KL(pi || pi_0) whose sum over an answer is its sequence KL).

`generalized_advantages` (GAE, Schulman et al. 2016; gamma 1 and lambda 0.95 by default) runs
backwards over each answer's tokens with the value after the last token 0; returns are advantages
plus values; the caller whitens the advantages over the batch's answer tokens (as TRL and
OpenRLHF do; values and returns are never whitened). `clipped_policy_loss` and
`clipped_value_loss` are PPO's clipped surrogate and PPO2's clipped value loss
(0.5 * max of the squared errors), means over the mask's tokens, reported with the share of
tokens the clip decided and, for the policy, the approximate KL to the sampling policy
(k3: (r - 1) - log r, never negative).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

SAFETY_THRESHOLD = 0.15  # Llama 2: the safety model's R_s below this gates any prompt to it
WHITEN_EPS = 1e-8


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """The mean of x over the mask's entries (which must not be empty)."""
    count = mask.sum()
    if int(count) == 0:
        raise ValueError("a masked mean over no entries: the mask marks no answer token")
    return (x * mask).sum() / count


def gated_scores(helpful: Tensor, safety: Tensor, unsafe: Tensor,
                 threshold: float = SAFETY_THRESHOLD) -> tuple[Tensor, Tensor]:
    """(B,) raw scores of the two reward models and (B,) unsafe tags -> logit(R_c) and whether it
    is the safety model's. R = sigmoid(raw score), so logit(R_c) is the chosen model's raw score."""
    if not helpful.shape == safety.shape == unsafe.shape:
        raise ValueError(f"helpful, safety and unsafe must have one entry per sample: {tuple(helpful.shape)}, "
                         f"{tuple(safety.shape)}, {tuple(unsafe.shape)}")
    used_safety = unsafe.bool() | (torch.sigmoid(safety) < threshold)
    return torch.where(used_safety, safety, helpful), used_safety


def whiten(x: Tensor, mask: Tensor | None = None, *, shift_mean: bool = True, eps: float = WHITEN_EPS) -> Tensor:
    """(x - mean) / sqrt(var + eps) over the batch (the mask's entries, when given; 0 elsewhere);
    shift_mean False adds the mean back, so only the scale changes."""
    mask = torch.ones_like(x, dtype=torch.bool) if mask is None else mask.bool()
    mean = masked_mean(x, mask)
    variance = masked_mean((x - mean) ** 2, mask)
    whitened = (x - mean) * torch.rsqrt(variance + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def kl_estimate(logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor) -> Tensor:
    """(B, L) per-token KL(pi || pi_0) estimate of the sampled tokens: log pi - log pi_0 (k1), 0 off the mask."""
    return (logprobs - ref_logprobs) * mask


def last_token_index(mask: Tensor) -> Tensor:
    """(B,) the index of each row's last masked token; every row must have one."""
    if not bool(mask.any(dim=-1).all()):
        raise ValueError("every sample needs at least one answer token")
    index = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), index, -1).max(dim=-1).values


def token_rewards(kl: Tensor, score: Tensor, mask: Tensor, beta: float) -> Tensor:
    """(B, L) rewards: -beta * kl at every answer token, plus the sample's (B,) score at its last one."""
    rewards = -beta * kl * mask
    rows = torch.arange(mask.shape[0], device=mask.device)
    rewards[rows, last_token_index(mask)] += score.to(rewards.dtype)
    return rewards


def generalized_advantages(rewards: Tensor, values: Tensor, mask: Tensor, *, gamma: float = 1.0,
                           lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """GAE over each row's answer tokens (contiguous along L): advantages and returns (advantages +
    values), both 0 off the mask. delta_t = r_t + gamma V_{t+1} - V_t with V after the answer 0;
    A_t = delta_t + gamma lambda A_{t+1}."""
    mask = mask.to(values.dtype)
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        advantages[:, t] = advantage
        # Off the mask (padding after an answer) the next step starts afresh: V and A of nothing are 0.
        next_value = values[:, t] * mask[:, t]
        next_advantage = advantage
    return advantages, (advantages + values) * mask


class PolicyLoss(NamedTuple):
    loss: Tensor  # mean over answer tokens of -min(r A, clip(r) A)
    clip_fraction: Tensor  # share of answer tokens where the clipped term was the smaller objective
    approx_kl: Tensor  # mean k3 estimate of KL(pi_old || pi): (r - 1) - log r


def clipped_policy_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor,
                        clip: float = 0.2) -> PolicyLoss:
    log_ratio = (logprobs - old_logprobs) * mask
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped > unclipped).float(), mask)
        approx_kl = masked_mean((ratio - 1.0) - log_ratio, mask)
    return PolicyLoss(loss, clip_fraction, approx_kl)


class ValueLoss(NamedTuple):
    loss: Tensor  # mean over answer tokens of 0.5 * max((V - R)^2, (V_clipped - R)^2)
    clip_fraction: Tensor  # share of answer tokens where the clipped error was the larger


def clipped_value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor,
                       clip: float = 0.2) -> ValueLoss:
    """The value may move at most `clip` from the one the rollout saw before its error stops falling."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    errors = (values - returns) ** 2
    clipped_errors = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(errors, clipped_errors), mask)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped_errors > errors).float(), mask)
    return ValueLoss(loss, clip_fraction)


def answer_logprobs(logits: Tensor, targets: Tensor, temperature: float = 1.0) -> Tensor:
    """(B, T, V) logits and (B, T) next-token ids -> (B, T) log-probabilities of those ids under the
    sampling distribution (logits / temperature), in fp32. Targets outside the vocabulary (the
    ignore index) read id 0: callers mask them."""
    logprobs = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
