"""`demo`: the platform end to end on data it makes itself.

For each source with a reader, writes small synthetic inputs with known faults (broken records,
boilerplate, legacy encodings), ingests them with the `ingest` flow on Ray, trains the quality
models and curates with the LLaMA 1 recipe, validates both stages with the `shards` flow, then
trains a (toy-sized) tokenizer, mixes the sources (`tasks/mixtures/demo.yaml`), packs the
mixture into shuffled training rows and pretrains the debug-size model on them with Ray Train.
Then it fine-tunes that model with the `sft` flow: synthetic instruction dialogues
(`tasks/synthetic/instructions.py`) ingested, packed with the demo's tokenizer and trained on, and
trains a reward model from the chat model with the `reward` flow on synthetic comparisons whose
better answer is known (`tasks/synthetic/comparisons.py`), evaluated on the held-out ones, and runs
one debug round of RLHF with the `rlhf` flow: rejection sampling on synthetic instruction prompts
judged by that reward model, then two PPO iterations, every model scored on held-out prompts.
Last, the `evaluate` flow scores the base model (each checkpoint of its run) and the chat model on
the synthetic benchmarks with known answers (`tasks/synthetic/benchmarks.py`).
"""

from __future__ import annotations

import importlib
from typing import Any, Literal

from prefect import flow, task
from pydantic import BaseModel, Field, field_validator

from flows.curate import CurateConfig, curate
from flows.evaluate import CheckpointSource, EvaluateConfig, evaluate
from flows.ingest import IngestConfig, ingest
from flows.mix import MixConfig, mix
from flows.pretrain import pretrain
from flows.quality import TrainQualityConfig, train_quality_model
from flows.reward import RewardFlowConfig, reward
from flows.rlhf import RLHFConfig, rlhf
from flows.sft import SFTFlowConfig, sft
from flows.shards import ShardsConfig, shards
from flows.tokenizer import TrainTokenizerConfig, train_tokenizer_flow
from flows.tokens import TokenizeConfig, tokenize
from modeling.pretrain import debug_run
from modeling.reward import debug_run as reward_debug_run
from modeling.sft import debug_run as sft_debug_run
from tasks.settings import default_data_root
from tasks.sources import available_sources
from tasks.storage import resolve


class DemoConfig(BaseModel):
    data_root: str = Field(default_factory=default_data_root, description="Where the demo writes (path or URI)")
    seed: int = Field(0, description="Seed of the synthetic inputs")
    sources: list[str] = Field(default_factory=available_sources, description="Sources to run (default: all with a reader)")
    through: Literal["pretrain", "sft", "reward", "rlhf", "evaluate"] = Field(
        "evaluate", description="The last step to run: pretrain stops once the debug model is pretrained (the data "
                                "side and Ray Train, a few minutes); evaluate runs everything")

    @field_validator("sources")
    @classmethod
    def _known(cls, sources: list[str]) -> list[str]:
        unknown = sorted(set(sources) - set(available_sources()))
        if unknown or not sources:
            raise ValueError(f"sources {unknown or sources} not available; choose from {available_sources()}")
        return sources


@task(retries=2, retry_delay_seconds=5)
def generate_inputs(source: str, folder: str, seed: int) -> list[str]:
    return importlib.import_module(f"tasks.synthetic.{source}").write_inputs(folder, seed)


@task
def write_prompt_sets(folder: str, seed: int) -> tuple[str, str]:
    """The rounds' prompts and held-out ones, synthetic instructions with their right answers."""
    from tasks.synthetic.instructions import write_prompts

    root = resolve(folder)
    root.makedirs()
    return (str(write_prompts(root.join("prompts.jsonl").path, n=64, seed=seed + 101)),
            str(write_prompts(root.join("held-out.jsonl").path, n=32, seed=seed + 202)))


def fine_tune_and_align(config: DemoConfig, root, tokenizer: str, trained: dict[str, Any], said: list[str]) -> str:
    """SFT on synthetic instructions, then (as far as `config.through` says) a reward model on synthetic
    comparisons and a debug RLHF round; returns the chat model's run folder."""
    dialogues = generate_inputs("instructions", root.join("raw", "instructions").uri, config.seed)
    fine_tuned = sft(SFTFlowConfig(
        inputs=dialogues, source="instructions", tokenizer=f"{tokenizer}/tokenizer.model", pack_seed=config.seed,
        training=sft_debug_run(run_name="demo-sft", data=root.join("sft-tokens").uri, output=root.join("runs").uri,
                               init=trained["run_dir"], seed=config.seed),
    ))
    said.append(f"fine-tuned on instructions, loss {fine_tuned['first_loss']:.3f} -> {fine_tuned['final_loss']:.3f} "
                f"in {fine_tuned['run_dir']}")
    if config.through == "sft":
        return fine_tuned["run_dir"]
    comparisons = generate_inputs("comparisons", root.join("raw", "comparisons").uri, config.seed)
    rewarded = reward(RewardFlowConfig(
        inputs=comparisons, source="synthetic", tokenizer=f"{tokenizer}/tokenizer.model", pack_seed=config.seed,
        training=reward_debug_run(run_name="demo-reward", data=root.join("reward-tokens").uri,
                                  output=root.join("runs").uri, init=fine_tuned["run_dir"], seed=config.seed),
    ))
    reward_report = rewarded["evaluation"]["synthetic"]
    said.append(f"reward model held-out accuracy {reward_report['accuracy']:.3f} ({reward_report['pairs']} pairs) in "
                f"{rewarded['run_dir']}")
    if config.through == "reward":
        return fine_tuned["run_dir"]
    prompts, held_out_prompts = write_prompt_sets(root.join("raw", "prompts").uri, config.seed)
    rounds = rlhf(RLHFConfig(output=root.join("rlhf").uri, init=fine_tuned["run_dir"], prompts=[prompts],
                             reward_models={"helpfulness": rewarded["run_dir"]}, seed=config.seed,
                             evaluation_prompts=held_out_prompts))
    said.append(f"RLHF round in {rounds['run_root']}: " + ", ".join(
        f"{row['model']} exact match {row['exact_match']:.3f}" for row in rounds["evaluation"]))
    return fine_tuned["run_dir"]


@flow(name="demo", log_prints=True)
def demo(config: DemoConfig = DemoConfig()) -> dict[str, Any]:
    root = resolve(config.data_root).join("demo")
    for source in config.sources:
        inputs = generate_inputs(source, root.join("raw", source).uri, config.seed)
        ingest(IngestConfig(source=source, inputs=inputs, output=root.uri))
    shards(ShardsConfig(stage_dir=root.join("ingest").uri))
    models = None
    if "wikipedia" in config.sources:
        models = root.join("quality_models").uri
        # The demo's Wikipedia text is a few pages: a small vocabulary fits it.
        train_quality_model(TrainQualityConfig(input=root.join("ingest").uri, output=models, languages=["en"], vocab_size=300))
    curate(CurateConfig(input=root.join("ingest").uri, output=root.uri, quality_models=models))
    report = shards(ShardsConfig(stage_dir=root.join("curated").uri))
    # A toy vocabulary for the demo's few hundred documents; LLaMA's is 32,000.
    tokenizer = root.join("tokenizer").uri
    train_tokenizer_flow(TrainTokenizerConfig(
        input=root.join("curated").uri, output=tokenizer, vocab_size=400, trainer_options={"hard_vocab_limit": False}
    ))
    mix(MixConfig(input=root.join("curated").uri, tokenizer=f"{tokenizer}/tokenizer.model", output=root.uri,
                  mixture="demo"))
    tokens = tokenize(TokenizeConfig(input=root.join("mixed").uri, tokenizer=f"{tokenizer}/tokenizer.model",
                                     output=root.uri, seq_len=128, seed=config.seed, rows_per_shard=256))
    held_out = {"holdout_shards": 1, "interval_steps": 10, "rows": 16} if len(tokens["shards"]) > 1 else {}
    trained = pretrain(debug_run(run_name="demo", data=root.join("tokens").uri, output=root.join("runs").uri,
                                 tokenizer=f"{tokenizer}/tokenizer.model", seed=config.seed, validation=held_out))
    said = [f"{sum(s['kept'] for s in report['by_source'].values())} curated documents in {report['stage_dir']}",
            f"debug model loss {trained['first_loss']:.3f} -> {trained['final_loss']:.3f} in {trained['run_dir']}"]
    if config.through != "pretrain":
        fine_tuned = fine_tune_and_align(config, root, tokenizer, trained, said)
        if config.through == "evaluate":
            # Last step: the base model at each checkpoint, then the chat model, on the synthetic benchmarks.
            evaluate(EvaluateConfig(checkpoints=[CheckpointSource(path=trained["run_dir"], every_checkpoint=True),
                                                 fine_tuned], seed=config.seed))
    print("demo: " + "; ".join(said))
    return report
