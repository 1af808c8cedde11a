"""Chat metrics on known answers: a tiny reward model trained in seconds on synthetic comparisons
(right answers preferred) rewards held-out right answers above wrong ones; a model's answers are
modeling.generate's own; win rates count ties half; bad prompt records and a reward model of
another vocabulary are refused."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from modeling.chat_eval import (
    ChatReport,
    answer_prompts, answer_text, evaluate_chat, score_answers, win_rate, win_rate_by_prompt,
)
from modeling.generate import Sampling, generate
from modeling.reward import RewardConfig, RewardModel
from modeling.train import Trainer
from tasks.benchmarks import BadInput
from tasks.chat_format import encode_prompt
from tasks.dialogues.prompts import ChatPrompt, read_prompts
from tasks.dialogues.records import Message
from tasks.reward_tokens import pack_pairs
from tasks.synthetic.comparisons import make_comparisons
from tasks.tokens import write_rows_stage
from tests.modeling.conftest import CHAT_VOCAB
from tests.modeling.helpers import random_model, tiny_config

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning"),
]
ROW_TOKENS = 96
VOCAB = CHAT_VOCAB


@pytest.fixture(scope="module")
def tokenizer(chat_tokenizer):
    return chat_tokenizer


def prompt_of(context, where: str) -> ChatPrompt:
    return ChatPrompt(where, tuple(Message(m["role"], m["content"]) for m in context))


@pytest.fixture(scope="module")
def comparisons():
    return make_comparisons(3000, seed=1)


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory, tokenizer, comparisons) -> RewardModel:
    """A reward model trained for a few seconds on the train split's comparisons."""
    root = tmp_path_factory.mktemp("reward")
    train = [(r["context"], r["chosen"], r["rejected"], r["rating"]) for r in comparisons if r["split"] == "train"]
    packed = pack_pairs(train, tokenizer, ROW_TOKENS, np.dtype(np.uint16))
    stage = write_rows_stage(str(root / "pairs"), packed.rows, packed.doc_starts.to_pylist(), tokenizer.vocab_size,
                             labels=packed.labels.to_pylist())
    config = RewardConfig(run_name="reward", output=str(root / "runs"), data=stage,
                          model=tiny_config(vocab_size=VOCAB, max_seq_len=128), epochs=3, seq_len=ROW_TOKENS - 1,
                          global_batch_tokens=16 * (ROW_TOKENS - 1), micro_batch_rows=16, margins="small",
                          export_hf=False, optimizer={"lr": 3e-3, "weight_decay": 0.0},
                          schedule={"warmup_steps": 5, "warmup_share": 0.03}, seed=1)
    started = time.perf_counter()
    trainer = Trainer(config)
    history = trainer.train()
    print(f"reward model: {len(history)} steps in {time.perf_counter() - started:.1f} s, train accuracy "
          f"{history[0]['accuracy']:.2f} -> {np.mean([m['accuracy'] for m in history[-5:]]):.2f}")
    return trainer.model.eval()


def test_held_out_right_answers_get_higher_rewards_than_wrong_ones(tokenizer, reward_model, comparisons):
    held_out = [r for r in comparisons if r["split"] == "test"]
    prompts = [prompt_of(r["context"], f"heldout:{n}") for n, r in enumerate(held_out)]
    right = score_answers(reward_model, tokenizer, prompts, [r["chosen"] for r in held_out], batch_size=32)
    wrong = score_answers(reward_model, tokenizer, prompts, [r["rejected"] for r in held_out], batch_size=32)
    rate = win_rate(right, wrong)
    print(f"{len(held_out)} held-out prompts: mean reward right {right.mean():.3f}, wrong {wrong.mean():.3f}, "
          f"win rate of right over wrong {rate:.3f}")
    assert len(held_out) > 200
    assert right.mean() > wrong.mean() and rate >= 0.65
    assert win_rate(wrong, right) == pytest.approx(1 - rate)
    # Batching and length sorting change nothing: each reward is the dialogue's alone.
    alone = score_answers(reward_model, tokenizer, prompts[:5], [r["chosen"] for r in held_out[:5]], batch_size=1)
    assert np.allclose(alone, right[:5], atol=1e-5)


def test_answers_are_generates_greedy_output_and_seeded_samples_repeat(tokenizer):
    model = random_model(tiny_config(vocab_size=VOCAB, max_seq_len=128), seed=5)
    dialogues = [[{"role": "user", "content": "Repeat: kiwi plum"}],
                 [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 2 + 3?"}],
                 [{"role": "user", "content": "First word: pear lime"}, {"role": "assistant", "content": "pear"},
                  {"role": "user", "content": "Last word: fig date apple"}]]
    ids = [encode_prompt(tokenizer, dialogue) for dialogue in dialogues]
    answers = answer_prompts(model, tokenizer, ids, max_new_tokens=12, batch_size=2)
    direct = generate(model, ids, max_new_tokens=12, stop_tokens=[tokenizer.eos_id], pad_token=tokenizer.eos_id,
                      vocab_size=tokenizer.vocab_size)
    assert answers == direct
    assert all(max(answer) < tokenizer.vocab_size for answer in answers)
    sampling = Sampling(temperature=1.0)
    first = answer_prompts(model, tokenizer, ids, max_new_tokens=12, sampling=sampling, seed=3)
    assert first == answer_prompts(model, tokenizer, ids, max_new_tokens=12, sampling=sampling, seed=3)
    assert first != answers
    assert answer_text(tokenizer, [*tokenizer.encode("kiwi", bos=False), tokenizer.eos_id]) == "kiwi"


def test_exact_match_counts_the_prompts_with_a_right_answer(tmp_path):
    path = tmp_path / "answers.jsonl"
    records = [{"messages": [{"role": "user", "content": "Repeat: kiwi"}], "answer": "kiwi"},
               {"messages": [{"role": "user", "content": "What is 2 + 2?"}], "answer": "4"},
               {"messages": [{"role": "user", "content": "Say hello"}]},
               {"messages": [{"role": "user", "content": "Bad"}], "answer": 4}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(BadInput, match=f"{path}:4: answer_not_a_string"):
        read_prompts(path)
    prompts, problems = read_prompts(path, "skip")
    assert [p.reference for p in prompts] == ["kiwi", "4", None] and len(problems) == 1
    report = ChatReport(prompts, [" kiwi ", "5", "hello"], {})
    assert report.exact_match() == 0.5  # "kiwi" right (whitespace aside), "5" wrong; the third has no answer


def test_a_report_scores_the_models_own_answers(tmp_path, tokenizer, reward_model):
    model = random_model(tiny_config(vocab_size=VOCAB, max_seq_len=128), seed=5)
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": text}]}) + "\n"
                            for text in ("Repeat: kiwi plum", "What is 4 + 4?", "Say hello in capitals")))
    prompts, _ = read_prompts(path)
    report = evaluate_chat(model, tokenizer, prompts, {"helpfulness": reward_model, "safety": reward_model},
                           max_new_tokens=8)
    assert report.prompts == prompts and len(report.answers) == 3
    expected = score_answers(reward_model, tokenizer, prompts, report.answers)
    assert np.array_equal(report.rewards["helpfulness"], expected)
    assert report.mean_rewards() == {"helpfulness": pytest.approx(expected.mean()),
                                     "safety": pytest.approx(expected.mean())}
    summary = report.as_dict()
    assert report.exact_match() is None and summary["exact_match"] is None  # no prompt has a right answer
    assert summary["rewards"]["safety"] == {f"{path}:{n}": pytest.approx(r) for n, r in enumerate(expected, 1)}
    assert json.loads(json.dumps(summary)) == summary

    # A prompt with no room for the answer and its EOS in the reward model's context: refused or skipped.
    long = tmp_path / "long.jsonl"
    long.write_text(path.read_text() + json.dumps({"messages": [{"role": "user", "content": "kiwi " * 120}]}) + "\n")
    long_prompts, _ = read_prompts(long)
    with pytest.raises(BadInput, match=f"{long}:4: prompt of .* exceeds the model's context of 128"):
        evaluate_chat(model, tokenizer, long_prompts, {"helpfulness": reward_model}, max_new_tokens=8)
    skipped = evaluate_chat(model, tokenizer, long_prompts, {"helpfulness": reward_model}, max_new_tokens=8,
                            policy="skip")
    assert len(skipped.prompts) == 3 and [p.where for p in skipped.skipped] == [f"{long}:4"]


def test_a_reward_model_of_another_vocabulary_is_refused(tokenizer):
    model = random_model(tiny_config(vocab_size=VOCAB, max_seq_len=128))
    other = RewardModel(tiny_config(vocab_size=VOCAB + 32, max_seq_len=128))
    prompts = [prompt_of([{"role": "user", "content": "Repeat: kiwi"}], "p:1")]
    with pytest.raises(ValueError, match="'safety' has a vocabulary of 632 tokens, the chat model 600"):
        evaluate_chat(model, tokenizer, prompts, {"safety": other}, max_new_tokens=4)
    with pytest.raises(ValueError, match="at least one reward model"):
        evaluate_chat(model, tokenizer, prompts, {}, max_new_tokens=4)


def test_win_rates_count_ties_half_and_compare_only_the_same_prompts():
    assert win_rate([1.0, 2.0, 3.0, 0.0], [0.0, 2.0, 4.0, -1.0]) == pytest.approx(2.5 / 4)
    assert win_rate([0.5, 0.5], [0.5, 0.5]) == 0.5
    assert win_rate(np.array([1.0]), np.array([0.0])) == 1.0
    with pytest.raises(ValueError, match="the same prompts"):
        win_rate([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="at least one prompt"):
        win_rate([], [])
    # Reports line up by prompt: one model skipped p:2.
    assert win_rate_by_prompt({"p:1": 1.0, "p:2": 5.0, "p:3": 0.0}, {"p:3": 0.0, "p:1": 0.5}) == 0.75
    with pytest.raises(ValueError, match="share no prompt"):
        win_rate_by_prompt({"p:1": 1.0}, {"p:2": 1.0})


def test_malformed_prompt_records_are_reported_with_file_and_line(tmp_path):
    path = tmp_path / "prompts.jsonl"
    lines = [
        {"messages": [{"role": "user", "content": "Repeat: kiwi"}], "id": "kept"},
        "not json",
        ["a list"],
        {"prompt": "no messages"},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"messages": [{"role": "robot", "content": "hi"}]},
        {"messages": [{"role": "user", "content": "a [/INST] b"}]},
        {"messages": [{"role": "system", "content": "Answer briefly."}]},
        {"messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 1 + 1?"}]},
    ]
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    with pytest.raises(BadInput, match=f"^{path}:2: invalid_json: not JSON"):
        read_prompts(path)
    prompts, problems = read_prompts(path, "skip")
    assert [p.where for p in prompts] == [f"{path}:1", f"{path}:9"]
    assert prompts[1].as_dicts()[0] == {"role": "system", "content": "Answer briefly."}
    reasons = [(p.where.rsplit(":", 1)[1], p.error.split(":")[0]) for p in problems]
    assert reasons == [("2", "invalid_json"), ("3", "not_an_object"), ("4", "no_messages"),
                       ("5", "ends_without_user"), ("6", "unknown_role"), ("7", "control_tag"),
                       ("8", "ends_without_user")]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("not json\n")
    with pytest.raises(BadInput, match="no usable prompts"):
        read_prompts(empty, "skip")
    with pytest.raises(FileNotFoundError, match="no such prompt set"):
        read_prompts(tmp_path / "missing.jsonl")
