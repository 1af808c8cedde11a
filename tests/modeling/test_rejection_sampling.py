"""Rejection sampling: the selection and the reward-vs-K figure against values worked out by hand; the
selection stage on a sample stage of two models, judged by two reward models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from modeling.rejection_sampling import (
    NO_USABLE_ANSWER,
    SCORES_FILE,
    SELECTED_FILE,
    best_per_prompt,
    expected_max_and_median,
    reward_distribution,
    reward_vs_k,
    select_best,
    selection_rewards,
)

pytestmark = [pytest.mark.usefixtures("one_thread")]


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


def test_best_per_prompt_keeps_the_best_usable_answer_and_counts_the_rest():
    ids = ["p", "p", "p", "q", "q", "r"]
    rewards = np.array([0.5, 2.0, 2.0, 9.0, 1.0, 3.0])
    usable = [True, True, True, False, True, False]
    choices = {c.prompt_id: c for c in best_per_prompt(ids, rewards, usable)}
    assert (choices["p"].best, choices["p"].reward, choices["p"].candidates) == (1, 2.0, 3)  # the earlier on a tie
    assert (choices["q"].best, choices["q"].reward, choices["q"].candidates) == (4, 1.0, 1)  # 9.0 was cut short
    assert choices["r"].best is None and choices["r"].dropped == NO_USABLE_ANSWER
    assert [c.prompt_id for c in best_per_prompt(ids, rewards, usable)] == ["p", "q", "r"]


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


def test_the_gated_selection_is_ppos_safety_gate():
    # sigmoid(0) = 0.5 is safe enough: helpfulness; sigmoid(-3) = 0.047 < 0.15: safety; tagged unsafe: safety.
    rewards = {"helpfulness": np.array([1.0, 2.0, 3.0]), "safety": np.array([0.0, -3.0, 2.0])}
    assert selection_rewards(rewards, [False, False, True], "gated").tolist() == [1.0, -3.0, 2.0]


def test_reward_distribution():
    summary = reward_distribution([1.0, 2.0, 3.0, 4.0, 5.0])
    assert summary["count"] == 5 and summary["mean"] == 3.0 and summary["median"] == 3.0
    assert summary["p10"] == pytest.approx(1.4) and summary["p90"] == pytest.approx(4.6)
    assert reward_distribution([]) == {"count": 0}


# ---------------------------------------------------------------------------------- the selection stage

ANSWERS = ("kiwi plum", "hello", "HELLO", "five", "pear", "apple fig date", "no", "")  # "" is no answer


class ScriptedBackend:
    """Answers drawn by seed from a few texts, a share of them cut short (no EOS): the answers a
    model gives are not under test here, the choice among them is."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def generate(self, prompt_ids, *, max_new_tokens, sampling, seed, stop_tokens):
        rng = np.random.default_rng(seed)
        answers = []
        for _ in prompt_ids:
            ids = self.tokenizer.encode(ANSWERS[rng.integers(len(ANSWERS))])[:max_new_tokens - 1]
            answers.append(ids if rng.random() < 0.25 else [*ids, self.tokenizer.eos_id])
        return answers


@pytest.fixture(scope="module")
def scored_round(tmp_path_factory, chat_tokenizer, chat_model_folder):
    """A sample stage of 5 prompts, K = 3 from each of two models, and two reward models."""
    from modeling.reward import RewardModel, save_reward_hf
    from modeling.sampling import SamplingConfig, sample_stage
    from tests.modeling.conftest import CHAT_VOCAB
    from tests.modeling.helpers import tiny_config

    root = tmp_path_factory.mktemp("rejection")
    prompts = root / "prompts.jsonl"
    questions = ["Repeat: kiwi plum", "Say hello", "What is 2 + 3?", "First word: pear lime", "Last: fig date apple"]
    prompts.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}], "unsafe": n == 2}) + "\n"
                               for n, q in enumerate(questions)))
    pool = [str(chat_model_folder("alpha", seed=5)), str(chat_model_folder("beta", seed=6))]
    config = SamplingConfig(models=pool, samples_per_prompt=3, max_new_tokens=8, temperature=1.2, seed=3,
                            prompts_per_part=2)
    stage = str(root / "samples")
    sample_stage([str(prompts)], config, stage, backends={Path(f).name: ScriptedBackend(chat_tokenizer) for f in pool})
    spm = [str(Path(pool[0]) / "tokenizer.model")]
    judges = {name: str(save_reward_hf(RewardModel(tiny_config(vocab_size=CHAT_VOCAB, max_seq_len=128), score_seed=s),
                                       root / name, tokenizer_files=spm))
              for name, s in (("helpfulness", 11), ("safety", 12))}
    return root, stage, judges


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_the_best_usable_answer_of_every_prompt_is_kept_and_every_prompt_accounted_for(scored_round, chat_tokenizer,
                                                                                       ray_local):
    from modeling.chat_eval import score_answers
    from modeling.reward import load_reward_hf
    from modeling.sampling import read_samples
    from tasks.dialogues.prompts import ChatPrompt

    root, stage, judges = scored_round
    out = root / "selection-helpfulness"
    report = select_best(stage, judges, str(out), selection="helpfulness", batch_size=4)
    samples = list(read_samples(stage))
    scores = read_jsonl(out / SCORES_FILE)
    assert len(scores) == len(samples) == 5 * 2 * 3 and report["samples"] == 30
    # The rewards are the helpfulness model's own scores of each answer in its dialogue.
    model = load_reward_hf(judges["helpfulness"])
    expected = score_answers(model, chat_tokenizer, [ChatPrompt(s.prompt_id, s.messages) for s in samples],
                             [s.answer for s in samples])
    assert np.allclose([s["reward_helpfulness"] for s in scores], expected, atol=1e-5)
    kept = read_jsonl(out / SELECTED_FILE)
    assert report["prompts"] == 5 == report["selected"] + sum(report["dropped"].values())
    assert len(kept) == report["selected"] and sum(report["kept_by_model"].values()) == len(kept)
    for record in kept:
        candidates = [s for s in scores if s["prompt_id"] == record["prompt_id"] and s["usable"]]
        assert record["messages"][-1]["content"].strip()
        assert record["reward"] == max(s["selection_reward"] for s in candidates)
        assert record["messages"][-1]["role"] == "assistant" and record["messages"][0]["role"] == "user"
    assert sum(s["kept"] for s in scores) == len(kept)
    assert all(s["usable"] == (s["finished"] and bool(sample.answer.strip())) for s, sample in zip(scores, samples))
    assert [point["k"] for point in report["reward_vs_k"]] == list(range(1, 7))  # 2 models x K = 3
    # Reused when nothing changed; the gated selection is another stage.
    assert select_best(stage, judges, str(out), selection="helpfulness")["digest"] == report["digest"]
    gated = select_best(stage, judges, str(root / "selection-gated"), selection="gated")
    gated_scores = read_jsonl(root / "selection-gated" / SCORES_FILE)
    unsafe_prompt = [s for s in gated_scores if s["prompt_id"].endswith(":3")]
    assert all(s["selection_reward"] == s["reward_safety"] for s in unsafe_prompt)  # tagged unsafe: safety decides
    assert gated["selection"] == "gated" and gated["prompts"] == 5


def test_the_selection_refuses_what_it_cannot_judge(scored_round):
    root, stage, judges = scored_round
    with pytest.raises(ValueError, match="needs the safety reward model"):
        select_best(stage, {"helpfulness": judges["helpfulness"]}, str(root / "x"), selection="gated")
    with pytest.raises(FileNotFoundError, match="not a finished sampling stage"):
        select_best(str(root / "nothing"), judges, str(root / "y"), selection="helpfulness")
