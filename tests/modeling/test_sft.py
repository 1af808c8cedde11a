"""The fine-tuning run config's deployments: what `prefect deploy` registers is the preset."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import pytest
import torch
import yaml
from prefect.utilities.templating import apply_values

from modeling.checkpoints import save_hf
from modeling.sft import SFTConfig, debug_run, llama2_7b_chat_run

REPO = Path(__file__).resolve().parents[2]


def sft_deployment(name: str) -> dict:
    deployments = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    return next(d for d in deployments if d["entrypoint"] == "flows.sft:sft" and d["name"] == name)


def test_the_llama2_7b_chat_deployment_is_the_papers_recipe(monkeypatch, tmp_path):
    monkeypatch.setenv("LLAMALINE_DATA", str(tmp_path))  # what `llamaline up` gives `prefect deploy` and the worker
    parameters = apply_values(sft_deployment("llama2-7b-chat")["parameters"], os.environ, remove_notset=False)
    run = llama2_7b_chat_run()
    assert SFTConfig.model_validate(parameters["config"]["training"]) == run
    assert run.init == f"{tmp_path}/runs/llama2-7b"  # the llama2-7b pretraining run's folder
    o = run.optimizer
    assert (run.peak_lr, o.weight_decay, run.schedule.final_lr_ratio, run.epochs) == (2e-5, 0.1, 0.1, 2)
    assert run.global_batch_rows == 64 and run.seq_len == 4096
    assert run.accumulation_steps(8) == 4  # 64 rows = 8 workers x 2 rows x 4 micro batches


def test_the_debug_deployment_is_the_debug_preset():
    from flows.sft import sft

    assert "parameters" not in sft_deployment("debug")  # the flow's defaults, then
    assert inspect.signature(sft.fn).parameters["config"].default.training == debug_run()


def test_a_run_starts_from_a_pretraining_runs_export_and_refuses_another_shape(tmp_path):
    from modeling.configs import named_size
    from modeling.llama import Llama

    torch.manual_seed(0)
    base = Llama(named_size("debug").config)
    save_hf(base, tmp_path / "runs" / "demo" / "hf")  # what a pretraining run leaves in its folder
    weights = debug_run(init=str(tmp_path / "runs" / "demo")).initial_weights()
    assert weights.keys() == base.state_dict().keys()
    assert all(torch.equal(weights[name], tensor) for name, tensor in base.state_dict().items())

    wider = debug_run(init=str(tmp_path / "runs" / "demo"), model={"dim": 128, "n_layers": 2, "n_heads": 4},
                      optimizer={"lr": 1e-3})
    with pytest.raises(ValueError, match="the base model's shape .* is not the run's model custom"):
        wider.initial_weights()
