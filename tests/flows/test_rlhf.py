"""The rlhf flow on a real Prefect API and a real local Ray: one round of rejection sampling (a pool of
samples scored, the best kept, fine-tuned on), PPO (two iterations, each sampled, scored by every role
and trained as its own Ray Train job) and Ghost Attention (sampled, fine-tuned on, measured turn by
turn), every model evaluated on held-out prompts; a rerun reuses every step; what cannot work is
refused before any."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentFlowRunId,
)
from pydantic import ValidationError

from flows.ppo import PPOFlowConfig
from flows.rlhf import PRESETS, GAttConfig, RejectionSamplingConfig, RLHFConfig, rlhf
from modeling.checkpoints import save_hf
from modeling.configs import ModelConfig
from modeling.ppo_training import debug_run as ppo_debug_run
from modeling.ray_job import read_metrics
from modeling.reward import RewardModel, save_reward_hf
from modeling.rollouts import finished_rollouts
from modeling.sft import debug_run as sft_debug_run
from tasks.synthetic.instructions import tokenizer_texts, write_prompts
from tasks.tokenizer import MODEL_FILE, train_tokenizer

SEQ_LEN = 127
TINY_MODEL = {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 600, "multiple_of": 32,
              "max_seq_len": SEQ_LEN + 1}
SMALL_STEPS = {"model": TINY_MODEL, "seq_len": SEQ_LEN, "global_batch_tokens": 8 * SEQ_LEN, "micro_batch_rows": 4,
               "epochs": 1, "optimizer": {"lr": 3e-3}}


def tiny_models(root: Path) -> dict[str, str]:
    """A chat model of the tiny shape fine-tuned for a few seconds on the synthetic instructions (so
    that its answers end, with EOS), and two random reward models of its shape, saved as exports."""
    from modeling.sft import SFTConfig
    from modeling.train import Trainer
    from tasks.dialogues.ingest import ingest_dialogues
    from tasks.dialogues.readers import MessagesReader
    from tasks.sft_tokens import pack_dialogues
    from tasks.synthetic.instructions import make_instructions, write_jsonl

    tokenizer = train_tokenizer(tokenizer_texts(600), root / "tokenizer", vocab_size=600)
    spm = [str(root / "tokenizer" / MODEL_FILE)]
    write_jsonl(root / "instructions.jsonl", make_instructions(400, seed=2))
    stage = ingest_dialogues("instructions", [str(root / "instructions.jsonl")], str(root / "sft-data"),
                             MessagesReader())
    packed = pack_dialogues(stage["stage_dir"], tokenizer, str(root / "sft-data"), seq_len=SEQ_LEN, seed=0)
    config = SFTConfig(run_name="sft", output=str(root / "sft-run"), data=packed["stage_dir"], model=TINY_MODEL,
                       steps=60, seq_len=SEQ_LEN, global_batch_tokens=8 * SEQ_LEN, micro_batch_rows=8,
                       export_hf=False, optimizer={"lr": 3e-3, "weight_decay": 0.0}, schedule={"warmup_steps": 5})
    trainer = Trainer(config)
    trainer.train()
    shape = ModelConfig(**TINY_MODEL)
    return {"sft": str(save_hf(trainer.model, root / "sft", tokenizer_files=spm)),
            **{name: str(save_reward_hf(RewardModel(shape, score_seed=seed), root / name, tokenizer_files=spm))
               for name, seed in (("helpfulness", 1), ("safety", 2))}}


def rlhf_config(root: Path, models: dict[str, str]) -> RLHFConfig:
    prompts = write_prompts(root / "prompts.jsonl", n=24, seed=1)
    records = [json.loads(line) for line in prompts.read_text().splitlines()]
    records[5]["unsafe"] = True  # judged by the safety reward model
    prompts.write_text("".join(json.dumps(r) + "\n" for r in records))
    return RLHFConfig(
        run_name="tiny", output=str(root / "rlhf"), init=models["sft"], prompts=[str(prompts)],
        reward_models={"helpfulness": models["helpfulness"], "safety": models["safety"]}, rounds=1, seed=3,
        rejection_sampling=RejectionSamplingConfig(samples_per_prompt=3, max_new_tokens=12, selection="gated",
                                                   prompts_per_part=8, training=sft_debug_run(**SMALL_STEPS)),
        ppo=PPOFlowConfig(max_new_tokens=12, training=ppo_debug_run(
            model=TINY_MODEL, seq_len=SEQ_LEN, iterations=2, batch_samples=16, mini_batch_samples=8,
            micro_batch_rows=4, optimizer={"lr": 1e-4})),
        gatt=GAttConfig(dialogues=12, held_out=8, min_turns=2, max_turns=3, max_new_tokens=8,
                        training=sft_debug_run(**SMALL_STEPS)),
        evaluation_prompts=str(write_prompts(root / "held-out.jsonl", n=12, seed=9)), evaluation_max_new_tokens=8)


@pytest.fixture(scope="module")
def round_run(tmp_path_factory, prefect_api, ray_local):
    root = tmp_path_factory.mktemp("rlhf")
    config = rlhf_config(root, tiny_models(root))
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
        state = rlhf(config, return_state=True)
    assert state.is_completed(), state.message
    return config, state.result(), state.state_details.flow_run_id


def test_a_round_samples_selects_fine_tunes_then_runs_ppo_and_ghost_attention(round_run):
    config, result, _ = round_run
    assert list(result["models"]) == ["sft", "round-1-rs", "round-1-ppo", "round-1-gatt"]
    round_dir = Path(config.round_dir(1))
    samples = json.loads((round_dir / "samples" / "_manifest.json").read_text())
    assert samples["prompts_read"] == 24 == samples["prompts_sampled"] + sum(samples["prompts_skipped"].values())
    assert samples["samples"] == samples["prompts_sampled"] * 3 and samples["models"] == ["sft"]
    selection = result["rounds"][0]
    assert selection["prompts"] == samples["prompts_sampled"] == selection["selected"] + sum(selection["dropped"].values())
    assert selection["selection"] == "gated" and [p["k"] for p in selection["reward_vs_k"]] == [1, 2, 3]
    # The kept answers are what the round's fine-tuning trained on.
    packed = json.loads((round_dir / "sft-tokens" / "_manifest.json").read_text())
    assert packed["sources"]["round-01"]["dialogues"] == selection["selected"]

    # PPO: two iterations of 16 samples, each its own job (4 steps of 2 mini-batches... 2 steps each).
    ppo = result["ppo"][0]
    assert [row["iteration"] for row in ppo["iterations"]] == [0, 1]
    for iteration in (0, 1):
        manifest = finished_rollouts(str(round_dir / "ppo" / "rollouts"), iteration)
        assert manifest["samples"] == 16 and manifest["within_bounds"] and manifest["reward_safety"] is not None
        assert manifest["provenance"]["reference"] == str(Path(result["models"]["round-1-rs"]))
    first_policy = finished_rollouts(str(round_dir / "ppo" / "rollouts"), 0)["provenance"]["policy"]
    second_policy = finished_rollouts(str(round_dir / "ppo" / "rollouts"), 1)["provenance"]["policy"]
    assert first_policy == result["models"]["round-1-rs"] and second_policy.endswith("round-01-ppo/hf")
    steps = [e for e in read_metrics(ppo["run_dir"]) if "event" not in e and "loss" in e]
    assert [e["step"] for e in steps] == [1, 2, 3, 4] and all("clip_fraction" in e for e in steps)
    # The first step of each iteration is scored by the very policy that sampled it: nothing clipped.
    assert steps[0]["clip_fraction"] == 0 and steps[2]["clip_fraction"] == 0
    assert (Path(ppo["run_dir"]) / "hf" / "value" / "config.json").is_file()

    # Ghost Attention: sampled from the PPO model, every conversation accounted for, measured before and after.
    gatt = json.loads((round_dir / "gatt" / "sampled" / "gatt.json").read_text())
    assert gatt["dialogues"] == 12 == gatt["kept"] + sum(gatt["dropped"].values()) and gatt["records"] >= gatt["kept"]
    assert gatt["model"] == result["models"]["round-1-ppo"]
    measured = result["gatt"][0]
    assert set(measured) == {"before", "after"} and measured["before"]["measured"][0] == 8

    evaluation = {row["model"]: row for row in result["evaluation"]}
    assert list(evaluation) == list(result["models"])
    assert all(0 <= row["exact_match"] <= 1 and row["prompts"] == 12 for row in evaluation.values())
    assert evaluation["sft"]["win_rate_vs_sft"] == 0.5  # a model against itself


def test_the_round_publishes_its_figures(round_run):
    """On the round's own flow run and its subflows' (the session's other flows publish these keys too)."""
    import asyncio

    _, _, flow_run_id = round_run

    async def published() -> dict[str, list]:
        async with get_client() as client:
            children = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))
            runs = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id, *(child.id for child in children)]))
            keys = ["rlhf-round", "rlhf-summary", "rlhf-evaluation", "rlhf-gatt", "ppo-iterations", "ppo-progress"]
            artifacts = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)),
                                                    flow_run_filter=runs)
            return {key: [a for a in artifacts if a.key == key] for key in keys}

    by_key = asyncio.run(published())
    assert all(by_key.values()), {key: len(found) for key, found in by_key.items()}
    [summary] = by_key["rlhf-summary"]
    assert "Rejection sampling" in summary.data and "Ghost Attention" in summary.data and "image/png" in summary.data
    assert len(by_key["ppo-iterations"]) == 2  # published after each of the two iterations


def test_a_rerun_reuses_every_finished_step(round_run):
    config, result, _ = round_run
    round_dir = Path(config.round_dir(1))
    sampled = {p: p.stat().st_mtime_ns for p in (round_dir / "samples").glob("part-*.parquet")}
    started = time.perf_counter()
    again = rlhf(config)
    print(f"rerun of a finished round: {time.perf_counter() - started:.1f} s")
    assert again["models"] == result["models"] and again["rounds"][0]["digest"] == result["rounds"][0]["digest"]
    assert {p: p.stat().st_mtime_ns for p in sampled} == sampled
    restarts = [e for e in read_metrics(result["ppo"][0]["run_dir"]) if e.get("event") in ("started", "resumed")]
    assert len(restarts) == 2  # one job per iteration, none again


def test_what_cannot_work_is_refused_before_any_step(tmp_path, round_run):
    config, _, _ = round_run
    with pytest.raises(ValueError, match="no prompts"):
        config.model_copy(update={"prompts": []}).check()
    with pytest.raises(ValueError, match="needs the safety reward model"):
        config.model_copy(update={"reward_models": {"helpfulness": config.reward_models["helpfulness"]}}).check()
    with pytest.raises(ValueError, match="not a reward model export"):
        config.model_copy(update={"reward_models": {**config.reward_models, "safety": config.init}}).check()
    with pytest.raises(ValidationError, match="the reward models are helpfulness and safety"):
        RLHFConfig(reward_models={"harmless": "x"})


def rlhf_deployment(name: str) -> dict:
    import yaml

    deployments = yaml.safe_load((Path(__file__).resolve().parents[2] / "prefect.yaml").read_text())["deployments"]
    return next(d for d in deployments if d["entrypoint"] == "flows.rlhf:rlhf" and d["name"] == name)


def test_the_deployments_are_the_presets_and_the_papers_run_asks_for_its_prompts(monkeypatch, tmp_path):
    monkeypatch.setenv("LLAMALINE_DATA", str(tmp_path))  # what `llamaline up` gives the worker
    assert rlhf_deployment("debug")["parameters"] == {"preset": "debug"}
    assert rlhf_deployment("llama2-7b-chat")["parameters"] == {"preset": "llama2-7b-chat"}
    paper = PRESETS["llama2-7b-chat"]()
    rs, ppo = paper.rejection_sampling, paper.ppo.training
    assert (paper.rounds, rs.samples_per_prompt, rs.temperature, rs.pool, rs.selection) == (5, 10, 1.2, "all", "gated")
    assert (ppo.batch_samples, ppo.mini_batch_samples, ppo.peak_lr, ppo.clip_ratio, ppo.kl_beta) == (512, 64, 1e-6, 0.2, 0.01)
    assert paper.gatt.max_turns == 20 and paper.init == f"{tmp_path}/runs/llama2-7b-chat-sft"
    assert paper.reward_models == {"helpfulness": f"{tmp_path}/runs/llama2-7b-reward-helpful",
                                   "safety": f"{tmp_path}/runs/llama2-7b-reward-safety"}
    with pytest.raises(ValueError, match="no prompts"):  # given at run time; a run without them stops at once
        paper.check()
    debug = PRESETS["debug"]()
    assert debug.prompts == [f"{tmp_path}/demo/raw/prompts/prompts.jsonl"] and debug.ppo.training.iterations == 2
