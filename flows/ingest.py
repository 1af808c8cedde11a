"""`ingest`: turn one source's raw files into document shards, one Ray task per input file.

Output: ``<output>/ingest/<source>/part-NNNNN.parquet`` with the stage's manifest, receipts and
quarantine (see the README's shard format). Inputs already done are skipped on rerun.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import INPUTS, TASK_SOURCE
from pydantic import BaseModel, Field, model_validator

from tasks.ray_runtime import ensure_ray
from tasks.settings import default_data_root
from tasks.sources import SourceName, make_reader
from tasks.stage import InputFile, StageSpec, plan_units, run_stage
from tasks.storage import expand_inputs, resolve

STAGE = "ingest"


class IngestConfig(BaseModel):
    source: SourceName
    inputs: list[str] = Field(default_factory=list, description="Files, folders (all files inside) or URIs")
    output: str = Field(default_factory=default_data_root, description="Data root: the stage is <output>/ingest")
    strict: bool = Field(False, description="Fail the run when any record was quarantined")
    split_bytes: int | None = Field(
        256 << 20, ge=1 << 20, description="Split inputs larger than this into several parts where the format allows"
    )
    max_record_bytes: int | None = Field(
        None,
        ge=1,
        description="Largest record a reader takes (a JSON line, a WARC payload, a page's text, a book file, a "
        "paper's LaTeX); a larger one is quarantined unread. None: the reader's default (8 MiB; 64 MiB for books, arxiv)",
    )
    crawl: str | None = Field(None, description="commoncrawl only: a crawl name such as CC-MAIN-2023-23")
    crawl_segments: int | None = Field(None, ge=1, description="With crawl: every WET file of the first N segments")
    crawl_files: int | None = Field(None, ge=1, description="With crawl: the first N WET files of the listing")
    crawl_base_url: str | None = Field(None, description="With crawl: a mirror of Common Crawl's data host")

    @model_validator(mode="after")
    def _has_inputs(self) -> IngestConfig:
        if self.crawl is not None:
            if self.source != "commoncrawl":
                raise ValueError(f"a crawl name is for the commoncrawl source, not {self.source}")
            if (self.crawl_segments is None) == (self.crawl_files is None):
                raise ValueError("with a crawl, give exactly one of crawl_segments or crawl_files")
        elif not self.inputs:
            raise ValueError(f"ingest of {self.source}: give at least one input file, folder or URI")
        self.reader()  # fails now, before any work, for a source without a reader
        return self

    def reader(self):
        settings = {} if self.max_record_bytes is None else {"max_record_bytes": self.max_record_bytes}
        return make_reader(self.source, **settings)


class QuarantinedRecords(RuntimeError):
    pass


@task(retries=2, retry_delay_seconds=5)
def list_inputs(config: IngestConfig) -> list[str]:
    files = expand_inputs(config.inputs)
    if config.crawl is not None:
        from tasks.sources import commoncrawl

        host = {"base_url": config.crawl_base_url} if config.crawl_base_url else {}
        if config.crawl_segments is not None:
            files += commoncrawl.crawl_segment_uris(config.crawl, config.crawl_segments, **host)
        else:
            files += commoncrawl.crawl_file_uris(config.crawl, config.crawl_files, **host)
    if not files:
        raise FileNotFoundError(f"no input files under {config.inputs}")
    return files


# Hashing is the expensive part of describing an input: cached on the file's identity (uri, size,
# modification time) and this task's code, so a changed file is hashed again.
@task(cache_policy=TASK_SOURCE + INPUTS, retries=2, retry_delay_seconds=5)
def describe_input(uri: str, size: int, mtime_ns: int) -> InputFile:
    return InputFile.describe(uri)


def describe_inputs(uris: list[str]) -> list[InputFile]:
    described = []
    for uri in uris:
        location = resolve(uri)
        info = location.fs.get_file_info(location.path)
        described.append(describe_input(uri, info.size, info.mtime_ns or 0))
    return described


@task
def ingest_source(config: IngestConfig, inputs: list[InputFile]) -> dict[str, Any]:
    logger = get_run_logger()
    logger.info("ingesting %d %s inputs on %s", len(inputs), config.source, ensure_ray())
    reader = config.reader()
    spec = StageSpec(
        root=config.output,
        name=STAGE,
        reader=reader,
        parameters={
            "source": config.source,
            "reader": repr(reader),
            "split_bytes": config.split_bytes,
        },
    )
    units = plan_units(config.source, reader, inputs, config.split_bytes)

    def log_part(r):
        logger.info("%s: %d in, %d kept, %d dropped, %d quarantined",
                    r.input, r.docs_in, r.kept, sum(r.dropped.values()), r.quarantined)

    return run_stage(spec, units, on_part_done=log_part)


@task
def publish_ingest_summary(source: str, manifest: dict[str, Any]) -> dict[str, Any]:
    totals = manifest["totals"]["by_source"][source]
    row = {"source": source, **{k: totals[k] for k in ("parts", "docs_in", "kept", "dropped_total", "quarantined", "bytes")}}
    reasons = [{"source": source, "reason": reason, "documents": n} for reason, n in totals["dropped"].items()]
    create_table_artifact(key=f"ingest-{source}", table=[row], description=f"Ingest of {source} into {manifest['stage_dir']}")
    if reasons:
        create_table_artifact(key=f"ingest-{source}-drops", table=reasons, description=f"Drop reasons for {source}")
    return totals


@flow(name="ingest", log_prints=True)
def ingest(config: IngestConfig) -> dict[str, Any]:
    inputs = describe_inputs(list_inputs(config))
    manifest = ingest_source(config, inputs)
    totals = publish_ingest_summary(config.source, manifest)
    print(f"{config.source}: {totals['docs_in']} records in, {totals['kept']} kept, "
          f"{totals['dropped_total']} dropped, {totals['quarantined']} quarantined -> {manifest['stage_dir']}")
    if config.strict and totals["quarantined"]:
        raise QuarantinedRecords(f"{totals['quarantined']} {config.source} records quarantined (strict run); see {manifest['stage_dir']}/_quarantine/{config.source}")
    return manifest
