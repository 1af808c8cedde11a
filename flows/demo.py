"""`demo`: the platform end to end on data it makes itself.

Writes a small synthetic JSON-lines corpus (with broken lines and short documents), ingests it into
document shards on Ray, and validates the stage with the `shards` flow. Later stages of the
pipeline hang off the same layout.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import INPUTS, TASK_SOURCE
from pydantic import BaseModel, Field

from flows.shards import ShardsConfig, shards
from infra.ray_env import ensure_ray
from infra.settings import default_data_root
from tasks.demo_corpus import write_demo_corpus
from tasks.sources.jsonl import JsonlReader
from tasks.stage import InputFile, ShardUnit, StageSpec, run_stage
from tasks.steps import MinLength
from tasks.storage import resolve

SOURCE = "synthetic"


class DemoConfig(BaseModel):
    data_root: str = Field(default_factory=default_data_root, description="Where the demo writes (path or URI)")
    files: int = Field(4, ge=1, le=1000, description="Input files to generate (one output part each)")
    docs_per_file: int = Field(400, ge=1, le=1_000_000)
    seed: int = 0
    min_chars: int = Field(200, ge=0, description="Documents shorter than this are dropped")


@task(retries=2, retry_delay_seconds=5)
def generate_corpus(config: DemoConfig) -> list[str]:
    return write_demo_corpus(resolve(config.data_root).join("demo", "raw"), config.files, config.docs_per_file, config.seed)


# Hashing inputs is the expensive part of describing them; the cache key is the file's identity
# (uri, size, modification time) plus this task's code, so a changed file is hashed again.
@task(cache_policy=TASK_SOURCE + INPUTS, retries=2, retry_delay_seconds=5)
def describe_input(uri: str, size: int, mtime_ns: int) -> InputFile:
    return InputFile.describe(uri)


@task
def ingest(config: DemoConfig, inputs: list[InputFile]) -> dict[str, Any]:
    logger = get_run_logger()
    logger.info("ingesting on %s", ensure_ray())
    spec = StageSpec(
        root=resolve(config.data_root).join("demo").uri,
        name="ingest",
        reader=JsonlReader(text_field="text", key_field="url"),
        steps=lambda: [MinLength(config.min_chars)],
        parameters={"min_chars": config.min_chars, "inputs": [i.sha256 for i in inputs]},
    )
    units = [ShardUnit(source=SOURCE, index=i, input=input_file) for i, input_file in enumerate(inputs)]
    manifest = run_stage(spec, units, on_part_done=lambda r: logger.info(
        "%s: %d in, %d kept, %d dropped, %d quarantined", r.path, r.docs_in, r.kept, sum(r.dropped.values()), r.quarantined
    ))
    totals = manifest["totals"]
    create_table_artifact(
        key="demo-ingest",
        table=[{k: v for k, v in {**totals, "source": s}.items() if k != "by_source"} for s, totals in totals["by_source"].items()],
        description="Documents in / kept / dropped / quarantined per source",
    )
    return manifest


@flow(name="demo", log_prints=True)
def demo(config: DemoConfig = DemoConfig()) -> dict[str, Any]:
    uris = generate_corpus(config)
    inputs = []
    for uri in uris:
        info = resolve(uri).fs.get_file_info(resolve(uri).path)
        inputs.append(describe_input(uri, info.size, info.mtime_ns or 0))
    manifest = ingest(config, inputs)
    report = shards(ShardsConfig(stage_dir=manifest["stage_dir"]))
    print(f"demo stage {manifest['stage_dir']}: {manifest['totals']['kept']} documents kept, valid={report['valid']}")
    return report
