"""The reward flow on a real Prefect API and a real local Ray Train: Llama 2's helpfulness mixture
of synthetic rated comparisons and synthetic pairs in Anthropic HH's form (unrated), ingested with bad records
quarantined, mixed with the recipe's share realised exactly, packed, trained, evaluated per test set
and rating. (A killed worker resumed exactly through a flow is the pretrain and sft flows' test: the
same training path; the reward objective's exact resume is tests/modeling/test_reward.py's.)"""

from __future__ import annotations

import gzip
import inspect
import json
import os
from pathlib import Path

import pytest
import yaml
from prefect.utilities.templating import apply_values
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId
from pydantic import ValidationError

from flows.reward import REPORT_FILE, ComparisonSet, RewardFlowConfig, reward, run_config_of
from modeling.ray_job import read_metrics
from modeling.reward import RewardConfig, debug_run, llama2_7b_reward_run
from modeling.run_config import with_overrides
from tasks.synthetic.comparisons import make_comparisons
from tasks.synthetic.instructions import tokenizer_texts
from tasks.tokenizer import train_tokenizer

SEQ_LEN = 127
COMPARISONS = 400
HH_PAIRS = 400  # enough for the helpfulness mixture's sample, as many as its whole share
TINY_MODEL = {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 600, "multiple_of": 32,
              "max_seq_len": 128}


def hh_transcript(context, answer: str) -> str:
    turns = [("Human" if m["role"] == "user" else "Assistant", m["content"]) for m in context if m["role"] != "system"]
    return "".join(f"\n\n{speaker}: {text}" for speaker, text in [*turns, ("Assistant", answer)])


def write_hh_pairs(path, records) -> None:
    """Comparisons as Anthropic HH writes them: two transcripts, no rating, no split."""
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps({"chosen": hh_transcript(r["context"], r["chosen"]),
                                 "rejected": hh_transcript(r["context"], r["rejected"])}) + "\n" for r in records)


def flow_config(root, hh_file, run_name: str) -> RewardFlowConfig:
    training = debug_run(
        run_name=run_name, model=TINY_MODEL, init=None, data=str(root / "reward-tokens"), output=str(root / "runs"),
        seq_len=SEQ_LEN, micro_batch_rows=4, optimizer={"lr": 3e-3},
        checkpoint={"interval_steps": 4, "keep_last": 2}, seed=3,
    )
    roles = {"helpfulness": ComparisonSet(inputs=[str(root / "raw" / "rated.jsonl")]),
             "open_harmless": ComparisonSet(inputs=[str(hh_file)], reader="hh")}
    return RewardFlowConfig(mixture="helpfulness", roles=roles, training=training)


@pytest.fixture(scope="module")
def hh_pairs(tmp_path_factory):
    """HH-form pairs made from synthetic comparisons (the real file is tests/modeling/test_reward_real_data.py's)."""
    path = tmp_path_factory.mktemp("hh") / "harmless.jsonl.gz"
    write_hh_pairs(path, make_comparisons(HH_PAIRS, seed=9))
    return path


@pytest.fixture(scope="module")
def helpful_run(tmp_path_factory, prefect_api, ray_local, hh_pairs):
    root = tmp_path_factory.mktemp("reward")
    train_tokenizer(tokenizer_texts(600), root / "tokenizer", vocab_size=600)
    records = make_comparisons(COMPARISONS, seed=2)
    bad = [dict(records[0], id="same", rejected=records[0]["chosen"]), dict(records[1], id="rating", rating="meh"),
           dict(records[2], id="empty", chosen="  ")]
    (root / "raw").mkdir()
    (root / "raw" / "rated.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records + bad))
    config = flow_config(root, hh_pairs, "helpful")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
        state = reward(config, return_state=True)
    assert state.is_completed(), state.message
    return config, state.result(), state.state_details.flow_run_id


def read_json(path) -> dict:
    with open(path) as f:
        return json.load(f)


def test_the_flow_ingests_mixes_packs_trains_and_evaluates_a_helpfulness_model(helpful_run, hh_pairs):
    config, summary, flow_run_id = helpful_run
    root = config.data_root
    rated = read_json(f"{root}/comparisons-helpfulness/_manifest.json")["totals"]["by_source"]["helpfulness"]
    assert (rated["docs_in"], rated["kept"], rated["quarantined"]) == (COMPARISONS + 3, COMPARISONS, 3)
    assert rated["quarantined_reasons"] == {"same_answers": 1, "unknown_rating": 1, "empty_answer": 1}
    harmless = read_json(f"{root}/comparisons-open_harmless/_manifest.json")["totals"]["by_source"]["open_harmless"]
    assert harmless["docs_in"] == HH_PAIRS == harmless["kept"] + harmless["quarantined"]

    # The recipe: every helpfulness comparison of the train split and as many sampled from the rest.
    plan = read_json(f"{root}/reward_mix-helpfulness/_mixture.json")
    whole = sum(r["split"] == "train" for r in make_comparisons(COMPARISONS, seed=2))
    assert plan["roles"]["helpfulness"]["taken"] == plan["whole"] == whole
    assert plan["roles"]["open_harmless"]["taken"] == plan["target_sampled"] == whole
    assert plan["realised_share"] == 0.5

    packed = read_json(f"{root}/reward-tokens/_manifest.json")
    for role in ("helpfulness", "open_harmless"):
        counts = packed["sources"][role]
        assert counts["pairs"] == whole == counts["pairs_packed"] + sum(counts["dropped"].values())
    assert packed["sources"]["helpfulness"]["pairs_packed"] == whole  # the synthetic pairs all fit a row
    pairs_packed = sum(counts["pairs_packed"] for counts in packed["sources"].values())
    assert packed["rows"] < pairs_packed  # several pairs a row
    # debug_run's 2 epochs of 32 pairs a step, in the rows that hold them on average
    step_rows = config.training.rows_for_pairs(packed)
    assert step_rows == 8 * max(1, round(32 * packed["rows"] / pairs_packed / 8))
    assert summary["kind"] == "reward" and summary["steps"] == summary["total_steps"] == -(-2 * packed["rows"] // step_rows)
    steps = [e for e in read_metrics(config.run_config().run_dir) if "event" not in e]
    per_row = pairs_packed / packed["rows"]
    assert abs(step_rows * per_row - 32) <= 8 * per_row / 2  # the nearest multiple of the 8 rows of a pass
    assert abs(sum(e["loss_tokens"] for e in steps) / len(steps) - step_rows * per_row) < per_row  # pairs a step

    evaluation = summary["evaluation"]
    assert set(evaluation) == {"helpfulness", "open_harmless"}  # each role's held-out pairs, a test set
    held_out = read_json(f"{root}/reward-tokens-test-helpfulness/_manifest.json")
    report = evaluation["helpfulness"]
    assert report["pairs"] == held_out["sources"]["helpfulness"]["pairs_packed"] == COMPARISONS - whole
    assert sum(r["pairs"] for r in report["by_rating"].values()) == report["pairs"]
    assert set(report["by_rating"]) <= {"significantly_better", "better", "slightly_better"}
    assert 0 <= report["accuracy"] <= 1
    harmless_held_out = read_json(f"{root}/reward-tokens-test-open_harmless/_manifest.json")
    assert evaluation["open_harmless"]["pairs"] == harmless_held_out["sources"]["open_harmless"]["pairs_packed"] > 0
    assert set(evaluation["open_harmless"]["by_rating"]) == {"unrated"}  # HH pairs carry no rating
    assert read_json(config.run_config().run_dir / REPORT_FILE) == evaluation
    hf = json.loads((config.run_config().run_dir / "hf" / "tokenizer_config.json").read_text())
    assert hf["pad_token"] == "<unk>"

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(
                any_=["reward-mixture", "reward-metrics", "reward-summary", "reward-accuracy", "reward-evaluation"])),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
        )
    by_key = {a.key: a for a in artifacts}
    assert len(by_key) == 5
    table = json.loads(by_key["reward-accuracy"].data) if isinstance(by_key["reward-accuracy"].data, str) \
        else by_key["reward-accuracy"].data
    overall = next(row for row in table if row["test_set"] == "helpfulness" and row["rating"] == "all")
    assert overall["accuracy"] == report["accuracy"]
    assert "data:image/png;base64," in by_key["reward-evaluation"].data
    assert "# Reward model helpful" in by_key["reward-evaluation"].data


def test_the_safety_model_mixes_safety_and_harmless_with_a_tenth_of_helpfulness(helpful_run, prefect_api):
    helpful, _, _ = helpful_run
    root = helpful.data_root
    records = [dict(r, chosen_safe=True, rejected_safe=n % 2 == 0) for n, r in enumerate(make_comparisons(300, seed=4))]
    records.append(dict(records[0], id="unsafe-chosen", chosen_safe=False, rejected_safe=True))  # the paper drops these
    with open(f"{root}/raw/safety.jsonl", "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))
    roles = {"safety": ComparisonSet(inputs=[f"{root}/raw/safety.jsonl"]),
             "open_harmless": ComparisonSet(stage=f"{root}/comparisons-open_harmless"),  # ingested for the other model
             "helpfulness": ComparisonSet(stage=f"{root}/comparisons-helpfulness")}
    training = helpful.training.model_copy(update={"run_name": "safety", "data": f"{root}/reward-safety-tokens",
                                                   "epochs": 1})
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
        state = reward(RewardFlowConfig(mixture="safety", roles=roles, training=training), return_state=True)
    assert state.is_completed(), state.message
    safety = read_json(f"{root}/comparisons-safety/_manifest.json")["totals"]["by_source"]["safety"]
    assert safety["quarantined_reasons"] == {"unsafe_chosen_over_safe": 1} and safety["kept"] == 300
    plan = read_json(f"{root}/reward_mix-safety/_mixture.json")
    whole = plan["roles"]["safety"]["taken"] + plan["roles"]["open_harmless"]["taken"]
    assert plan["whole"] == whole and plan["roles"]["helpfulness"]["taken"] == plan["target_sampled"] == round(whole / 9)
    assert abs(plan["realised_share"] - 0.1) < 1 / whole
    evaluation = state.result()["evaluation"]
    assert "safety" in evaluation and "helpfulness" in evaluation  # each role's held-out pairs, its own test set
    # The same held-out helpfulness pairs as the helpfulness model's, scored by this model.
    assert evaluation["helpfulness"]["pairs"] == read_json(helpful.run_config().run_dir / REPORT_FILE)["helpfulness"]["pairs"]


def test_the_flow_config_is_checked_before_anything_runs(tmp_path):
    rated = ComparisonSet(inputs=["rated.jsonl"])
    with pytest.raises(ValidationError, match="without a mixture"):
        RewardFlowConfig(roles={"helpfulness": rated})
    with pytest.raises(ValidationError, match=r"roles \['helpful'\] are not in its roles"):
        RewardFlowConfig(mixture="helpfulness", roles={"helpful": rated})
    with pytest.raises(ValueError, match="takes all of"):
        RewardFlowConfig(mixture="safety", roles={"helpfulness": rated}).comparison_sets()
    with pytest.raises(ValidationError, match="not inputs or comparisons"):
        RewardFlowConfig(mixture="helpfulness", roles={"helpfulness": rated}, inputs=["x.jsonl"])
    with pytest.raises(ValidationError, match="either inputs to ingest or a finished stage"):
        ComparisonSet()
    with pytest.raises(ValidationError, match="export_hf"):
        RewardFlowConfig(training=debug_run(export_hf=False))
    config = RewardFlowConfig(training=debug_run(data=str(tmp_path / "root" / "pairs")))
    assert config.comparison_sets() == {"comparisons": (str(tmp_path / "root" / "comparisons"), None)}
    assert config.test_stage("comparisons") == str(tmp_path / "root" / "pairs-test-comparisons")
    assert config.run_config().tokenizer == str(tmp_path / "root" / "tokenizer" / "tokenizer.model")
    rebuilt = run_config_of({"config": config.model_dump(), "overrides": {"training": {"run_name": "other"}}})
    assert (rebuilt.run_name, rebuilt.data) == ("other", config.run_config().data)


def reward_deployment(name: str) -> dict:
    deployments = yaml.safe_load((Path(__file__).resolve().parents[2] / "prefect.yaml").read_text())["deployments"]
    return next(d for d in deployments if d["entrypoint"] == "flows.reward:reward" and d["name"] == name)


@pytest.mark.parametrize("model", ["helpful", "safety"])
def test_the_7b_deployments_are_the_papers_recipe_and_ask_for_their_roles(model, monkeypatch, tmp_path):
    monkeypatch.setenv("LLAMALINE_DATA", str(tmp_path))  # what `llamaline up` gives `prefect deploy` and the worker
    parameters = apply_values(reward_deployment(model)["parameters"], os.environ, remove_notset=False)
    mixture = {"helpful": "helpfulness", "safety": "safety"}[model]
    assert parameters["config"]["mixture"] == mixture
    expected = llama2_7b_reward_run(run_name=f"llama2-7b-reward-{model}", data=f"{tmp_path}/reward-{model}-tokens")
    assert RewardConfig.model_validate(parameters["config"]["training"]) == expected
    assert expected.init == f"{tmp_path}/runs/llama2-7b-chat-sft"  # the llama2-7b-chat SFT run's folder
    deployed = RewardFlowConfig.model_validate(parameters["config"])
    with pytest.raises(ValueError, match="give at least one of them"):  # a run without its data stops at once
        deployed.comparison_sets()
    roles = {"safety" if model == "safety" else "helpfulness": {"inputs": ["/data/meta.jsonl"]},
             "open_harmless": {"inputs": ["/data/hh"], "reader": "hh"}}
    assert sorted(with_overrides(deployed, {"roles": roles}).comparison_sets()) == sorted(roles)


def test_the_debug_deployment_is_the_debug_preset():
    assert "parameters" not in reward_deployment("debug")  # the flow's defaults, then
    assert inspect.signature(reward.fn).parameters["config"].default.training == debug_run()
