"""Evaluation: rolling windows score every token once, perplexity equals a direct computation,
prompts that do not fit are refused or skipped by file and line, and on tasks with known answers
a random model scores at chance while one trained briefly on the tasks' distribution scores well
above it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from modeling.configs import ModelConfig
from modeling.evaluate import document_perplexity, evaluate_task, rolling_windows, score_spans, token_stage_perplexity
from modeling.objectives import batch_of_rows
from modeling.pretrain import PretrainConfig
from modeling.train import Trainer
from tasks.benchmarks import BadInput, load_task, write_task
from tasks.documents import Document
from tasks.shards import ShardWriter
from tasks.stage import InputFile, ShardUnit
from tasks.storage import resolve
from tasks.synthetic.benchmarks import corpus_documents, write_synthetic_tasks
from tasks.tokenizer import train_tokenizer
from tasks.tokens import pack_stream, row_doc_starts, write_rows_stage
from tasks.token_reader import TokenReader
from tests.modeling.helpers import random_model, tiny_config

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning"),
]
SEQ_LEN = 64


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    return write_synthetic_tasks(tmp_path_factory.mktemp("tasks"), n=64)


@pytest.fixture(scope="module")
def tokenizer(tasks, tmp_path_factory):
    return train_tokenizer(corpus_documents(tasks, 300), tmp_path_factory.mktemp("spm"), vocab_size=400,
                           hard_vocab_limit=False)


@pytest.fixture(scope="module")
def task_stage(tasks, tokenizer, tmp_path_factory):
    """A token stage of text drawn from the tasks' train records, packed as pretraining packs it."""
    ids = [tokenizer.encode(d, bos=True, eos=True) for d in corpus_documents(tasks, 3000, seed=1)]
    rows, starts, _, _ = pack_stream(iter(ids), SEQ_LEN + 1, np.uint16)
    doc_starts = row_doc_starts(starts, len(rows), SEQ_LEN + 1).to_pylist()
    return write_rows_stage(str(tmp_path_factory.mktemp("stage") / "tokens"), rows, doc_starts, tokenizer.vocab_size)


@pytest.fixture(scope="module")
def trained(task_stage, tokenizer, tmp_path_factory):
    shape = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=tokenizer.vocab_size, multiple_of=32,
                        max_seq_len=256)
    config = PretrainConfig(run_name="eval", output=str(tmp_path_factory.mktemp("runs")), data=task_stage, model=shape,
                            steps=400, seq_len=SEQ_LEN, global_batch_tokens=16 * SEQ_LEN, micro_batch_rows=16,
                            export_hf=False, optimizer={"lr": 5e-3, "weight_decay": 0.0},
                            schedule={"warmup_steps": 10})
    trainer = Trainer(config)
    trainer.train()
    return trainer.model.eval()


@pytest.mark.parametrize("n_tokens, context, stride", [(2, 8, None), (9, 8, None), (10, 8, None), (50, 8, 3),
                                                       (50, 8, 1), (50, 8, 8), (17, 16, 5)])
def test_rolling_windows_score_every_token_once_with_the_context_they_promise(n_tokens, context, stride):
    scored = []
    for start, end, n in rolling_windows(n_tokens, context, stride):
        assert end - start - 1 <= context and 1 <= n <= end - start - 1
        first = end - n
        scored.extend(range(first, end))
        if first > 1:  # after the first window: at least context - stride tokens before each scored one
            assert first - start >= context - (stride or context) + 1
    assert scored == list(range(1, n_tokens))
    with pytest.raises(ValueError, match="stride"):
        rolling_windows(n_tokens, context, context + 1)


def test_spans_read_from_a_shared_forward_score_as_each_alone():
    model = random_model(tiny_config(max_seq_len=32))
    prompt = [1, 5, 9, 13, 2]
    # One-token answers share the prompt's forward; a longer answer's forward serves its prefixes.
    spans = [(prompt + [7], 1), (prompt + [8], 1), (prompt + [7, 3, 4], 3), (prompt + [7, 3], 2), ([1, 6, 6], 2),
             (prompt + [7], 1)]
    rows = []
    model.register_forward_hook(lambda module, args, output: rows.append(len(args[0])))
    together = score_spans(model, spans, batch_size=1)
    assert rows == [1, 1]  # forwards of prompt + [7, 3] and of [1, 6]
    for span, got in zip(spans, together):
        (alone,) = score_spans(model, [span])
        np.testing.assert_allclose(got.logprobs, alone.logprobs, rtol=1e-5, atol=1e-6)
        assert (got.greedy == alone.greedy).all() and len(got.logprobs) == span[1]


def write_documents(folder, texts_by_source):
    units = []
    for source, texts in texts_by_source.items():
        path = resolve(str(folder / source / "part-00000.parquet"))
        with ShardWriter(path) as writer:
            for n, text in enumerate(texts):
                writer.write(Document(f"{source}-{n}", source, text))
        units.append(ShardUnit(source, 0, InputFile.describe(path.uri)))
    return units


def test_document_perplexity_per_source_equals_scoring_each_token_with_its_window(tmp_path, tokenizer, tasks):
    model = random_model(tiny_config(vocab_size=tokenizer.vocab_size, max_seq_len=16))
    texts = {"web": corpus_documents(tasks, 3, seed=5), "books": ["short", ""]}
    units = write_documents(tmp_path, texts)
    exact = document_perplexity(model, tokenizer, units, stride=1)
    disjoint = document_perplexity(model, tokenizer, units)
    for source, docs in texts.items():
        ids = [tokenizer.encode(t, bos=True, eos=True) for t in docs]
        nll = 0.0
        with torch.no_grad():
            for doc in ids:
                for j in range(1, len(doc)):  # token j after as many as 16 tokens before it
                    window = torch.tensor([doc[max(0, j - 16):j]])
                    nll -= model(window).logits[0, -1].log_softmax(-1)[doc[j]].item()
        tokens = sum(len(d) - 1 for d in ids)
        report = exact["sources"][source]
        assert report["tokens"] == tokens == disjoint["sources"][source]["tokens"]
        assert report["documents"] == len(docs) and report["bytes"] == sum(len(t.encode()) for t in docs)
        assert math.isclose(report["loss"], nll / tokens, rel_tol=1e-5)
    assert exact["tokens"] == sum(s["tokens"] for s in exact["sources"].values())
    # Less context (disjoint windows) cannot be told apart from more by a random model; only long
    # documents have any token scored differently.
    assert disjoint["sources"]["books"]["loss"] == pytest.approx(exact["sources"]["books"]["loss"], rel=1e-5)
    assert document_perplexity(model, tokenizer, units, max_documents=1)["sources"]["web"]["documents"] == 1


def test_token_stage_perplexity_is_the_training_loss_of_its_rows(task_stage):
    model = random_model(tiny_config(vocab_size=400))
    report = token_stage_perplexity(model, task_stage, max_rows=20, batch_rows=6)
    reader = TokenReader(task_stage, 0, 1, seed=0)
    rows = [row for row, _ in zip(reader, range(20))]
    with torch.no_grad():
        batch = batch_of_rows(rows, torch.device("cpu"), document_masking=True, answers_only=False)
        loss = model(batch.inputs, batch.targets, doc_ids=batch.doc_ids).loss.item()
    assert report["rows"] == 20 and report["tokens"] == 20 * SEQ_LEN
    assert report["loss"] == pytest.approx(loss, rel=1e-5) and report["perplexity"] == pytest.approx(math.exp(loss))


def test_a_prompt_longer_than_the_context_is_refused_or_skipped_by_file_and_line(tmp_path, tokenizer):
    model = random_model(tiny_config(vocab_size=tokenizer.vocab_size, max_seq_len=24))
    records = [{"question": "What colour is the big cherry?", "choices": ["red", "blue"], "answer": 0},
               {"question": "What colour is the " + "very " * 30 + "old leaf?", "choices": ["red", "green"], "answer": 1}]
    task = load_task(write_task(tmp_path / "mc", "mc", "multiple_choice", records))
    with pytest.raises(BadInput, match=r"test\.jsonl:2: prompt of \d+ tokens .* context of 24"):
        evaluate_task(model, tokenizer, task)
    report = evaluate_task(model, tokenizer, task, policy="skip")
    assert report["records"] == 1 and len(report["skipped"]) == 1 and "test.jsonl:2:" in report["skipped"][0]
    qa = load_task(write_task(tmp_path / "qa", "qa", "qa", [{"question": "Where?", "answers": ["Avon"]}]))
    with pytest.raises(BadInput, match=r"test\.jsonl:1: .*context of 24"):
        evaluate_task(model, tokenizer, qa, max_new_tokens=20)


def scores(model, tokenizer, tasks, shots=0):
    return {"colours": evaluate_task(model, tokenizer, tasks["colours"], shots=shots, seed=1),
            "homes": evaluate_task(model, tokenizer, tasks["homes"], shots=shots, seed=1, max_new_tokens=6),
            "doubles": evaluate_task(model, tokenizer, tasks["doubles"], shots=shots, seed=1, max_new_tokens=6)}


def test_a_random_model_scores_at_chance_and_a_trained_one_well_above(tasks, tokenizer, trained):
    untrained = random_model(ModelConfig(**(trained.config.__dict__)), seed=3)
    before = scores(untrained, tokenizer, tasks)
    assert abs(before["colours"]["acc"] - 0.25) <= 0.15 and abs(before["colours"]["acc_norm"] - 0.25) <= 0.15
    assert before["colours"]["chance"] == 0.25
    assert before["homes"]["exact_match"] <= 0.05 and before["doubles"]["maj_at_k"] <= 0.2
    after = scores(trained, tokenizer, tasks)
    assert after["colours"]["acc"] >= 0.5 and after["colours"]["acc_norm"] >= 0.5
    assert after["homes"]["exact_match"] >= 0.7
    # Ten facts, so coarse steps; chance is about a tenth.
    assert after["doubles"]["maj_at_k"] >= 0.4 and after["doubles"]["sample_accuracy"] >= 0.3
    # Same seed, same answers: the sampled majority is reproducible.
    assert evaluate_task(trained, tokenizer, tasks["doubles"], seed=1, max_new_tokens=6) == after["doubles"]
    few_shot = scores(trained, tokenizer, tasks, shots=2)
    assert few_shot["colours"]["acc"] >= 0.5 and few_shot["homes"]["exact_match"] >= 0.5
    print({k: {m: v for m, v in r.items() if m in ("acc", "acc_norm", "exact_match", "maj_at_k", "sample_accuracy")}
           for k, r in {**{f"random {k}": v for k, v in before.items()}, **{f"trained {k}": v for k, v in after.items()},
                        **{f"2-shot {k}": v for k, v in few_shot.items()}}.items()})
