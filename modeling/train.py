"""Pretraining loop: one `Trainer` per rank, owning the model, optimizer, step and data position.

A step reads `global_batch_tokens / seq_len` rows across all ranks, in micro batches of
`micro_batch_rows`, accumulating gradients; clips the global norm to 1.0; sets the lr from the
cosine schedule; steps AdamW. A checkpoint is a folder of torch.distributed.checkpoint files (model
and optimizer, sharded as trained) plus one JSON per rank (step, reader position, RNG states and the
sha256 of the files that rank wrote). `write_checkpoint` fills any folder (Ray Train gives each rank
its own and merges them); `save` keeps `step-NNNNNNNN` folders under `checkpoint_dir` itself,
renamed into place when complete, the last `keep_last` kept. Resuming takes the newest checkpoint
whose files are all present and intact, says which ones it skipped and why, and continues exactly:
the same losses, bit for bit on CPU, as a run never stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import resource
import shutil
import time
from collections.abc import Iterator, Sequence
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
from tasks.shards import MANIFEST, SUCCESS
from tasks.storage import resolve
from tasks.tokens import ReaderPosition, TokenReader, document_ids

CHECKPOINT_NAME = re.compile(r"^step-(\d{8})$")
TEMPORARY_SUFFIX = ".tmp"
DCP_METADATA = ".metadata"
MIXED_PRECISION = {"bf16": torch.bfloat16}
# Dense bf16 peak FLOP/s by device name (vendor datasheets), for MFU when none is configured.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12,
                   "A10G": 70e12, "L4": 121e12}
log = logging.getLogger("llamaline.train")


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
    mixed_precision: str | None = None  # "bf16": autocast the forward and backward; weights stay fp32
    peak_flops_per_device: float | None = None  # for MFU; None: looked up for known GPUs in bf16
    holdout_shards: int = 0  # the stage's last N shards are not trained on: they are the validation set
    validation_data: str | None = None  # or a separate token stage for validation
    validation_interval: int = 0  # steps between validation losses; 0: never
    validation_rows: int = 64  # rows per rank in each validation (always the same rows)

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
        if self.mixed_precision is not None and self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"TrainConfig.mixed_precision must be one of {sorted(MIXED_PRECISION)} or None, "
                             f"got {self.mixed_precision!r}")
        for name in ("holdout_shards", "validation_interval", "validation_rows"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"TrainConfig.{name} must be a non-negative integer, got {value!r}")
        if self.holdout_shards and self.validation_data is not None:
            raise ValueError("TrainConfig: give holdout_shards or validation_data, not both")
        if self.validation_interval and not (self.holdout_shards or self.validation_data):
            raise ValueError("TrainConfig.validation_interval is set but there is no validation set: set "
                             "holdout_shards (the stage's last shards) or validation_data (a token stage)")

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
    """Steps of the checkpoint folders in `folder`, ascending (temporary folders are ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := CHECKPOINT_NAME.match(p.name)))


def checkpoint_path(folder: str | Path, step: int) -> Path:
    return Path(folder) / f"step-{step:08d}"


def checkpoints_newest_first(folder: str | Path) -> list[Path]:
    return [checkpoint_path(folder, step) for step in reversed(checkpoint_steps(folder))]


def rank_file(folder: Path, rank: int) -> Path:
    return folder / f"rank-{rank:05d}.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _files_written_by(folder: Path, rank: int) -> list[Path]:
    """The DCP files of one rank (FileSystemWriter names them __<rank>_<n>.distcp; the coordinator,
    rank 0, also writes .metadata)."""
    files = sorted(folder.glob(f"__{rank}_*.distcp"))
    if rank == 0:
        files.append(folder / DCP_METADATA)
    return files


def checkpoint_problem(folder: str | Path, rank: int, world_size: int) -> str | None:
    """Why `rank` cannot resume from `folder` (missing or changed files), or None when it can."""
    folder = Path(folder)
    if not folder.is_dir():
        return "not a folder"
    for other in range(world_size):
        if not rank_file(folder, other).is_file():
            return f"{rank_file(folder, other).name} is missing (incomplete, or saved by another world size)"
    try:
        state = json.loads(rank_file(folder, rank).read_text())
    except (OSError, ValueError) as error:
        return f"{rank_file(folder, rank).name} is unreadable: {error}"
    if state.get("world_size") != world_size:
        return f"saved by world size {state.get('world_size')}, resuming with {world_size}"
    for name, expected in state.get("files", {}).items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if _sha256(path) != expected:
            return f"{name} does not match its sha256 (corrupt)"
    return None


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
    config; ranks read disjoint rows and average gradients. With `checkpoint_dir` set, it resumes
    from the newest intact checkpoint there."""

    def __init__(self, config: TrainConfig, device: str | torch.device = "cpu") -> None:
        self.config = config
        self.device = torch.device(device)
        self.rank = dist.get_rank() if data_parallel_world() > 1 else 0
        self.world_size = data_parallel_world()
        self.accumulation = config.accumulation_steps(self.world_size)
        self.train_shards, self.validation_shards = self._check_stage()

        torch.manual_seed(config.seed)
        self.model = Llama(config.model_config).to(self.device)
        self.training_model = parallelize(
            self.model, ParallelizeConfig(config.activation_checkpointing, config.compile), self.device)
        self.optimizer = build_optimizer(self.model, config.peak_lr, config.betas, config.eps, config.weight_decay)
        self.step = 0
        self.resumed_from: Path | None = None
        self.skipped_checkpoints: list[tuple[Path, str]] = []
        self._open_reader(None)
        self.flops_per_token = config.model_config.flops_per_token(config.seq_len)
        self.peak_flops = config.peak_flops_per_device or device_peak_flops(self.device, config.mixed_precision)
        if config.checkpoint_dir is not None:
            self.resume(checkpoints_newest_first(config.checkpoint_dir))

    def _check_stage(self) -> tuple[list[int] | None, list[int] | None]:
        """Check the token stage fits the config; return (training shards, validation shards)."""
        shards = len(check_token_stage(self.config)["shards"])
        held_out = self.config.holdout_shards
        if not held_out:
            return None, None
        return list(range(shards - held_out)), list(range(shards - held_out, shards))

    def _open_reader(self, position: ReaderPosition | None) -> None:
        self.reader = TokenReader(self.config.data_dir, self.rank, self.world_size, self.config.seed,
                                  start=position, shards=self.train_shards)
        self._rows = iter(self.reader)

    def _micro_batch(self, source: Iterator[tuple[np.ndarray, np.ndarray]]
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        rows = [next(source) for _ in range(self.config.micro_batch_rows)]
        tokens = torch.from_numpy(np.stack([r for r, _ in rows]).astype(np.int64)).to(self.device)
        doc_ids = None
        if self.config.document_masking:
            ids = np.stack([document_ids(starts, self.reader.row_tokens)[:-1] for _, starts in rows])
            doc_ids = torch.from_numpy(ids).to(self.device)
        return tokens[:, :-1], tokens[:, 1:], doc_ids

    def _autocast(self):
        if self.config.mixed_precision is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=MIXED_PRECISION[self.config.mixed_precision])

    def train_step(self) -> dict[str, float | int | None]:
        started = time.perf_counter()
        self.training_model.train()
        lr = cosine_schedule(self.step, self.config.warmup_steps, self.config.total_steps,
                             self.config.peak_lr, self.config.final_lr_ratio)
        set_lr(self.optimizer, lr)
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(self.accumulation):
            inputs, targets, doc_ids = self._micro_batch(self._rows)
            last = micro == self.accumulation - 1
            sync = getattr(self.training_model, "no_sync", None) if not last else None
            with sync() if sync is not None else nullcontext():
                with self._autocast():
                    loss = self.training_model(inputs, targets, doc_ids=doc_ids).loss
                # Every micro batch has the same number of targets, so the mean of means is the mean.
                (loss / self.accumulation).backward()
            loss_sum += loss.detach().float()
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
        if self.peak_flops:
            mfu = tokens_per_second / self.world_size * self.flops_per_token / self.peak_flops
        metrics = {"step": self.step, "loss": mean_loss.item(), "lr": lr, "grad_norm": grad_norm.item(),
                   "tokens": self.step * tokens, "tokens_per_second": tokens_per_second, "mfu": mfu,
                   "step_seconds": seconds, "memory_gib": self._peak_memory_gib()}
        interval = self.config.checkpoint_interval
        if self.config.checkpoint_dir is not None and interval and self.step % interval == 0:
            self.save()
        return metrics

    def _peak_memory_gib(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**30
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux

    def validation_due(self) -> bool:
        interval = self.config.validation_interval
        return bool(interval) and (self.step % interval == 0 or self.step == self.config.total_steps)

    @torch.no_grad()
    def validation_loss(self) -> float:
        """Mean loss over the same `validation_rows` rows per rank every time (all ranks average)."""
        source = self.config.validation_data or self.config.data_dir
        reader = TokenReader(source, self.rank, self.world_size, self.config.seed, shards=self.validation_shards)
        rows = iter(reader)
        batches = max(1, self.config.validation_rows // self.config.micro_batch_rows)
        self.training_model.eval()
        total = torch.zeros((), device=self.device)
        for _ in range(batches):
            inputs, targets, doc_ids = self._micro_batch(rows)
            with self._autocast():
                total += self.training_model(inputs, targets, doc_ids=doc_ids).loss.float()
        mean = total / batches
        if self.world_size > 1:
            dist.all_reduce(mean, op=dist.ReduceOp.AVG)
        return mean.item()

    def train(self) -> list[dict]:
        """Steps until total_steps; the last step's state is checkpointed when a folder is set."""
        history = []
        while self.step < self.config.total_steps:
            metrics = self.train_step()
            if self.validation_due():
                metrics["validation_loss"] = self.validation_loss()
            history.append(metrics)
        if self.config.checkpoint_dir is not None and self.step not in checkpoint_steps(self.config.checkpoint_dir):
            self.save()
        return history

    # ------------------------------------------------------------------------------ checkpoints

    def write_checkpoint(self, folder: str | Path) -> Path:
        """Write this rank's part of a checkpoint of the current step into `folder` (every rank
        calls it, with the same folder or each its own that are merged afterwards)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        model_state, optimizer_state = get_state_dict(self.model, self.optimizer)
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(folder))
        files = {f.name: _sha256(f) for f in _files_written_by(folder, self.rank)}
        state = {"step": self.step, "world_size": self.world_size, "reader": self.reader.state().as_dict(),
                 "rng": _rng_state(), "files": files}
        rank_file(folder, self.rank).write_text(json.dumps(state))
        return folder

    def save(self) -> Path:
        """Checkpoint the current step under checkpoint_dir; keep the last `keep_last`. Returns its folder."""
        if self.config.checkpoint_dir is None:
            raise ValueError("TrainConfig.checkpoint_dir is not set: nowhere to save a checkpoint")
        final = checkpoint_path(self.config.checkpoint_dir, self.step)
        temporary = final.with_name(final.name + TEMPORARY_SUFFIX)
        if self.rank == 0:
            shutil.rmtree(temporary, ignore_errors=True)
            temporary.mkdir(parents=True)
        self._barrier()
        self.write_checkpoint(temporary)
        self._barrier()
        if self.rank == 0:
            if final.exists():  # the same step saved again (e.g. by train() after an interval save)
                shutil.rmtree(final)
            temporary.rename(final)
            for old in checkpoint_steps(self.config.checkpoint_dir)[:-self.config.keep_last]:
                shutil.rmtree(checkpoint_path(self.config.checkpoint_dir, old))
        self._barrier()
        return final

    def resume(self, candidates: Sequence[str | Path]) -> Path | None:
        """Load the first intact checkpoint of `candidates` (newest first), skipping, with a warning,
        any that is incomplete or corrupt; None when there are none. Every rank takes the same one."""
        for folder in map(Path, candidates):
            problem = checkpoint_problem(folder, self.rank, self.world_size)
            if not self._all_ranks_agree(problem is None):
                reason = problem or "another rank found it incomplete or corrupt"
                log.warning("checkpoint %s cannot be resumed from: %s; trying the one before", folder, reason)
                self.skipped_checkpoints.append((folder, reason))
                continue
            self.load(folder)
            self.resumed_from = folder
            log.info("resumed from %s at step %d", folder, self.step)
            return folder
        if candidates:
            raise RuntimeError(f"none of the checkpoints {[str(c) for c in candidates]} can be resumed from: "
                               + "; ".join(f"{p.name}: {r}" for p, r in self.skipped_checkpoints))
        return None

    def load(self, folder: str | Path) -> None:
        folder = Path(folder)
        if not rank_file(folder, self.rank).is_file():
            raise FileNotFoundError(f"{folder}: no {rank_file(folder, self.rank).name}: saved by another world size "
                                    f"or incomplete")
        model_state, optimizer_state = get_state_dict(self.model, self.optimizer)
        state = {"model": model_state, "optimizer": optimizer_state}
        dcp.load(state, checkpoint_id=str(folder))
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optimizer"])
        rank_state = json.loads(rank_file(folder, self.rank).read_text())
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

    def _all_ranks_agree(self, ok: bool) -> bool:
        if self.world_size == 1:
            return ok
        flag = torch.tensor([1 if ok else 0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def _barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def read_token_manifest(stage_dir: str) -> dict[str, Any]:
    """The manifest of a finished token stage, or a clear error saying what is missing."""
    stage = resolve(stage_dir)
    if not stage.join(SUCCESS).exists():
        raise FileNotFoundError(f"{stage_dir}: not a finished token stage (no {SUCCESS}); run the tokenize flow "
                                f"first (`llamaline tokenize`)")
    manifest = stage.join(MANIFEST).read_json()
    missing = [shard["path"] for shard in manifest["shards"] if not resolve(shard["path"]).exists()]
    if missing:
        raise FileNotFoundError(f"{stage_dir}: {len(missing)} of its {len(manifest['shards'])} shards are missing, "
                                f"e.g. {missing[0]}; re-run the tokenize flow")
    return manifest


def check_token_stage(config: TrainConfig) -> dict[str, Any]:
    """The token stage exists, is complete and fits the config (rows of seq_len + 1 tokens, the
    model's vocabulary, a shard left to train on); returns its manifest."""
    manifest = read_token_manifest(config.data_dir)
    row_tokens = manifest["row_tokens"]
    if row_tokens != config.seq_len + 1:
        raise ValueError(f"{config.data_dir}: rows hold {row_tokens} tokens, so TrainConfig.seq_len must be "
                         f"{row_tokens - 1}, not {config.seq_len} (or re-tokenize with seq_len {config.seq_len})")
    vocab = config.model_config.vocab_size
    if manifest.get("vocab_size", 0) > vocab:
        raise ValueError(f"{config.data_dir}: a vocabulary of {manifest['vocab_size']} tokens does not fit the model's "
                         f"{vocab}")
    shards = len(manifest["shards"])
    if config.holdout_shards >= shards:
        raise ValueError(f"{config.data_dir}: TrainConfig.holdout_shards ({config.holdout_shards}) leaves none of its "
                         f"{shards} shards to train on")
    if config.validation_data is not None:
        validation = read_token_manifest(config.validation_data)
        if validation["row_tokens"] != row_tokens:
            raise ValueError(f"{config.validation_data}: rows of {validation['row_tokens']} tokens, but the training "
                             f"rows have {row_tokens}")
    return manifest


def device_peak_flops(device: torch.device, mixed_precision: str | None) -> float | None:
    """Dense bf16 peak of a known GPU (for MFU), None on CPU or in fp32."""
    if device.type != "cuda" or mixed_precision != "bf16":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_BF16_FLOPS.items():
        if key in name:
            return flops
    return None
