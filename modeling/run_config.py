"""What every training run is: one typed config, checked before anything starts.

`RunConfig` holds what pretraining, fine-tuning and later objectives share: the model, the packed
token stage, the batch, the optimizer and schedule, parallelism, checkpoints, validation, scaling
and where the run lives. An objective's config subclasses it (`modeling.pretrain.PretrainConfig`,
`modeling.sft.SFTConfig`), adds its own fields and says which `Objective` supplies batches and
loss. The one training core (`modeling.train.Trainer`) and the one Ray Train job
(`modeling.ray_job`) take any of them.

A run lives in `<output>/<run_name>/`, on a local disk or an object store (`modeling.run_folder`);
the same name resumes the same run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from modeling.checkpoints import save_hf
from modeling.configs import ModelConfig, named_size
from modeling.llama import Llama
from modeling.run_folder import RunFolder
from tasks.settings import default_data_root
from tasks.storage import resolve

if TYPE_CHECKING:
    from modeling.objectives import Objective

Model = TypeVar("Model", bound=BaseModel)

GIB = 2**30
# fp32 weights + fp32 gradients + AdamW's two fp32 moments; activations and buffers come on top.
TRAINING_BYTES_PER_PARAM = 16
GPU_MEMORY_FOR_STATES = 0.75  # share of a GPU's memory the sharded states may take


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
    warmup_share: float = Field(0.0, ge=0, le=1, description="Or this share of the run's steps, if more "
                                                             "(Llama 2's reward models: 3%, at least 5 steps)")
    final_lr_ratio: float = Field(0.1, ge=0, le=1, description="Cosine decays to this share of the peak")


class ParallelismOptions(Strict):
    activation_checkpointing: Literal["all"] | int | list[int] | None = Field(
        None, description="'all', every k-th block, or a list of blocks")
    compile: bool = False
    mixed_precision: Literal["bf16"] | None = Field(None, description="bf16 autocast (GPU runs); weights stay fp32")
    document_masking: bool = Field(True, description="Attention stays within each packed document")


class CheckpointOptions(Strict):
    interval_steps: int = Field(0, ge=0, description="Steps between checkpoints; 0: only at the end")
    keep_last: int = Field(3, ge=1)


class ValidationOptions(Strict):
    holdout_shards: int = Field(0, ge=0, description="The token stage's last N shards, never trained on")
    data: str | None = Field(None, description="Or a separate token stage")
    interval_steps: int = Field(0, ge=0, description="Steps between validation losses; 0: never")
    rows: int = Field(64, ge=1, description="Rows per worker in each validation (always the same rows)")

    @model_validator(mode="after")
    def _one_source(self) -> ValidationOptions:
        if self.holdout_shards and self.data is not None:
            raise ValueError("validation: give holdout_shards or data, not both")
        if self.interval_steps and not (self.holdout_shards or self.data):
            raise ValueError("validation.interval_steps is set but there is no validation set: set "
                             "validation.holdout_shards (the stage's last shards) or validation.data (a token stage)")
        return self


class ScalingOptions(Strict):
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0, description="Fractional on small machines, so Ray keeps a share")
    gpu_memory_gib: float = Field(80.0, gt=0, description="Memory of one GPU, for the fits-in-memory check")
    peak_flops_per_device: float | None = Field(None, gt=0, description="For MFU; None: known GPUs' bf16 peak")


class RunConfig(Strict):
    """The fields every objective's run shares. Subclasses set `kind` and `objective()`."""

    kind: ClassVar[str] = "run"

    run_name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                          description="The run's folder under output; the same name resumes the run")
    model: str | ModelConfig = Field(description="A named size (modeling/configs.py: debug, 100m, llama2-7b, ...) "
                                                 "or an explicit shape")
    data: str = Field(default_factory=lambda: f"{default_data_root()}/tokens", description="Packed token stage")
    output: str = Field(default_factory=lambda: f"{default_data_root()}/runs", description="Runs folder")
    tokenizer: str | None = Field(None, description="tokenizer.model to ship with the HF export")
    train_tokens: int | None = Field(None, ge=1, description="Token budget; steps = train_tokens / batch")
    steps: int | None = Field(None, ge=1, description="Or the number of optimizer steps")
    global_batch_tokens: int = Field(4 * 2**20, ge=1, description="Tokens per optimizer step (LLaMA: 4M)")
    seq_len: int = Field(4096, ge=1, description="Tokens per row (the token stage's rows hold seq_len + 1)")
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
    def _checks(self) -> RunConfig:
        self._check_budget()
        if isinstance(self.model, str):
            try:
                named_size(self.model)
            except KeyError as error:
                raise ValueError(error.args[0]) from None
        elif self.optimizer.lr is None:
            raise ValueError("optimizer.lr must be set for an explicit model shape (only named sizes have one)")
        if self._steps_known() and self.warmup_steps > self.total_steps:
            raise ValueError(f"schedule.warmup_steps ({self.warmup_steps}) exceeds the run's "
                             f"{self.total_steps} steps")
        if self.seq_len > self.model_shape.max_seq_len:
            raise ValueError(f"seq_len ({self.seq_len}) exceeds the model's max_seq_len "
                             f"({self.model_shape.max_seq_len})")
        if self.global_batch_tokens % self.seq_len:
            raise ValueError(f"global_batch_tokens ({self.global_batch_tokens}) is not a whole number "
                             f"of rows of seq_len {self.seq_len}")
        self.accumulation_steps(self.scaling.num_workers)
        self._check_memory()
        return self

    def _check_budget(self) -> None:
        """The run's length: exactly one of train_tokens or steps (subclasses may add epochs)."""
        if (self.train_tokens is None) == (self.steps is None):
            raise ValueError("give exactly one of train_tokens (a token budget) or steps")
        if self.train_tokens is not None and self.train_tokens < self.global_batch_tokens:
            raise ValueError(f"train_tokens ({self.train_tokens}) is less than one batch of "
                             f"global_batch_tokens ({self.global_batch_tokens})")

    def _steps_known(self) -> bool:
        """Whether total_steps follows from the config alone (not from the data, as epochs do)."""
        return True

    # ------------------------------------------------------------------------- derived

    def objective(self) -> Objective:
        raise NotImplementedError(f"{type(self).__name__} does not say what it trains")

    def initial_weights(self) -> dict[str, Any] | None:
        """The weights a new run starts from (a fine-tuning run's base model); None: random init."""
        return None

    def new_model(self) -> torch.nn.Module:
        """The module the run trains, freshly initialised (the core then loads initial_weights or a
        checkpoint into it): a Llama; a reward run's adds a score head."""
        return Llama(self.model_shape)

    def flops_per_token(self) -> int:
        """Training FLOPs per token of the model the run trains, for MFU."""
        return self.model_shape.flops_per_token(self.seq_len)

    def save_hf(self, model: torch.nn.Module, folder: str | Path, **options: Any) -> Path:
        """Write the trained model as a Hugging Face folder (`modeling.checkpoints.save_hf`'s options)."""
        return save_hf(model, folder, **options)

    @property
    def model_name(self) -> str:
        return self.model if isinstance(self.model, str) else "custom"

    @property
    def model_shape(self) -> ModelConfig:
        return self.model if isinstance(self.model, ModelConfig) else named_size(self.model).config

    @property
    def peak_lr(self) -> float:
        return self.optimizer.lr if self.optimizer.lr is not None else named_size(self.model).lr

    @property
    def total_steps(self) -> int:
        return self.steps if self.steps is not None else self.train_tokens // self.global_batch_tokens

    @property
    def stop_step(self) -> int:
        """The step a training job runs to: the run's last, unless the run is trained in parts (a
        PPO run trains one iteration a job, after that iteration's rollouts are written)."""
        return self.total_steps

    @property
    def warmup_steps(self) -> int:
        """schedule.warmup_steps, or schedule.warmup_share of the run's steps where that is more."""
        return max(self.schedule.warmup_steps, math.ceil(self.schedule.warmup_share * self.total_steps))

    @property
    def global_batch_rows(self) -> int:
        return self.global_batch_tokens // self.seq_len

    @property
    def run_uri(self) -> str:
        """Where the run lives: `<output>/<run_name>`, a local path or an object store URI."""
        return resolve(self.output).join(self.run_name).uri

    def run_folder(self) -> RunFolder:
        return RunFolder(self.run_uri)

    @property
    def run_dir(self) -> Path:
        """The run's local working copy (the run folder itself when it lives on a local disk)."""
        return self.run_folder().local

    def accumulation_steps(self, world_size: int) -> int:
        """Micro batches per rank per step; the global batch must split evenly over them."""
        per_pass = self.micro_batch_rows * world_size
        if self.global_batch_rows % per_pass:
            raise ValueError(f"global batch of {self.global_batch_rows} rows (global_batch_tokens "
                             f"{self.global_batch_tokens} / seq_len {self.seq_len}) is not divisible by "
                             f"micro_batch_rows {self.micro_batch_rows} x {world_size} workers")
        return self.global_batch_rows // per_pass

    def with_absolute_paths(self) -> RunConfig:
        """Local paths made absolute here, so a Ray job started elsewhere reads the same folders."""
        updates = {name: _absolute(getattr(self, name)) for name in self.path_fields()}
        updates["validation"] = self.validation.model_copy(update={"data": _absolute(self.validation.data)})
        return self.model_copy(update=updates)

    def path_fields(self) -> tuple[str, ...]:
        return ("data", "output", "tokenizer")

    def check_data(self) -> dict[str, Any]:
        """The data exists, is complete and fits the run; returns its manifest."""
        return self.objective().check_data()

    def trained_parameters(self) -> int:
        """Parameters the run trains (and keeps gradients and AdamW states of)."""
        return self.model_shape.n_params

    def _check_memory(self) -> None:
        n_params = self.trained_parameters()
        states_gib = TRAINING_BYTES_PER_PARAM * n_params / GIB
        scaling = self.scaling
        if scaling.use_gpu:
            budget = GPU_MEMORY_FOR_STATES * scaling.gpu_memory_gib
            needed = math.ceil(states_gib / budget)
            if scaling.num_workers < needed:
                raise ValueError(
                    f"{self.model_name}: the run trains {n_params / 1e9:.2f}B parameters: their weights, gradients and AdamW "
                    f"states ({states_gib:.0f} GiB in fp32) need at least {needed} GPUs of "
                    f"{scaling.gpu_memory_gib:g} GiB sharded with FSDP2; set scaling.num_workers >= {needed}")
        elif n_params > 2e9:
            raise ValueError(f"{self.model_name} ({n_params / 1e9:.1f}B parameters, {states_gib:.0f} GiB of training "
                             f"state) is not trainable on CPUs: set scaling.use_gpu=true and enough workers")

    def check_cluster(self, resources: Mapping[str, float]) -> None:
        """The cluster (total resources, as `ray.cluster_resources()`) can place every worker."""
        scaling = self.scaling
        if scaling.use_gpu:
            gpus = resources.get("GPU", 0)
            if gpus < scaling.num_workers:
                raise ValueError(f"{self.model_name} on {scaling.num_workers} GPU workers needs {scaling.num_workers} "
                                 f"GPUs; the Ray cluster has {gpus:g}. Run it on a GPU cluster (RAY_ADDRESS / "
                                 f"ray_jobs_address) or lower scaling.num_workers")
        cpus = resources.get("CPU", 0)
        if cpus < scaling.num_workers * scaling.cpus_per_worker:
            raise ValueError(f"{scaling.num_workers} workers x {scaling.cpus_per_worker:g} CPUs need "
                             f"{scaling.num_workers * scaling.cpus_per_worker:g} CPUs; the Ray cluster has {cpus:g}. "
                             f"Lower scaling.cpus_per_worker or num_workers")


def _absolute(path: str | None) -> str | None:
    return path if path is None or "://" in path else str(Path(path).absolute())


def with_overrides(config: Model, overrides: Mapping[str, Any] | None) -> Model:
    """The config (a run config, or a flow config holding one) with `overrides` merged in (nested
    options field by field), validated again."""

    def merge(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
        merged = dict(base)
        for key, value in changes.items():
            merged[key] = merge(base[key], value) if isinstance(value, Mapping) and isinstance(base.get(key), dict) \
                else value
        return merged

    if not overrides:
        return config
    return type(config).model_validate(merge(config.model_dump(), overrides))
