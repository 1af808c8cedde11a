"""Tiny models, their inputs and token stages, shared by the modeling and pretraining tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from modeling.configs import ModelConfig
from modeling.llama import Llama
from tasks.tokens import write_rows_stage


def tiny_config(**overrides) -> ModelConfig:
    shape = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=96, multiple_of=32, max_seq_len=64)
    return ModelConfig(**(shape | overrides))


def random_model(config: ModelConfig, seed: int = 0) -> Llama:
    """A seeded model in which every part matters, unlike a freshly initialised one.

    At the training init the embeddings dominate the residual stream and attention is nearly
    uniform: the model is almost a bigram model, so a broken cache, mask or rotary layout barely
    moves its outputs. Here the blocks' weights have std 1/sqrt(fan_in) (their outputs are as large
    as the embeddings), queries and keys std 0.3 (sharp attention: a wrong rotary layout moves
    logits by ~1e-1), norms random gains, and a larger output head keeps greedy choices clear.
    """
    torch.manual_seed(seed)
    model = Llama(config)
    with torch.no_grad():
        for block in model.layers:
            block.attention.wq.weight.normal_(0.0, 0.3)
            block.attention.wk.weight.normal_(0.0, 0.3)
            for linear in (block.attention.wv, block.attention.wo, *block.feed_forward.children()):
                linear.weight.normal_(0.0, linear.in_features**-0.5)
            block.attention_norm.weight.uniform_(0.5, 1.5)
            block.ffn_norm.weight.uniform_(0.5, 1.5)
        model.norm.weight.uniform_(0.5, 1.5)
        model.output.weight.normal_(0.0, 0.5)
    return model.eval()


def random_tokens(batch: int, length: int, vocab_size: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))


def assert_equal_within(got: torch.Tensor, expected: torch.Tensor, tolerance: float = 1e-5, what: str = "") -> None:
    """Largest difference at most `tolerance` of the largest magnitude (fp32 sums differ in order)."""
    scale = max(expected.abs().max().item(), 1.0)
    difference = (got - expected).abs().max().item()
    assert difference <= tolerance * scale, f"{what}: max difference {difference:.3g} > {tolerance} x {scale:.3g}"


def write_token_stage(stage: Path, rows: np.ndarray, doc_starts: list[list[int]], vocab_size: int,
                      shards: int = 1, row_group_rows: int = 8) -> str:
    """A finished token stage of these rows, in small row groups so readers cross them often."""
    return write_rows_stage(str(stage), rows.astype(np.uint16), doc_starts, vocab_size, shards, row_group_rows)


def spawn_two_ranks(worker, args: tuple, folder, monkeypatch) -> None:
    """`worker(rank, rendezvous, *args)` on two spawned processes, which meet through a file in
    `folder` (no port to race a session's Ray for) and start without the session's Ray and Prefect
    environment (RAY_*, PREFECT_*: the ranks are plain torch.distributed processes)."""
    import os

    import torch.multiprocessing as mp

    for name in list(os.environ):
        if name.startswith(("RAY_", "PREFECT_")):
            monkeypatch.delenv(name)
    rendezvous = f"file://{folder}/rendezvous"
    mp.spawn(worker, args=(rendezvous, *args), nprocs=2, join=True)
