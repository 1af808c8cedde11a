"""`train-tokenizer`: LLaMA's 32k BPE tokenizer, trained on a sample of the curated corpus.

Writes ``<output>/tokenizer.model`` (SentencePiece) and the Hugging Face files (tokenizer.json,
tokenizer_config.json, special_tokens_map.json) beside it. With ``existing`` (for example Meta's
tokenizer.model) nothing is trained: that model is checked, copied and exported the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel, Field

from tasks.settings import default_data_root
from tasks.shards import read_part
from tasks.stage import units_from_stage
from tasks.storage import resolve


class TrainTokenizerConfig(BaseModel):
    input: str = Field(default_factory=lambda: f"{default_data_root()}/curated", description="Stage to sample text from")
    output: str = Field(default_factory=lambda: f"{default_data_root()}/tokenizer", description="Tokenizer folder")
    sources: list[str] | None = Field(None, description="Sources to sample (default: all in the stage)")
    vocab_size: int = Field(32000, ge=300)
    max_sentences: int = Field(10_000_000, ge=1, description="Lines SentencePiece sees (a seeded sample)")
    seed: int = 0
    existing: str | None = Field(None, description="Use this tokenizer.model (e.g. Meta's) instead of training")
    trainer_options: dict[str, Any] = Field(default_factory=dict, description="Further SentencePiece options")


def _stage_texts(stage_dir: str, sources: list[str] | None) -> Iterator[str]:
    for unit in units_from_stage(resolve(stage_dir), sources):
        for doc in read_part(resolve(unit.input.uri)):
            yield doc.text


@task(retries=1)
def make_tokenizer(config: TrainTokenizerConfig) -> dict[str, Any]:
    from tasks.tokenizer import Tokenizer, export_hf, train_tokenizer

    if config.existing:
        tokenizer = Tokenizer.load(config.existing)
        tokenizer.save(f"{config.output}/tokenizer.model")
    else:
        tokenizer = train_tokenizer(
            _stage_texts(config.input, config.sources), config.output, vocab_size=config.vocab_size,
            max_sentences=config.max_sentences, seed=config.seed, **config.trainer_options,
        )
    export_hf(tokenizer, config.output)
    return {"folder": config.output, "vocab_size": tokenizer.vocab_size, "bos_id": tokenizer.bos_id,
            "eos_id": tokenizer.eos_id, "unk_id": tokenizer.unk_id, "trained": not config.existing}


@flow(name="train-tokenizer", log_prints=True)
def train_tokenizer_flow(config: TrainTokenizerConfig = TrainTokenizerConfig()) -> dict[str, Any]:
    summary = make_tokenizer(config)
    create_table_artifact(key="tokenizer", table=[summary], description=f"Tokenizer in {config.output}")
    print(f"tokenizer ({summary['vocab_size']} pieces) in {config.output}")
    return summary
