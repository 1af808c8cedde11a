"""PPO rollouts: the answer layout, each role's per-token scores equal to the model run on each
sequence alone, PPO's targets from known scores, and the iteration stage: written, read back,
refused when the KL or the length blows up."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from modeling.chat_eval import answer_text, score_answers
from modeling.checkpoints import save_hf
from modeling.generate import Sampling, generate
from modeling.llama import IGNORE_INDEX
from modeling.reward import RewardModel, save_reward_hf, score_sequences
from modeling.rollouts import (
    RolloutBlewUp,
    RolloutSettings,
    RolloutSample,
    answer_layout,
    answer_logprobs_of,
    answer_values,
    assemble_rollouts,
    finished_rollouts,
    iteration_stage,
    read_rollouts,
    score_role,
    score_rollouts,
    write_rollouts,
)
from tasks.chat_format import encode_prompt
from tasks.dialogues.prompts import ChatPrompt
from tasks.dialogues.records import Message
from tasks.synthetic.instructions import tokenizer_texts
from tasks.tokenizer import train_tokenizer
from tests.modeling.helpers import assert_equal_within, random_model, tiny_config

pytestmark = [pytest.mark.usefixtures("one_thread")]


def prompt(n: int) -> ChatPrompt:
    return ChatPrompt(f"prompts.jsonl:{n}", (Message("user", f"question {n}"),))


def samples_of(prompt_ids, answer_ids, unsafe=None) -> list[RolloutSample]:
    unsafe = unsafe or [False] * len(prompt_ids)
    return [RolloutSample(prompt(n), p, a, u) for n, (p, a, u) in enumerate(zip(prompt_ids, answer_ids, unsafe))]


def test_the_layout_marks_the_positions_that_predict_answer_tokens():
    layout = answer_layout([[5, 6, 7], [4]], [[8, 9], [3, 2, 1]])
    assert layout.inputs.tolist() == [[5, 6, 7, 8], [4, 3, 2, 0]]
    assert layout.targets.tolist() == [[IGNORE_INDEX, IGNORE_INDEX, 8, 9], [3, 2, 1, IGNORE_INDEX]]
    spread = layout.spread([[0.5, 0.25], [1.0, 2.0, 3.0]])
    assert spread.tolist() == [[0.0, 0.0, 0.5, 0.25], [1.0, 2.0, 3.0, 0.0]]
    assert [v.tolist() for v in layout.gather(spread)] == [[0.5, 0.25], [1.0, 2.0, 3.0]]


def test_log_probs_and_values_are_each_sequences_own_however_batched():
    config = tiny_config()
    policy = random_model(config, seed=3)
    value_model = RewardModel(config, score_seed=1)
    rng = np.random.default_rng(0)
    prompt_ids = [rng.integers(3, 96, n).tolist() for n in (2, 7, 4)]
    answer_ids = [rng.integers(3, 96, n).tolist() for n in (5, 1, 3)]
    samples = samples_of(prompt_ids, answer_ids)
    logprobs = answer_logprobs_of(policy, samples, temperature=0.7, batch_size=2)
    values = answer_values(value_model, samples, batch_size=2)
    for p, a, got_logprobs, got_values in zip(prompt_ids, answer_ids, logprobs, values):
        sequence = torch.tensor([p + a])
        with torch.no_grad():
            alone = torch.log_softmax(policy(sequence).logits[0].float() / 0.7, -1)
            # The value before answer token k is the score of the sequence up to the token before it.
            prefix_scores = score_sequences(value_model, [p + a[:k] for k in range(len(a))], pad_id=0)
        expected = [alone[len(p) - 1 + k, token].item() for k, token in enumerate(a)]
        assert_equal_within(torch.tensor(got_logprobs), torch.tensor(expected), what="log-probs")
        assert_equal_within(torch.tensor(got_values), prefix_scores, what="values")


def test_ppo_targets_from_known_scores():
    # Two answers of 2 and 1 tokens; the second prompt is tagged unsafe.
    samples = samples_of([[1, 5], [1, 6]], [[7, 2], [2]], unsafe=[False, True])
    settings = RolloutSettings(beta=0.1, gamma=1.0, lam=1.0)
    rollouts = assemble_rollouts(samples, [np.array([-1.0, -2.0]), np.array([-0.5])],
                                 [np.array([-1.5, -1.0]), np.array([-0.7])], [np.array([0.3, 0.1]), np.array([0.2])],
                                 helpful=np.array([2.0, 5.0]), safety=np.array([1.0, -1.0]), settings=settings)
    assert rollouts.used_safety.tolist() == [False, True]
    assert rollouts.gated.tolist() == [2.0, -1.0]
    assert np.allclose(rollouts.score, [1.0, -1.0])  # two values whiten to -1 and 1
    assert np.allclose(rollouts.kl, [0.5 - 1.0, 0.2])
    rewards = rollouts.per_token["rewards"]
    assert np.allclose(rewards[0], [-0.05, 0.1 + 1.0]) and np.allclose(rewards[1], [-0.02 - 1.0])
    # gamma = lambda = 1: returns are rewards to go; advantages returns - values, then whitened.
    returns = rollouts.per_token["returns"]
    assert np.allclose(returns[0], [1.05, 1.1]) and np.allclose(returns[1], [-1.02])
    raw = np.array([1.05 - 0.3, 1.1 - 0.1, -1.02 - 0.2])
    whitened = (raw - raw.mean()) / raw.std()
    assert np.allclose(np.concatenate(rollouts.per_token["advantages"]), whitened, atol=1e-6)
    summary = rollouts.summary()
    assert summary["reward_helpful"] == 3.5 and summary["reward_safety"] == 0.0 and summary["reward_gated"] == 0.5
    assert summary["response_length"] == 1.5 and summary["safety_share"] == 0.5
    assert summary["kl"] == pytest.approx(-0.15) and summary["kl_per_token"] == pytest.approx(-0.1)
    with pytest.raises(ValueError, match="one value per answer token"):
        assemble_rollouts(samples, [np.array([-1.0]), np.array([-0.5])], [np.zeros(2), np.zeros(1)],
                          [np.zeros(2), np.zeros(1)], np.zeros(2), np.zeros(2), settings)


def test_without_a_safety_model_the_helpfulness_score_decides_and_unsafe_prompts_are_refused():
    samples = samples_of([[1, 5], [1, 6]], [[7, 2], [2]])
    logprobs = [np.array([-1.0, -2.0]), np.array([-0.5])]
    rollouts = assemble_rollouts(samples, logprobs, logprobs, [np.zeros(2), np.zeros(1)],
                                 helpful=np.array([2.0, -0.5]), safety=None, settings=RolloutSettings())
    assert rollouts.gated.tolist() == [2.0, -0.5] and not rollouts.used_safety.any()
    assert rollouts.summary()["reward_safety"] is None and rollouts.summary()["safety_share"] == 0.0
    unsafe = samples_of([[1, 5], [1, 6]], [[7, 2], [2]], unsafe=[False, True])
    with pytest.raises(ValueError, match="tagged unsafe .* no safety reward model"):
        assemble_rollouts(unsafe, logprobs, logprobs, [np.zeros(2), np.zeros(1)], np.zeros(2), None,
                          RolloutSettings())


def known_rollouts(kl_per_token: float) -> tuple:
    samples = samples_of([[1, 5, 9], [1, 6]], [[7, 8, 2], [2]])
    old = [np.array([-1.0, -1.0, -1.0]), np.array([-1.0])]
    ref = [a - kl_per_token for a in old]
    return samples, assemble_rollouts(samples, old, ref, [np.zeros(3), np.zeros(1)], np.array([1.0, 0.0]),
                                      np.array([2.0, 2.0]), RolloutSettings(beta=0.01))


def test_an_iteration_stage_is_written_read_back_and_refused_when_kl_or_length_blow_up(tmp_path):
    root = str(tmp_path / "rollouts")
    samples, rollouts = known_rollouts(kl_per_token=0.25)
    manifest = write_rollouts(root, 3, rollouts, RolloutSettings(), provenance={"policy": "p"})
    assert iteration_stage(root, 3).path.endswith("iteration-0003")
    assert finished_rollouts(root, 3) == manifest == json.loads((tmp_path / "rollouts/iteration-0003/_manifest.json").read_text())
    assert manifest["kl"] == pytest.approx((0.75 + 0.25) / 2) and manifest["response_length"] == 2.0
    assert manifest["reward_helpful"] == 0.5 and manifest["within_bounds"] and manifest["provenance"] == {"policy": "p"}
    rows = read_rollouts(root, 3).to_pylist()
    assert [r["answer_ids"] for r in rows] == [[7, 8, 2], [2]] and [r["where"] for r in rows] == [
        "prompts.jsonl:0", "prompts.jsonl:1"]
    assert np.allclose(rows[0]["advantages"], rollouts.per_token["advantages"][0])
    with pytest.raises(FileNotFoundError, match="no finished rollouts of PPO iteration 4"):
        read_rollouts(root, 4)

    with pytest.raises(RolloutBlewUp, match=r"iteration 5 .*mean KL to the reference, 0\.5 nats .* bound 0\.4"):
        write_rollouts(root, 5, rollouts, RolloutSettings(max_mean_kl=0.4))
    with pytest.raises(RolloutBlewUp, match="mean answer length, 2 tokens, exceeds its bound 1.5"):
        write_rollouts(root, 6, rollouts, RolloutSettings(max_mean_length=1.5))
    assert finished_rollouts(root, 5) is None and finished_rollouts(root, 6) is None
    refused = json.loads((tmp_path / "rollouts/iteration-0005/_manifest.json").read_text())
    assert not refused["within_bounds"] and refused["kl"] == pytest.approx(0.5)
    with pytest.raises(FileNotFoundError, match="iteration 5"):
        read_rollouts(root, 5)
    # A refused iteration done again within bounds is finished.
    write_rollouts(root, 5, rollouts, RolloutSettings())
    assert finished_rollouts(root, 5)["within_bounds"]


def test_all_roles_score_sampled_chat_answers(tmp_path):
    tokenizer = train_tokenizer(tokenizer_texts(600), tmp_path / "spm", vocab_size=600)
    config = tiny_config(vocab_size=600, max_seq_len=96)
    policy, reference = random_model(config, seed=1), random_model(config, seed=2)
    helpful_model, safety_model, value_model = (RewardModel(config, score_seed=s) for s in (3, 4, 5))
    prompts = [ChatPrompt(f"p:{n}", (Message("user", text),)) for n, text in
               enumerate(["what is two plus two", "name a colour", "say hello"])]
    prompt_ids = [encode_prompt(tokenizer, p.as_dicts()) for p in prompts]
    answers = generate(policy, prompt_ids, max_new_tokens=8, sampling=Sampling(temperature=1.0), seed=0,
                       stop_tokens=[tokenizer.eos_id], vocab_size=tokenizer.vocab_size)
    samples = [RolloutSample(p, ids, a, unsafe=n == 2) for n, (p, ids, a) in enumerate(zip(prompts, prompt_ids, answers))]
    rollouts = score_rollouts(samples, policy=policy, reference=reference, value_model=value_model,
                              helpful_model=helpful_model, safety_model=safety_model, tokenizer=tokenizer,
                              settings=RolloutSettings(), batch_size=2)
    texts = [answer_text(tokenizer, a) for a in answers]
    assert np.array_equal(rollouts.helpful, score_answers(helpful_model, tokenizer, prompts, texts))
    assert np.array_equal(rollouts.safety, score_answers(safety_model, tokenizer, prompts, texts))
    assert rollouts.used_safety[2] and rollouts.gated[2] == rollouts.safety[2]
    assert [len(v) for v in rollouts.per_token["ref_logprobs"]] == [len(a) for a in answers]
    assert np.all(np.isfinite(rollouts.kl)) and not math.isclose(float(rollouts.kl.sum()), 0.0)

    # Each role as a Ray task of the flow scores it: its model loaded from its exported folder.
    spm = [str(tmp_path / "spm" / "tokenizer.model")]
    folders = {"policy": save_hf(policy, tmp_path / "policy", tokenizer_files=spm),
               "reference": save_hf(reference, tmp_path / "reference", tokenizer_files=spm),
               "value": save_reward_hf(value_model, tmp_path / "value", tokenizer_files=spm),
               "helpfulness": save_reward_hf(helpful_model, tmp_path / "helpful", tokenizer_files=spm),
               "safety": save_reward_hf(safety_model, tmp_path / "safety", tokenizer_files=spm)}
    by_role = {role: score_role(samples, role, str(folder), batch_size=2) for role, folder in folders.items()}
    again = assemble_rollouts(samples, by_role["policy"], by_role["reference"], by_role["value"],
                              by_role["helpfulness"], by_role["safety"], RolloutSettings())
    assert np.allclose(again.gated, rollouts.gated, atol=1e-5) and np.allclose(again.kl, rollouts.kl, atol=1e-4)
    assert all(np.allclose(a, b, atol=1e-5) for a, b in zip(again.per_token["values"], rollouts.per_token["values"]))
    with pytest.raises(ValueError, match="unknown role 'critic'"):
        score_role(samples, "critic", str(folders["value"]))
