"""`rlhf`: Llama 2-Chat's rounds on top of SFT: sample -> score -> select -> fine-tune, round after round.

Round N of rejection sampling (Llama 2, 3.2.3) samples `samples_per_prompt` answers to every
prompt of the prompt sets from the pool of models (`pool`: `all` the models before this round,
the SFT model and every earlier round's, as Llama 2 did from RLHF-V3 on; or `latest` only), at the
paper's temperature (`modeling.sampling`, Ray actors); scores them with the reward models and keeps
each prompt's best finished answer (`modeling.rejection_sampling`); and fine-tunes the latest
model on the kept answers with the SFT objective (the `sft` flow: ingest, pack, train on Ray
Train). The fine-tuned model is the next round's latest model.

Everything of a run lives under `<output>/<run_name>/`: per round `round-NN/` (samples, selection,
dialogues, sft-tokens) and the rounds' training runs in `runs/`. A rerun resumes at the first
unfinished step: finished stages are reused by their markers, a training run resumes from its
newest checkpoint. Published per round: `rlhf-round` (the selection's counts and kept rewards),
and once the rounds are done `rlhf-summary`: the paper's max and median reward against K per
round (figure 7) and the kept rewards' distribution round by round (their drift, figure 20).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Literal

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import BaseModel, ConfigDict, Field, model_validator

from flows.figures import png_bytes, pyplot
from flows.sft import SFTFlowConfig, sft
from modeling.rejection_sampling import Selection, needed_reward_models
from modeling.run_config import with_overrides
from modeling.sft import SFTConfig
from modeling.sft import debug_run as sft_debug_run
from tasks.settings import default_data_root

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class RejectionSamplingConfig(BaseModel):
    """One round's rejection sampling: how answers are drawn, which is kept, how it is fine-tuned on."""

    model_config = ConfigDict(extra="forbid")

    samples_per_prompt: int = Field(4, ge=1, description="Answers sampled per prompt from each model of the pool "
                                                         "(Llama 2: 10 to 100)")
    temperature: float = Field(1.2, gt=0, description="Llama 2 finds 1.2-1.3 best for 10-100 samples")
    top_p: float | None = Field(None, gt=0, le=1)
    max_new_tokens: int = Field(32, ge=1, description="Tokens an answer has at most; a longer one is cut and "
                                                      "does not compete")
    pool: Literal["all", "latest"] = Field("all", description="all: sample from every model before the round "
                                                              "(the SFT model and each earlier round's); latest: "
                                                              "the latest only")
    selection: Selection = Field("helpfulness", description="The reward an answer competes with: one reward model's, "
                                                            "or gated (PPO's safety gate over both)")
    prompts_per_part: int = Field(64, ge=1, description="Prompts a sampling part holds (the unit of resume)")
    batch_size: int = Field(16, ge=1, description="Prompts decoded at once")
    actors: int = Field(1, ge=1, description="Ray actors sampling in parallel, each holding a model")
    training: SFTConfig = Field(default_factory=lambda: sft_debug_run(epochs=1),
                                description="The fine-tuning on the kept answers; data, output, init and run_name "
                                            "are set per round")


class RLHFConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_name: str = Field("rlhf-debug", pattern=NAME_PATTERN)
    output: str = Field(default_factory=lambda: f"{default_data_root()}/rlhf", description="Where runs live")
    init: str = Field(default_factory=lambda: f"{default_data_root()}/demo/runs/demo-sft",
                      description="The SFT model the rounds start from: a run folder (its hf/ export) or a Hugging "
                                  "Face folder")
    prompts: list[str] = Field(default_factory=list, description="Prompt sets (JSON lines of {\"messages\": [...]} "
                                                                 "ending with a user turn, optionally \"unsafe\")")
    reward_models: dict[str, str] = Field(default_factory=dict, description="Reward model folders by name: "
                                                                            "helpfulness, safety")
    tokenizer: str | None = Field(None, description="tokenizer.model; None: the SFT model's")
    rounds: int = Field(1, ge=1, description="Rounds of rejection sampling (Llama 2: five, RLHF-V1..V5)")
    seed: int = Field(0, ge=0, description="Seed of the sampling; round N samples with seed + N")
    rejection_sampling: RejectionSamplingConfig = Field(default_factory=RejectionSamplingConfig)

    @model_validator(mode="after")
    def _known_reward_models(self) -> RLHFConfig:
        unknown = sorted(set(self.reward_models) - {"helpfulness", "safety"})
        if unknown:
            raise ValueError(f"reward_models {unknown}: the reward models are helpfulness and safety")
        return self

    @property
    def run_root(self) -> str:
        return f"{self.output.rstrip('/')}/{self.run_name}"

    def round_dir(self, number: int) -> str:
        return f"{self.run_root}/round-{number:02d}"

    def check(self) -> None:
        """What a run needs before any work (a deployment's prompts and reward models come at run time)."""
        from modeling.model_folders import folder_checkpoints
        from tasks.dialogues.prompts import read_prompts

        if not self.prompts:
            raise ValueError("no prompts: give prompt sets (JSON lines of {\"messages\": [...]}) to sample answers to")
        selection = self.rejection_sampling.selection
        missing = [name for name in needed_reward_models(selection) if name not in self.reward_models]
        if missing:
            raise ValueError(f"rejection_sampling.selection {selection!r} needs the {' and '.join(missing)} reward "
                             f"model under reward_models")
        for path in self.prompts:
            read_prompts(path)
        folder_checkpoints(self.init, tokenizer=self.tokenizer)
        for name, folder in self.reward_models.items():
            reward_model_export(folder, name)


def reward_model_export(folder: str, name: str) -> Path:
    """The reward model's Hugging Face folder: `folder` itself or a reward run's hf/."""
    import json

    from modeling.sft import base_model_folder

    export = base_model_folder(folder)
    architectures = json.loads((export / "config.json").read_text()).get("architectures") \
        if (export / "config.json").is_file() else None
    if architectures != ["LlamaForSequenceClassification"]:
        raise ValueError(f"reward_models.{name}: {folder} is not a reward model export (architectures "
                         f"{architectures})")
    if not (export / "tokenizer.model").is_file():
        raise FileNotFoundError(f"reward_models.{name}: {export} has no tokenizer.model to read answers with")
    return export


# ---------------------------------------------------------------------------------- the steps


@task
def sample(config: RLHFConfig, number: int, pool: list[str]) -> dict[str, Any]:
    from modeling.sampling import SamplingConfig, sample_stage

    rs = config.rejection_sampling
    sampling = SamplingConfig(models=pool, samples_per_prompt=rs.samples_per_prompt, max_new_tokens=rs.max_new_tokens,
                              temperature=rs.temperature, top_p=rs.top_p, seed=config.seed + number,
                              prompts_per_part=rs.prompts_per_part, batch_size=rs.batch_size, actors=rs.actors,
                              tokenizer=config.tokenizer)
    manifest = sample_stage(config.prompts, sampling, f"{config.round_dir(number)}/samples")
    print(f"round {number}: {manifest['samples']} answers to {manifest['prompts']} prompts from {len(pool)} "
          f"model(s), {manifest['tokens_per_second']:.0f} tokens/s")
    return manifest


@task
def select(config: RLHFConfig, number: int) -> dict[str, Any]:
    from modeling.rejection_sampling import select_best

    rs = config.rejection_sampling
    report = select_best(f"{config.round_dir(number)}/samples", config.reward_models,
                         f"{config.round_dir(number)}/selection", selection=rs.selection, batch_size=rs.batch_size)
    kept = report["kept_rewards"]
    create_table_artifact(key="rlhf-round", table=[
        {"round": number, "prompts": report["prompts"], "selected": report["selected"],
         **{f"dropped_{reason}": n for reason, n in report["dropped"].items()},
         "kept_mean_reward": kept.get("mean"), "all_mean_reward": report["all_rewards"].get("mean"),
         **{f"kept_from_{model}": n for model, n in report["kept_by_model"].items()}}],
        description=f"{config.run_name} round {number}: rejection sampling by {rs.selection}")
    print(f"round {number}: kept {report['selected']} of {report['prompts']} prompts' best answers, mean reward "
          f"{kept.get('mean', float('nan')):.3f} (all answers {report['all_rewards'].get('mean', float('nan')):.3f})")
    return report


def fine_tune(config: RLHFConfig, number: int, latest: str, tokenizer: str) -> dict[str, Any]:
    """The latest model fine-tuned on the round's kept answers, through the `sft` flow."""
    from modeling.rejection_sampling import SELECTED_FILE

    round_dir = config.round_dir(number)
    training = config.rejection_sampling.training.model_copy(update={
        "run_name": f"{config.run_name}-round-{number:02d}", "data": f"{round_dir}/sft-tokens",
        "output": f"{config.run_root}/runs", "init": latest, "tokenizer": tokenizer,
        "seed": config.rejection_sampling.training.seed + number})
    return sft(SFTFlowConfig(inputs=[f"{round_dir}/selection/{SELECTED_FILE}"], source=f"round-{number:02d}",
                             dialogues=f"{round_dir}/dialogues", training=SFTConfig.model_validate(training.model_dump())))


def model_tokenizer(config: RLHFConfig) -> str:
    from modeling.model_folders import folder_checkpoints

    return str(folder_checkpoints(config.init, tokenizer=config.tokenizer)[0].tokenizer)


@task
def publish_rounds(config: RLHFConfig, reports: list[dict[str, Any]]) -> None:
    png = base64.b64encode(rounds_png(reports, config.run_name)).decode()
    lines = [f"# RLHF {config.run_name}: {len(reports)} round(s) of rejection sampling", "",
             f"![reward against K and drift](data:image/png;base64,{png})", "",
             "| round | prompts | selected | kept mean | kept median | all answers' mean |",
             "| --- | --- | --- | --- | --- | --- |"]
    for number, report in enumerate(reports, 1):
        kept = report["kept_rewards"]
        lines.append(f"| {number} | {report['prompts']} | {report['selected']} | {kept.get('mean', float('nan')):.3f} | "
                     f"{kept.get('median', float('nan')):.3f} | {report['all_rewards'].get('mean', float('nan')):.3f} |")
    create_markdown_artifact(key="rlhf-summary", markdown="\n".join(lines),
                             description=f"{config.run_name}: reward against K per round and the kept rewards' drift")


def rounds_png(reports: list[dict[str, Any]], title: str) -> bytes:
    plt = pyplot()
    figure, (by_k, drift) = plt.subplots(1, 2, figsize=(10, 3.5), dpi=100)
    for number, report in enumerate(reports, 1):
        curve = report["reward_vs_k"]
        ks = [point["k"] for point in curve]
        line, = by_k.plot(ks, [point["max"] for point in curve], "o-", markersize=3, label=f"round {number} max")
        by_k.plot(ks, [point["median"] for point in curve], "o--", markersize=3, color=line.get_color(),
                  label=f"round {number} median")
    by_k.set_xlabel("samples per prompt (K)")
    by_k.set_ylabel("reward")
    by_k.set_title("max and median reward of K samples")
    by_k.legend(fontsize=7)
    kept = [report["kept_rewards"] for report in reports]
    rounds = list(range(1, len(reports) + 1))
    drift.fill_between(rounds, [k.get("p10", 0) for k in kept], [k.get("p90", 0) for k in kept], alpha=0.3,
                       label="kept p10-p90")
    drift.plot(rounds, [k.get("median", 0) for k in kept], "o-", label="kept median")
    drift.plot(rounds, [r["all_rewards"].get("mean", 0) for r in reports], "s:", label="all answers' mean")
    drift.set_xlabel("round")
    drift.set_xticks(rounds)
    drift.set_title("rewards across rounds")
    drift.legend(fontsize=7)
    figure.suptitle(title)
    return png_bytes(figure)


# ---------------------------------------------------------------------------------- the flow


@flow(name="rlhf", log_prints=True)
def rlhf(config: RLHFConfig = RLHFConfig(), overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """`overrides` changes single fields of `config` at run time, e.g. {"prompts": ["/data/prompts.jsonl"],
    "reward_models": {"helpfulness": "/runs/reward-helpful"}} or {"rounds": 3}."""
    config = with_overrides(config, overrides)
    config.check()
    tokenizer = model_tokenizer(config)
    models = [config.init]
    reports = []
    for number in range(1, config.rounds + 1):
        pool = models if config.rejection_sampling.pool == "all" else models[-1:]
        sample(config, number, pool)
        reports.append(select(config, number))
        trained = fine_tune(config, number, models[-1], tokenizer)
        models.append(trained["run_dir"])
    publish_rounds(config, reports)
    return {"run_root": config.run_root, "models": models, "rounds": reports}

