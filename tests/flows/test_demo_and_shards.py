"""The demo and shards flows against a real Prefect API and a real local Ray."""

import hashlib
import math
import json
import re
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId

from flows.demo import DemoConfig, demo
from flows.shards import ShardsConfig, StageInvalid, shards
from modeling.checkpoints import load_hf
from modeling.model_folders import folder_checkpoints
from modeling.ray_job import read_metrics
from modeling.reward import debug_run as reward_debug_run


def _artifacts(keys, flow_run_id=None):
    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])) if flow_run_id else None,
        )


def test_demo_flow_ingests_curates_and_validates(demo_run):
    report, flow_run_id, root = demo_run
    assert report["valid"] and report["problems"] == [] and report["stage"] == "curated"
    ingested = (root / "demo" / "ingest" / "_manifest.json").read_text()
    stats = json.loads(ingested)["totals"]["by_source"]["c4"]
    assert sorted(report["by_source"]) == ["arxiv", "books", "c4", "commoncrawl", "wikipedia"]
    assert stats["parts"] == 2
    assert stats["docs_in"] == 400 == stats["kept"] + stats["dropped_total"] + stats["quarantined"]
    assert stats["quarantined"] > 0
    assert 0 < report["by_source"]["c4"]["kept"] <= stats["kept"]
    keys = ["ingest-c4", "shards-ingest", "shards-curated-summary", "curate-stages", "curate-languages", "curate-perplexity-commoncrawl"]
    kinds = {a.key: a.type for a in _artifacts(keys)}
    assert kinds == {"ingest-c4": "table", "shards-ingest": "table", "shards-curated-summary": "markdown",
                     "curate-stages": "table", "curate-languages": "markdown", "curate-perplexity-commoncrawl": "markdown"}


def test_demo_rerun_gives_identical_shards(demo_run):
    report, _, root = demo_run

    def parts(report):
        return [(p["path"], open(p["path"], "rb").read()) for p in report["parts"]]

    first = parts(report)
    shutil.rmtree(root / "demo" / "ingest")
    shutil.rmtree(root / "demo" / "curated")
    again = demo(DemoConfig(data_root=str(root), seed=7))
    assert parts(again) == first


def test_shards_flow_fails_on_a_corrupted_stage_and_names_the_file(demo_run, tmp_path):
    report, _, root = demo_run
    stage = tmp_path / "ingest"
    shutil.copytree(root / "demo" / "ingest", stage)
    # The manifest lists absolute paths of the original stage: point the copy's manifest at the copy.
    manifest_text = (stage / "_manifest.json").read_text().replace(str(root / "demo" / "ingest"), str(stage))
    (stage / "_manifest.json").write_text(manifest_text)
    assert shards(ShardsConfig(stage_dir=str(stage)))["valid"]

    part = stage / "c4" / "part-00001.parquet"
    pq.write_table(pq.read_table(part).slice(0, 5), part, compression="zstd")
    with pytest.raises(StageInvalid, match="part-00001.parquet: size"):
        shards(ShardsConfig(stage_dir=str(stage)))
    summary = _artifacts(["shards-ingest-summary"])
    assert any("INVALID" in (a.data or "") for a in summary)


def test_shards_flow_names_both_places_of_an_id_two_parts_share(demo_run, tmp_path):
    _, _, root = demo_run
    stage = tmp_path / "ingest"
    shutil.copytree(root / "demo" / "ingest", stage)
    manifest = json.loads((stage / "_manifest.json").read_text().replace(str(root / "demo" / "ingest"), str(stage)))
    first, second = stage / "c4" / "part-00000.parquet", stage / "c4" / "part-00001.parquet"
    shared = pq.read_table(first).column("id")[3].as_py()
    table = pq.read_table(second)
    ids = table.column("id").to_pylist()
    ids[5] = shared
    pq.write_table(table.set_column(0, table.schema.field("id"), pa.array(ids, pa.string())), second, compression="zstd")
    # The manifest agrees with the changed part: only the shared id is wrong with the stage.
    part = next(p for p in manifest["parts"] if p["path"] == str(second))
    part.update(bytes=second.stat().st_size, sha256=hashlib.sha256(second.read_bytes()).hexdigest())
    (stage / "_manifest.json").write_text(json.dumps(manifest))
    expected = f"{second}: record 5: duplicate id '{shared}', also at {first}: record 3"
    with pytest.raises(StageInvalid, match=re.escape(expected)):
        shards(ShardsConfig(stage_dir=str(stage), scratch_dir=str(tmp_path / "scratch")))
    assert not list((tmp_path / "scratch").iterdir())


def test_shards_flow_on_a_folder_without_manifest(tmp_path, prefect_api, ray_local):
    state = shards(ShardsConfig(stage_dir=str(tmp_path)), return_state=True)
    assert state.is_failed()
    with pytest.raises(FileNotFoundError, match="no manifest"):
        state.result()


def test_demo_pretrains_the_debug_model_on_its_tokens(demo_run):
    _, _, root = demo_run
    run_dir = root / "demo" / "runs" / "demo"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == summary["total_steps"] == 40
    losses = [e["loss"] for e in read_metrics(run_dir) if "event" not in e]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5  # the 32k logits learn the 400-token vocabulary
    assert (run_dir / "hf" / "model.safetensors").exists() and (run_dir / "hf" / "tokenizer.model").exists()


def test_demo_fine_tunes_its_pretrained_model_on_instruction_dialogues(demo_run):
    _, _, root = demo_run
    ingested = json.loads((root / "demo" / "dialogues" / "_manifest.json").read_text())["totals"]["by_source"]
    dialogues = ingested["instructions"]
    assert dialogues["docs_in"] == 200 == dialogues["kept"] + dialogues["dropped_total"] + dialogues["quarantined"]
    packed = json.loads((root / "demo" / "sft-tokens" / "_manifest.json").read_text())
    counts = packed["sources"]["instructions"]
    assert counts["dialogues"] == dialogues["kept"] == counts["examples"] + sum(counts["dropped"].values())
    assert packed["rows"] * 129 == counts["tokens"] + counts["padding_tokens"]

    run_dir = root / "demo" / "runs" / "demo-sft"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["kind"] == "sft"
    assert summary["steps"] == summary["total_steps"] == math.ceil(2 * packed["rows"] / 8)  # 2 epochs, 8 rows a step
    losses = [e["loss"] for e in read_metrics(run_dir) if "event" not in e]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0  # the answers are learnt
    assert (run_dir / "hf" / "model.safetensors").exists() and (run_dir / "hf" / "tokenizer.model").exists()


def test_demo_trains_a_reward_model_from_its_chat_model_and_evaluates_it(demo_run):
    _, _, root = demo_run
    ingested = json.loads((root / "demo" / "comparisons" / "_manifest.json").read_text())["totals"]["by_source"]
    assert ingested["synthetic"]["docs_in"] == 600 == ingested["synthetic"]["kept"]
    packed = json.loads((root / "demo" / "reward-tokens" / "_manifest.json").read_text())
    counts = packed["sources"]["synthetic"]
    assert counts["pairs"] + counts["other_split"] == 600  # the train split here, the test split held out
    assert counts["pairs"] == counts["pairs_packed"] + sum(counts["dropped"].values())
    run_dir = root / "demo" / "runs" / "demo-reward"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["kind"] == "reward"
    step_rows = reward_debug_run().rows_for_pairs(packed)  # the rows of 32 pairs
    assert summary["steps"] == summary["total_steps"] == math.ceil(2 * packed["rows"] / step_rows)  # 2 epochs
    assert (run_dir / "hf" / "config.json").exists()
    report = json.loads((run_dir / "reward_eval.json").read_text())["synthetic"]
    held_out = json.loads((root / "demo" / "reward-tokens-test-synthetic" / "_manifest.json").read_text())
    assert report["pairs"] == held_out["sources"]["synthetic"]["pairs_packed"] > 0
    assert sum(r["pairs"] for r in report["by_rating"].values()) == report["pairs"]


def test_demo_evaluates_its_base_model_at_each_checkpoint_and_its_chat_model(demo_run):
    _, _, root = demo_run
    tables = [json.loads(a.data) for a in _artifacts(["evaluation-scores"])]
    # One table per demo run (the rerun test runs it again), the same checkpoints in each.
    table = [t for t in tables if [row["checkpoint"] for row in t] == ["demo step 30", "demo step 40", "demo-sft"]][-1]
    chat = json.loads((root / "demo" / "runs" / "demo-sft" / "summary.json").read_text())
    assert [row["training_tokens"] for row in table] == [30 * 1024, 40 * 1024, chat["tokens"]]  # steps x 8 rows of 128
    for row in table:
        assert 0 <= row["colours acc"] <= 1 and 0 <= row["homes exact_match"] <= 1 and 0 <= row["doubles maj_at_k"] <= 1
    # Two workers wrote the base run's last checkpoint: read whole, it is the exported model.
    last = folder_checkpoints(str(root / "demo" / "runs" / "demo"), every_checkpoint=True)[-1]
    exported = load_hf(root / "demo" / "runs" / "demo" / "hf").state_dict()
    assert all(torch.equal(tensor, exported[name]) for name, tensor in last.load()[0].state_dict().items())


def test_demo_runs_a_debug_rlhf_round_on_its_chat_and_reward_models(demo_run):
    _, _, root = demo_run
    round_dir = root / "demo" / "rlhf" / "rlhf-debug" / "round-01"
    samples = json.loads((round_dir / "samples" / "_manifest.json").read_text())
    assert samples["prompts_read"] == 64 == samples["prompts_sampled"] + sum(samples["prompts_skipped"].values())
    selection = json.loads((round_dir / "selection" / "selection.json").read_text())
    assert selection["prompts"] == selection["selected"] + sum(selection["dropped"].values())
    assert selection["reward_models"]["helpfulness"] == str(root / "demo" / "runs" / "demo-reward" / "hf")
    rs_run = root / "demo" / "rlhf" / "rlhf-debug" / "runs" / "rlhf-debug-round-01-rs"
    ppo_run = root / "demo" / "rlhf" / "rlhf-debug" / "runs" / "rlhf-debug-round-01-ppo"
    assert json.loads((rs_run / "summary.json").read_text())["kind"] == "sft"
    ppo = json.loads((ppo_run / "summary.json").read_text())
    assert ppo["kind"] == "ppo" and ppo["steps"] == 2 * 4  # two iterations of 32 samples, 8 a step
    for iteration in (0, 1):
        rollouts = json.loads((round_dir / "ppo" / "rollouts" / f"iteration-{iteration:04d}" / "_manifest.json").read_text())
        assert rollouts["samples"] == 32 and rollouts["within_bounds"] and rollouts["reward_safety"] is None
    [evaluation] = [json.loads(a.data) for a in _artifacts(["rlhf-evaluation"])][-1:]
    assert [row["model"] for row in evaluation] == ["sft", "round-1-rs", "round-1-ppo"]
    assert all(row["prompts"] == 32 and 0 <= row["exact_match"] <= 1 for row in evaluation)
