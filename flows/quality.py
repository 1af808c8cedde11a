"""`train-quality-model`: the CCNet quality models, trained on the ingested Wikipedia text.

Per language: a SentencePiece model and a 5-gram KenLM (lmplz + build_binary) on CCNet-normalised
text, written as ``<output>/<lang>.sp.model`` and ``<lang>.arpa.bin``; `curate` reads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel, Field

from tasks.ray_runtime import ensure_ray
from tasks.settings import default_data_root
from tasks.storage import resolve


class TrainQualityConfig(BaseModel):
    input: str = Field(default_factory=lambda: f"{default_data_root()}/ingest", description="The ingest stage folder")
    output: str = Field(default_factory=lambda: f"{default_data_root()}/quality_models", description="Local model folder")
    languages: list[str] | None = Field(None, description="Languages to train (default: every language found)")
    vocab_size: int = Field(65536, ge=100, description="SentencePiece vocabulary (CCNet: 65,536; less for small text)")
    order: int = Field(5, ge=2, le=7, description="KenLM n-gram order")


@task
def train(config: TrainQualityConfig) -> dict[str, dict[str, Any]]:
    from tasks.curate.quality import train_from_stage

    ensure_ray()
    models = train_from_stage(resolve(config.input), config.output, config.languages, config.vocab_size, config.order)
    return {lang: {"sentencepiece": m.sentencepiece, "kenlm": m.kenlm} for lang, m in sorted(models.items())}


@flow(name="train-quality-model", log_prints=True)
def train_quality_model(config: TrainQualityConfig = TrainQualityConfig()) -> dict[str, dict[str, Any]]:
    models = train(config)
    create_table_artifact(
        key="quality-models",
        table=[{"language": lang, **paths, "kenlm_mb": round(Path(paths["kenlm"]).stat().st_size / 1e6, 1)}
               for lang, paths in models.items()],
        description=f"Quality models in {config.output}",
    )
    print(f"trained quality models for {sorted(models)} in {config.output}")
    return models
