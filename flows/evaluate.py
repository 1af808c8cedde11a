"""`evaluate`: benchmarks, perplexity and chat metrics of checkpoints, across a run's training, in the Prefect UI.

The flow takes checkpoints (`modeling.model_folders`: a run folder's final `hf/` export or every
checkpoint it kept, a Hugging Face or a Meta folder), benchmarks (`tasks.benchmarks` task
folders, or the synthetic tasks with known answers by name: `tasks.synthetic.benchmarks`) and,
optionally, a token stage and a document stage to measure perplexity on (`modeling.evaluate`)
and a prompt set for each checkpoint to answer, judged by reward models (`modeling.chat_eval`).
It checks all of it first (`plan`: a missing folder, an unknown task, a bad task file, too few
train records for the shots, a bad prompt record, a reward model folder that is not one, is
refused by its path before any model is loaded), evaluates each checkpoint in this process (on
the GPU when there is one), and publishes a table with one row per checkpoint
(`evaluation-scores`: a column per benchmark metric and perplexity, and per reward model its
mean reward and the win rate against the baseline checkpoint) and each benchmark plotted against
the training tokens the checkpoint had seen, one line per run, as in the LLaMA paper's figure
(`evaluation-summary`).
"""

from __future__ import annotations

import base64
import math
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import BaseModel, ConfigDict, Field, model_validator

from flows.figures import png_bytes, pyplot
from modeling.chat_eval import win_rate_by_prompt
from modeling.model_folders import ModelCheckpoint, folder_checkpoints
from modeling.run_config import with_overrides
from tasks.benchmarks import Policy, Task, load_task
from tasks.dialogues.prompts import ChatPrompt, read_prompts
from tasks.settings import default_data_root
from tasks.synthetic.benchmarks import write_synthetic_tasks

SYNTHETIC_TASKS = ("colours", "homes", "doubles")
# Each kind's metrics as table columns; the first is the one plotted.
METRICS = {"multiple_choice": ("acc", "acc_norm"), "qa": ("exact_match",), "math": ("maj_at_k", "sample_accuracy")}
PLOT_COLUMNS = 3


class CheckpointSource(BaseModel):
    """A folder to evaluate; a plain string is its path."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(description="A run folder (its hf/ export), a Hugging Face folder or a Meta checkpoint folder")
    every_checkpoint: bool = Field(False, description="A run folder: every checkpoint it kept (step-NNNNNNNN), "
                                                      "not only its final export")
    label: str | None = Field(None, description="Its name in the reports; None: the folder's name")
    tokenizer: str | None = Field(None, description="tokenizer.model; None: the folder's (a run's: its export's)")
    max_seq_len: int | None = Field(None, ge=1, description="A Meta folder's context length (its files lack it)")

    @model_validator(mode="before")
    @classmethod
    def _from_path(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value


def demo_checkpoints() -> list[CheckpointSource]:
    """`make demo`'s base model, every checkpoint of its pretraining run, and its chat model."""
    runs = f"{default_data_root()}/demo/runs"
    return [CheckpointSource(path=f"{runs}/demo", every_checkpoint=True), CheckpointSource(path=f"{runs}/demo-sft")]


class EvaluateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    checkpoints: list[CheckpointSource] = Field(default_factory=demo_checkpoints, min_length=1)
    benchmarks: list[str] = Field(default_factory=lambda: list(SYNTHETIC_TASKS),
                                  description=f"Task folders (task.json, test.jsonl, train.jsonl) or synthetic "
                                              f"tasks by name: {', '.join(SYNTHETIC_TASKS)}")
    synthetic_records: int = Field(64, ge=4, description="Test (and train) records of the synthetic homes task")
    shots: int = Field(0, ge=0, description="Train examples before each question")
    seed: int = Field(0, ge=0, description="Seed of the few-shot examples, math samples and synthetic tasks")
    policy: Policy = Field("refuse", description="A bad record or a prompt over the context: refuse the run, or "
                                                 "skip the record and list it")
    max_new_tokens: int = Field(16, ge=1, description="Tokens generated per qa or math answer at most")
    samples: int = Field(5, ge=1, description="Answers sampled per math question (its majority is maj_at_k)")
    temperature: float = Field(0.7, gt=0, description="Of the math samples")
    token_stage: str | None = Field(None, description="A token stage whose rows' perplexity is measured")
    token_rows: int | None = Field(256, ge=1, description="Its rows scored (in the reader's seeded order); None: all")
    document_stage: str | None = Field(None, description="A document stage whose documents' perplexity is measured")
    documents_per_source: int | None = Field(64, ge=1, description="Its documents scored per source; None: all")
    stride: int | None = Field(None, ge=1, description="New tokens per rolling window of a long document; None: "
                                                       "the context (disjoint windows)")
    chat_prompts: str | None = Field(None, description="A prompt set (JSON lines of {\"messages\": [...]} ending "
                                                       "with a user turn) each checkpoint answers, judged by "
                                                       "reward_models")
    reward_models: dict[str, str] = Field(default_factory=dict, description="Reward model export folders by name "
                                                                            "(e.g. helpfulness, safety)")
    baseline: str | None = Field(None, description="The checkpoint (its label) win rates are against; None: the "
                                                   "first")
    chat_max_new_tokens: int = Field(128, ge=1, description="Tokens of each answer to a chat prompt at most")
    chat_temperature: float = Field(0.0, ge=0, description="Of the answers to chat prompts: 0 greedy, else sampled "
                                                           "(seeded by seed)")
    chat_top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling of the chat answers")
    batch_size: int = Field(16, ge=1)
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="Weights and activations")

    @model_validator(mode="after")
    def _something_to_measure(self) -> EvaluateConfig:
        if not (self.benchmarks or self.token_stage or self.document_stage or self.chat_prompts):
            raise ValueError("nothing to evaluate: give benchmarks, a token_stage, a document_stage or chat_prompts")
        if bool(self.chat_prompts) != bool(self.reward_models):
            raise ValueError("chat metrics need both chat_prompts and reward_models (the answers and their judges)")
        if self.token_stage and self.document_stage and stage_name(self.token_stage) == stage_name(self.document_stage):
            raise ValueError(f"token_stage and document_stage are both named {stage_name(self.token_stage)!r}: "
                             f"their columns would be one")
        return self


def stage_name(stage: str) -> str:
    return stage.rstrip("/").rpartition("/")[2]


def load_benchmarks(config: EvaluateConfig, synthetic_folder: Path) -> list[Task]:
    """Every benchmark, loaded by the config's policy, its prompts built once to check the shots."""
    synthetic = {}
    if set(config.benchmarks) & set(SYNTHETIC_TASKS):
        synthetic = write_synthetic_tasks(synthetic_folder, n=config.synthetic_records, seed=config.seed)
    tasks: dict[str, Task] = {}
    for entry in config.benchmarks:
        if entry in synthetic:
            loaded = synthetic[entry]
        elif Path(entry).is_dir():
            loaded = load_task(entry, config.policy)
        else:
            raise FileNotFoundError(f"{entry}: neither a synthetic task ({', '.join(SYNTHETIC_TASKS)}) nor a task "
                                    f"folder")
        if loaded.name in tasks:
            raise ValueError(f"{entry}: a second task named {loaded.name!r}: their columns would be one")
        try:
            for index in range(len(loaded.test)):
                loaded.prompt(index, config.shots, config.seed)
        except ValueError as error:
            raise ValueError(f"{entry}: {error}") from None
        tasks[loaded.name] = loaded
    return list(tasks.values())


def check_reward_models(config: EvaluateConfig) -> None:
    """Each reward model folder loads as a reward model (load_reward_hf refuses any other)."""
    from modeling.reward import load_reward_hf

    for name, folder in config.reward_models.items():
        try:
            load_reward_hf(folder)
        except (FileNotFoundError, ValueError) as error:
            raise type(error)(f"reward model {name!r}: {error}") from None


@task
def plan(config: EvaluateConfig) -> tuple[list[ModelCheckpoint], list[Task], list[ChatPrompt]]:
    """Every checkpoint to evaluate, every benchmark and chat prompt, checked; raises naming what is wrong."""
    from modeling.objectives import read_token_manifest
    from tasks.stage import units_from_stage
    from tasks.storage import resolve

    checkpoints = [checkpoint for source in config.checkpoints
                   for checkpoint in folder_checkpoints(source.path, every_checkpoint=source.every_checkpoint,
                                                        label=source.label, tokenizer=source.tokenizer,
                                                        max_seq_len=source.max_seq_len)]
    labels = [c.label for c in checkpoints]
    if len(set(labels)) < len(labels):
        twice = sorted({label for label in labels if labels.count(label) > 1})
        raise ValueError(f"two checkpoints are called {', '.join(twice)}: give the sources labels")
    if config.baseline is not None and config.baseline not in labels:
        raise ValueError(f"baseline {config.baseline!r} is none of the checkpoints: {', '.join(labels)}")
    with tempfile.TemporaryDirectory(prefix="llamaline-synthetic-") as folder:
        benchmarks = load_benchmarks(config, Path(folder))
    if config.token_stage:
        read_token_manifest(config.token_stage)
    if config.document_stage:
        units_from_stage(resolve(config.document_stage))
    prompts = read_prompts(config.chat_prompts, config.policy)[0] if config.chat_prompts else []
    check_reward_models(config)
    print(f"{len(checkpoints)} checkpoints ({', '.join(labels)}); benchmarks "
          f"{', '.join(f'{t.name} ({len(t.test)} records)' for t in benchmarks) or 'none'}"
          + (f"; {len(prompts)} chat prompts judged by {', '.join(config.reward_models)}" if prompts else ""))
    return checkpoints, benchmarks, prompts


@task(task_run_name="evaluate {checkpoint.label}")
def evaluate_checkpoint(config: EvaluateConfig, checkpoint: ModelCheckpoint, benchmarks: list[Task],
                        prompts: list[ChatPrompt]) -> dict[str, Any]:
    """Benchmarks, perplexity and chat metrics of one checkpoint, on the GPU when there is one."""
    import torch

    from modeling.chat_eval import evaluate_chat
    from modeling.evaluate import document_perplexity, evaluate_task, token_stage_perplexity
    from modeling.generate import Sampling
    from modeling.reward import load_reward_hf

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, config.dtype)
    model, tokenizer = checkpoint.load(dtype=dtype, device=device)
    scores = {}
    for benchmark in benchmarks:
        report = evaluate_task(model, tokenizer, benchmark, shots=config.shots, seed=config.seed,
                               policy=config.policy, batch_size=config.batch_size,
                               max_new_tokens=config.max_new_tokens, samples=config.samples,
                               sampling=Sampling(temperature=config.temperature))
        scores[benchmark.name] = report
        print(f"{checkpoint.label}: {benchmark.name} "
              + " ".join(f"{metric} {report[metric]:.3f}" for metric in METRICS[benchmark.kind])
              + (f" ({len(report['skipped'])} records skipped)" if report["skipped"] else ""))
    perplexity = {}
    if config.token_stage:
        perplexity[stage_name(config.token_stage)] = token_stage_perplexity(
            model, config.token_stage, max_rows=config.token_rows, batch_rows=config.batch_size)
    if config.document_stage:
        perplexity[stage_name(config.document_stage)] = document_perplexity(
            model, tokenizer, config.document_stage, stride=config.stride, max_documents=config.documents_per_source,
            batch_size=config.batch_size)
    for stage, report in perplexity.items():
        print(f"{checkpoint.label}: {stage} perplexity {report['perplexity']:.3f}")
    chat = None
    if prompts:
        reward_models = {name: load_reward_hf(folder, dtype=dtype, device=device)
                         for name, folder in config.reward_models.items()}
        chat = evaluate_chat(model, tokenizer, prompts, reward_models, max_new_tokens=config.chat_max_new_tokens,
                             sampling=Sampling(temperature=config.chat_temperature, top_p=config.chat_top_p),
                             seed=config.seed, batch_size=config.batch_size, policy=config.policy).as_dict()
        print(f"{checkpoint.label}: {chat['prompts']} chat prompts, mean reward "
              + " ".join(f"{name} {mean:.3f}" for name, mean in chat["mean_rewards"].items())
              + (f" ({len(chat['skipped'])} prompts skipped)" if chat["skipped"] else ""))
    return {"checkpoint": checkpoint.label, "run": checkpoint.run, "step": checkpoint.step,
            "tokens": checkpoint.tokens, "weights": str(checkpoint.weights), "device": device,
            "benchmarks": scores, "perplexity": perplexity, "chat": chat}


def add_win_rates(results: list[dict[str, Any]], baseline: str) -> None:
    """Each result's chat metrics gain, per reward model, its answers' win rate against the baseline's."""
    against = next(r for r in results if r["checkpoint"] == baseline)
    for result in results:
        if result["chat"] is not None:
            result["chat"]["baseline"] = baseline
            result["chat"]["win_rates"] = {name: win_rate_by_prompt(rewards, against["chat"]["rewards"][name])
                                           for name, rewards in result["chat"]["rewards"].items()}


# ---------------------------------------------------------------------------------- artifacts


def score_columns(result: dict[str, Any]) -> dict[str, float]:
    """A checkpoint's numbers by column name: `<task> <metric>`, `<stage> perplexity` (and a
    document stage's `<stage> bits_per_byte`), `<reward model> reward` (the mean) and
    `<reward model> win rate vs <baseline>`."""
    columns = {f"{name} {metric}": report[metric]
               for name, report in result["benchmarks"].items() for metric in METRICS[report["kind"]]}
    for stage, report in result["perplexity"].items():
        columns[f"{stage} perplexity"] = report["perplexity"]
        if "bits_per_byte" in report:
            columns[f"{stage} bits_per_byte"] = report["bits_per_byte"]
    chat = result.get("chat")
    if chat:
        for name, mean in chat["mean_rewards"].items():
            columns[f"{name} reward"] = mean
            columns[f"{name} win rate vs {chat['baseline']}"] = chat["win_rates"][name]
    return columns


def plotted_columns(result: dict[str, Any]) -> list[str]:
    """A panel per benchmark (its first metric), per perplexity and per reward model's mean reward."""
    return ([f"{name} {METRICS[report['kind']][0]}" for name, report in result["benchmarks"].items()]
            + [f"{stage} perplexity" for stage in result["perplexity"]]
            + [f"{name} reward" for name in (result.get("chat") or {}).get("mean_rewards", {})])


def scores_against_tokens_png(results: list[dict[str, Any]]) -> bytes:
    """Each plotted column against training tokens, a line per run; a multiple-choice task's
    chance as a dashed line."""
    plt = pyplot()
    from matplotlib.ticker import EngFormatter, MaxNLocator

    panels = plotted_columns(results[0])
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for result in results:
        if result["tokens"] is not None:
            runs[result["run"]].append(result)
    columns = min(PLOT_COLUMNS, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), dpi=100, squeeze=False)
    for axis, panel in zip(axes.flat, panels):
        for run, points in runs.items():
            points = sorted(points, key=lambda r: r["tokens"])
            axis.plot([p["tokens"] for p in points], [score_columns(p)[panel] for p in points], "o-", label=run,
                      linewidth=1, markersize=4)
        task_name = panel.rsplit(" ", 1)[0]
        chance = results[0]["benchmarks"].get(task_name, {}).get("chance")
        if chance is not None:
            axis.axhline(chance, color="grey", linestyle="--", linewidth=1, label="chance")
        axis.set_title(panel)
        axis.set_xlabel("training tokens")
        axis.xaxis.set_major_formatter(EngFormatter())  # 400 k, 1.4 T: readable at any scale
        axis.xaxis.set_major_locator(MaxNLocator(5))
        axis.legend(fontsize="small")
    for axis in list(axes.flat)[len(panels):]:
        axis.set_visible(False)
    return png_bytes(figure)


@task
def publish(config: EvaluateConfig, results: list[dict[str, Any]]) -> None:
    table = [{"checkpoint": r["checkpoint"], "step": r["step"], "training_tokens": r["tokens"], **score_columns(r)}
             for r in results]
    create_table_artifact(key="evaluation-scores", table=table,
                          description=f"{len(results)} checkpoints, {config.shots}-shot, seed {config.seed}")
    lines = ["# Evaluation", "", f"{config.shots}-shot, seed {config.seed}, policy {config.policy}, on "
                                 f"{results[0]['device']}."]
    if config.chat_prompts:
        answers = "greedy" if config.chat_temperature == 0 else f"sampled at temperature {config.chat_temperature}"
        lines += ["", f"Chat metrics: answers ({answers}, at most {config.chat_max_new_tokens} tokens) to "
                      f"{config.chat_prompts} judged by {', '.join(config.reward_models)}; win rates against "
                      f"{results[0]['chat']['baseline']}, ties counted half."]
    plotted = [r for r in results if r["tokens"] is not None]
    if plotted:
        png = base64.b64encode(scores_against_tokens_png(plotted)).decode()
        lines += ["", f"![scores against training tokens](data:image/png;base64,{png})"]
    unplotted = [r["checkpoint"] for r in results if r["tokens"] is None]
    if unplotted:
        lines += ["", f"Not plotted, no record of their training tokens: {', '.join(unplotted)}."]
    for result in results:
        for name, report in result["benchmarks"].items():
            if report["skipped"]:
                lines += ["", f"{result['checkpoint']}, {name}: {len(report['skipped'])} records skipped, the first "
                              f"{report['skipped'][0]}"]
        if result["chat"] and result["chat"]["skipped"]:
            lines += ["", f"{result['checkpoint']}, chat prompts: {len(result['chat']['skipped'])} skipped, the first "
                          f"{result['chat']['skipped'][0]}"]
    create_markdown_artifact(key="evaluation-summary", markdown="\n".join(lines),
                             description="Benchmarks and perplexity against training tokens")


@flow(name="evaluate", log_prints=True)
def evaluate(config: EvaluateConfig = EvaluateConfig(),
             overrides: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One report per checkpoint. `overrides` changes single fields of `config` at run time, e.g.
    {"shots": 2} or {"checkpoints": [{"path": "/data/runs/llama2-7b", "every_checkpoint": true}]}."""
    config = with_overrides(config, overrides)
    checkpoints, benchmarks, prompts = plan(config)
    results = [evaluate_checkpoint(config, checkpoint, benchmarks, prompts) for checkpoint in checkpoints]
    if prompts:
        add_win_rates(results, config.baseline or checkpoints[0].label)
    publish(config, results)
    return results
