"""The evaluate flow on a real Prefect API: a run trained on Ray Train on the synthetic tasks'
text, every checkpoint it kept and its export, and a random model, scored on the synthetic tasks,
on perplexity and on chat metrics by two random reward models; the table and the plot read back
through the Prefect client; configs that cannot work refused, by their path, before any model is
loaded."""

from __future__ import annotations

import base64
import gzip
import json
import re

import numpy as np
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId
from pydantic import ValidationError

from flows.evaluate import CheckpointSource, EvaluateConfig, evaluate
from flows.ingest import IngestConfig, ingest
from modeling.checkpoints import save_hf
from modeling.configs import ModelConfig
from modeling.pretrain import PretrainConfig
from modeling.ray_job import run_training
from modeling.reward import RewardModel, save_reward_hf
from tasks.synthetic.benchmarks import corpus_documents, write_synthetic_tasks
from tasks.synthetic.instructions import write_prompts
from tasks.tokenizer import train_tokenizer
from tasks.tokens import pack_stream, row_doc_starts, write_rows_stage
from tests.modeling.helpers import random_model

SEQ_LEN = 64
STEPS = 400
BATCH_TOKENS = 16 * SEQ_LEN
RECORDS = 32  # homes' test records; colours has 64, doubles 10
REWARD_MODELS = ("helpfulness", "safety")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, prefect_api, ray_local):
    """The synthetic tasks' train text: a tokenizer, a token stage packed as pretraining packs it,
    and a document stage of held-out texts ingested as C4."""
    root = tmp_path_factory.mktemp("evaluate")
    tasks = write_synthetic_tasks(root / "tasks", n=RECORDS)
    tokenizer = train_tokenizer(corpus_documents(tasks, 300), root / "tokenizer", vocab_size=400,
                                hard_vocab_limit=False)
    ids = [tokenizer.encode(d, bos=True, eos=True) for d in corpus_documents(tasks, 3000, seed=1)]
    rows, starts, _, _ = pack_stream(iter(ids), SEQ_LEN + 1, np.uint16)
    doc_starts = row_doc_starts(starts, len(rows), SEQ_LEN + 1).to_pylist()
    stage = write_rows_stage(str(root / "tokens"), rows, doc_starts, tokenizer.vocab_size)
    raw = root / "raw" / "c4-train.00000-of-01024.json.gz"
    raw.parent.mkdir()
    with gzip.open(raw, "wt") as lines:
        for n, text in enumerate(corpus_documents(tasks, 12, seed=2)):
            lines.write(json.dumps({"text": text, "url": f"https://example.org/{n}", "timestamp": "2023-01-01"}) + "\n")
    ingest(IngestConfig(source="c4", inputs=[str(raw)], output=str(root)))
    return root, stage, str(root / "ingest")


@pytest.fixture(scope="module")
def trained_run(corpus):
    """STEPS steps of a tiny model on the tasks' text (above chance on them after 400, see
    tests/modeling/test_evaluate.py), a checkpoint every 100 steps, exported with its tokenizer."""
    root, stage, _ = corpus
    shape = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=400, multiple_of=32, max_seq_len=256)
    config = PretrainConfig(
        run_name="synthetic", output=str(root / "runs"), data=stage, model=shape, steps=STEPS, seq_len=SEQ_LEN,
        global_batch_tokens=BATCH_TOKENS, micro_batch_rows=16, tokenizer=str(root / "tokenizer" / "tokenizer.model"),
        optimizer={"lr": 5e-3, "weight_decay": 0.0}, schedule={"warmup_steps": 10},
        checkpoint={"interval_steps": 100, "keep_last": 4}, log_every=50, scaling={"num_workers": 1},
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
        summary = run_training(config)
    assert summary["checkpoints"] == [f"step-{s:08d}" for s in (100, 200, 300, 400)]
    return config.run_dir, shape


def random_reward_export(shape, folder, tokenizer, seed: int):
    """A reward model on a random backbone: the flow's chat metrics wiring (their meaning is
    tests/modeling/test_chat_eval.py's)."""
    model = RewardModel(shape, score_seed=seed)
    backbone = random_model(shape, seed=seed).state_dict()
    model.backbone.load_state_dict({name: tensor for name, tensor in backbone.items() if name != "output.weight"})
    return save_reward_hf(model, folder, tokenizer_files=[tokenizer])


@pytest.fixture(scope="module")
def evaluated(corpus, trained_run):
    root, stage, documents = corpus
    run_dir, shape = trained_run
    tokenizer = root / "tokenizer" / "tokenizer.model"
    random = save_hf(random_model(shape, seed=3), root / "random", tokenizer_files=[tokenizer])
    reward_models = {name: str(random_reward_export(shape, root / name, tokenizer, seed))
                     for seed, name in enumerate(REWARD_MODELS, 4)}
    config = EvaluateConfig(
        checkpoints=[CheckpointSource(path=str(run_dir), every_checkpoint=True), str(run_dir),
                     CheckpointSource(path=str(random), label="random")],
        synthetic_records=RECORDS, max_new_tokens=6, token_stage=stage, token_rows=32, document_stage=documents,
        seed=1, chat_prompts=str(write_prompts(root / "prompts.jsonl", n=8)), reward_models=reward_models,
        baseline="random", chat_max_new_tokens=8,
    )
    state = evaluate(config, return_state=True)
    assert state.is_completed(), state.message
    return {r["checkpoint"]: r for r in state.result()}, state.state_details.flow_run_id


def read_artifacts(flow_run_id, keys):
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)),
                                          flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {a.key: a for a in artifacts}


def test_every_checkpoint_is_a_row_of_the_table_and_each_benchmark_is_plotted_against_tokens(evaluated):
    results, flow_run_id = evaluated
    labels = [f"synthetic step {s}" for s in (100, 200, 300, 400)] + ["synthetic", "random"]
    assert list(results) == labels
    # Training tokens from the run's metrics log: steps x global_batch_tokens; the export's are the last step's.
    tokens = [s * BATCH_TOKENS for s in (100, 200, 300, 400, 400)] + [None]
    assert [results[label]["tokens"] for label in labels] == tokens

    artifacts = read_artifacts(flow_run_id, ["evaluation-scores", "evaluation-summary"])
    table = json.loads(artifacts["evaluation-scores"].data)
    assert [row["checkpoint"] for row in table] == labels
    assert set(table[0]) == {
        "checkpoint", "step", "training_tokens", "colours acc", "colours acc_norm", "homes exact_match",
        "doubles maj_at_k", "doubles sample_accuracy", "tokens perplexity", "ingest perplexity", "ingest bits_per_byte",
        *(f"{name} {column}" for name in REWARD_MODELS for column in ("reward", "win rate vs random"))}
    assert table[-1]["colours acc"] == results["random"]["benchmarks"]["colours"]["acc"]
    for row, label in zip(table, labels):
        chat = results[label]["chat"]
        assert chat["prompts"] == 8 and not chat["skipped"]
        for name in REWARD_MODELS:
            assert row[f"{name} reward"] == pytest.approx(np.mean(list(chat["rewards"][name].values())))
            assert row[f"{name} win rate vs random"] == chat["win_rates"][name] and 0 <= chat["win_rates"][name] <= 1
    assert table[-1]["helpfulness win rate vs random"] == 0.5  # the baseline against itself: all ties
    assert table[0]["helpfulness reward"] != table[0]["safety reward"]
    # The last checkpoint is the export: the same answers, the same rewards.
    assert results["synthetic step 400"]["chat"]["rewards"] == results["synthetic"]["chat"]["rewards"]

    summary = artifacts["evaluation-summary"].data
    png = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)\)", summary)
    assert png and base64.b64decode(png.group(1)).startswith(b"\x89PNG\r\n\x1a\n")
    assert "Not plotted, no record of their training tokens: random." in summary
    assert "judged by helpfulness, safety; win rates against random, ties counted half." in summary


def test_the_trained_model_scores_above_chance_and_the_random_one_at_chance(evaluated):
    results, _ = evaluated
    trained, random = results["synthetic"]["benchmarks"], results["random"]["benchmarks"]
    assert trained["colours"]["acc"] >= 0.5 and trained["homes"]["exact_match"] >= 0.7
    assert trained["colours"]["chance"] == 0.25 and abs(random["colours"]["acc"] - 0.25) <= 0.15
    assert random["homes"]["exact_match"] <= 0.05 and random["doubles"]["maj_at_k"] <= 0.2
    # The last checkpoint, read from the training files, is the export: the same scores.
    assert results["synthetic step 400"]["benchmarks"] == trained
    assert results["synthetic step 400"]["perplexity"] == results["synthetic"]["perplexity"]
    perplexity = {label: r["perplexity"]["tokens"]["perplexity"] for label, r in results.items()}
    assert perplexity["synthetic"] < perplexity["synthetic step 100"] < perplexity["random"]
    held_out = {label: r["perplexity"]["ingest"] for label, r in results.items()}
    assert held_out["synthetic"]["documents"] == 12
    assert held_out["synthetic"]["bits_per_byte"] < held_out["random"]["bits_per_byte"]


def task_run_names(flow_run_id) -> list[str]:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return [run.name for run in runs]


@pytest.fixture
def bad_task(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "task.json").write_text("{kind: multiple_choice")
    return tmp_path / "broken"


def test_a_config_that_cannot_work_fails_naming_its_path_before_any_model_is_loaded(corpus, trained_run, bad_task,
                                                                                     tmp_path):
    run_dir, _ = trained_run
    missing = tmp_path / "no-such-run"
    (tmp_path / "empty").mkdir()
    prompts = write_prompts(tmp_path / "prompts.jsonl", n=4)
    bad_prompts = tmp_path / "bad-prompts.jsonl"
    bad_prompts.write_text(prompts.read_text() + '{"messages": [{"role": "user", "content": "hi"}, '
                                                 '{"role": "assistant", "content": "hello"}]}\n')
    not_reward = {"helpfulness": str(run_dir / "hf")}
    cases = [
        ({"checkpoints": [str(missing)]}, f"{missing}: no such folder"),
        ({"checkpoints": [str(tmp_path / "empty")]}, f"{tmp_path / 'empty'}: neither a model folder"),
        ({"benchmarks": ["colour"]}, "colour: neither a synthetic task (colours, homes, doubles) nor a task folder"),
        ({"benchmarks": [str(bad_task)]}, f"{bad_task / 'task.json'}:1: not JSON"),
        ({"benchmarks": ["doubles"], "shots": 10}, "doubles: 10-shot prompts need 10 train records, the pool has 9"),
        ({"token_stage": str(tmp_path / "tokens")}, f"{tmp_path / 'tokens'}: not a finished token stage"),
        ({"baseline": "nobody"}, "baseline 'nobody' is none of the checkpoints: synthetic"),
        ({"chat_prompts": str(tmp_path / "none.jsonl"), "reward_models": not_reward},
         f"{tmp_path / 'none.jsonl'}: no such prompt set"),
        ({"chat_prompts": str(bad_prompts), "reward_models": not_reward}, f"{bad_prompts}:5: ends_without_user"),
        ({"chat_prompts": str(prompts), "reward_models": not_reward},
         f"reward model 'helpfulness': {run_dir / 'hf'}: not a reward model"),
    ]
    for change, message in cases:
        config = EvaluateConfig.model_validate({"checkpoints": [str(run_dir)], **change})
        state = evaluate(config, return_state=True)
        assert state.is_failed()
        with pytest.raises((FileNotFoundError, ValueError), match=re.escape(message)):
            state.result()
        assert not [name for name in task_run_names(state.state_details.flow_run_id) if name.startswith("evaluate ")]


def test_the_config_refuses_what_it_can_tell_alone():
    with pytest.raises(ValidationError, match="nothing to evaluate"):
        EvaluateConfig(benchmarks=[])
    with pytest.raises(ValidationError, match="need both chat_prompts and reward_models"):
        EvaluateConfig(chat_prompts="prompts.jsonl")
    with pytest.raises(ValidationError, match="need both chat_prompts and reward_models"):
        EvaluateConfig(reward_models={"safety": "runs/safety/hf"})
    with pytest.raises(ValidationError, match="both named 'tokens'"):
        EvaluateConfig(token_stage="a/tokens", document_stage="b/tokens")
    with pytest.raises(ValidationError, match="Extra inputs"):
        EvaluateConfig(checkpoints=[{"path": "runs/demo", "every": True}])
    with pytest.raises(ValidationError, match="at least 1 item"):
        EvaluateConfig(checkpoints=[])
    assert EvaluateConfig(checkpoints=["runs/demo"]).checkpoints == [CheckpointSource(path="runs/demo")]
    # By default, the demo's runs: every checkpoint of the base model, the chat model's export.
    base, chat = EvaluateConfig().checkpoints
    assert base.path.endswith("/demo/runs/demo") and base.every_checkpoint
    assert chat.path.endswith("/demo/runs/demo-sft") and not chat.every_checkpoint
