"""AdamW with LLaMA's settings and the cosine learning-rate schedule (RECIPE.md section 3).

The schedule is a pure function of the step, not a scheduler object with state: the training loop
sets each group's lr before every optimizer step, so a resumed run needs only the step counter to
be on exactly the same lr as an uninterrupted one.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay the matrices (every 2-D weight: projections, output head and token embeddings), not
    the 1-D norm gains: the minGPT/nanoGPT rule. Decaying a gain pulls it towards 0, which scales
    the block's input down rather than regularising it. (torchtitan decays all parameters; Meta's
    LLaMA optimizer code is unpublished.)"""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.ndim >= 2 else no_decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(
    model: nn.Module,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-5,
    weight_decay: float = 0.1,
) -> torch.optim.AdamW:
    if not lr > 0:
        raise ValueError(f"learning rate must be > 0, got {lr!r}")
    # foreach=False: the per-parameter loop gives the same bits on every run and device count.
    return torch.optim.AdamW(parameter_groups(model, weight_decay), lr=lr, betas=betas, eps=eps, foreach=False)


def cosine_schedule(step: int, warmup_steps: int, total_steps: int, peak_lr: float, final_ratio: float = 0.1) -> float:
    """The lr of the optimizer step numbered `step` (0-based).

    Linear warmup over steps 0..warmup_steps-1 up to peak_lr (step 0 already has peak/warmup, not
    0, so no step is wasted), then half a cosine from peak_lr down to final_ratio * peak_lr, reached
    at the last step (total_steps - 1) and held after it.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    final_lr = final_ratio * peak_lr
    decay_steps = total_steps - 1 - warmup_steps
    progress = 1.0 if decay_steps <= 0 else min(1.0, (step - warmup_steps) / decay_steps)
    return final_lr + (peak_lr - final_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
