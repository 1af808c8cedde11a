import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from infra.cli import app
from tasks.shards import part_location
from tasks.stage import run_stage
from tests.tasks.test_stage import make_spec, make_units

runner = CliRunner()


@pytest.mark.parametrize("command", [[], ["up"], ["status"], ["down"], ["demo"], ["shards"], ["ingest"], ["curate"], ["train-quality-model"], ["train-tokenizer"], ["tokenize"], ["mix"], ["pretrain"], ["sft"], ["reward"], ["rlhf"], ["evaluate"]])
def test_every_command_has_help(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_bad_option_type_is_a_usage_error():
    result = runner.invoke(app, ["demo", "--seed", "many"])
    assert result.exit_code == 2
    assert "Error" in result.output and "--help" in result.output


def test_pretrain_builds_its_config_from_a_preset_and_sets_and_refuses_a_bad_one(tmp_path):
    shown = runner.invoke(app, ["pretrain", "--preset", "llama2-7b", "--set", "scaling.num_workers=16",
                                "--set", "run_name=big", "--print-config"])
    assert shown.exit_code == 0, shown.output
    config = json.loads(shown.output)
    assert (config["run_name"], config["scaling"]["num_workers"], config["scaling"]["use_gpu"]) == ("big", 16, True)
    assert config["global_batch_tokens"] == 4194304 and config["parallelism"]["mixed_precision"] == "bf16"

    from_file = tmp_path / "run.yaml"
    from_file.write_text(yaml.safe_dump({**config, "scaling": {**config["scaling"], "num_workers": 1}}))
    refused = runner.invoke(app, ["pretrain", "--config", str(from_file)])
    assert refused.exit_code == 2
    assert "need at least 2 GPUs of 80 GiB" in " ".join(refused.output.split())
    assert runner.invoke(app, ["pretrain", "--set", "steps"]).exit_code == 2
    assert runner.invoke(app, ["pretrain", "--preset", "gpt-5"]).exit_code == 2


def test_sft_builds_its_flow_config_from_inputs_a_preset_and_sets_and_refuses_a_bad_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shown = runner.invoke(app, ["sft", "--input", "hh.jsonl", "--reader", "hh", "--source", "hh-rlhf",
                                "--preset", "llama2-7b-chat", "--set", "epochs=1", "--set", "init=runs/base",
                                "--set", "data=stages/sft-tokens", "--print-config"])
    assert shown.exit_code == 0, shown.output
    config = json.loads(shown.output)
    assert (config["inputs"], config["reader"], config["source"]) == ([str(tmp_path / "hh.jsonl")], "hh", "hh-rlhf")
    training = config["training"]
    assert (training["epochs"], training["init"], training["scaling"]["num_workers"]) == (1, "runs/base", 8)
    assert training["optimizer"]["lr"] == 2e-5 and training["global_batch_tokens"] == 64 * 4096

    from flows.sft import SFTFlowConfig

    flow_config = SFTFlowConfig.model_validate(config)
    assert flow_config.dialogue_stage == str(tmp_path / "stages" / "dialogues")
    assert flow_config.run_config().init == str(tmp_path / "runs" / "base")

    from_file = tmp_path / "run.yaml"
    from_file.write_text(yaml.safe_dump({**training, "scaling": {**training["scaling"], "num_workers": 1}}))
    refused = runner.invoke(app, ["sft", "--config", str(from_file)])
    assert refused.exit_code == 2
    assert "need at least 2 GPUs of 80 GiB" in " ".join(refused.output.split())
    assert runner.invoke(app, ["sft", "--reader", "alpaca"]).exit_code == 2
    assert runner.invoke(app, ["sft", "--set", "epochs=1", "--set", "steps=3"]).exit_code == 2
    assert runner.invoke(app, ["sft", "--preset", "llama2-7b"]).exit_code == 2


def test_reward_builds_its_flow_config_from_roles_a_preset_and_sets_and_refuses_a_bad_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "stages" / "rated").mkdir(parents=True)
    (tmp_path / "stages" / "rated" / "_manifest.json").write_text("{}")
    shown = runner.invoke(app, ["reward", "--mixture", "safety", "--role", "safety=stages/rated",
                                "--role", "open_harmless=hh/a.jsonl", "--role", "open_harmless=hh/b.jsonl",
                                "--hh-role", "open_harmless", "--preset", "llama2-70b-reward",
                                "--set", "margins=large", "--set", "data=stages/pairs", "--print-config"])
    assert shown.exit_code == 0, shown.output
    config = json.loads(shown.output)
    assert config["mixture"] == "safety"
    assert config["roles"]["safety"] == {"inputs": [], "reader": "comparisons", "stage": str(tmp_path / "stages" / "rated")}
    assert config["roles"]["open_harmless"] == {"inputs": [str(tmp_path / "hh" / "a.jsonl"), str(tmp_path / "hh" / "b.jsonl")],
                                                "reader": "hh", "stage": None}
    training = config["training"]
    assert (training["margins"], training["optimizer"]["lr"], training["scaling"]["num_workers"]) == ("large", 5e-6, 32)

    assert runner.invoke(app, ["reward", "--role", "safety=x.jsonl"]).exit_code == 2  # roles without a mixture
    assert runner.invoke(app, ["reward", "--mixture", "safety", "--role", "safe=x.jsonl"]).exit_code == 2
    assert runner.invoke(app, ["reward", "--mixture", "safety", "--role", "safety"]).exit_code == 2
    assert runner.invoke(app, ["reward", "--hh-role", "safety"]).exit_code == 2
    assert runner.invoke(app, ["reward", "--set", "margins=huge"]).exit_code == 2


def test_rlhf_builds_its_config_from_a_preset_options_and_sets_and_refuses_a_bad_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shown = runner.invoke(app, ["rlhf", "--preset", "llama2-7b-chat", "--prompts", "p/a.jsonl", "--prompts", "p/b.jsonl",
                                "--reward-model", "safety=runs/safe", "--rounds", "2", "--set", "gatt=null",
                                "--set", "ppo.training.iterations=50", "--print-config"])
    assert shown.exit_code == 0, shown.output
    config = json.loads(shown.output)
    assert config["prompts"] == [str(tmp_path / "p" / "a.jsonl"), str(tmp_path / "p" / "b.jsonl")]
    assert config["reward_models"] == {"safety": str(tmp_path / "runs" / "safe")}  # the options replace the preset's
    assert (config["rounds"], config["gatt"], config["ppo"]["training"]["iterations"]) == (2, None, 50)
    assert config["rejection_sampling"]["samples_per_prompt"] == 10  # the rest is the preset's
    assert runner.invoke(app, ["rlhf", "--reward-model", "harmless=x"]).exit_code == 2
    assert runner.invoke(app, ["rlhf", "--set", "rejection_sampling.selection=best"]).exit_code == 2
    assert runner.invoke(app, ["rlhf", "--preset", "llama3"]).exit_code == 2


def test_evaluate_builds_its_config_from_options_over_a_file_and_refuses_a_bad_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"benchmarks": ["colours"], "shots": 3, "token_rows": 8}))
    shown = runner.invoke(app, ["evaluate", "--config", "base.yaml", "--checkpoint", "runs/demo", "--checkpoint",
                                "hf/random", "--every-checkpoint", "--shots", "1", "--token-stage", "tokens",
                                "--print-config"])
    assert shown.exit_code == 0, shown.output
    config = json.loads(shown.output)
    assert [(c["path"], c["every_checkpoint"]) for c in config["checkpoints"]] == [
        (str(tmp_path / "runs" / "demo"), True), (str(tmp_path / "hf" / "random"), True)]
    assert (config["benchmarks"], config["shots"], config["token_rows"]) == (["colours"], 1, 8)
    assert config["token_stage"] == str(tmp_path / "tokens")
    refused = runner.invoke(app, ["evaluate", "--policy", "ignore"])
    assert refused.exit_code == 2 and "'refuse' or 'skip'" in refused.output
    chat = runner.invoke(app, ["evaluate", "--chat-prompts", "prompts.jsonl", "--reward-model", "helpfulness=rm/h",
                               "--reward-model", "safety=rm/s", "--baseline", "demo", "--print-config"])
    assert chat.exit_code == 0, chat.output
    config = json.loads(chat.output)
    assert config["chat_prompts"] == str(tmp_path / "prompts.jsonl") and config["baseline"] == "demo"
    assert config["reward_models"] == {"helpfulness": str(tmp_path / "rm" / "h"), "safety": str(tmp_path / "rm" / "s")}
    assert runner.invoke(app, ["evaluate", "--reward-model", "helpfulness"]).exit_code == 2
    alone = runner.invoke(app, ["evaluate", "--chat-prompts", "prompts.jsonl"])
    assert alone.exit_code == 2 and "need both chat_prompts and reward_models" in alone.output


def llamaline(*args: str) -> subprocess.CompletedProcess:
    """The installed console script, on the session's Prefect API and Ray (no servers of its own)."""
    import ray
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    script = Path(sys.executable).parent / "llamaline"
    return subprocess.run([str(script), *args], capture_output=True, text=True, env=env, timeout=300)


def test_evaluate_exits_1_naming_a_folder_it_cannot_read(tmp_path, prefect_api, ray_local):
    result = llamaline("evaluate", "--checkpoint", str(tmp_path / "gone"))
    assert result.returncode == 1
    assert f"{tmp_path / 'gone'}: no such folder" in " ".join(result.stdout.split())


def test_shards_command_exit_codes(tmp_path, prefect_api, ray_local):
    spec = make_spec(tmp_path / "out")
    run_stage(spec, make_units(tmp_path, files=2))
    ok = llamaline("shards", spec.stage_dir.uri)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "valid" in ok.stdout and "min_length:too_short" in ok.stdout

    part = part_location(spec.stage_dir, "c4", 1).path
    pq.write_table(pq.read_table(part).slice(0, 3), part)
    bad = llamaline("shards", "--json", spec.stage_dir.uri)
    assert bad.returncode == 1
    report = json.loads(bad.stdout)
    assert not report["valid"] and any("part-00001.parquet" in p for p in report["problems"])

    missing = llamaline("shards", str(tmp_path / "nowhere"))
    assert missing.returncode == 2
    assert "no manifest" in missing.stdout
