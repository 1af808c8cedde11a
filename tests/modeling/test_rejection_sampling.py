"""Rejection sampling's selection and the reward-vs-K figure, against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from modeling.rejection_sampling import (
    NO_FINISHED_ANSWER,
    best_per_prompt,
    expected_max_and_median,
    reward_distribution,
    reward_vs_k,
    selection_rewards,
)


def test_expected_max_and_median_over_every_k_subset():
    # k = 2 of (1, 2, 3): subsets {1,2} {1,3} {2,3}: maxima 2, 3, 3; medians 1.5, 2, 2.5.
    assert expected_max_and_median([3, 1, 2], 2) == pytest.approx((8 / 3, 2.0))
    assert expected_max_and_median([3, 1, 2], 1) == pytest.approx((2.0, 2.0))
    assert expected_max_and_median([3, 1, 2], 3) == pytest.approx((3.0, 2.0))
    # k = 3 of (0, 10, 1, 5): {0,10,1} -> 10, 1; {0,10,5} -> 10, 5; {0,1,5} -> 5, 1; {10,1,5} -> 10, 5.
    assert expected_max_and_median([0, 10, 1, 5], 3) == pytest.approx((35 / 4, 3.0))
    with pytest.raises(ValueError, match="k must be in 1..3"):
        expected_max_and_median([1, 2, 3], 4)


def test_reward_vs_k_averages_the_prompts_that_have_k_samples():
    ids = ["a", "a", "a", "b", "b"]
    rewards = np.array([3.0, 1.0, 2.0, 0.0, 4.0])
    curve = reward_vs_k(ids, rewards)
    assert [point["k"] for point in curve] == [1, 2, 3]
    # k = 1: a's mean 2, b's mean 2. k = 2: a's E[max] 8/3, b's max 4; medians 2 and 2. k = 3: a only.
    assert curve[0] == pytest.approx({"k": 1, "max": 2.0, "median": 2.0, "prompts": 2})
    assert curve[1] == pytest.approx({"k": 2, "max": (8 / 3 + 4) / 2, "median": 2.0, "prompts": 2})
    assert curve[2] == pytest.approx({"k": 3, "max": 3.0, "median": 2.0, "prompts": 1})
    # The max never falls as k grows; the median of a symmetric prompt stays put.
    assert curve[0]["max"] <= curve[1]["max"]


def test_best_per_prompt_keeps_the_best_finished_answer_and_counts_the_rest():
    ids = ["p", "p", "p", "q", "q", "r"]
    rewards = np.array([0.5, 2.0, 2.0, 9.0, 1.0, 3.0])
    finished = [True, True, True, False, True, False]
    choices = {c.prompt_id: c for c in best_per_prompt(ids, rewards, finished)}
    assert (choices["p"].best, choices["p"].reward, choices["p"].candidates) == (1, 2.0, 3)  # the earlier on a tie
    assert (choices["q"].best, choices["q"].reward, choices["q"].candidates) == (4, 1.0, 1)  # 9.0 was cut short
    assert choices["r"].best is None and choices["r"].dropped == NO_FINISHED_ANSWER
    assert [c.prompt_id for c in best_per_prompt(ids, rewards, finished)] == ["p", "q", "r"]


def test_best_per_prompt_refuses_missing_scores():
    with pytest.raises(ValueError, match="NaN"):
        best_per_prompt(["a"], np.array([np.nan]), [True])
    with pytest.raises(ValueError, match="2 prompt ids, 1 rewards"):
        best_per_prompt(["a", "b"], np.array([1.0]), [True, True])


def test_selection_by_one_reward_model_and_the_models_it_needs():
    rewards = {"helpfulness": np.array([1.0, -1.0])}
    assert selection_rewards(rewards, [False, True], "helpfulness").tolist() == [1.0, -1.0]
    with pytest.raises(ValueError, match="needs the safety reward model"):
        selection_rewards(rewards, [False, True], "gated")


def test_reward_distribution():
    summary = reward_distribution([1.0, 2.0, 3.0, 4.0, 5.0])
    assert summary["count"] == 5 and summary["mean"] == 3.0 and summary["median"] == 3.0
    assert summary["p10"] == pytest.approx(1.4) and summary["p90"] == pytest.approx(4.6)
    assert reward_distribution([]) == {"count": 0}
