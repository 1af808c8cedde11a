"""The training path every training flow shares (`pretrain`, `sft`): any `RunConfig` on Ray Train.

`train(config)` checks the run config against the data and the cluster first (a run that cannot
work fails here, with what to change), then trains: on a cluster (a Ray dashboard address in
`ray_jobs_address` or RAY_API_SERVER_ADDRESS) as a Ray job running `python -m modeling.ray_job`,
whose log is streamed into the flow run's log and which is stopped if the run is cancelled
(`stop_job_on_cancellation`) or fails; otherwise in this process on the connected or a private
local Ray. Either way it follows the run's metrics log (progress in the UI) and publishes a metrics
table, the loss curve and a summary, under artifact keys named by the run's kind
(`pretrain-metrics`, `sft-summary`, ...).
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.runtime import flow_run

from flows.figures import png_bytes, pyplot
from modeling.ray_job import METRICS_FILE, SUMMARY_FILE, read_metrics
from modeling.run_config import RunConfig, with_overrides

POLL_SECONDS = 2.0
STOP_WAIT_SECONDS = 60.0
TERMINAL_JOB_STATES = {"SUCCEEDED", "FAILED", "STOPPED"}
TABLE_ROWS = 50
HEADINGS = {"pretrain": "Pretraining", "sft": "Fine-tuning"}


# ---------------------------------------------------------------------------------- cluster access


def jobs_address(config: RunConfig) -> str | None:
    return config.ray_jobs_address or os.environ.get("RAY_API_SERVER_ADDRESS") or None


def _auth_headers() -> dict[str, str]:
    """The stack's token (RAY_AUTH_TOKEN_PATH) or RAY_AUTH_TOKEN, for a cluster with token auth."""
    token = os.environ.get("RAY_AUTH_TOKEN")
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if not token and path and Path(path).is_file():
        token = Path(path).read_text().strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def job_client(address: str):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address, headers=_auth_headers())


def cluster_resources(address: str | None) -> dict[str, float]:
    """Total resources of the cluster: over the dashboard's state API, or of the connected Ray."""
    if address is None:
        import ray

        from tasks.ray_runtime import ensure_ray

        ensure_ray()
        return dict(ray.cluster_resources())
    import httpx

    response = httpx.get(f"{address.rstrip('/')}/api/v0/nodes", params={"detail": "1", "limit": "1000"},
                         headers=_auth_headers(), timeout=30)
    response.raise_for_status()
    totals: dict[str, float] = {}
    for node in response.json()["data"]["result"]["result"]:
        if node.get("state") == "ALIVE":
            for name, amount in node.get("resources_total", {}).items():
                totals[name] = totals.get(name, 0.0) + amount
    return totals


def root_and_name(stage: str) -> tuple[str, str]:
    """A stage's data root and its name (a relative path is taken from here)."""
    absolute = stage if "://" in stage else str(Path(stage).absolute())
    root, _, name = absolute.rstrip("/").rpartition("/")
    return root, name


def submission_id(kind: str, run_id: str | None) -> str:
    """The Ray job's id, derived from the flow run's so a cancellation hook can find the job."""
    return f"llamaline-{kind}-{run_id or int(time.time() * 1000)}"


# ---------------------------------------------------------------------------------- following


class MetricsFollower:
    """Reads the new entries of a run's metrics log; notices when a resume rewound it."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / METRICS_FILE
        self.offset = 0

    def new_entries(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        size = self.path.stat().st_size
        if size < self.offset:  # rewound by a resume
            self.offset = 0
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        complete = data[: data.rfind(b"\n") + 1]
        self.offset += len(complete)
        entries = []
        for line in complete.decode().splitlines():
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue
        return entries


def describe(entry: dict[str, Any], total_steps: int) -> str:
    if "event" in entry:
        details = {k: v for k, v in entry.items() if k not in ("event", "time") and v is not None}
        return f"{entry['event']}: {details}"
    text = (f"step {entry['step']}/{total_steps} loss {entry['loss']:.4f} lr {entry['lr']:.3g} "
            f"grad_norm {entry['grad_norm']:.3f} {entry['tokens_per_second']:,.0f} tok/s")
    if entry.get("mfu") is not None:
        text += f" MFU {entry['mfu']:.1%}"
    if "validation_loss" in entry:
        text += f" validation_loss {entry['validation_loss']:.4f}"
    return text


def follow(config: RunConfig, done: Callable[[], bool], extra_poll: Callable[[], None] = lambda: None) -> None:
    """Log the run's progress until `done()`; keep a progress artifact up to date."""
    logger = get_run_logger()
    follower = MetricsFollower(config.run_dir)
    progress = create_progress_artifact(progress=0.0, key=f"{config.kind}-progress",
                                        description=f"{config.run_name}: steps done of {config.total_steps}")
    last_logged = 0.0
    while True:
        finished = done()
        extra_poll()
        entries = follower.new_entries()
        steps = [e for e in entries if "event" not in e]
        for entry in entries:
            if "event" in entry or entry is steps[-1] or "validation_loss" in entry \
                    or time.monotonic() - last_logged > 10 * POLL_SECONDS:
                logger.info(describe(entry, config.total_steps))
                last_logged = time.monotonic()
        if steps:
            update_progress_artifact(progress, progress=100.0 * steps[-1]["step"] / config.total_steps)
        if finished:
            return
        time.sleep(POLL_SECONDS)


# ---------------------------------------------------------------------------------- the two ways to run


@task
def validate(config: RunConfig, address: str | None) -> dict[str, Any]:
    """Reject a run that cannot work before anything starts."""
    resources = cluster_resources(address)
    config.check_cluster(resources)
    manifest = config.check_data()
    get_run_logger().info(
        f"{config.model_name}: {config.total_steps} steps of {config.global_batch_tokens:,} tokens on "
        f"{config.scaling.num_workers} {'GPU' if config.scaling.use_gpu else 'CPU'} workers; data "
        f"{manifest['rows']:,} rows of {manifest['row_tokens']} tokens; cluster {resources.get('CPU', 0):g} CPUs, "
        f"{resources.get('GPU', 0):g} GPUs")
    return resources


@task
def train_here(config: RunConfig) -> dict[str, Any]:
    """Ray Train from this process (a laptop, a test, a worker without a cluster)."""
    from concurrent.futures import ThreadPoolExecutor

    from modeling.ray_job import run_training

    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(run_training, config)
        follow(config, future.done)
        return future.result()


@task
def train_as_ray_job(config: RunConfig, address: str) -> dict[str, Any]:
    """Submit `python -m modeling.ray_job` as a Ray job, stream its log, stop it if we stop."""
    logger = get_run_logger()
    client = job_client(address)
    # On this machine the cluster runs our interpreter; elsewhere the image's `python`.
    python = sys.executable if urlparse(address).hostname in ("127.0.0.1", "localhost") else "python"
    job_id = client.submit_job(
        entrypoint=f"{shlex.quote(python)} -m modeling.ray_job --kind {config.kind} --config {shlex.quote(config.model_dump_json())}",
        submission_id=submission_id(config.kind, flow_run.get_id()),
        metadata={"llamaline": config.kind, "run_name": config.run_name},
    )
    logger.info(f"submitted Ray job {job_id} to {address} (Ray dashboard: Jobs)")
    log_offset = 0
    status = {"value": None}

    def poll_job() -> None:
        nonlocal log_offset
        status["value"] = str(client.get_job_status(job_id).value)
        text = client.get_job_logs(job_id)
        for line in text[log_offset:].splitlines():
            if line.strip() and "Reporting training result" not in line:
                logger.info(f"[ray job] {line}")
        log_offset = len(text)

    try:
        follow(config, lambda: status["value"] in TERMINAL_JOB_STATES, poll_job)
    except BaseException:
        stop_job(client, job_id)
        raise
    if status["value"] != "SUCCEEDED":
        tail = client.get_job_logs(job_id)[-3000:]
        raise RuntimeError(f"Ray job {job_id} ended {status['value']}; its log ends:\n{tail}")
    return json.loads((config.run_dir / SUMMARY_FILE).read_text())


def stop_job(client, job_id: str) -> None:
    """Stop a Ray job and wait until it is gone, so nothing is left running."""
    try:
        if str(client.get_job_status(job_id).value) in TERMINAL_JOB_STATES:
            return
        client.stop_job(job_id)
        deadline = time.monotonic() + STOP_WAIT_SECONDS
        while time.monotonic() < deadline and str(client.get_job_status(job_id).value) not in TERMINAL_JOB_STATES:
            time.sleep(1.0)
    except Exception as error:  # the cluster may be gone too: say so, do not mask the original error
        print(f"could not stop Ray job {job_id}: {error}")


def run_config_of_parameters(config_class: type, run_config: Callable[[Any], RunConfig] = lambda c: c,
                             default: Callable[[], Any] | None = None) -> Callable[[dict[str, Any]], RunConfig]:
    """`run_config_of` for a flow taking `config: config_class` and `overrides`: rebuilds the
    flow's config from a flow run's parameters (`default()` when none is given) and returns the
    run config it trains (`run_config(flow_config)`)."""

    def run_config_of(parameters: dict[str, Any]) -> RunConfig:
        given = parameters.get("config")
        config = config_class.model_validate(given) if given else (default or config_class)()
        return run_config(with_overrides(config, parameters.get("overrides")))

    return run_config_of


def stop_job_on_cancellation(run_config_of: Callable[[dict[str, Any]], RunConfig]):
    """An on_cancellation hook (the worker runs it after killing the flow's process) that stops the
    run's Ray job; `run_config_of` rebuilds the run config from the flow run's parameters."""

    def hook(flow, cancelled_run, state) -> None:
        config = run_config_of(cancelled_run.parameters)
        address = jobs_address(config)
        if address:
            stop_job(job_client(address), submission_id(config.kind, str(cancelled_run.id)))

    return hook


# ---------------------------------------------------------------------------------- artifacts


def loss_curve_png(entries: list[dict[str, Any]], title: str) -> bytes:
    plt = pyplot()

    steps = [e for e in entries if "event" not in e and "loss" in e]
    validation = [e for e in steps if "validation_loss" in e]
    figure, axis = plt.subplots(figsize=(7, 3.5), dpi=100)
    axis.plot([e["step"] for e in steps], [e["loss"] for e in steps], label="training loss", linewidth=1)
    if validation:
        axis.plot([e["step"] for e in validation], [e["validation_loss"] for e in validation], "o-",
                  label="validation loss", linewidth=1, markersize=3)
    for event in (e for e in entries if e.get("event") == "resumed"):
        axis.axvline(event["step"], color="grey", linestyle=":", linewidth=1)
    axis.set_xlabel("step")
    axis.set_ylabel("loss (nats/token)")
    axis.set_title(title)
    axis.legend()
    return png_bytes(figure)


@task
def publish(config: RunConfig, summary: dict[str, Any]) -> None:
    entries = read_metrics(config.run_dir)
    steps = [e for e in entries if "event" not in e and "loss" in e]
    stride = max(1, len(steps) // TABLE_ROWS)
    columns = ("step", "loss", "validation_loss", "lr", "grad_norm", "tokens", "tokens_per_second", "mfu", "memory_gib")
    table = [{c: steps[i].get(c) for c in columns} for i in sorted({*range(0, len(steps), stride), len(steps) - 1})
             if steps]
    create_table_artifact(key=f"{config.kind}-metrics", table=table,
                          description=f"{config.run_name}: every {stride} step(s)")
    png = base64.b64encode(loss_curve_png(entries, f"{config.run_name} ({config.model_name})")).decode()
    lines = [
        f"# {HEADINGS.get(config.kind, config.kind)} {config.run_name} ({config.model_name})",
        "",
        f"![loss curve](data:image/png;base64,{png})",
        "",
        "| | |",
        "| --- | --- |",
        *(f"| {k} | {v} |" for k, v in summary.items() if k != "skipped_checkpoints"),
    ]
    for skipped in summary.get("skipped_checkpoints", []):
        lines.append(f"\nSkipped checkpoint {skipped['checkpoint']}: {skipped['reason']}")
    create_markdown_artifact(key=f"{config.kind}-summary", markdown="\n".join(lines),
                             description=f"{config.run_name}: loss curve and summary")


# ---------------------------------------------------------------------------------- the path


def train(config: RunConfig) -> dict[str, Any]:
    """Validate, train (as a Ray job on a cluster, else here) and publish; returns the run's summary.
    A run already trained to its stop step with this very config is not trained again. Called from
    inside a flow: its steps are that flow's tasks."""
    from modeling.ray_job import finished_summary

    config = config.with_absolute_paths()
    summary = finished_summary(config)
    if summary is not None:
        print(f"{config.run_name}: already trained to step {summary['steps']} with this config; reusing "
              f"{summary['run_dir']}")
        return summary
    address = jobs_address(config)
    validate(config, address)
    summary = train_as_ray_job(config, address) if address else train_here(config)
    publish(config, summary)
    print(f"{config.run_name}: {summary['steps']} steps, loss {summary['first_loss']:.4f} -> "
          f"{summary['final_loss']:.4f}; run folder {summary['run_dir']}")
    return summary
