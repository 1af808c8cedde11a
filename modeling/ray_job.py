"""Any run as a Ray Train job: the per-worker loop, the driver, the run folder's metrics.

`run_training` runs a config (`modeling.run_config.RunConfig`: pretraining, fine-tuning, ...) with
a `TorchTrainer` on the connected Ray cluster; `python -m modeling.ray_job --kind KIND --config
JSON` does the same as a Ray job's entrypoint (the flows submit it so on a cluster).

A run lives in `<output>/<run_name>/` (Ray Train's storage path and run name, so the same name
resumes the same run):

    step-NNNNNNNN/      checkpoints reported through Ray Train (every rank's DCP files merged), the
                        last `checkpoint.keep_last` kept by Ray's CheckpointConfig
    metrics.jsonl       one line per step (and events: start, resume, validation), rank 0
    tensorboard/        the same metrics as TensorBoard event files
    workers/            per rank and attempt: node, host, pid, device
    hf/                 the final weights as a Hugging Face folder
    summary.json        written by the driver when the run ends

Ray Train restarts failed workers (`max_failures`); a restarted worker resumes from the newest
intact checkpoint of the run folder, skipping a corrupt one with a warning, and rewrites the
metrics log from that step, so the log shows each step once.

`LLAMALINE_FAULT_KILL_AT_STEP=RANK:STEP` makes that rank's process SIGKILL itself after that step,
once per run folder: a fault drill (tests use it to kill a worker mid-run).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modeling.run_config import RunConfig
from modeling.run_folder import RunFolder, storage_filesystem
from tasks.executor import fingerprint
from tasks.storage import atomic_output, resolve, write_json_atomic

log = logging.getLogger("llamaline.ray_job")

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
FAULT_ENV = "LLAMALINE_FAULT_KILL_AT_STEP"
TENSORBOARD = "tensorboard"
HF_EXPORT = "hf"
S3_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION")
# The run kinds a job can be given, by the module that defines each config (imported when needed,
# so this module does not depend on any objective).
RUN_KINDS = {"pretrain": "modeling.pretrain:PretrainConfig", "sft": "modeling.sft:SFTConfig",
             "reward": "modeling.reward:RewardConfig", "ppo": "modeling.ppo_training:PPOConfig"}


def config_class(kind: str) -> type[RunConfig]:
    if kind not in RUN_KINDS:
        raise ValueError(f"unknown run kind {kind!r}; known: {', '.join(RUN_KINDS)}")
    module, name = RUN_KINDS[kind].split(":")
    return getattr(importlib.import_module(module), name)


# ---------------------------------------------------------------------------------- per worker


class MetricsLog:
    """metrics.jsonl and TensorBoard events of a run (rank 0 only), rewound on resume."""

    def __init__(self, run_folder: RunFolder, resumed_step: int) -> None:
        from tensorboardX import SummaryWriter

        self.run_folder = run_folder
        self.path = run_folder.fetch(METRICS_FILE)
        kept = [line for line in _read_lines(self.path) if _entry_step(line) <= resumed_step]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(line + "\n" for line in kept))
        self.tensorboard = SummaryWriter(str(run_folder.local / TENSORBOARD), purge_step=resumed_step + 1)

    def event(self, step: int, **fields: Any) -> None:
        self._append({"event": fields.pop("event"), "step": step, "time": time.time(), **fields})

    def step(self, metrics: Mapping[str, Any]) -> None:
        self._append({**metrics, "time": time.time()})
        for name, value in metrics.items():
            if name != "step" and isinstance(value, (int, float)):
                tag = f"validation/{name.removeprefix('validation_')}" if name.startswith("validation_") \
                    else f"train/{name}"
                self.tensorboard.add_scalar(tag, value, metrics["step"])

    def close(self) -> None:
        self.tensorboard.close()
        self.run_folder.publish(TENSORBOARD)

    def _append(self, entry: Mapping[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(entry) + "\n")
        self.run_folder.publish(METRICS_FILE)


def _read_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _entry_step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except ValueError:  # a line cut short by a killed process
        return sys.maxsize


def read_metrics(run: str | Path) -> list[dict[str, Any]]:
    """The metric entries of a run (its folder's path or URI), in order (half-written last lines skipped)."""
    log_file = resolve(str(run)).join(METRICS_FILE)
    lines = log_file.read_bytes().decode().splitlines() if log_file.is_file() else []
    entries = []
    for line in (line for line in lines if line.strip()):
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries


def _maybe_inject_fault(run_folder: RunFolder, rank: int, step: int) -> None:
    wanted = os.environ.get(FAULT_ENV)
    if not wanted or wanted != f"{rank}:{step}":
        return
    marker = run_folder.location.join(f"fault-injected-{rank}-{step}")
    if marker.exists():
        return
    with atomic_output(marker) as stream:
        stream.write(str(os.getpid()).encode())
    log.warning("fault drill: rank %d kills its own process after step %d", rank, step)
    os.kill(os.getpid(), signal.SIGKILL)


def _record_worker(run_folder: RunFolder, rank: int, device: str) -> None:
    import ray

    name = f"workers/rank-{rank:05d}.jsonl"
    path = run_folder.fetch(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"rank": rank, "node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(),
              "pid": os.getpid(), "device": device, "time": time.time()}
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
    run_folder.publish(name)


def train_loop_per_worker(payload: dict[str, Any]) -> None:
    """Ray Train's per-worker function: the process group is up (gloo on CPU, NCCL on GPU)."""
    import ray.train
    import torch

    from modeling.train import Trainer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = config_class(payload["kind"]).model_validate(payload["config"])
    run_folder = config.run_folder()
    context = ray.train.get_context()
    rank = context.get_world_rank()
    if config.scaling.use_gpu:
        device = ray.train.torch.get_device()
    else:
        device = torch.device("cpu")
        torch.set_num_threads(max(1, int(config.scaling.cpus_per_worker)))
    _record_worker(run_folder, rank, str(device))

    trainer = Trainer(config, device, initial_weights=config.initial_weights())
    ray_checkpoint = ray.train.get_checkpoint()
    metrics_log = MetricsLog(run_folder, trainer.step) if rank == 0 else None
    if metrics_log is not None:
        for folder, reason in trainer.skipped_checkpoints:
            metrics_log.event(trainer.step, event="checkpoint_skipped", checkpoint=folder.name, reason=reason)
        metrics_log.event(trainer.step, event="resumed" if trainer.resumed_from else "started",
                          checkpoint=trainer.resumed_from.name if trainer.resumed_from else None,
                          ray_checkpoint=ray_checkpoint.path if ray_checkpoint else None,
                          world_size=trainer.world_size, total_steps=config.total_steps)

    while trainer.step < config.stop_step:
        metrics = trainer.train_step()
        if trainer.validation_due():
            metrics.update(trainer.validation_metrics())
        step = trainer.step
        reported = {k: v for k, v in metrics.items() if v is not None}
        if metrics_log is not None:
            metrics_log.step(reported)
        if trainer.checkpoint_due():
            with tempfile.TemporaryDirectory(prefix="llamaline-ckpt-") as local:
                trainer.write_checkpoint(local)
                ray.train.report(reported, checkpoint=ray.train.Checkpoint.from_directory(local),
                                 checkpoint_dir_name=f"step-{step:08d}")
        elif step % config.log_every == 0:
            ray.train.report(reported)
        _maybe_inject_fault(run_folder, rank, step)

    if config.export_hf:
        tokenizer_files = [config.tokenizer] if config.tokenizer else []
        trainer.export_hf(run_folder.local / HF_EXPORT, tokenizer_files=tokenizer_files)
        if rank == 0:
            run_folder.publish(HF_EXPORT)
    if metrics_log is not None:
        metrics_log.event(trainer.step, event="finished")
        metrics_log.close()


# ---------------------------------------------------------------------------------- driver


def run_training(config: RunConfig) -> dict[str, Any]:
    """Check the config against the data and the connected Ray cluster, then train with a
    TorchTrainer (resuming the run of the same name); returns the run's summary."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, ScalingConfig
    from ray.train import RunConfig as RayRunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    config.check_cluster(ray.cluster_resources())
    config.check_data()
    run_folder = config.run_folder()
    run_folder.location.makedirs()
    storage = resolve(config.output)
    scaling = config.scaling
    env_vars = {name: os.environ[name] for name in (FAULT_ENV, *storage_env(run_folder)) if name in os.environ}
    resources = {"CPU": scaling.cpus_per_worker} | ({"GPU": 1} if scaling.use_gpu else {})
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"kind": config.kind, "config": config.model_dump(mode="json")},
        torch_config=TorchConfig(backend="nccl" if scaling.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
                                     resources_per_worker=resources),
        run_config=RayRunConfig(
            name=config.run_name, storage_path=storage.path,
            storage_filesystem=None if run_folder.is_local else storage_filesystem(config.output),
            failure_config=FailureConfig(max_failures=config.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=config.checkpoint.keep_last),
            # A fault drill set for the driver, and where its object store is, reach the workers too.
            worker_runtime_env={"env_vars": env_vars} if env_vars else None,
        ),
    )
    started = time.time()
    result = trainer.fit()
    summary = summarize(config, wall_seconds=time.time() - started,
                        ray_checkpoint=result.checkpoint.path if result.checkpoint else None)
    write_json_atomic(run_folder.location.join(SUMMARY_FILE), summary)
    return summary


def storage_env(run_folder: RunFolder) -> tuple[str, ...]:
    """The environment that says how to reach the run's object store (none for a local run)."""
    return () if run_folder.is_local else S3_ENV


def config_fingerprint(config: RunConfig) -> str:
    return fingerprint(config.model_dump(mode="json"))


def finished_summary(config: RunConfig) -> dict[str, Any] | None:
    """The summary of a training job of this very config that ran to its stop step (and wrote its
    export, when asked to), or None: a rerun of a finished run needs no job."""
    run_folder = config.run_folder()
    at = run_folder.location.join(SUMMARY_FILE)
    if not at.exists():
        return None
    summary = at.read_json()
    if summary.get("config_fingerprint") != config_fingerprint(config) or summary["steps"] != config.stop_step:
        return None
    if config.export_hf and not run_folder.location.join(HF_EXPORT, "config.json").exists():
        return None
    return summary


def summarize(config: RunConfig, **extra: Any) -> dict[str, Any]:
    """What a finished run did, from its metrics log and folder."""
    run_folder = config.run_folder()
    entries = read_metrics(run_folder.uri)
    steps = [e for e in entries if "loss" in e and "event" not in e]
    validation = [e for e in steps if "validation_loss" in e]
    return {
        "run_dir": run_folder.uri,
        "config_fingerprint": config_fingerprint(config),
        "model": config.model_name, "kind": config.kind,
        "steps": steps[-1]["step"] if steps else 0,
        "total_steps": config.total_steps,
        "tokens": steps[-1]["tokens"] if steps else 0,
        "first_loss": steps[0]["loss"] if steps else None,
        "final_loss": steps[-1]["loss"] if steps else None,
        "final_validation_loss": validation[-1]["validation_loss"] if validation else None,
        "restarts": sum(1 for e in entries if e.get("event") == "resumed"),
        "skipped_checkpoints": [e for e in entries if e.get("event") == "checkpoint_skipped"],
        "checkpoints": [f"step-{s:08d}" for s in run_folder.checkpoint_steps()],
        "hf_export": run_folder.location.join(HF_EXPORT).uri if run_folder.location.join(HF_EXPORT).exists() else None,
        **extra,
    }


def main(argv: list[str] | None = None) -> int:
    """Entrypoint of the Ray job that the training flows submit to a cluster."""
    parser = argparse.ArgumentParser(prog="python -m modeling.ray_job", description=__doc__.splitlines()[0])
    parser.add_argument("--kind", required=True, choices=sorted(RUN_KINDS), help="What the config trains")
    parser.add_argument("--config", required=True, help="The run's config as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = config_class(args.kind).model_validate_json(args.config)

    from tasks.ray_runtime import ensure_ray

    log.info("Ray: %s", ensure_ray())
    summary = run_training(config)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
