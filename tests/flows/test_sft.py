"""The sft flow on a real Prefect API and a real local Ray Train: dialogues ingested, packed and
fine-tuned with loss on the answers only, its counts reconciled, the artifacts pretraining
publishes, and a killed worker resumed exactly."""

from __future__ import annotations

import json
import math

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId
from pydantic import ValidationError

from flows.sft import SFTFlowConfig, run_config_of, sft
from modeling.ray_job import FAULT_ENV, read_metrics, run_training
from modeling.sft import debug_run
from tasks.synthetic.instructions import make_instructions, tokenizer_texts, write_jsonl
from tasks.tokenizer import train_tokenizer
from tests.flows.test_pretrain import losses

SEQ_LEN = 64
DIALOGUES = 180
TINY_MODEL = {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 600, "multiple_of": 32,
              "max_seq_len": SEQ_LEN}


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, prefect_api, ray_local):
    root = tmp_path_factory.mktemp("sft")
    train_tokenizer(tokenizer_texts(600), root / "tokenizer", vocab_size=600)
    dialogues = make_instructions(DIALOGUES, seed=5)
    dialogues[3]["messages"][-1]["role"] = "user"  # ends without an answer: quarantined
    inputs = [str(write_jsonl(root / "raw" / "instructions.jsonl", dialogues))]
    training = debug_run(
        run_name="straight", model=TINY_MODEL, init=None, data=str(root / "sft-tokens"), output=str(root / "runs"),
        epochs=1, seq_len=SEQ_LEN, global_batch_tokens=8 * SEQ_LEN, micro_batch_rows=2, optimizer={"lr": 3e-3},
        checkpoint={"interval_steps": 4, "keep_last": 2}, seed=3,
    )
    config = SFTFlowConfig(inputs=inputs, source="instructions", training=training)
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
        state = sft(config, return_state=True)
    assert state.is_completed(), state.message
    return config, state.result(), state.state_details.flow_run_id


def test_the_flow_ingests_packs_and_fine_tunes_on_the_answers(straight_run):
    config, summary, flow_run_id = straight_run
    root = config.data_root
    ingested = json.loads(open(f"{root}/dialogues/_manifest.json").read())["totals"]["by_source"]["instructions"]
    assert (ingested["docs_in"], ingested["kept"], ingested["quarantined"]) == (DIALOGUES, DIALOGUES - 1, 1)
    packed = json.loads(open(f"{root}/sft-tokens/_manifest.json").read())
    counts = packed["sources"]["instructions"]
    assert counts["dialogues"] == DIALOGUES - 1 == counts["examples"] + sum(counts["dropped"].values())
    assert 0 < counts["answer_tokens"] < counts["tokens"]  # prompts are in the rows but not trained on
    assert packed["rows"] * (SEQ_LEN + 1) == counts["tokens"] + counts["padding_tokens"]

    # One epoch over the packed rows, 8 rows a step.
    assert summary["steps"] == summary["total_steps"] == math.ceil(packed["rows"] / 8) >= 8
    assert summary["kind"] == "sft" and summary["restarts"] == 0
    assert summary["final_loss"] < summary["first_loss"] - 1.0
    assert summary["checkpoints"][-1] == f"step-{summary['steps']:08d}"
    hf = config.run_config().run_dir / "hf"
    assert (hf / "tokenizer.model").read_bytes() == open(f"{root}/tokenizer/tokenizer.model", "rb").read()

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["sft-tokens", "sft-metrics", "sft-summary"])),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
        )
    by_key = {a.key: a for a in artifacts}
    assert by_key["sft-tokens"].type == by_key["sft-metrics"].type == "table"
    assert "# Fine-tuning straight" in by_key["sft-summary"].data
    assert "data:image/png;base64," in by_key["sft-summary"].data


def test_a_killed_worker_resumes_from_the_last_checkpoint_with_the_same_losses(straight_run, monkeypatch):
    config, _, _ = straight_run
    straight = config.run_config()
    killed = straight.model_copy(update={"run_name": "killed"})
    monkeypatch.setenv(FAULT_ENV, "1:6")  # rank 1 SIGKILLs itself after step 6; checkpoints every 4 steps
    summary = run_training(killed)

    assert (killed.run_dir / "fault-injected-1-6").exists()
    assert summary["restarts"] == 1
    resumed = [e for e in read_metrics(killed.run_dir) if e.get("event") == "resumed"]
    assert [(e["step"], e["checkpoint"]) for e in resumed] == [(4, "step-00000004")]
    # Same rows in the same order, same RNG: the curve of the run that was killed is the other's, bit for bit.
    assert losses(killed.run_dir) == losses(straight.run_dir)


def test_the_flow_config_keeps_every_stage_under_the_data_root_and_one_tokenizer(tmp_path):
    config = SFTFlowConfig(training=debug_run(data=str(tmp_path / "root" / "sft-tokens")))
    assert config.dialogue_stage == str(tmp_path / "root" / "dialogues")
    assert config.run_config().tokenizer == str(tmp_path / "root" / "tokenizer" / "tokenizer.model")
    with pytest.raises(ValidationError, match="tokenizer a.model packs the rows but training.tokenizer b.model"):
        SFTFlowConfig(tokenizer="a.model", training=debug_run(tokenizer="b.model"))
    with pytest.raises(ValidationError, match="reader"):
        SFTFlowConfig(reader="alpaca")
    # What a cancelled run's hook rebuilds to find its Ray job.
    rebuilt = run_config_of({"config": config.model_dump(), "overrides": {"training": {"run_name": "other"}}})
    assert (rebuilt.run_name, rebuilt.data) == ("other", config.training.data)
