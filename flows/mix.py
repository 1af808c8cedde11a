"""`mix`: how much of each source the model sees (LLaMA 1's shares by default).

Counts tokens per source with the tokenizer, plans per-source epochs (a source too small for its
share fails before anything is written), and writes the `mixed` document stage: whole epochs
repeat every document in a fresh order, the fractional epoch takes a seeded token-exact sample.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel, Field, model_validator

from tasks.settings import default_data_root
from tasks.storage import resolve


class MixConfig(BaseModel):
    input: str = Field(default_factory=lambda: f"{default_data_root()}/curated", description="Curated document stage")
    tokenizer: str = Field(default_factory=lambda: f"{default_data_root()}/tokenizer/tokenizer.model")
    output: str = Field(default_factory=default_data_root, description="Data root; the stage is <output>/<stage>")
    mixture: str = Field("llama1", description="A shipped mixture's name or a mixture YAML file")
    stage: str = "mixed"

    @model_validator(mode="after")
    def _mixture_loads(self) -> MixConfig:
        from tasks.mix import load_mixture

        try:
            load_mixture(self.mixture)
        except FileNotFoundError as exc:
            raise ValueError(str(exc)) from exc
        return self


@task
def mix_sources(config: MixConfig) -> dict[str, Any]:
    from tasks.tokenizer import Tokenizer
    from tasks.mix import load_mixture, run_mix

    return run_mix(resolve(config.input), Tokenizer.load(config.tokenizer), load_mixture(config.mixture),
                   out_root=config.output, stage_name=config.stage)


@flow(name="mix", log_prints=True)
def mix(config: MixConfig = MixConfig()) -> dict[str, Any]:
    manifest = mix_sources(config)
    plan = manifest["mixture"]
    create_table_artifact(key="mixture", table=[{"source": s, **row} for s, row in sorted(plan["sources"].items())],
                          description=f"Mixture {config.mixture}: planned and realised tokens per source")
    print(f"mixture {config.mixture} written to {manifest['stage_dir']}")
    return manifest
