"""PPO's arithmetic against values worked out by hand: the safety gate, whitening, the per-token
KL and rewards, GAE, and the clipped policy and value losses (their values, what they clip, and
that a clipped token passes no gradient)."""

from __future__ import annotations

import math

import pytest
import torch

from modeling.ppo import (
    answer_logprobs,
    clipped_policy_loss,
    clipped_value_loss,
    gated_scores,
    generalized_advantages,
    kl_estimate,
    token_rewards,
    whiten,
)

pytestmark = pytest.mark.usefixtures("one_thread")
T, F = True, False


def close(got: torch.Tensor, expected, tolerance: float = 1e-6) -> None:
    expected = torch.as_tensor(expected, dtype=got.dtype)
    assert torch.allclose(got, expected, atol=tolerance, rtol=0), f"{got} != {expected}"


def test_the_safety_model_scores_unsafe_prompts_and_answers_it_finds_unsafe():
    helpful = torch.tensor([1.0, 2.0, 3.0, -1.0, 0.5, 0.7])
    # sigmoid: 0.62, 0.119 (< 0.15), 0.73 (but the prompt is unsafe), 0.95, 0.1545 and 0.1419 around 0.15.
    safety = torch.tensor([0.5, -2.0, 1.0, 3.0, -1.7, -1.8])
    unsafe = torch.tensor([F, F, T, F, F, F])
    gated, used_safety = gated_scores(helpful, safety, unsafe)
    assert used_safety.tolist() == [F, T, T, F, F, T]
    close(gated, [1.0, -2.0, 1.0, -1.0, 0.5, -1.8])
    assert gated_scores(helpful, safety, unsafe, threshold=0.5)[1].tolist() == [F, T, T, F, T, T]
    with pytest.raises(ValueError, match="one entry per sample"):
        gated_scores(helpful, safety[:2], unsafe)


def test_whitening_gives_mean_zero_unit_variance_over_the_batch_or_the_mask():
    close(whiten(torch.tensor([1.0, 2.0, 3.0, 6.0])), [v / math.sqrt(3.5) for v in (-2.0, -1.0, 0.0, 3.0)])
    x = torch.tensor([[1.0, 2.0, 9.0], [3.0, 0.0, 0.0]])
    mask = torch.tensor([[T, T, F], [T, F, F]])
    scale = math.sqrt(2 / 3)  # entries 1, 2, 3: mean 2, variance 2/3
    close(whiten(x, mask), [[-1 / scale, 0.0, 0.0], [1 / scale, 0.0, 0.0]])
    close(whiten(x, mask, shift_mean=False), [[2 - 1 / scale, 2.0, 0.0], [2 + 1 / scale, 0.0, 0.0]])
    close(whiten(torch.tensor([5.0, 5.0])), [0.0, 0.0])  # no spread: eps keeps it finite


def test_kl_and_rewards_per_token_with_the_score_at_each_answers_last_token():
    kl = kl_estimate(torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -7.0, -7.0]]),
                     torch.tensor([[-1.5, -1.0, -0.5], [-0.5, -1.0, -1.0]]),
                     torch.tensor([[T, T, F], [T, F, F]]))
    close(kl, [[0.5, -1.0, 0.0], [0.2, 0.0, 0.0]])
    rewards = token_rewards(kl, torch.tensor([2.0, -1.0]), torch.tensor([[T, T, F], [T, F, F]]), beta=0.1)
    close(rewards, [[-0.05, 0.1 + 2.0, 0.0], [-0.02 - 1.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="at least one answer token"):
        token_rewards(kl, torch.tensor([2.0, -1.0]), torch.tensor([[T, T, F], [F, F, F]]), beta=0.1)


def test_gae_runs_backwards_over_each_answer_with_no_value_after_it():
    # gamma 1, lambda 0.5: delta_2 = 1 - 0.4, delta_1 = 0.4 - 0.2, delta_0 = 0.2 - 0.5.
    advantages, returns = generalized_advantages(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.2, 0.4]]),
                                                 torch.tensor([[T, T, T]]), gamma=1.0, lam=0.5)
    close(advantages, [[-0.3 + 0.5 * (0.2 + 0.5 * 0.6), 0.2 + 0.5 * 0.6, 0.6]])
    close(returns, [[0.45, 0.7, 1.0]])
    # gamma 0.9, lambda 1, padding after a 2-token answer: the padding's value 9 is never read.
    advantages, returns = generalized_advantages(torch.tensor([[0.0, 2.0, 0.0]]), torch.tensor([[1.0, 0.5, 9.0]]),
                                                 torch.tensor([[T, T, F]]), gamma=0.9, lam=1.0)
    close(advantages, [[-0.55 + 0.9 * 1.5, 1.5, 0.0]])
    close(returns, [[1.8, 2.0, 0.0]])
    # gamma = lambda = 1: returns are the rewards to go, whatever the values.
    _, returns = generalized_advantages(torch.tensor([[0.1, 0.2, 0.3]]), torch.tensor([[3.0, -1.0, 2.0]]),
                                        torch.tensor([[T, T, T]]), gamma=1.0, lam=1.0)
    close(returns, [[0.6, 0.5, 0.3]])


def test_the_clipped_policy_loss_its_clip_fraction_approximate_kl_and_gradient():
    ratios = torch.tensor([[1.5, 0.5, 1.1, 3.0]])
    old = torch.tensor([[-1.0, -2.0, -0.5, -1.0]])
    logprobs = (old + ratios.log()).requires_grad_()
    advantages = torch.tensor([[1.0, 1.0, -2.0, 5.0]])
    mask = torch.tensor([[T, T, T, F]])  # the last token is padding: it must count for nothing
    result = clipped_policy_loss(logprobs, old, advantages, mask, clip=0.2)
    # Per token max(-A r, -A clip(r)): max(-1.5, -1.2), max(-0.5, -0.8), max(2.2, 2.2).
    close(result.loss, (-1.2 - 0.5 + 2.2) / 3)
    close(result.clip_fraction, 1 / 3)
    k3 = [(r - 1) - math.log(r) for r in (1.5, 0.5, 1.1)]
    close(result.approx_kl, sum(k3) / 3)
    result.loss.backward()
    # d(-A r)/d log r = -A r, over 3 tokens; the clipped token and the padding get none.
    close(logprobs.grad, [[0.0, -0.5 / 3, 2.2 / 3, 0.0]], tolerance=1e-6)


def test_the_clipped_value_loss_takes_the_larger_error():
    values = torch.tensor([[1.0, 0.0, 2.0, 7.0]])
    old = torch.tensor([[0.5, 0.5, 2.0, 0.0]])
    returns = torch.tensor([[2.0, 0.2, 1.0, 0.0]])
    mask = torch.tensor([[T, T, T, F]])
    result = clipped_value_loss(values, old, returns, mask, clip=0.2)
    # Clipped values 0.7, 0.3, 2.0: errors max(1, 1.69), max(0.04, 0.01), max(1, 1).
    close(result.loss, 0.5 * (1.69 + 0.04 + 1.0) / 3)
    close(result.clip_fraction, 1 / 3)


def test_answer_logprobs_are_of_the_sampling_distribution():
    logits = torch.tensor([[[0.0, math.log(3.0), 0.0], [5.0, 0.0, 0.0]]])
    targets = torch.tensor([[1, -100]])
    close(answer_logprobs(logits, targets)[:, :1], [[math.log(0.6)]])
    close(answer_logprobs(logits, targets, temperature=2.0)[:, :1], [[math.log(math.sqrt(3) / (2 + math.sqrt(3)))]])
