"""Tiny models shared by the modeling tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from modeling.configs import ModelConfig
from modeling.llama import Llama
from tasks.shards import MANIFEST, SUCCESS
from tasks.tokens import shard_schema


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


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a shared, busy machine OpenMP's
    spin-waiting turns milliseconds into seconds. Test modules use it with `pytestmark`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_equal_within(got: torch.Tensor, expected: torch.Tensor, tolerance: float = 1e-5, what: str = "") -> None:
    """Largest difference at most `tolerance` of the largest magnitude (fp32 sums differ in order)."""
    scale = max(expected.abs().max().item(), 1.0)
    difference = (got - expected).abs().max().item()
    assert difference <= tolerance * scale, f"{what}: max difference {difference:.3g} > {tolerance} x {scale:.3g}"


def write_token_stage(stage: Path, rows: np.ndarray, doc_starts: list[list[int]], vocab_size: int,
                      shards: int = 1, row_group_rows: int = 8) -> str:
    """A finished token stage in tasks/tokens.py's layout, written directly (no Ray needed); the
    rows are cut into `shards` shards of equal size."""
    stage.mkdir(parents=True)
    entries = []
    for index, chunk in enumerate(np.array_split(np.arange(len(rows)), shards)):
        shard = stage / f"shard-{index:05d}.parquet"
        table = pa.table({
            "tokens": pa.FixedSizeListArray.from_arrays(pa.array(rows[chunk].reshape(-1).astype(np.uint16)),
                                                        rows.shape[1]),
            "doc_starts": pa.array([doc_starts[i] for i in chunk], pa.list_(pa.int32())),
            "source": pa.array(["synthetic"] * len(chunk)),
            "part": pa.array([0] * len(chunk), pa.int32()),
            "row_in_part": pa.array(chunk, pa.int32()),
        }).cast(shard_schema(vocab_size, rows.shape[1] - 1))
        pq.write_table(table, shard, row_group_size=row_group_rows)
        groups = [min(row_group_rows, len(chunk) - start) for start in range(0, len(chunk), row_group_rows)]
        entries.append({"path": str(shard), "rows": len(chunk), "row_groups": groups})
    manifest = {"fingerprint": f"test-stage-{stage.name}", "row_tokens": rows.shape[1], "rows": len(rows),
                "vocab_size": vocab_size, "shards": entries}
    (stage / MANIFEST).write_text(json.dumps(manifest))
    (stage / SUCCESS).write_text("{}")
    return str(stage)
