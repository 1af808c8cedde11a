"""Pretraining loop: one `Trainer` per rank, owning the model, optimizer, step and data position.

A step reads `global_batch_tokens / seq_len` rows across all ranks, in micro batches of
`micro_batch_rows`, accumulating gradients; clips the global norm to 1.0; sets the lr from the
cosine schedule; steps AdamW. Checkpoints (torch.distributed.checkpoint for model and optimizer,
one JSON per rank for step, reader position and RNG states) are written to a temporary folder and
renamed into place, so a folder named `step-NNNNNNNN` is always complete; the last `keep_last` are
kept. A Trainer built on a checkpoint folder continues from its latest checkpoint exactly.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from modeling.checkpoints import save_hf
from modeling.configs import ModelConfig, named_size
from modeling.llama import Llama
from modeling.optim import build_optimizer, cosine_schedule, set_lr
from modeling.parallelize import ParallelizeConfig, data_parallel_world, parallelize
from tasks.shards import MANIFEST
from tasks.storage import resolve
from tasks.tokens import ReaderPosition, TokenReader, document_ids

CHECKPOINT_NAME = re.compile(r"^step-(\d{8})$")
TEMPORARY_SUFFIX = ".tmp"


@dataclass(frozen=True)
class TrainConfig:
    data_dir: str  # a finished token stage (tasks.tokens.tokenize_and_pack)
    seq_len: int
    global_batch_tokens: int  # over all ranks and micro batches (LLaMA: 4M)
    micro_batch_rows: int  # rows per forward/backward on one rank
    total_steps: int
    warmup_steps: int = 2000
    model: str | ModelConfig = "debug"  # a named size or an explicit shape
    lr: float | None = None  # peak lr; None: the named size's
    final_lr_ratio: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-5
    weight_decay: float = 0.1
    clip_grad_norm: float = 1.0
    document_masking: bool = True  # attention stays within each packed document
    seed: int = 0
    checkpoint_dir: str | None = None
    checkpoint_interval: int = 0  # steps between checkpoints; 0: only when asked
    keep_last: int = 3
    activation_checkpointing: str | int | tuple[int, ...] | None = None
    compile: bool = False
    peak_flops_per_device: float | None = None  # for MFU (H100 bf16 dense: 989e12)

    def __post_init__(self) -> None:
        for name in ("seq_len", "global_batch_tokens", "micro_batch_rows", "total_steps", "keep_last"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive integer, got {value!r}")
        for name in ("warmup_steps", "checkpoint_interval", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"TrainConfig.{name} must be a non-negative integer, got {value!r}")
        if self.warmup_steps > self.total_steps:
            raise ValueError(f"TrainConfig.warmup_steps ({self.warmup_steps}) exceeds total_steps ({self.total_steps})")
        if self.seq_len > self.model_config.max_seq_len:
            raise ValueError(f"TrainConfig.seq_len ({self.seq_len}) exceeds the model's max_seq_len "
                             f"({self.model_config.max_seq_len})")
        if self.global_batch_tokens % self.seq_len:
            raise ValueError(f"TrainConfig.global_batch_tokens ({self.global_batch_tokens}) is not a whole number "
                             f"of rows of seq_len {self.seq_len}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr!r}")
        if not 0 <= self.final_lr_ratio <= 1:
            raise ValueError(f"TrainConfig.final_lr_ratio must be in [0, 1], got {self.final_lr_ratio!r}")
        if not self.clip_grad_norm > 0:
            raise ValueError(f"TrainConfig.clip_grad_norm must be > 0, got {self.clip_grad_norm!r}")
        if self.checkpoint_interval and self.checkpoint_dir is None:
            raise ValueError("TrainConfig.checkpoint_interval is set but checkpoint_dir is not")

    @property
    def model_config(self) -> ModelConfig:
        return self.model if isinstance(self.model, ModelConfig) else named_size(self.model).config

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else named_size(self.model).lr

    @property
    def global_batch_rows(self) -> int:
        return self.global_batch_tokens // self.seq_len

    def accumulation_steps(self, world_size: int) -> int:
        """Micro batches per rank per step; the global batch must split evenly over them."""
        per_pass = self.micro_batch_rows * world_size
        if self.global_batch_rows % per_pass:
            raise ValueError(f"global batch of {self.global_batch_rows} rows ({self.global_batch_tokens} tokens / "
                             f"seq_len {self.seq_len}) is not divisible by micro_batch_rows {self.micro_batch_rows} "
                             f"x world size {world_size}")
        return self.global_batch_rows // per_pass


# ---------------------------------------------------------------------------------- checkpoint folders


def checkpoint_steps(folder: str | Path) -> list[int]:
    """Steps of the complete checkpoints in `folder`, ascending (temporary folders are ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := CHECKPOINT_NAME.match(p.name)))


def checkpoint_path(folder: str | Path, step: int) -> Path:
    return Path(folder) / f"step-{step:08d}"


def _rng_state() -> dict[str, Any]:
    numpy_state = np.random.get_state(legacy=False)
    state = {
        "torch": torch.get_rng_state().tolist(),
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": {**numpy_state, "state": {"key": numpy_state["state"]["key"].tolist(),
                                           "pos": int(numpy_state["state"]["pos"])}},
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = dict(state["numpy"])
    numpy_state["state"] = {"key": np.array(numpy_state["state"]["key"], dtype=np.uint32),
                            "pos": numpy_state["state"]["pos"]}
    np.random.set_state(numpy_state)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


# ---------------------------------------------------------------------------------- the trainer


class Trainer:
    """Trains one rank. With torch.distributed initialised, every rank builds one with the same
    config; ranks read disjoint rows and average gradients."""

    def __init__(self, config: TrainConfig, device: str | torch.device = "cpu") -> None:
        self.config = config
        self.device = torch.device(device)
        self.rank = dist.get_rank() if data_parallel_world() > 1 else 0
        self.world_size = data_parallel_world()
        self.accumulation = config.accumulation_steps(self.world_size)
        self._check_stage()

        torch.manual_seed(config.seed)
        self.model = Llama(config.model_config).to(self.device)
        self.training_model = parallelize(
            self.model, ParallelizeConfig(config.activation_checkpointing, config.compile), self.device)
        self.optimizer = build_optimizer(self.model, config.peak_lr, config.betas, config.eps, config.weight_decay)
        self.step = 0
        self._open_reader(None)
        self.flops_per_token = config.model_config.flops_per_token(config.seq_len)
        if config.checkpoint_dir is not None and checkpoint_steps(config.checkpoint_dir):
            self.load(checkpoint_path(config.checkpoint_dir, checkpoint_steps(config.checkpoint_dir)[-1]))

    def _check_stage(self) -> None:
        manifest = resolve(self.config.data_dir).join(MANIFEST).read_json()
        if manifest["row_tokens"] != self.config.seq_len + 1:
            raise ValueError(f"{self.config.data_dir}: rows of {manifest['row_tokens']} tokens do not fit "
                             f"seq_len {self.config.seq_len} (rows must be seq_len + 1 tokens)")
        if manifest.get("vocab_size", 0) > self.config.model_config.vocab_size:
            raise ValueError(f"{self.config.data_dir}: vocabulary of {manifest['vocab_size']} tokens exceeds the "
                             f"model's {self.config.model_config.vocab_size}")

    def _open_reader(self, position: ReaderPosition | None) -> None:
        self.reader = TokenReader(self.config.data_dir, self.rank, self.world_size, self.config.seed, start=position)
        self._rows = iter(self.reader)

    def _micro_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        rows = [next(self._rows) for _ in range(self.config.micro_batch_rows)]
        tokens = torch.from_numpy(np.stack([r for r, _ in rows]).astype(np.int64)).to(self.device)
        doc_ids = None
        if self.config.document_masking:
            ids = np.stack([document_ids(starts, self.reader.row_tokens)[:-1] for _, starts in rows])
            doc_ids = torch.from_numpy(ids).to(self.device)
        return tokens[:, :-1], tokens[:, 1:], doc_ids

    def train_step(self) -> dict[str, float | int | None]:
        started = time.perf_counter()
        self.training_model.train()
        lr = cosine_schedule(self.step, self.config.warmup_steps, self.config.total_steps,
                             self.config.peak_lr, self.config.final_lr_ratio)
        set_lr(self.optimizer, lr)
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(self.accumulation):
            inputs, targets, doc_ids = self._micro_batch()
            last = micro == self.accumulation - 1
            sync = getattr(self.training_model, "no_sync", None) if not last else None
            with sync() if sync is not None else nullcontext():
                loss = self.training_model(inputs, targets, doc_ids=doc_ids).loss
                # Every micro batch has the same number of targets, so the mean of means is the mean.
                (loss / self.accumulation).backward()
            loss_sum += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_grad_norm)
        if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor
            grad_norm = grad_norm.full_tensor()
        self.optimizer.step()
        self.step += 1

        mean_loss = loss_sum / self.accumulation
        if self.world_size > 1:
            dist.all_reduce(mean_loss, op=dist.ReduceOp.AVG)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - started
        tokens = self.config.global_batch_tokens
        tokens_per_second = tokens / seconds
        mfu = None
        if self.config.peak_flops_per_device:
            mfu = tokens_per_second / self.world_size * self.flops_per_token / self.config.peak_flops_per_device
        metrics = {"step": self.step, "loss": mean_loss.item(), "lr": lr, "grad_norm": grad_norm.item(),
                   "tokens": tokens, "tokens_per_second": tokens_per_second, "mfu": mfu}
        interval = self.config.checkpoint_interval
        if interval and self.step % interval == 0:
            self.save()
        return metrics

    def train(self) -> list[dict]:
        """Steps until total_steps; the last step's state is checkpointed when a folder is set."""
        history = []
        while self.step < self.config.total_steps:
            history.append(self.train_step())
        if self.config.checkpoint_dir is not None and self.step not in checkpoint_steps(self.config.checkpoint_dir):
            self.save()
        return history

    # ------------------------------------------------------------------------------ checkpoints

    def save(self) -> Path:
        """Write a checkpoint of the current step; keep the last `keep_last`. Returns its folder."""
        if self.config.checkpoint_dir is None:
            raise ValueError("TrainConfig.checkpoint_dir is not set: nowhere to save a checkpoint")
        final = checkpoint_path(self.config.checkpoint_dir, self.step)
        temporary = final.with_name(final.name + TEMPORARY_SUFFIX)
        if self.rank == 0:
            shutil.rmtree(temporary, ignore_errors=True)
            temporary.mkdir(parents=True)
        self._barrier()
        model_state, optimizer_state = get_state_dict(self.model, self.optimizer)
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(temporary))
        rank_state = {"step": self.step, "reader": self.reader.state().as_dict(), "rng": _rng_state()}
        (temporary / f"rank-{self.rank:05d}.json").write_text(json.dumps(rank_state))
        self._barrier()
        if self.rank == 0:
            if final.exists():  # the same step saved again (e.g. by train() after an interval save)
                shutil.rmtree(final)
            temporary.rename(final)
            for old in checkpoint_steps(self.config.checkpoint_dir)[:-self.config.keep_last]:
                shutil.rmtree(checkpoint_path(self.config.checkpoint_dir, old))
        self._barrier()
        return final

    def load(self, folder: str | Path) -> None:
        folder = Path(folder)
        rank_file = folder / f"rank-{self.rank:05d}.json"
        if not rank_file.is_file():
            raise FileNotFoundError(f"{folder}: no {rank_file.name}: saved by another world size or incomplete")
        model_state, optimizer_state = get_state_dict(self.model, self.optimizer)
        state = {"model": model_state, "optimizer": optimizer_state}
        dcp.load(state, checkpoint_id=str(folder))
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optimizer"])
        rank_state = json.loads(rank_file.read_text())
        self.step = rank_state["step"]
        self._open_reader(ReaderPosition.from_dict(rank_state["reader"]))
        _set_rng_state(rank_state["rng"])

    def export_hf(self, folder: str | Path, **save_hf_options) -> Path:
        """The trained weights as a Hugging Face folder (rank 0 writes; FSDP gathers first)."""
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state, _ = get_state_dict(self.model, self.optimizer, options=options)
        path = Path(folder)
        if self.rank == 0:
            plain = Llama(self.config.model_config)
            plain.load_state_dict({k: v.detach().cpu() for k, v in model_state.items()})
            path = save_hf(plain, folder, **save_hf_options)
        self._barrier()
        return path

    def _barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()
