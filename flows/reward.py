"""`reward`: a reward model from comparisons: ingest -> mix -> pack -> train -> evaluate.

Comparison files (JSON lines in our form with ratings and safety labels, or Anthropic HH pairs)
are ingested into comparison stages (`tasks.preferences`): one set (`inputs`, into
`<root>/comparisons`) or, for a Llama 2 mixture (`mixture`: helpfulness or safety), one stage per
role (`roles`, into `<root>/comparisons-<role>`, or a finished stage given as is), mixed by the
recipe (`tasks.preferences.mix`). The `train` split of what the model trains on is packed into
pair rows at `training.data` (`tasks.reward_tokens`); the reward model is trained from the chat
model (`training.init`) on the training path every run takes (`flows.training`: artifacts
`reward-metrics`, `reward-summary`). Then each set's `test` split, packed beside it
(`<training.data>-test-<set>`), is scored by the exported model: accuracy overall and per rating
(table artifact `reward-accuracy`) and the distributions of chosen and rejected rewards (markdown
artifact `reward-evaluation`), also written to the run folder as `reward_eval.json`.

Every stage sits under the data root, the folder holding `training.data`; the tokenizer is
`<root>/tokenizer/tokenizer.model` unless given. Ingest and packing skip what is already done with
the same inputs.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Literal

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import BaseModel, Field, model_validator

from flows.figures import png_bytes, pyplot
from flows.training import root_and_name, run_config_of_parameters, stop_job_on_cancellation, train
from modeling.reward import RewardConfig, debug_run
from modeling.run_config import with_overrides

REPORT_FILE = "reward_eval.json"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
Reader = Literal["comparisons", "hh"]


class ComparisonSet(BaseModel):
    """Comparisons of one role: files to ingest, or a comparison stage already ingested."""

    inputs: list[str] = Field(default_factory=list, description="Comparison files or folders (paths or URIs)")
    reader: Reader = Field("comparisons", description="comparisons: our JSON lines; hh: Anthropic HH pairs")
    stage: str | None = Field(None, description="A finished comparison stage to take instead of inputs")

    @model_validator(mode="after")
    def _one_origin(self) -> ComparisonSet:
        if bool(self.inputs) == bool(self.stage):
            raise ValueError("give a comparison set either inputs to ingest or a finished stage, not both or neither")
        return self


class RewardFlowConfig(BaseModel):
    inputs: list[str] = Field(default_factory=list, description="Comparison files or folders to ingest (no "
                                                                "mixture); none: pack the comparison stage there")
    reader: Reader = Field("comparisons", description="comparisons: {context, chosen, rejected, rating, ...} lines; "
                                                      "hh: Anthropic HH chosen/rejected transcripts (unrated)")
    source: str = Field("comparisons", pattern=NAME_PATTERN, description="The inputs' source name")
    comparisons: str | None = Field(None, description="The comparison stage; None: <root>/comparisons")
    mixture: Literal["helpfulness", "safety"] | None = Field(
        None, description="Llama 2's mixture for the helpfulness or the safety model, over `roles`")
    roles: dict[str, ComparisonSet] = Field(default_factory=dict, description="The mixture's roles: helpfulness, "
                                                                              "safety, open_helpfulness, open_harmless")
    tokenizer: str | None = Field(None, description="tokenizer.model that packs the pairs and ships with the export; "
                                                    "None: training.tokenizer, else <root>/tokenizer")
    pack_seed: int = Field(0, ge=0, description="Seed of the packed rows' shuffle")
    rows_per_shard: int = Field(16384, ge=1)
    evaluation_batch_rows: int = Field(16, ge=1, description="Rows of pairs scored at once in the evaluation")
    training: RewardConfig = Field(default_factory=debug_run,
                                   description="The reward model's run; its data is where the packed pairs go")

    @model_validator(mode="after")
    def _consistent(self) -> RewardFlowConfig:
        if self.tokenizer and self.training.tokenizer and self.tokenizer != self.training.tokenizer:
            raise ValueError(f"tokenizer {self.tokenizer} packs the pairs but training.tokenizer "
                             f"{self.training.tokenizer} would ship with the export: give one of them")
        if not self.training.export_hf:
            raise ValueError("training.export_hf must be on: the evaluation scores the exported reward model")
        if self.mixture is None:
            if self.roles:
                raise ValueError(f"roles {sorted(self.roles)} are given without a mixture: name the mixture "
                                 f"(helpfulness or safety), or give the comparisons as inputs")
            return self
        if self.inputs or self.comparisons:
            raise ValueError("with a mixture, give each role's comparisons under roles, not inputs or comparisons")
        recipe = self.recipe
        unknown = sorted(set(self.roles) - set(recipe.roles))
        if unknown:
            raise ValueError(f"mixture {recipe.name}: roles {unknown} are not in its roles {list(recipe.roles)}")
        for role in self.roles:
            if not role.replace("_", "").isalnum():
                raise ValueError(f"role {role!r}: a role is a name of letters, digits and underscores")
        return self

    @property
    def recipe(self):
        from tasks.preferences.mix import HELPFULNESS_MIXTURE, SAFETY_MIXTURE

        return {"helpfulness": HELPFULNESS_MIXTURE, "safety": SAFETY_MIXTURE}[self.mixture]

    @property
    def data_root(self) -> str:
        return root_and_name(self.training.data)[0]

    def comparison_sets(self) -> dict[str, tuple[str, ComparisonSet | None]]:
        """Each set's comparison stage and what to ingest into it (None: the stage is there)."""
        if self.mixture is None:
            given = ComparisonSet(inputs=self.inputs, reader=self.reader) if self.inputs else None
            return {self.source: (self.comparisons or f"{self.data_root}/comparisons", given)}
        recipe = self.recipe
        if not set(self.roles) & set(recipe.whole):  # here, not at validation: a deployment's roles come at run time
            raise ValueError(f"mixture {recipe.name} takes all of {list(recipe.whole)}: give at least one of them "
                             f"under roles")
        return {role: (origin.stage or f"{self.data_root}/comparisons-{role}", origin if origin.inputs else None)
                for role, origin in sorted(self.roles.items())}

    def test_stage(self, name: str) -> str:
        """Where set `name`'s held-out pairs are packed: beside the training pairs."""
        return f"{self.run_config().data.rstrip('/')}-test-{name}"

    def run_config(self) -> RewardConfig:
        """The training run, shipping the tokenizer that packed its pairs."""
        tokenizer = self.tokenizer or self.training.tokenizer or f"{self.data_root}/tokenizer/tokenizer.model"
        return self.training.model_copy(update={"tokenizer": tokenizer}).with_absolute_paths()


# ---------------------------------------------------------------------------------- data


@task(retries=2, retry_delay_seconds=5)
def ingest(name: str, stage: str, origin: ComparisonSet) -> dict[str, Any]:
    from tasks.preferences.ingest import ingest_comparisons
    from tasks.preferences.readers import ComparisonReader, HHPairReader
    from tasks.storage import expand_inputs

    reader = ComparisonReader() if origin.reader == "comparisons" else HHPairReader()
    root, stage_name = root_and_name(stage)
    manifest = ingest_comparisons(name, expand_inputs(origin.inputs), root, reader, stage=stage_name)
    totals = manifest["totals"]["by_source"][name]
    reasons = totals.get("quarantined_reasons") or {}
    print(f"{name}: {totals['kept']} comparisons in {stage}, {totals['quarantined']} quarantined {reasons or ''}")
    return manifest


@task
def mix(config: RewardFlowConfig, stages: dict[str, str]) -> str:
    from tasks.preferences.mix import MIXED_STAGE_PREFIX, mix_comparisons

    recipe = config.recipe.model_copy(update={"seed": config.pack_seed})
    manifest = mix_comparisons(stages, recipe, config.data_root, stage=MIXED_STAGE_PREFIX + recipe.name)
    plan = manifest["mixture"]
    table = [{"role": role, **counts} for role, counts in plan["roles"].items()]
    create_table_artifact(key="reward-mixture", table=table,
                          description=f"Mixture {recipe.name}: sample share {plan['realised_share']:.4f} "
                                      f"(recipe {plan['target_share']}) of {plan['total']} comparisons")
    return manifest["stage_dir"]


@task
def pack(stage: str, split: str, out: str, config: RewardFlowConfig, tokenizer: str) -> dict[str, Any]:
    from tasks.reward_tokens import pack_comparisons
    from tasks.shards import MANIFEST
    from tasks.storage import resolve
    from tasks.tokenizer import Tokenizer

    if not resolve(stage).join(MANIFEST).exists():
        raise FileNotFoundError(f"{stage}: no finished comparison stage: give the comparison files as inputs")
    root, name = root_and_name(out)
    manifest = pack_comparisons(stage, Tokenizer.load(tokenizer), root, split=split, stage_name=name,
                                seq_len=config.training.seq_len, seed=config.pack_seed,
                                rows_per_shard=config.rows_per_shard)
    pairs = sum(source["pairs_packed"] for source in manifest["sources"].values())
    print(f"{split} split of {stage}: {pairs} pairs in {manifest['rows']} rows in {out}")
    return manifest


# ---------------------------------------------------------------------------------- evaluation


@task
def evaluate(config: RewardConfig, tests: dict[str, str], batch_rows: int) -> dict[str, Any]:
    """Score each test set's pairs with the exported model; publish and return the reports."""
    import torch

    from modeling.reward import load_reward_hf
    from modeling.reward_eval import accuracy_report, score_pair_stage
    from modeling.run_folder import RunFolder

    run = RunFolder(config.run_uri)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_reward_hf(run.fetch_folder("hf"), device=device)
    reports, scores = {}, {}
    for name, stage in tests.items():
        scores[name] = score_pair_stage(model, stage, batch_rows=batch_rows)
        reports[name] = {"stage": stage, **accuracy_report(scores[name])}
        print(f"{config.run_name} on {name}: accuracy {reports[name]['accuracy']:.3f} over "
              f"{reports[name]['pairs']} held-out pairs; by rating "
              f"{ {r: round(v['accuracy'], 3) for r, v in reports[name]['by_rating'].items()} }")
    (run.local / REPORT_FILE).write_text(json.dumps(reports, indent=2) + "\n")
    run.publish(REPORT_FILE)
    table = [{"test_set": name, "rating": rating, **counts}
             for name, report in reports.items()
             for rating, counts in [("all", {"pairs": report["pairs"], "accuracy": report["accuracy"]}),
                                    *report["by_rating"].items()]]
    create_table_artifact(key="reward-accuracy", table=table,
                          description=f"{config.run_name}: held-out accuracy by test set and rating")
    png = base64.b64encode(score_histograms_png(scores, config.run_name)).decode()
    lines = [f"# Reward model {config.run_name}: held-out evaluation", "",
             f"![reward distributions](data:image/png;base64,{png})", "",
             "| test set | rating | pairs | accuracy |", "| --- | --- | --- | --- |",
             *(f"| {row['test_set']} | {row['rating']} | {row['pairs']} | {row['accuracy']:.3f} |" for row in table)]
    create_markdown_artifact(key="reward-evaluation", markdown="\n".join(lines),
                             description=f"{config.run_name}: accuracy by rating, rewards of chosen and rejected")
    return reports


def score_histograms_png(scores: dict[str, Any], title: str) -> bytes:
    plt = pyplot()
    import numpy as np

    figure, axes = plt.subplots(1, len(scores), figsize=(5 * len(scores), 3.2), dpi=100, squeeze=False)
    for axis, (name, set_scores) in zip(axes[0], scores.items()):
        values = np.concatenate([set_scores.chosen, set_scores.rejected])
        bins = np.linspace(values.min(), values.max(), 31) if len(values) else 10
        axis.hist(set_scores.chosen, bins=bins, alpha=0.6, label="chosen")
        axis.hist(set_scores.rejected, bins=bins, alpha=0.6, label="rejected")
        axis.set_title(f"{name} ({len(set_scores.labels)} pairs)")
        axis.set_xlabel("reward")
        axis.legend()
    figure.suptitle(title)
    return png_bytes(figure)


# ---------------------------------------------------------------------------------- the flow


run_config_of = run_config_of_parameters(RewardFlowConfig, RewardFlowConfig.run_config)


@flow(name="reward", log_prints=True, on_cancellation=[stop_job_on_cancellation(run_config_of)])
def reward(config: RewardFlowConfig = RewardFlowConfig(), overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """`overrides` changes single fields of `config` at run time, e.g. {"inputs": ["/data/hh"], "reader":
    "hh"} or {"training": {"margins": "large"}}."""
    config = with_overrides(config, overrides)
    training = config.run_config()
    sets = config.comparison_sets()
    for name, (stage, origin) in sets.items():
        if origin is not None:
            ingest(name, stage, origin)
    stages = {name: stage for name, (stage, _) in sets.items()}
    trained_on = mix(config, stages) if config.mixture else stages[config.source]
    pack(trained_on, "train", training.data, config, training.tokenizer)
    tests = {name: config.test_stage(name) for name in stages}
    held_out = {name: pack(stage, "test", tests[name], config, training.tokenizer)["rows"] for name, stage in stages.items()}
    summary = train(training.resolve_pairs_per_step())
    summary["evaluation"] = evaluate(training, {name: tests[name] for name, rows in held_out.items() if rows},
                                     config.evaluation_batch_rows)
    return summary
