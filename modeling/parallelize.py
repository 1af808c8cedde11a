"""Training-time transformations applied to a Llama from outside, in torchtitan's order:
activation checkpointing, then compilation, then data parallelism (FSDP2 on CUDA, DDP on CPU).

Each `apply_*` changes the model in place where it can (parameter names stay those of
modeling/llama.py, so checkpoints and `save_hf` see the plain model) and returns the module the
training loop should call. A model around a Llama (modeling/reward.py) serves as well: what they
need is its blocks, `model.layers`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

from modeling.llama import Llama

ActivationCheckpointing = str | int | Sequence[int] | None


def checkpointed_layers(n_layers: int, layers: ActivationCheckpointing) -> list[int]:
    """Which blocks recompute their activations: None none, "all" all, an int k every k-th block
    (0, k, 2k, ...), or an explicit list of block indices."""
    if layers is None:
        return []
    if layers == "all":
        return list(range(n_layers))
    if isinstance(layers, bool) or isinstance(layers, str):
        raise ValueError(f"activation checkpointing must be 'all', an int k or a list of layers, got {layers!r}")
    if isinstance(layers, int):
        if layers < 1:
            raise ValueError(f"activation checkpointing every k layers needs k >= 1, got {layers}")
        return list(range(0, n_layers, layers))
    chosen = sorted(set(layers))
    if any(not 0 <= i < n_layers for i in chosen):
        raise ValueError(f"activation checkpointing layers {list(layers)} are not all in 0..{n_layers - 1}")
    return chosen


def apply_activation_checkpointing(model: Llama, layers: ActivationCheckpointing = "all") -> Llama:
    """Wrap the chosen blocks so their activations are recomputed in backward (non-reentrant
    torch.utils.checkpoint); the wrapper keeps the blocks' state-dict names."""
    for index in checkpointed_layers(len(model.layers), layers):
        model.layers[index] = checkpoint_wrapper(model.layers[index], checkpoint_impl=CheckpointImpl.NO_REENTRANT)
    return model


def apply_compile(model: Llama) -> Llama:
    """Compile each block in place (torchtitan's per-block compile: one graph reused N times)."""
    for block in model.layers:
        block.compile()
    return model


def data_parallel_world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def apply_data_parallel(model: Llama, device: torch.device) -> nn.Module:
    """Replicate gradients across the process group: FSDP2 `fully_shard` (each block, then the
    root) on CUDA, DDP over gloo on CPU. Without a process group of 2+ ranks, the model as it is."""
    if data_parallel_world() == 1:
        return model
    if device.type == "cuda":
        from torch.distributed.fsdp import fully_shard

        for block in model.layers:
            fully_shard(block)
        fully_shard(model)
        return model
    return nn.parallel.DistributedDataParallel(model)


@dataclass(frozen=True)
class ParallelizeConfig:
    activation_checkpointing: ActivationCheckpointing = None
    compile: bool = False


def parallelize(model: Llama, config: ParallelizeConfig, device: torch.device) -> nn.Module:
    """All transformations in their fixed order; returns the module to train (call `model` itself
    for state dicts and export: it is changed in place)."""
    apply_activation_checkpointing(model, config.activation_checkpointing)
    if config.compile:
        apply_compile(model)
    return apply_data_parallel(model, device)
