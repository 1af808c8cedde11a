"""`sft`: supervised fine-tuning, dialogues to a chat model: ingest -> pack -> train on Ray Train.

The flow ingests dialogue files (JSON lines in the `messages` form, or Anthropic HH transcripts)
into a dialogue stage (`tasks.dialogues`), packs it in Llama 2's chat format into the token stage
the run trains on (`tasks.sft_tokens`: `training.data`, loss on the answers only), and fine-tunes
the base model (`training.init`) along the training path the `pretrain` flow takes
(`flows.training`: checked first, here or as a Ray job, artifacts `sft-metrics` and `sft-summary`).

Every stage sits under one data root, the folder holding `training.data`: the dialogue stage in
`<root>/dialogues` and the tokenizer in `<root>/tokenizer/tokenizer.model` unless given. Without
inputs the flow packs the dialogue stage already there (what an earlier run or `make demo`
ingested); packing and ingest skip what is already done with the same inputs.
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel, Field, model_validator

from flows.training import root_and_name, run_config_of_parameters, stop_job_on_cancellation, train
from modeling.run_config import with_overrides
from modeling.sft import SFTConfig, debug_run


class SFTFlowConfig(BaseModel):
    inputs: list[str] = Field(default_factory=list, description="Dialogue files or folders (paths or URIs) to "
                                                                "ingest; none: pack the dialogue stage already there")
    reader: Literal["messages", "hh"] = Field(
        "messages", description="messages: {\"messages\": [{role, content}, ...]} lines; hh: Anthropic HH "
                                "transcripts (the chosen side)")
    source: str = Field("dialogues", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                        description="The inputs' source name in the dialogue stage")
    dialogues: str | None = Field(None, description="The dialogue stage; None: <root>/dialogues beside training.data")
    tokenizer: str | None = Field(None, description="tokenizer.model that packs the dialogues and ships with the "
                                                    "export; None: training.tokenizer, else <root>/tokenizer")
    pack_seed: int = Field(0, ge=0, description="Seed of the packed rows' shuffle")
    rows_per_shard: int = Field(16384, ge=1)
    training: SFTConfig = Field(default_factory=debug_run,
                                description="The fine-tuning run; its data is where the packed rows go")

    @model_validator(mode="after")
    def _one_tokenizer(self) -> SFTFlowConfig:
        if self.tokenizer and self.training.tokenizer and self.tokenizer != self.training.tokenizer:
            raise ValueError(f"tokenizer {self.tokenizer} packs the rows but training.tokenizer "
                             f"{self.training.tokenizer} would ship with the export: give one of them")
        return self

    @property
    def data_root(self) -> str:
        return root_and_name(self.training.data)[0]

    @property
    def dialogue_stage(self) -> str:
        return self.dialogues or f"{self.data_root}/dialogues"

    def run_config(self) -> SFTConfig:
        """The training run, shipping the tokenizer that packed its rows."""
        tokenizer = self.tokenizer or self.training.tokenizer or f"{self.data_root}/tokenizer/tokenizer.model"
        return self.training.model_copy(update={"tokenizer": tokenizer}).with_absolute_paths()


@task(retries=2, retry_delay_seconds=5)
def ingest(config: SFTFlowConfig) -> dict[str, Any]:
    from tasks.dialogues.ingest import ingest_dialogues
    from tasks.dialogues.readers import HHReader, MessagesReader
    from tasks.storage import expand_inputs

    reader = MessagesReader() if config.reader == "messages" else HHReader()
    root, stage = root_and_name(config.dialogue_stage)
    manifest = ingest_dialogues(config.source, expand_inputs(config.inputs), root, reader, stage=stage)
    totals = manifest["totals"]["by_source"][config.source]
    print(f"{config.source}: {totals['kept']} dialogues in {config.dialogue_stage}, "
          f"{totals['quarantined']} quarantined")
    return manifest


@task
def pack(config: SFTFlowConfig, tokenizer: str) -> dict[str, Any]:
    from tasks.sft_tokens import pack_dialogues
    from tasks.shards import MANIFEST
    from tasks.storage import resolve
    from tasks.tokenizer import Tokenizer

    if not resolve(config.dialogue_stage).join(MANIFEST).exists():
        raise FileNotFoundError(f"{config.dialogue_stage}: no finished dialogue stage: give the dialogue files "
                                f"as inputs to ingest them first")
    root, stage = root_and_name(config.training.data)
    manifest = pack_dialogues(config.dialogue_stage, Tokenizer.load(tokenizer), root, stage_name=stage,
                              seq_len=config.training.seq_len, seed=config.pack_seed,
                              rows_per_shard=config.rows_per_shard)
    table = [{"source": source, **counts} for source, counts in sorted(manifest["sources"].items())]
    create_table_artifact(key="sft-tokens", table=table, description=f"Packed dialogues per source in "
                                                                     f"{config.training.data}")
    print(f"{manifest['rows']} rows of {config.training.seq_len + 1} tokens in {config.training.data}")
    return manifest


run_config_of = run_config_of_parameters(SFTFlowConfig, SFTFlowConfig.run_config)


@flow(name="sft", log_prints=True, on_cancellation=[stop_job_on_cancellation(run_config_of)])
def sft(config: SFTFlowConfig = SFTFlowConfig(), overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """`overrides` changes single fields of `config` at run time, e.g. {"inputs": ["/data/hh.jsonl"],
    "reader": "hh"} or {"training": {"epochs": 1}}."""
    config = with_overrides(config, overrides)
    training = config.run_config()
    if config.inputs:
        ingest(config)
    pack(config, training.tokenizer)
    return train(training)
