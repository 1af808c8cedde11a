"""`rlhf`: Llama 2-Chat's rounds on top of SFT: rejection sampling, then PPO, then Ghost Attention.

Round N of rejection sampling (Llama 2, 3.2.3) samples `samples_per_prompt` answers to every
prompt of the prompt sets from the pool of models (`pool`: `all` the models before this round,
the SFT model and every earlier round's, as Llama 2 did from RLHF-V3 on; or `latest` only), at the
paper's temperature (`modeling.sampling`, Ray actors); scores them with the reward models and keeps
each prompt's best finished answer (`modeling.rejection_sampling`); and fine-tunes the latest
model on the kept answers with the SFT objective (the `sft` flow: ingest, pack, train on Ray
Train). With `ppo` the round goes on with PPO from that model (the `ppo` flow: the model is the
policy's start and the frozen reference, the value model starts from the helpfulness reward
model, the safety-gated reward). With `gatt` it ends with Ghost Attention (3.3): dialogues sampled
from the round's model with a synthetic instruction in every user turn, fine-tuned on with the
instruction in the first turn only and the loss on the last answer; the share of held-out
dialogues still following their instruction at each turn is measured before and after. The
round's last model is the next round's latest model.

Everything of a run lives under `<output>/<run_name>/`: per round `round-NN/` (samples, selection,
dialogues, sft-tokens, ppo/, gatt/) and the rounds' training runs in `runs/`. A rerun resumes at the
first unfinished step: finished stages are reused by their markers, a finished training run by
its summary, an unfinished one resumes from its newest checkpoint. With `evaluation_prompts` every
model (the SFT model and each round's) answers a held-out prompt set (greedy): the reward models'
mean rewards, the exact match where prompts carry their right answer, the win rate against the SFT
model. Published: per round `rlhf-round` (the selection's counts and kept rewards), and
`rlhf-summary`: the paper's max and median reward against K per round (figure 7), the kept
rewards' drift across rounds, the models' evaluation and Ghost Attention's turn-by-turn adherence.
"""

from __future__ import annotations

import base64
from typing import Any, Literal

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import BaseModel, ConfigDict, Field, model_validator

from flows.figures import png_bytes, pyplot
from flows.ppo import PPOFlowConfig, ppo
from flows.sft import SFTFlowConfig, sft
from modeling.ppo_training import PPOConfig
from modeling.ppo_training import debug_run as ppo_debug_run
from modeling.ppo_training import llama2_7b_chat_run as ppo_llama2_7b_chat_run
from modeling.rejection_sampling import Selection, needed_reward_models
from modeling.reward import reward_model_folder
from modeling.run_config import with_overrides
from modeling.sft import SFTConfig
from modeling.sft import debug_run as sft_debug_run
from modeling.sft import llama2_7b_chat_run as sft_llama2_7b_chat_run
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
    gpus: float = Field(0, ge=0, description="GPUs each sampling actor and each reward model's scoring task holds; "
                                             "0: CPU")
    training: SFTConfig = Field(default_factory=lambda: sft_debug_run(epochs=1),
                                description="The fine-tuning on the kept answers; data, output, init and run_name "
                                            "are set per round")


class GAttConfig(BaseModel):
    """Ghost Attention at a round's end: synthetic many-turn conversations, an instruction each."""

    model_config = ConfigDict(extra="forbid")

    dialogues: int = Field(64, ge=1, description="Synthetic conversations sampled from the round's model")
    held_out: int = Field(32, ge=1, description="Other conversations the turn-by-turn adherence is measured on")
    kinds: list[Literal["language", "form", "persona", "hobby"]] = Field(
        default_factory=lambda: ["form", "persona", "hobby"],
        description="Instruction kinds (language: answer in French, ...; form: capitals, 'Answer:' first, ...)")
    min_turns: int = Field(2, ge=1)
    max_turns: int = Field(6, ge=1, le=20, description="Turns a conversation has at most (Llama 2 measures up to 20)")
    max_new_tokens: int = Field(16, ge=1)
    every_prefix: bool = Field(True, description="A training dialogue per turn, each trained on its last answer")
    require_following: bool = Field(False, description="Drop a sampled conversation with an answer that breaks its "
                                                       "instruction (Llama 2 describes no such filter)")
    training: SFTConfig = Field(default_factory=lambda: sft_debug_run(epochs=1),
                                description="The fine-tuning on the GAtt dialogues; data, output, init and run_name "
                                            "are set per round")

    @model_validator(mode="after")
    def _turns(self) -> GAttConfig:
        if self.min_turns > self.max_turns:
            raise ValueError(f"min_turns ({self.min_turns}) exceeds max_turns ({self.max_turns})")
        return self


def demo_path(*parts: str) -> str:
    return "/".join([default_data_root(), "demo", *parts])


class RLHFConfig(BaseModel):
    """A run of rounds. The defaults are the `debug` round on what `make demo` made (its chat and
    reward models, its prompt sets); `llama2_7b_chat` is Llama 2-Chat 7B's."""

    model_config = ConfigDict(extra="forbid")

    run_name: str = Field("rlhf-debug", pattern=NAME_PATTERN)
    output: str = Field(default_factory=lambda: demo_path("rlhf"), description="Where runs live")
    init: str = Field(default_factory=lambda: demo_path("runs", "demo-sft"),
                      description="The SFT model the rounds start from: a run folder (its hf/ export) or a Hugging "
                                  "Face folder")
    prompts: list[str] = Field(default_factory=lambda: [demo_path("raw", "prompts", "prompts.jsonl")],
                               description="Prompt sets (JSON lines of {\"messages\": [...]} ending with a user turn, "
                                           "optionally \"unsafe\")")
    reward_models: dict[str, str] = Field(default_factory=lambda: {"helpfulness": demo_path("runs", "demo-reward")},
                                          description="Reward model folders by name: helpfulness, safety")
    tokenizer: str | None = Field(None, description="tokenizer.model; None: the SFT model's")
    rounds: int = Field(1, ge=1, description="Rounds (Llama 2: five, RLHF-V1..V5)")
    seed: int = Field(0, ge=0, description="Seed of the sampling; round N samples with seed + N")
    rejection_sampling: RejectionSamplingConfig = Field(default_factory=RejectionSamplingConfig)
    ppo: PPOFlowConfig | None = Field(default_factory=lambda: PPOFlowConfig(training=ppo_debug_run(iterations=2)),
                                      description="PPO after each round's rejection sampling (None: none); its "
                                                  "prompts, reward models, workspace and init are the round's")
    gatt: GAttConfig | None = Field(None, description="Ghost Attention at each round's end")
    evaluation_prompts: str | None = Field(default_factory=lambda: demo_path("raw", "prompts", "held-out.jsonl"),
                                           description="A held-out prompt set every model answers (greedy), judged "
                                                       "by the reward models")
    evaluation_max_new_tokens: int = Field(24, ge=1)

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

    def training_run(self, training: SFTConfig | PPOConfig, number: int, step: str, data: str, init: str,
                     tokenizer: str):
        """A round's training run: named after the run, the round and the step, in the run's runs/."""
        return type(training).model_validate(training.model_dump() | {
            "run_name": f"{self.run_name}-round-{number:02d}-{step}", "data": data, "output": f"{self.run_root}/runs",
            "init": init, "tokenizer": tokenizer, "seed": training.seed + number})

    def check(self) -> None:
        """What a run needs before any work (a deployment's prompts and reward models come at run time)."""
        from modeling.model_folders import folder_checkpoints
        from tasks.dialogues.prompts import read_prompts

        if not self.prompts:
            raise ValueError("no prompts: give prompt sets (JSON lines of {\"messages\": [...]}) to sample answers to")
        if "helpfulness" not in self.reward_models and (self.ppo or self.rejection_sampling.selection != "safety"):
            raise ValueError("reward_models.helpfulness: the reward model that judges the answers is not given")
        selection = self.rejection_sampling.selection
        missing = [name for name in needed_reward_models(selection) if name not in self.reward_models]
        if missing:
            raise ValueError(f"rejection_sampling.selection {selection!r} needs the {' and '.join(missing)} reward "
                             f"model under reward_models")
        for path in [*self.prompts, *([self.evaluation_prompts] if self.evaluation_prompts else [])]:
            read_prompts(path)
        folder_checkpoints(self.init, tokenizer=self.tokenizer)
        for name, folder in self.reward_models.items():
            reward_model_folder(folder, name)


def llama2_7b_chat(**overrides: Any) -> RLHFConfig:
    """Llama 2-Chat 7B's rounds (RECIPE.md) from the llama2-7b-chat SFT run and the two 7B reward
    models: five rounds; rejection sampling of 10 answers a prompt at temperature 1.2 from every
    earlier model, the best by the safety-gated reward, fine-tuned on as SFT was; PPO of 200
    iterations (512 samples, 64 a step, lr 1e-6 constant, clip 0.2, beta 0.01); Ghost Attention on
    conversations of up to 20 turns. The prompt sets (and held-out prompts) are given at run time."""
    runs = f"{default_data_root()}/runs"
    settings: dict[str, Any] = dict(
        run_name="llama2-7b-chat-rlhf", output=f"{default_data_root()}/rlhf", init=f"{runs}/llama2-7b-chat-sft",
        prompts=[], reward_models={"helpfulness": f"{runs}/llama2-7b-reward-helpful",
                                   "safety": f"{runs}/llama2-7b-reward-safety"},
        rounds=5, evaluation_prompts=None, evaluation_max_new_tokens=512,
        rejection_sampling=RejectionSamplingConfig(
            samples_per_prompt=10, temperature=1.2, max_new_tokens=1024, pool="all", selection="gated",
            prompts_per_part=256, batch_size=64, actors=8, gpus=1, training=sft_llama2_7b_chat_run()),
        ppo=PPOFlowConfig(max_new_tokens=1024, batch_size=64, actors=8, gpus=1, training=ppo_llama2_7b_chat_run()),
        gatt=GAttConfig(dialogues=2000, held_out=200, kinds=["language", "form", "persona", "hobby"], min_turns=2,
                        max_turns=20, max_new_tokens=256, training=sft_llama2_7b_chat_run(epochs=1)),
    )
    return RLHFConfig.model_validate(RLHFConfig(**settings).model_dump() | overrides)


PRESETS = {"debug": RLHFConfig, "llama2-7b-chat": llama2_7b_chat}


# ---------------------------------------------------------------------------------- the steps


@task
def sample(config: RLHFConfig, number: int, pool: list[str]) -> dict[str, Any]:
    from modeling.sampling import SamplingConfig, sample_stage

    rs = config.rejection_sampling
    sampling = SamplingConfig(models=pool, samples_per_prompt=rs.samples_per_prompt, max_new_tokens=rs.max_new_tokens,
                              temperature=rs.temperature, top_p=rs.top_p, seed=config.seed + number,
                              prompts_per_part=rs.prompts_per_part, batch_size=rs.batch_size, actors=rs.actors,
                              gpus_per_actor=rs.gpus, tokenizer=config.tokenizer)
    manifest = sample_stage(config.prompts, sampling, f"{config.round_dir(number)}/samples")
    print(f"round {number}: {manifest['samples']} answers to {manifest['prompts_sampled']} prompts from {len(pool)} "
          f"model(s), {manifest['tokens_per_second']:.0f} tokens/s")
    return manifest


@task
def select(config: RLHFConfig, number: int) -> dict[str, Any]:
    from modeling.rejection_sampling import select_best

    rs = config.rejection_sampling
    report = select_best(f"{config.round_dir(number)}/samples", config.reward_models,
                         f"{config.round_dir(number)}/selection", selection=rs.selection, batch_size=rs.batch_size,
                         gpus=rs.gpus)
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
    training = config.training_run(config.rejection_sampling.training, number, "rs", f"{round_dir}/sft-tokens", latest,
                                   tokenizer)
    return sft(SFTFlowConfig(inputs=[f"{round_dir}/selection/{SELECTED_FILE}"], source=f"round-{number:02d}",
                             dialogues=f"{round_dir}/dialogues", training=training))


def proximal_policy_optimization(config: RLHFConfig, number: int, latest: str, tokenizer: str) -> dict[str, Any]:
    """PPO from the round's rejection-sampling model, through the `ppo` flow; the value model starts from
    the helpfulness reward model."""
    round_dir = config.round_dir(number)
    training = config.training_run(config.ppo.training, number, "ppo", f"{round_dir}/ppo/rollouts", latest, tokenizer)
    training = training.model_copy(update={"value_init": config.reward_models["helpfulness"]})
    return ppo(config.ppo.model_copy(update={"prompts": config.prompts, "reward_models": config.reward_models,
                                             "workspace": f"{round_dir}/ppo", "training": training}))


@task
def sample_gatt(config: RLHFConfig, number: int, latest: str) -> dict[str, Any]:
    from modeling.ghost_attention import gatt_stage

    gatt = config.gatt
    report = gatt_stage(latest, f"{config.round_dir(number)}/gatt/sampled", dialogues=gatt.dialogues,
                        seed=config.seed + number, kinds=gatt.kinds, min_turns=gatt.min_turns, max_turns=gatt.max_turns,
                        max_new_tokens=gatt.max_new_tokens, every_prefix=gatt.every_prefix,
                        require_following=gatt.require_following)
    print(f"round {number}: Ghost Attention sampled {report['dialogues']} conversations from {latest}: "
          f"{report['kept']} kept ({report['dropped'] or 'none dropped'}), {report['records']} training dialogues")
    return report


@task
def measure_gatt(config: RLHFConfig, number: int, models: dict[str, str]) -> dict[str, Any]:
    """Each model's share of held-out conversations still following their instruction, turn by turn."""
    from modeling.ghost_attention import adherence_of

    gatt = config.gatt
    measured = {label: adherence_of(folder, dialogues=gatt.held_out, seed=config.seed + 1000 + number,
                                    kinds=gatt.kinds, min_turns=gatt.max_turns, max_turns=gatt.max_turns,
                                    max_new_tokens=gatt.max_new_tokens) for label, folder in models.items()}
    create_table_artifact(key="rlhf-gatt", table=[
        {"turn": turn, **{label: report["share_still_following"][turn - 1] for label, report in measured.items()},
         "measured": next(iter(measured.values()))["measured"][turn - 1]}
        for turn in range(1, gatt.max_turns + 1)],
        description=f"{config.run_name} round {number}: share of {gatt.held_out} held-out conversations still "
                    f"following their instruction at each turn")
    return measured


def ghost_attention(config: RLHFConfig, number: int, latest: str, tokenizer: str) -> tuple[str, dict[str, Any]]:
    """Ghost Attention's fine-tune of the round's model; its adherence before and after."""
    from modeling.ghost_attention import GATT_FILE

    gatt_dir = f"{config.round_dir(number)}/gatt"
    sample_gatt(config, number, latest)
    training = config.training_run(config.gatt.training, number, "gatt", f"{gatt_dir}/sft-tokens", latest, tokenizer)
    trained = sft(SFTFlowConfig(inputs=[f"{gatt_dir}/sampled/{GATT_FILE}"], source=f"gatt-round-{number:02d}",
                                dialogues=f"{gatt_dir}/dialogues", training=training))
    measured = measure_gatt(config, number, {"before": latest, "after": trained["run_dir"]})
    return trained["run_dir"], measured


@task
def evaluate_models(config: RLHFConfig, models: dict[str, str]) -> list[dict[str, Any]]:
    """Every model's greedy answers to the held-out prompts: mean rewards, exact match, win rate against
    the first (the SFT model) by the helpfulness reward model."""
    from modeling.chat_eval import evaluate_chat, win_rate
    from modeling.model_folders import folder_checkpoints
    from modeling.reward import load_reward_hf
    from tasks.dialogues.prompts import read_prompts

    prompts, _ = read_prompts(config.evaluation_prompts)
    judges = {name: load_reward_hf(reward_model_folder(folder, name)) for name, folder in config.reward_models.items()}
    reports = {}
    for label, folder in models.items():
        model, tokenizer = folder_checkpoints(folder, tokenizer=config.tokenizer)[0].load()
        reports[label] = evaluate_chat(model, tokenizer, prompts, judges, max_new_tokens=config.evaluation_max_new_tokens,
                                       policy="skip")
    baseline = next(iter(reports.values()))
    judge = "helpfulness" if "helpfulness" in judges else next(iter(judges))
    rows = [{"model": label, "folder": models[label], "prompts": len(report.prompts), "exact_match": report.exact_match(),
             **{f"mean_{name}": value for name, value in report.mean_rewards().items()},
             f"win_rate_vs_{next(iter(reports))}": win_rate(report.rewards[judge], baseline.rewards[judge])
             if len(report.prompts) == len(baseline.prompts) else None}
            for label, report in reports.items()]
    create_table_artifact(key="rlhf-evaluation", table=rows,
                          description=f"{config.run_name}: each model's greedy answers to {config.evaluation_prompts}")
    for row in rows:
        print(f"{row['model']}: exact match {row['exact_match']}, mean {judge} reward {row[f'mean_{judge}']:.3f}")
    return rows


def model_tokenizer(config: RLHFConfig) -> str:
    from modeling.model_folders import folder_checkpoints

    return str(folder_checkpoints(config.init, tokenizer=config.tokenizer)[0].tokenizer)


@task
def publish_rounds(config: RLHFConfig, reports: list[dict[str, Any]], evaluation: list[dict[str, Any]] | None,
                   gatt: list[dict[str, Any]]) -> None:
    png = base64.b64encode(rounds_png(reports, config.run_name)).decode()
    lines = [f"# RLHF {config.run_name}: {len(reports)} round(s)", "",
             f"![reward against K and drift](data:image/png;base64,{png})", "", "## Rejection sampling", "",
             "| round | prompts | selected | dropped | kept mean | kept median | all answers' mean |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for number, report in enumerate(reports, 1):
        kept, dropped = report["kept_rewards"], sum(report["dropped"].values())
        lines.append(f"| {number} | {report['prompts']} | {report['selected']} | {dropped} | {number_text(kept.get('mean'))} "
                     f"| {number_text(kept.get('median'))} | {number_text(report['all_rewards'].get('mean'))} |")
    if evaluation:
        columns = [c for c in evaluation[0] if c != "folder"]
        lines += ["", f"## Held-out prompts ({config.evaluation_prompts})", "", "| " + " | ".join(columns) + " |",
                  "| " + " | ".join("---" for _ in columns) + " |",
                  *("| " + " | ".join(number_text(row[c]) for c in columns) + " |" for row in evaluation)]
    for number, measured in enumerate(gatt, 1):
        turns = len(next(iter(measured.values()))["share_still_following"])
        lines += ["", f"## Ghost Attention, round {number}: share still following at turn t", "",
                  "| model | " + " | ".join(str(t) for t in range(1, turns + 1)) + " |",
                  "| --- | " + " | ".join("---" for _ in range(turns)) + " |",
                  *(f"| {label} | " + " | ".join(number_text(v) for v in report["share_still_following"]) + " |"
                    for label, report in measured.items())]
    create_markdown_artifact(key="rlhf-summary", markdown="\n".join(lines),
                             description=f"{config.run_name}: reward against K per round, the kept rewards' drift, "
                                         f"the models on held-out prompts, Ghost Attention")


def number_text(value: Any) -> str:
    """4 significant figures for a measure, `-` where there is none."""
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


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
def rlhf(config: RLHFConfig | None = None, preset: Literal["debug", "llama2-7b-chat"] = "debug",
         overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """`config`, or the `preset` (debug: one round on the demo's models), with `overrides` changing single
    fields at run time, e.g. {"prompts": ["/data/prompts.jsonl"]} or {"rounds": 3, "ppo": {"training":
    {"iterations": 50}}}."""
    config = with_overrides(config or PRESETS[preset](), overrides)
    config.check()
    tokenizer = model_tokenizer(config)
    models = {"sft": config.init}
    reports, ppo_runs, gatt_reports = [], [], []
    for number in range(1, config.rounds + 1):
        latest = list(models.values())[-1]
        pool = list(models.values()) if config.rejection_sampling.pool == "all" else [latest]
        sample(config, number, pool)
        reports.append(select(config, number))
        latest = models[f"round-{number}-rs"] = fine_tune(config, number, latest, tokenizer)["run_dir"]
        if config.ppo is not None:
            ppo_runs.append(proximal_policy_optimization(config, number, latest, tokenizer))
            latest = models[f"round-{number}-ppo"] = ppo_runs[-1]["run_dir"]
        if config.gatt is not None:
            latest, measured = ghost_attention(config, number, latest, tokenizer)
            models[f"round-{number}-gatt"] = latest
            gatt_reports.append(measured)
    evaluation = evaluate_models(config, models) if config.evaluation_prompts else None
    publish_rounds(config, reports, evaluation, gatt_reports)
    return {"run_root": config.run_root, "models": models, "rounds": reports, "ppo": ppo_runs,
            "gatt": gatt_reports, "evaluation": evaluation}
