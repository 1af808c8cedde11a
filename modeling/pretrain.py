"""Pretraining as a Ray Train job: the typed run config, the per-worker loop, the driver.

`PretrainConfig` describes a run (size, data, token budget, batch, optimiser, schedule, parallelism,
checkpoints, validation, scaling) and rejects, before anything starts, a run that cannot work.
`run_pretraining` runs it with a `TorchTrainer` on the connected Ray cluster; `python -m
modeling.pretrain --config JSON` does the same as a Ray job's entrypoint (flows/pretrain.py submits
it so on a cluster).

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
import json
import logging
import math
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from modeling.configs import named_size
from modeling.train import TrainConfig, check_token_stage, checkpoint_steps, checkpoints_newest_first
from tasks.settings import default_data_root

log = logging.getLogger("llamaline.pretrain")

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
FAULT_ENV = "LLAMALINE_FAULT_KILL_AT_STEP"
GIB = 2**30
# fp32 weights + fp32 gradients + AdamW's two fp32 moments; activations and buffers come on top.
TRAINING_BYTES_PER_PARAM = 16
GPU_MEMORY_FOR_STATES = 0.75  # share of a GPU's memory the sharded states may take
TRAIN_CONFIG_FIELDS = {
    "warmup_steps": "schedule.warmup_steps", "final_lr_ratio": "schedule.final_lr_ratio", "lr": "optimizer.lr",
    "clip_grad_norm": "optimizer.clip_grad_norm", "total_steps": "steps", "seq_len": "seq_len",
    "global_batch_tokens": "global_batch_tokens", "micro_batch_rows": "micro_batch_rows",
    "mixed_precision": "parallelism.mixed_precision", "holdout_shards": "validation.holdout_shards",
    "validation_interval": "validation.interval_steps", "validation_rows": "validation.rows",
}


@contextmanager
def _in_our_field_names() -> Iterator[None]:
    """Re-raise the training loop's config errors with PretrainConfig's field names."""
    try:
        yield
    except ValueError as error:
        message = str(error)
        for inner, outer in TRAIN_CONFIG_FIELDS.items():
            message = message.replace(f"TrainConfig.{inner} ", f"{outer} ")
        raise ValueError(message) from None


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OptimizerOptions(Strict):
    lr: float | None = Field(None, gt=0, description="Peak learning rate; None: the model size's (LLaMA table)")
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-5, gt=0)
    weight_decay: float = Field(0.1, ge=0, description="On matrices only, not on norm gains")
    clip_grad_norm: float = Field(1.0, gt=0)


class ScheduleOptions(Strict):
    warmup_steps: int = Field(2000, ge=0)
    final_lr_ratio: float = Field(0.1, ge=0, le=1, description="Cosine decays to this share of the peak")


class ParallelismOptions(Strict):
    activation_checkpointing: Literal["all"] | int | list[int] | None = Field(
        None, description="'all', every k-th block, or a list of blocks")
    compile: bool = False
    mixed_precision: Literal["bf16"] | None = Field(None, description="bf16 autocast (GPU runs)")
    document_masking: bool = True


class CheckpointOptions(Strict):
    interval_steps: int = Field(0, ge=0, description="Steps between checkpoints; 0: only at the end")
    keep_last: int = Field(3, ge=1)


class ValidationOptions(Strict):
    holdout_shards: int = Field(0, ge=0, description="The token stage's last N shards, never trained on")
    data: str | None = Field(None, description="Or a separate token stage")
    interval_steps: int = Field(0, ge=0, description="Steps between validation losses; 0: never")
    rows: int = Field(64, ge=1, description="Rows per worker in each validation")


class ScalingOptions(Strict):
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0, description="Fractional on small machines, so Ray keeps a share")
    gpu_memory_gib: float = Field(80.0, gt=0, description="Memory of one GPU, for the fits-in-memory check")


class PretrainConfig(Strict):
    run_name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                          description="The run's folder under output; the same name resumes the run")
    model: str = Field(description="A named size (modeling/configs.py): debug, 100m, llama2-7b, ...")
    data: str = Field(default_factory=lambda: f"{default_data_root()}/tokens", description="Token stage")
    output: str = Field(default_factory=lambda: f"{default_data_root()}/runs", description="Runs folder")
    tokenizer: str | None = Field(None, description="tokenizer.model to ship with the HF export")
    train_tokens: int | None = Field(None, ge=1, description="Token budget; steps = train_tokens / batch")
    steps: int | None = Field(None, ge=1, description="Or the number of optimizer steps")
    global_batch_tokens: int = Field(4 * 2**20, ge=1, description="Tokens per optimizer step (LLaMA: 4M)")
    seq_len: int = Field(4096, ge=8, description="Tokens per row (the token stage's rows hold seq_len + 1)")
    micro_batch_rows: int = Field(1, ge=1, description="Rows per forward/backward on one worker")
    optimizer: OptimizerOptions = OptimizerOptions()
    schedule: ScheduleOptions = ScheduleOptions()
    parallelism: ParallelismOptions = ParallelismOptions()
    checkpoint: CheckpointOptions = CheckpointOptions()
    validation: ValidationOptions = ValidationOptions()
    scaling: ScalingOptions = ScalingOptions()
    max_failures: int = Field(3, ge=0, description="Worker failures Ray Train retries from the latest checkpoint")
    log_every: int = Field(1, ge=1, description="Steps between metric reports")
    seed: int = Field(0, ge=0)
    export_hf: bool = True
    ray_jobs_address: str | None = Field(
        None, description="Dashboard URL to submit to as a Ray job; None: RAY_API_SERVER_ADDRESS, else run here")

    @model_validator(mode="after")
    def _checks(self) -> PretrainConfig:
        if (self.train_tokens is None) == (self.steps is None):
            raise ValueError("give exactly one of train_tokens (a token budget) or steps")
        try:
            named_size(self.model)
        except KeyError as error:
            raise ValueError(error.args[0]) from None
        if self.train_tokens is not None and self.train_tokens < self.global_batch_tokens:
            raise ValueError(f"train_tokens ({self.train_tokens}) is less than one batch of "
                             f"global_batch_tokens ({self.global_batch_tokens})")
        with _in_our_field_names():  # TrainConfig's own checks (warmup <= steps, seq_len fits, whole rows ...)
            self.train_config().accumulation_steps(self.scaling.num_workers)
        self._check_memory()
        return self

    def with_absolute_paths(self) -> PretrainConfig:
        """Local paths made absolute here, so a Ray job started elsewhere reads the same folders."""

        def absolute(path: str | None) -> str | None:
            return path if path is None or "://" in path else str(Path(path).absolute())

        return self.model_copy(update={
            "data": absolute(self.data), "output": absolute(self.output), "tokenizer": absolute(self.tokenizer),
            "validation": self.validation.model_copy(update={"data": absolute(self.validation.data)}),
        })

    @property
    def total_steps(self) -> int:
        return self.steps if self.steps is not None else self.train_tokens // self.global_batch_tokens

    @property
    def run_dir(self) -> Path:
        return Path(self.output).absolute() / self.run_name

    def train_config(self) -> TrainConfig:
        """The per-rank loop's config; Ray Train reports the checkpoints, so none is set here."""
        p, o, v = self.parallelism, self.optimizer, self.validation
        layers = tuple(p.activation_checkpointing) if isinstance(p.activation_checkpointing, list) \
            else p.activation_checkpointing
        return TrainConfig(
            data_dir=self.data, seq_len=self.seq_len, global_batch_tokens=self.global_batch_tokens,
            micro_batch_rows=self.micro_batch_rows, total_steps=self.total_steps,
            warmup_steps=self.schedule.warmup_steps, model=self.model, lr=o.lr,
            final_lr_ratio=self.schedule.final_lr_ratio, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay,
            clip_grad_norm=o.clip_grad_norm, document_masking=p.document_masking, seed=self.seed,
            activation_checkpointing=layers, compile=p.compile, mixed_precision=p.mixed_precision,
            holdout_shards=v.holdout_shards, validation_data=v.data, validation_interval=v.interval_steps,
            validation_rows=v.rows,
        )

    def _check_memory(self) -> None:
        n_params = named_size(self.model).config.n_params
        states_gib = TRAINING_BYTES_PER_PARAM * n_params / GIB
        scaling = self.scaling
        if scaling.use_gpu:
            budget = GPU_MEMORY_FOR_STATES * scaling.gpu_memory_gib
            needed = math.ceil(states_gib / budget)
            if scaling.num_workers < needed:
                raise ValueError(
                    f"{self.model} has {n_params / 1e9:.2f}B parameters: its weights, gradients and AdamW states "
                    f"({states_gib:.0f} GiB in fp32) need at least {needed} GPUs of {scaling.gpu_memory_gib:g} GiB "
                    f"sharded with FSDP2; set scaling.num_workers >= {needed}")
        elif n_params > 2e9:
            raise ValueError(f"{self.model} ({n_params / 1e9:.1f}B parameters, {states_gib:.0f} GiB of training "
                             f"state) is not trainable on CPUs: set scaling.use_gpu=true and enough workers")

    def check_data(self) -> dict[str, Any]:
        """The token stage exists, is complete and fits seq_len and the model; returns its manifest."""
        with _in_our_field_names():
            return check_token_stage(self.train_config())

    def check_cluster(self, resources: Mapping[str, float]) -> None:
        """The cluster (total resources, as `ray.cluster_resources()`) can place every worker."""
        scaling = self.scaling
        if scaling.use_gpu:
            gpus = resources.get("GPU", 0)
            if gpus < scaling.num_workers:
                raise ValueError(f"{self.model} on {scaling.num_workers} GPU workers needs {scaling.num_workers} GPUs; "
                                 f"the Ray cluster has {gpus:g}. Run it on a GPU cluster (RAY_ADDRESS / "
                                 f"ray_jobs_address) or lower scaling.num_workers")
        cpus = resources.get("CPU", 0)
        if cpus < scaling.num_workers * scaling.cpus_per_worker:
            raise ValueError(f"{scaling.num_workers} workers x {scaling.cpus_per_worker:g} CPUs need "
                             f"{scaling.num_workers * scaling.cpus_per_worker:g} CPUs; the Ray cluster has {cpus:g}. "
                             f"Lower scaling.cpus_per_worker or num_workers")


def debug_run(**overrides: Any) -> PretrainConfig:
    """A run of the `debug` size on what `make demo` tokenized; a minute or two on a 2-core machine."""
    settings: dict[str, Any] = dict(
        run_name="debug", model="debug", data=f"{default_data_root()}/demo/tokens", steps=40, seq_len=128, global_batch_tokens=128 * 8, micro_batch_rows=4,
        schedule={"warmup_steps": 4}, checkpoint={"interval_steps": 10, "keep_last": 2},
        scaling={"num_workers": 2, "cpus_per_worker": 0.5},
    )
    return PretrainConfig.model_validate(settings | overrides)


def llama2_7b_run(**overrides: Any) -> PretrainConfig:
    """Llama 2 7B by the paper (RECIPE.md section 3): 2T tokens in 4M-token batches of 4096-token rows,
    on 8 GPU workers with FSDP2, bf16 autocast and activation checkpointing."""
    settings: dict[str, Any] = dict(
        run_name="llama2-7b", model="llama2-7b", train_tokens=2_000_000_000_000, global_batch_tokens=4_194_304,
        seq_len=4096, micro_batch_rows=2, parallelism={"activation_checkpointing": "all", "mixed_precision": "bf16"},
        checkpoint={"interval_steps": 1000, "keep_last": 3},
        validation={"holdout_shards": 1, "interval_steps": 1000, "rows": 32},
        scaling={"num_workers": 8, "use_gpu": True, "cpus_per_worker": 8, "gpu_memory_gib": 80},
    )
    return PretrainConfig.model_validate(settings | overrides)


PRESETS = {"debug": debug_run, "llama2-7b": llama2_7b_run}


def with_overrides(config: PretrainConfig, overrides: Mapping[str, Any] | None) -> PretrainConfig:
    """The config with `overrides` merged in (nested options field by field), validated again."""

    def merge(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
        merged = dict(base)
        for key, value in changes.items():
            merged[key] = merge(base[key], value) if isinstance(value, Mapping) and isinstance(base.get(key), dict) \
                else value
        return merged

    if not overrides:
        return config
    return PretrainConfig.model_validate(merge(config.model_dump(), overrides))


# ---------------------------------------------------------------------------------- per worker


class MetricsLog:
    """metrics.jsonl and TensorBoard events of a run (rank 0 only), rewound on resume."""

    def __init__(self, run_dir: Path, resumed_step: int) -> None:
        from tensorboardX import SummaryWriter

        self.path = run_dir / METRICS_FILE
        kept = [line for line in _read_lines(self.path) if _entry_step(line) <= resumed_step]
        self.path.write_text("".join(line + "\n" for line in kept))
        self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resumed_step + 1)

    def event(self, step: int, **fields: Any) -> None:
        self._append({"event": fields.pop("event"), "step": step, "time": time.time(), **fields})

    def step(self, metrics: Mapping[str, Any]) -> None:
        self._append({**metrics, "time": time.time()})
        for name, value in metrics.items():
            if name != "step" and isinstance(value, (int, float)):
                self.tensorboard.add_scalar(f"train/{name}" if name != "validation_loss" else "validation/loss",
                                            value, metrics["step"])

    def close(self) -> None:
        self.tensorboard.close()

    def _append(self, entry: Mapping[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(entry) + "\n")


def _read_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _entry_step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except ValueError:  # a line cut short by a killed process
        return sys.maxsize


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The metric entries of a run, in order (half-written last lines skipped)."""
    entries = []
    for line in _read_lines(Path(run_dir) / METRICS_FILE):
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries


def _maybe_inject_fault(run_dir: Path, rank: int, step: int) -> None:
    wanted = os.environ.get(FAULT_ENV)
    if not wanted or wanted != f"{rank}:{step}":
        return
    marker = run_dir / f"fault-injected-{rank}-{step}"
    if marker.exists():
        return
    marker.write_text(str(os.getpid()))
    log.warning("fault drill: rank %d kills its own process after step %d", rank, step)
    os.kill(os.getpid(), signal.SIGKILL)


def _record_worker(run_dir: Path, rank: int, device: str) -> None:
    import ray

    folder = run_dir / "workers"
    folder.mkdir(exist_ok=True)
    record = {"rank": rank, "node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(),
              "pid": os.getpid(), "device": device, "time": time.time()}
    with (folder / f"rank-{rank:05d}.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")


def train_loop_per_worker(payload: dict[str, Any]) -> None:
    """Ray Train's per-worker function: the process group is up (gloo on CPU, NCCL on GPU)."""
    import ray.train
    import torch

    from modeling.train import Trainer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = PretrainConfig.model_validate(payload["config"])
    run_dir = Path(payload["run_dir"])
    context = ray.train.get_context()
    rank = context.get_world_rank()
    if config.scaling.use_gpu:
        device = ray.train.torch.get_device()
    else:
        device = torch.device("cpu")
        torch.set_num_threads(max(1, int(config.scaling.cpus_per_worker)))
    _record_worker(run_dir, rank, str(device))

    trainer = Trainer(config.train_config(), device)
    ray_checkpoint = ray.train.get_checkpoint()
    trainer.resume(checkpoints_newest_first(run_dir))
    metrics_log = MetricsLog(run_dir, trainer.step) if rank == 0 else None
    if metrics_log is not None:
        for folder, reason in trainer.skipped_checkpoints:
            metrics_log.event(trainer.step, event="checkpoint_skipped", checkpoint=folder.name, reason=reason)
        metrics_log.event(trainer.step, event="resumed" if trainer.resumed_from else "started",
                          checkpoint=trainer.resumed_from.name if trainer.resumed_from else None,
                          ray_checkpoint=ray_checkpoint.path if ray_checkpoint else None,
                          world_size=trainer.world_size, total_steps=config.total_steps)

    interval = config.checkpoint.interval_steps
    while trainer.step < config.total_steps:
        metrics = trainer.train_step()
        if trainer.validation_due():
            metrics["validation_loss"] = trainer.validation_loss()
        step = trainer.step
        reported = {k: v for k, v in metrics.items() if v is not None}
        if metrics_log is not None:
            metrics_log.step(reported)
        if (interval and step % interval == 0) or step == config.total_steps:
            with tempfile.TemporaryDirectory(prefix="llamaline-ckpt-") as local:
                trainer.write_checkpoint(local)
                ray.train.report(reported, checkpoint=ray.train.Checkpoint.from_directory(local),
                                 checkpoint_dir_name=f"step-{step:08d}")
        elif step % config.log_every == 0:
            ray.train.report(reported)
        _maybe_inject_fault(run_dir, rank, step)

    if config.export_hf:
        tokenizer_files = [config.tokenizer] if config.tokenizer else []
        trainer.export_hf(run_dir / "hf", tokenizer_files=tokenizer_files)
    if metrics_log is not None:
        metrics_log.event(trainer.step, event="finished")
        metrics_log.close()


# ---------------------------------------------------------------------------------- driver


def run_pretraining(config: PretrainConfig) -> dict[str, Any]:
    """Check the config against the data and the connected Ray cluster, then train with a
    TorchTrainer (resuming the run of the same name); returns the run's summary."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    config.check_cluster(ray.cluster_resources())
    config.check_data()
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    scaling = config.scaling
    resources = {"CPU": scaling.cpus_per_worker} | ({"GPU": 1} if scaling.use_gpu else {})
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": config.model_dump(mode="json"), "run_dir": str(run_dir)},
        torch_config=TorchConfig(backend="nccl" if scaling.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=config.run_name, storage_path=str(run_dir.parent),
            failure_config=FailureConfig(max_failures=config.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=config.checkpoint.keep_last),
            # A fault drill set for the driver reaches the workers too.
            worker_runtime_env={"env_vars": {FAULT_ENV: os.environ[FAULT_ENV]}} if FAULT_ENV in os.environ else None,
        ),
    )
    started = time.time()
    result = trainer.fit()
    summary = summarize(config, wall_seconds=time.time() - started,
                        ray_checkpoint=result.checkpoint.path if result.checkpoint else None)
    (run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    return summary


def summarize(config: PretrainConfig, **extra: Any) -> dict[str, Any]:
    """What a finished run did, from its metrics log and folder."""
    run_dir = config.run_dir
    entries = read_metrics(run_dir)
    steps = [e for e in entries if "loss" in e and "event" not in e]
    validation = [e for e in steps if "validation_loss" in e]
    return {
        "run_dir": str(run_dir),
        "model": config.model,
        "steps": steps[-1]["step"] if steps else 0,
        "total_steps": config.total_steps,
        "tokens": steps[-1]["tokens"] if steps else 0,
        "first_loss": steps[0]["loss"] if steps else None,
        "final_loss": steps[-1]["loss"] if steps else None,
        "final_validation_loss": validation[-1]["validation_loss"] if validation else None,
        "restarts": sum(1 for e in entries if e.get("event") == "resumed"),
        "skipped_checkpoints": [e for e in entries if e.get("event") == "checkpoint_skipped"],
        "checkpoints": [f"step-{s:08d}" for s in checkpoint_steps(run_dir)],
        "hf_export": str(run_dir / "hf") if (run_dir / "hf").is_dir() else None,
        **extra,
    }


def main(argv: list[str] | None = None) -> int:
    """Entrypoint of the Ray job that flows/pretrain.py submits to a cluster."""
    parser = argparse.ArgumentParser(prog="python -m modeling.pretrain", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="PretrainConfig as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = PretrainConfig.model_validate_json(args.config)

    from tasks.ray_runtime import ensure_ray

    log.info("Ray: %s", ensure_ray())
    summary = run_pretraining(config)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
