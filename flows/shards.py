"""`shards`: validate a stage folder against its manifest on Ray and publish its statistics."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import BaseModel, Field

from tasks.executor import run_tasks
from tasks.settings import default_data_root
from tasks.shards import MANIFEST
from tasks.storage import resolve
from tasks.validate import check_part, check_stage_level, check_unique_ids, stage_report


class ShardsConfig(BaseModel):
    stage_dir: str = Field(
        default_factory=lambda: f"{default_data_root()}/demo/ingest",
        description="Stage folder (local path or URI) holding _manifest.json",
    )
    fail_on_problems: bool = Field(True, description="Fail the run when the stage does not validate")
    scratch_dir: str | None = Field(
        None, description="Where the id uniqueness check keeps its temporary index (default: the stage folder)"
    )


class StageInvalid(RuntimeError):
    pass


@task(retries=2, retry_delay_seconds=5)  # the manifest may sit on a remote store
def load_manifest(stage_dir: str) -> dict[str, Any]:
    location = resolve(stage_dir).join(MANIFEST)
    if not location.exists():
        raise FileNotFoundError(f"{location.uri}: no manifest: is {stage_dir} a finished stage folder?")
    return location.read_json()


@task
def check_parts(stage_dir: str, manifest: dict[str, Any], scratch_dir: str | None = None) -> dict[str, Any]:
    from tasks.ray_runtime import ensure_ray

    logger = get_run_logger()
    logger.info("checking %d parts on %s", len(manifest["parts"]), ensure_ray())
    checks = run_tasks(check_part, [(part,) for part in manifest["parts"]], shared=(stage_dir,), label="checking parts")
    location = resolve(stage_dir)
    scratch = resolve(scratch_dir) if scratch_dir else None
    problems = check_stage_level(location, manifest) + check_unique_ids(location, manifest, scratch)
    return stage_report(manifest, checks, problems)


@task
def publish_report(report: dict[str, Any]) -> None:
    slug = "".join(c if c.isalnum() else "-" for c in report["stage"].lower())
    rows = [{"source": source, **stats} for source, stats in report["by_source"].items()]
    create_table_artifact(key=f"shards-{slug}", table=rows, description=f"Shards of {report['stage_dir']}")
    verdict = "valid" if report["valid"] else f"INVALID ({len(report['problems'])} problems)"
    lines = [f"# Stage `{report['stage']}`: {verdict}", "", f"Folder: `{report['stage_dir']}`", ""]
    lines += ["| drop reason | documents |", "| --- | ---: |"]
    lines += [f"| {reason} | {n} |" for reason, n in report["dropped_by_reason"].items()] or ["| (none) | 0 |"]
    if report["problems"]:
        lines += ["", "## Problems", ""] + [f"- {p}" for p in report["problems"][:200]]
    create_markdown_artifact(key=f"shards-{slug}-summary", markdown="\n".join(lines))


@flow(name="shards", log_prints=True)
def shards(config: ShardsConfig = ShardsConfig()) -> dict[str, Any]:
    manifest = load_manifest(config.stage_dir)
    report = check_parts(config.stage_dir, manifest, config.scratch_dir)
    publish_report(report)
    if config.fail_on_problems and not report["valid"]:
        raise StageInvalid(f"{config.stage_dir}: " + "; ".join(report["problems"][:10]))
    return report
