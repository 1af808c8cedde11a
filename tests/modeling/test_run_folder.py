"""A run on an object store: checkpoints, metrics and the export land in the store, and a run
resumes from the store alone (its local working copy deleted), exactly."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from modeling.pretrain import PretrainConfig
from modeling.run_folder import RunFolder
from modeling.train import Trainer
from tasks.storage import resolve
from tests.modeling.helpers import tiny_config, write_token_stage

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning"),
]


@pytest.fixture
def token_stage(tmp_path) -> str:
    rows = np.stack([(np.arange(17) * 3 + i) % 96 for i in range(24)])
    return write_token_stage(tmp_path / "tokens", rows, [[0, 5]] * 24, 96)


def s3_run(stage: str, output: str, **overrides) -> PretrainConfig:
    settings = dict(run_name="remote", output=output, data=stage, model=tiny_config(vocab_size=96), seq_len=16,
                    global_batch_tokens=4 * 16, micro_batch_rows=2, steps=6, schedule={"warmup_steps": 1},
                    optimizer={"lr": 3e-3}, seed=3, checkpoint={"interval_steps": 2, "keep_last": 2}, export_hf=False)
    return PretrainConfig.model_validate(settings | overrides)


def test_a_loop_run_on_s3_checkpoints_there_and_resumes_from_the_store_alone(token_stage, tmp_path, s3_server):
    straight = Trainer(s3_run(token_stage, str(tmp_path / "local-runs")))
    expected = [m["loss"] for m in straight.train()]

    config = s3_run(token_stage, f"{s3_server}/runs")
    assert config.run_uri == "s3://llamaline/runs/remote" and not config.run_dir.is_relative_to(tmp_path)
    first = Trainer(config)
    losses = [m["loss"] for m in first.train(until=4)]
    folder = RunFolder(config.run_uri)
    assert folder.checkpoint_steps() == [2, 4]
    assert resolve(config.run_uri).join("step-00000004", "rank-00000.json").is_file()

    shutil.rmtree(config.run_dir)  # another machine: nothing local, only the store
    resumed = Trainer(config)
    assert resumed.step == 4 and resumed.resumed_from == config.run_dir / "step-00000004"
    losses += [m["loss"] for m in resumed.train()]
    assert losses == expected
    assert folder.checkpoint_steps() == [4, 6]  # keep_last 2, on the store too


def test_a_corrupt_checkpoint_on_the_store_is_skipped_for_the_one_before(token_stage, s3_server):
    config = s3_run(token_stage, f"{s3_server}/runs", run_name="corrupt", checkpoint={"interval_steps": 2, "keep_last": 3})
    Trainer(config).train(until=4)
    shutil.rmtree(config.run_dir)
    stored = resolve(config.run_uri).join("step-00000004")
    data_file = stored.join("__0_0.distcp")
    assert data_file.is_file()
    with data_file.fs.open_output_stream(data_file.path) as stream:
        stream.write(b"not the checkpoint")
    resumed = Trainer(config)
    assert resumed.step == 2 and [p.name for p, _ in resumed.skipped_checkpoints] == ["step-00000004"]


def test_a_ray_train_run_on_s3_resumes_a_killed_worker_from_the_store(token_stage, s3_server, ray_local, monkeypatch):
    from modeling.ray_job import FAULT_ENV, read_metrics, run_training

    config = s3_run(token_stage, f"{s3_server}/runs", run_name="ray-remote", export_hf=True,
                    scaling={"num_workers": 2, "cpus_per_worker": 0.5})
    monkeypatch.setenv(FAULT_ENV, "1:3")  # rank 1 dies after step 3; checkpoints at 2, 4, 6
    summary = run_training(config)

    store = resolve(config.run_uri)
    assert summary["run_dir"] == "s3://llamaline/runs/ray-remote" and summary["restarts"] == 1
    assert summary["checkpoints"] == ["step-00000004", "step-00000006"]
    assert store.join("step-00000006", "rank-00001.json").is_file() and store.join("summary.json").is_file()
    assert store.join("hf", "config.json").is_file() and summary["hf_export"] == f"{config.run_uri}/hf"
    entries = read_metrics(config.run_uri)
    assert [(e["step"], e["checkpoint"]) for e in entries if e.get("event") == "resumed"] == [(2, "step-00000002")]
    assert [e["step"] for e in entries if "loss" in e] == [1, 2, 3, 4, 5, 6]
