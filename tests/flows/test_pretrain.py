"""The pretrain flow on a real Prefect API and a real local Ray Train: learning, artifacts,
checkpoint retention, HF export, a killed worker resumed exactly, configs rejected up front."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId

from flows.pretrain import pretrain
from modeling.checkpoints import load_hf
from modeling.pretrain import debug_run
from modeling.ray_job import FAULT_ENV, read_metrics, run_training
from tests.modeling.helpers import write_token_stage

SEQ_LEN = 32


@pytest.fixture(scope="module")
def token_stage(tmp_path_factory) -> str:
    """96 rows in 3 shards: a few counting patterns (learnable), documents of 11 tokens."""
    rows = np.stack([(np.arange(SEQ_LEN + 1) * (1 + i % 3) + i % 5) % 500 for i in range(96)])
    return write_token_stage(tmp_path_factory.mktemp("pretrain") / "tokens", rows, [[0, 11, 22]] * 96, 32000, shards=3)


def run_config(token_stage: str, output: str, **overrides):
    settings = dict(
        run_name="straight", data=token_stage, output=output, steps=12, seq_len=SEQ_LEN,
        global_batch_tokens=8 * SEQ_LEN, micro_batch_rows=2, optimizer={"lr": 3e-3}, schedule={"warmup_steps": 2},
        checkpoint={"interval_steps": 4, "keep_last": 2},
        validation={"holdout_shards": 1, "interval_steps": 6, "rows": 4},
        scaling={"num_workers": 2, "cpus_per_worker": 0.5}, seed=3,
    )
    return debug_run(**(settings | overrides))


def losses(run_dir) -> dict[int, tuple[float, float | None]]:
    steps = [e for e in read_metrics(run_dir) if "event" not in e]
    assert [e["step"] for e in steps] == list(range(1, len(steps) + 1)), "every step logged once, in order"
    return {e["step"]: (e["loss"], e.get("validation_loss")) for e in steps}


@pytest.fixture(scope="module")
def straight_run(token_stage, tmp_path_factory, prefect_api, ray_local, monkeypatch_module):
    monkeypatch_module.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    config = run_config(token_stage, str(tmp_path_factory.mktemp("runs")))
    state = pretrain(config, return_state=True)
    assert state.is_completed(), state.message
    return config, state.result(), state.state_details.flow_run_id


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_the_flow_trains_on_ray_and_publishes_its_metrics(straight_run):
    config, summary, flow_run_id = straight_run
    run_dir = config.run_dir
    curve = losses(run_dir)
    assert len(curve) == 12 and summary["steps"] == 12
    assert summary["final_loss"] < summary["first_loss"] - 1.0
    assert [step for step, (_, validation) in curve.items() if validation is not None] == [6, 12]
    assert summary["final_validation_loss"] == curve[12][1]
    assert summary["checkpoints"] == ["step-00000008", "step-00000012"]  # Ray kept the last 2
    assert summary["restarts"] == 0
    workers = [json.loads(line) for f in sorted((run_dir / "workers").iterdir()) for line in f.read_text().splitlines()]
    assert sorted(w["rank"] for w in workers) == [0, 1]
    assert any((run_dir / "tensorboard").iterdir())

    exported = load_hf(summary["hf_export"])
    assert exported.config.n_layers == 2 and torch.isfinite(exported.output.weight).all()

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["pretrain-metrics", "pretrain-summary"])),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
        )
    by_key = {a.key: a for a in artifacts}
    assert by_key["pretrain-metrics"].type == "table"
    assert "data:image/png;base64," in by_key["pretrain-summary"].data


def test_a_killed_worker_resumes_from_the_last_checkpoint_with_the_same_losses(straight_run, monkeypatch):
    config, _, _ = straight_run
    killed = config.model_copy(update={"run_name": "killed"})
    monkeypatch.setenv(FAULT_ENV, "1:6")  # rank 1 SIGKILLs itself after step 6; checkpoints at 4, 8, 12
    summary = run_training(killed)

    assert (killed.run_dir / "fault-injected-1-6").exists()
    assert summary["restarts"] == 1
    resumed = [e for e in read_metrics(killed.run_dir) if e.get("event") == "resumed"]
    assert [(e["step"], e["checkpoint"]) for e in resumed] == [(4, "step-00000004")]
    attempts = (killed.run_dir / "workers" / "rank-00001.jsonl").read_text().splitlines()
    assert len(attempts) == 2 and json.loads(attempts[0])["pid"] != json.loads(attempts[1])["pid"]
    # Same rows in the same order, same RNG: the curve of the run that was killed is the other's, bit for bit.
    assert losses(killed.run_dir) == losses(config.run_dir)


def test_a_run_that_needs_gpus_is_rejected_before_anything_starts(token_stage, tmp_path, prefect_api, ray_local,
                                                                  monkeypatch):
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    config = run_config(token_stage, str(tmp_path), run_name="gpu", model="100m",
                        scaling={"num_workers": 4, "use_gpu": True})
    state = pretrain(config, return_state=True)
    assert state.is_failed()
    with pytest.raises(ValueError, match="100m on 4 GPU workers needs 4 GPUs; the Ray cluster has 0"):
        state.result()
    assert not (tmp_path / "gpu").exists()
