"""The one training core: a `Trainer` per rank owns the model, optimizer, schedule, step and data
position; an objective (`modeling.objectives`) supplies the batches and the loss.

A step reads `global_batch_tokens / seq_len` rows across all ranks, in micro batches of
`micro_batch_rows`, accumulating gradients weighted by each micro batch's share of the step's loss
tokens; clips the global norm; sets the lr from the cosine schedule; steps AdamW. Counts an
objective gives with its loss (a reward model's pairs ranked right) are summed over the step and
reported as shares of its loss units. The model is the config's (`RunConfig.new_model`). Checkpoints
(`modeling.checkpoint_folders`): `write_checkpoint` fills any folder (Ray Train gives each rank its
own and merges them); `save` keeps `step-NNNNNNNN` folders in the run folder itself, the last
`checkpoint.keep_last` kept. A new Trainer resumes from the newest intact checkpoint of its run
folder, says which ones it skipped and why, and continues exactly: the same losses, bit for bit on
CPU, as a run never stopped.
"""

from __future__ import annotations

import json
import logging
import resource
import shutil
import time
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import Tensor
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from modeling.checkpoint_folders import (
    TEMPORARY_SUFFIX,
    checkpoint_path,
    checkpoint_problem,
    checkpoint_steps,
    files_written_by,
    rank_file,
    rng_state,
    set_rng_state,
    sha256_file,
)
from modeling.objectives import Batch, LossWithCounts
from modeling.optim import build_optimizer, cosine_schedule, set_lr
from modeling.parallelize import ParallelizeConfig, data_parallel_world, parallelize
from modeling.run_config import RunConfig

MIXED_PRECISION = {"bf16": torch.bfloat16}
# Dense bf16 peak FLOP/s by device name (vendor datasheets), for MFU when none is configured.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12,
                   "A10G": 70e12, "L4": 121e12}
log = logging.getLogger("llamaline.train")


class Trainer:
    """Trains one rank. With torch.distributed initialised, every rank builds one with the same
    config; ranks read disjoint rows and average gradients. It resumes from the newest intact
    checkpoint in the run folder, if there is one; `initial_weights` (a model's state dict, e.g. the
    pretrained model fine-tuning starts from) is used only when there is none."""

    def __init__(self, config: RunConfig, device: str | torch.device = "cpu",
                 initial_weights: dict[str, torch.Tensor] | None = None) -> None:
        self.config = config
        self.device = torch.device(device)
        self.rank = dist.get_rank() if data_parallel_world() > 1 else 0
        self.world_size = data_parallel_world()
        self.accumulation = config.accumulation_steps(self.world_size)
        self.objective = config.objective()
        self.objective.check_data()

        torch.manual_seed(config.seed)
        self.model = config.new_model()
        if initial_weights is not None:
            self.model.load_state_dict(initial_weights)
        self.model.to(self.device)
        parallelism = config.parallelism
        layers = tuple(parallelism.activation_checkpointing) \
            if isinstance(parallelism.activation_checkpointing, list) else parallelism.activation_checkpointing
        self.training_model = parallelize(self.model, ParallelizeConfig(layers, parallelism.compile), self.device)
        o = config.optimizer
        self.optimizer = build_optimizer(self.model, config.peak_lr, o.betas, o.eps, o.weight_decay)
        self.step = 0
        self.resumed_from: Path | None = None
        self.skipped_checkpoints: list[tuple[Path, str]] = []
        self._open_batches(None)
        self.flops_per_token = config.flops_per_token()
        self.peak_flops = config.scaling.peak_flops_per_device or device_peak_flops(
            self.device, parallelism.mixed_precision)
        self.run_folder = config.run_folder()
        self.resume(self.run_folder.checkpoints_newest_first())

    def _open_batches(self, position: dict | None) -> None:
        self.batches = self.objective.open(self.rank, self.world_size, self.device, position)

    def _autocast(self):
        precision = self.config.parallelism.mixed_precision
        if precision is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=MIXED_PRECISION[precision])

    def _step_loss_tokens(self, micro_batches: Sequence[Batch]) -> list[int]:
        """Loss tokens per micro batch, and (last) of the whole step over all ranks."""
        counts = [batch.loss_tokens for batch in micro_batches]
        if 0 in counts:
            raise ValueError(f"after step {self.step}: a micro batch has no tokens to learn from; the stage's "
                             f"rows must each hold at least one loss token")
        total = torch.tensor([sum(counts)], dtype=torch.int64, device=self.device)
        if self.world_size > 1:
            dist.all_reduce(total)
        return counts + [int(total.item())]

    def train_step(self) -> dict[str, float | int | None]:
        started = time.perf_counter()
        config = self.config
        self.training_model.train()
        lr = cosine_schedule(self.step, config.warmup_steps, config.total_steps, config.peak_lr,
                             config.schedule.final_lr_ratio)
        set_lr(self.optimizer, lr)
        self.optimizer.zero_grad(set_to_none=True)
        micro_batches = [self.batches.next_batch(config.micro_batch_rows) for _ in range(self.accumulation)]
        *counts, step_tokens = self._step_loss_tokens(micro_batches)
        loss_sum = torch.zeros((), device=self.device)
        unit_counts: dict[str, Tensor] = {}
        for micro, (batch, count) in enumerate(zip(micro_batches, counts)):
            last = micro == self.accumulation - 1
            sync = getattr(self.training_model, "no_sync", None) if not last else None
            # Ranks' gradients are averaged, so a micro batch's mean loss is divided by
            # step_tokens / (world_size * count): its loss tokens' share of the global step. With
            # equal counts (pretraining) the divisor is exactly the accumulation steps.
            divisor = step_tokens / (self.world_size * count)
            with sync() if sync is not None else nullcontext():
                with self._autocast():
                    loss, batch_counts = split_loss(self.objective.loss(self.training_model, batch))
                (loss / divisor).backward()
            loss_sum += loss.detach().float() / divisor
            for name, count in batch_counts.items():
                unit_counts[name] = unit_counts.get(name, 0) + count.detach().double()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.optimizer.clip_grad_norm)
        if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor
            grad_norm = grad_norm.full_tensor()
        self.optimizer.step()
        self.step += 1

        if self.world_size > 1:
            dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
            for count in unit_counts.values():
                dist.all_reduce(count)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - started
        tokens = config.global_batch_tokens
        tokens_per_second = tokens / seconds
        mfu = None
        if self.peak_flops:
            mfu = tokens_per_second / self.world_size * self.flops_per_token / self.peak_flops
        return {"step": self.step, "loss": loss_sum.item(), "lr": lr, "grad_norm": grad_norm.item(),
                "tokens": self.step * tokens, "loss_tokens": step_tokens, "tokens_per_second": tokens_per_second,
                "mfu": mfu, "step_seconds": seconds, "memory_gib": self._peak_memory_gib(),
                **{name: count.item() / step_tokens for name, count in unit_counts.items()}}

    def _peak_memory_gib(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**30
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux

    def validation_due(self) -> bool:
        interval = self.config.validation.interval_steps
        return bool(interval) and (self.step % interval == 0 or self.step == self.config.total_steps)

    def checkpoint_due(self) -> bool:
        interval = self.config.checkpoint.interval_steps
        return (bool(interval) and self.step % interval == 0) or self.step in (self.config.total_steps,
                                                                                self.config.stop_step)

    @torch.no_grad()
    def validation_metrics(self) -> dict[str, float]:
        """`validation_loss`: the mean loss over the same `validation.rows` rows per rank every time,
        weighted by loss tokens as in training; and `validation_<count>` for each count the
        objective's loss comes with (a reward model's accuracy), as a share of the loss units."""
        config = self.config
        source = self.objective.open(self.rank, self.world_size, self.device, validation=True)
        micro_batches = [source.next_batch(config.micro_batch_rows)
                         for _ in range(max(1, config.validation.rows // config.micro_batch_rows))]
        *counts, total_tokens = self._step_loss_tokens(micro_batches)
        self.training_model.eval()
        mean = torch.zeros((), device=self.device)
        unit_counts: dict[str, Tensor] = {}
        for batch, count in zip(micro_batches, counts):
            with self._autocast():
                loss, batch_counts = split_loss(self.objective.loss(self.training_model, batch))
                mean += loss.float() / (total_tokens / (self.world_size * count))
            for name, value in batch_counts.items():
                unit_counts[name] = unit_counts.get(name, 0) + value.detach().float()
        if self.world_size > 1:
            dist.all_reduce(mean, op=dist.ReduceOp.AVG)
            for value in unit_counts.values():
                dist.all_reduce(value)
        return {"validation_loss": mean.item(),
                **{f"validation_{name}": value.item() / total_tokens for name, value in unit_counts.items()}}

    def train(self, until: int | None = None) -> list[dict]:
        """Steps until the job's stop step (or step `until`), checkpointing into the run folder at the
        interval and at the end."""
        history = []
        while self.step < (self.config.stop_step if until is None else until):
            metrics = self.train_step()
            if self.validation_due():
                metrics.update(self.validation_metrics())
            if self.checkpoint_due():
                self.save()
            history.append(metrics)
        return history

    # ------------------------------------------------------------------------------ checkpoints

    def write_checkpoint(self, folder: str | Path) -> Path:
        """Write this rank's part of a checkpoint of the current step into `folder` (every rank
        calls it, with the same folder or each its own that are merged afterwards)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        model_state, optimizer_state = get_state_dict(self.model, self.optimizer)
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(folder))
        files = {f.name: sha256_file(f) for f in files_written_by(folder, self.rank)}
        state = {"step": self.step, "world_size": self.world_size, "reader": self.batches.state(),
                 "rng": rng_state(), "files": files}
        rank_file(folder, self.rank).write_text(json.dumps(state))
        return folder

    def save(self) -> Path:
        """Checkpoint the current step in the run folder; keep the last `keep_last`. Returns its
        folder in the working copy (published to the object store when the run lives on one)."""
        run_folder, keep_last = self.run_folder, self.config.checkpoint.keep_last
        final = checkpoint_path(run_folder.local, self.step)
        temporary = final.with_name(final.name + TEMPORARY_SUFFIX)
        if self.rank == 0:
            shutil.rmtree(temporary, ignore_errors=True)
            temporary.mkdir(parents=True)
        self._barrier()
        self.write_checkpoint(temporary)
        self._barrier()
        if self.rank == 0:
            if final.exists():  # the same step saved again
                shutil.rmtree(final)
            temporary.rename(final)
            run_folder.publish(final.name)
            kept = run_folder.checkpoint_steps()[-keep_last:]
            # The store says which checkpoints the run has; a working copy may hold stale ones too.
            for old in set(run_folder.checkpoint_steps()) | set(checkpoint_steps(run_folder.local)):
                if old not in kept:
                    run_folder.remove(checkpoint_path(run_folder.local, old).name)
        self._barrier()
        return final

    def resume(self, candidates: Iterable[str | Path]) -> Path | None:
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
        if self.skipped_checkpoints:
            raise RuntimeError(f"none of the checkpoints {[str(p) for p, _ in self.skipped_checkpoints]} can be "
                               "resumed from: " + "; ".join(f"{p.name}: {r}" for p, r in self.skipped_checkpoints))
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
        self._open_batches(rank_state["reader"])
        set_rng_state(rank_state["rng"])

    def export_hf(self, folder: str | Path, **save_hf_options) -> Path:
        """The trained weights as a Hugging Face folder (rank 0 writes; FSDP gathers first)."""
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state, _ = get_state_dict(self.model, self.optimizer, options=options)
        path = Path(folder)
        if self.rank == 0:
            plain = self.config.new_model()
            plain.load_state_dict({k: v.detach().cpu() for k, v in model_state.items()})
            path = self.config.save_hf(plain, folder, **save_hf_options)
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



def split_loss(result: Tensor | LossWithCounts) -> tuple[Tensor, dict[str, Tensor]]:
    """An objective's loss and its counts (none for an objective that gives only the loss)."""
    return (result.loss, result.counts) if isinstance(result, LossWithCounts) else (result, {})


def device_peak_flops(device: torch.device, mixed_precision: str | None) -> float | None:
    """Dense bf16 peak of a known GPU (for MFU), None on CPU or in fp32."""
    if device.type != "cuda" or mixed_precision != "bf16":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_BF16_FLOPS.items():
        if key in name:
            return flops
    return None
