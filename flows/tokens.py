"""`tokenize`: documents -> token ids with <s>/</s> -> rows of seq_len + 1 -> shuffled Parquet shards.

Data-parallel on Ray; the output stage (default ``<data>/tokens``) is what training reads with
`tasks.token_reader.TokenReader` (disjoint rows per rank, exact resume).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel, Field

from tasks.settings import default_data_root
from tasks.stage import units_from_stage
from tasks.storage import resolve


class TokenizeConfig(BaseModel):
    input: str = Field(default_factory=lambda: f"{default_data_root()}/curated", description="Document stage to tokenize")
    tokenizer: str = Field(default_factory=lambda: f"{default_data_root()}/tokenizer/tokenizer.model")
    output: str = Field(default_factory=default_data_root, description="Data root; the stage is <output>/<stage>")
    stage: str = "tokens"
    seq_len: int = Field(2048, ge=8, description="Tokens a training row predicts (rows hold seq_len + 1)")
    seed: int = 0
    rows_per_shard: int = Field(16384, ge=1)


@task
def pack(config: TokenizeConfig) -> dict[str, Any]:
    from tasks.tokenizer import Tokenizer
    from tasks.tokens import tokenize_and_pack

    return tokenize_and_pack(
        units_from_stage(resolve(config.input)), Tokenizer.load(config.tokenizer), config.output,
        stage_name=config.stage, seq_len=config.seq_len, seed=config.seed, rows_per_shard=config.rows_per_shard,
    )


@flow(name="tokenize", log_prints=True)
def tokenize(config: TokenizeConfig = TokenizeConfig()) -> dict[str, Any]:
    manifest = pack(config)
    table = [{"source": source, **counts} for source, counts in sorted(manifest["sources"].items())]
    create_table_artifact(key="tokens", table=table, description=f"Tokens per source in {config.output}/{config.stage}")
    print(f"{manifest['tokens']} tokens in {manifest['rows']} rows of {config.seq_len + 1}")
    return manifest
