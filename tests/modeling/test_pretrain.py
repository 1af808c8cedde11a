"""The pretraining run config: what it rejects before anything starts, and what it derives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from modeling.pretrain import debug_run, llama2_7b_run
from modeling.ray_job import MetricsLog, read_metrics
from modeling.run_folder import RunFolder
from modeling.run_config import with_overrides
from tests.modeling.helpers import write_token_stage

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def stage(tmp_path_factory) -> str:
    rows = np.stack([np.arange(33) + i for i in range(48)])
    return write_token_stage(tmp_path_factory.mktemp("stage") / "tokens", rows, [[0]] * 48, 32000, shards=3)


def config(stage: str, **overrides):
    settings = dict(data=stage, seq_len=32, global_batch_tokens=8 * 32, micro_batch_rows=2, steps=10,
                    schedule={"warmup_steps": 2})
    return debug_run(**(settings | overrides))


@pytest.mark.parametrize("overrides, message", [
    ({"steps": None}, "give exactly one of train_tokens"),
    ({"train_tokens": 1000}, "give exactly one of train_tokens"),
    ({"steps": None, "train_tokens": 100}, "train_tokens \\(100\\) is less than one batch"),
    ({"micro_batch_rows": 3}, "global batch of 8 rows .* not divisible by micro_batch_rows 3 x 2 workers"),
    ({"scaling": {"num_workers": 3, "cpus_per_worker": 0.5}}, "not divisible by micro_batch_rows 2 x 3 workers"),
    ({"seq_len": 512, "global_batch_tokens": 8 * 512}, "seq_len \\(512\\) exceeds the model's max_seq_len \\(256\\)"),
    ({"schedule": {"warmup_steps": 50}}, "schedule.warmup_steps \\(50\\) exceeds the run.s 10 steps"),
    ({"model": "llama3-8b"}, "unknown model size 'llama3-8b'"),
    ({"model": "llama2-7b", "seq_len": 4096, "global_batch_tokens": 8 * 4096},
     "llama2-7b .* is not trainable on CPUs: set scaling.use_gpu=true"),
    ({"validation": {"interval_steps": 5}}, "validation.interval_steps is set but there is no validation set"),
    ({"run_name": "../elsewhere"}, "String should match pattern"),
    ({"scaling": {"num_workers": 2, "cpus_per_worker": 0.5, "gpus": 2}}, "Extra inputs are not permitted"),
])
def test_configs_that_cannot_work_are_rejected_with_what_to_change(stage, overrides, message):
    with pytest.raises(ValidationError, match=message):
        config(stage, **overrides)


def test_too_few_gpus_for_the_size():
    with pytest.raises(ValidationError, match="llama2-7b: the run trains 6.74B parameters: .* need at least 2 GPUs of 80 GiB "
                                              ".* set scaling.num_workers >= 2"):
        llama2_7b_run(scaling={"num_workers": 1, "use_gpu": True})
    with pytest.raises(ValidationError, match="need at least 4 GPUs of 40 GiB"):
        llama2_7b_run(scaling={"num_workers": 2, "use_gpu": True, "gpu_memory_gib": 40}, micro_batch_rows=1)
    seventy = llama2_7b_run(model="llama2-70b", scaling={"num_workers": 32, "use_gpu": True}, micro_batch_rows=1)
    assert seventy.scaling.num_workers == 32


def test_the_cluster_must_hold_every_worker(stage):
    gpu_run = llama2_7b_run()
    with pytest.raises(ValueError, match="needs 8 GPUs; the Ray cluster has 0. Run it on a GPU cluster"):
        gpu_run.check_cluster({"CPU": 2.0})
    gpu_run.check_cluster({"CPU": 128.0, "GPU": 8.0})
    with pytest.raises(ValueError, match="2 workers x 1.5 CPUs need 3 CPUs; the Ray cluster has 2"):
        config(stage, scaling={"num_workers": 2, "cpus_per_worker": 1.5}).check_cluster({"CPU": 2.0})
    config(stage).check_cluster({"CPU": 2.0})


def test_the_data_must_exist_be_complete_and_fit(stage, tmp_path):
    assert config(stage).check_data()["rows"] == 48
    with pytest.raises(FileNotFoundError, match="not a finished token stage .* run the stage that packs it first"):
        config(str(tmp_path / "nowhere")).check_data()
    with pytest.raises(ValueError, match="rows hold 33 tokens, so seq_len must be 32, not 16"):
        config(stage, seq_len=16, global_batch_tokens=8 * 16).check_data()
    with pytest.raises(ValueError, match="validation.holdout_shards \\(3\\) leaves none of its 3 shards"):
        config(stage, validation={"holdout_shards": 3}).check_data()
    broken = write_token_stage(tmp_path / "broken", np.stack([np.arange(33)] * 16), [[0]] * 16, 32000, shards=2)
    (Path(broken) / "shard-00001.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="1 of its 2 shards are missing, e.g. .*shard-00001.parquet"):
        config(broken).check_data()


def test_a_token_budget_gives_the_steps_and_overrides_merge_field_by_field(stage):
    budget = config(stage, steps=None, train_tokens=25 * 8 * 32)
    assert budget.total_steps == 25
    changed = with_overrides(budget, {"scaling": {"num_workers": 4}, "seed": 9})
    assert changed.scaling.num_workers == 4 and changed.scaling.cpus_per_worker == 0.5 and changed.seed == 9
    with pytest.raises(ValidationError, match="not divisible by micro_batch_rows 2 x 3 workers"):
        with_overrides(budget, {"scaling": {"num_workers": 3}})


def test_the_llama2_7b_deployment_is_the_papers_recipe():
    deployments = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    seven_b = next(d for d in deployments if d["entrypoint"] == "flows.pretrain:pretrain" and d["name"] == "llama2-7b")
    run = llama2_7b_run()
    assert type(run).model_validate(seven_b["parameters"]["config"]) == run
    o = run.optimizer
    assert (o.betas, o.eps, o.weight_decay, o.clip_grad_norm) == ((0.9, 0.95), 1e-5, 0.1, 1.0)
    assert (run.schedule.warmup_steps, run.schedule.final_lr_ratio, run.peak_lr) == (2000, 0.1, 3e-4)
    assert run.global_batch_tokens == 4 * 2**20 and run.seq_len == 4096
    assert run.total_steps == 2_000_000_000_000 // 4_194_304
    assert run.accumulation_steps(8) == 64  # 1024 rows = 8 workers x 2 rows x 64 micro batches


def test_the_metrics_log_is_rewound_to_the_resumed_step(tmp_path):
    first = MetricsLog(RunFolder(str(tmp_path)), 0)
    for step in (1, 2, 3):
        first.step({"step": step, "loss": 4.0 - step})
    first.close()
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 4, "lo')  # a line cut short by a killed worker
    resumed = MetricsLog(RunFolder(str(tmp_path)), 2)
    resumed.event(2, event="resumed", checkpoint="step-00000002")
    resumed.step({"step": 3, "loss": 0.5})
    resumed.close()
    assert [(e.get("event"), e["step"], e.get("loss")) for e in read_metrics(tmp_path)] == [
        (None, 1, 3.0), (None, 2, 2.0), ("resumed", 2, None), (None, 3, 0.5)]
