"""What an objective adds to the training core: where its batches come from and what its loss is.

The core (`modeling.train.Trainer`) owns the model, optimizer, schedule, accumulation, clipping,
parallelism, mixed precision, checkpoints, metrics and validation. An `Objective` owns the data:
it checks the stage before work starts, opens a resumable `BatchSource` for a rank, and computes
the loss of a micro batch. Losses are means over the micro batch's loss tokens; the core weights
each micro batch by its share of the step's loss tokens over all ranks, so a step's gradient is
the mean over every loss token of the global batch however unevenly they fall.

`PackedRows` serves both pretraining and supervised fine-tuning: rows of a packed token stage
(`tasks.tokens`), next-token cross entropy, attention kept within each packed document. For a
stage whose rows carry a loss mask (fine-tuning: answers only) targets outside it are ignored and
rotary positions restart at every example, so a packed row trains exactly as its examples alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np
import torch
from torch import Tensor

from modeling.llama import IGNORE_INDEX
from tasks.shards import MANIFEST, SUCCESS
from tasks.storage import resolve
from tasks.token_reader import PackedRow, ReaderPosition, TokenReader, document_ids

if TYPE_CHECKING:
    from modeling.run_config import RunConfig


@dataclass
class Batch:
    """One micro batch, on the training device."""

    inputs: Tensor  # (B, T) token ids
    targets: Tensor  # (B, T) next-token ids, IGNORE_INDEX where there is no loss
    doc_ids: Tensor | None = None  # (B, T) packed-document index per token
    positions: Tensor | None = None  # (B, T) rotary positions; None: 0..T-1

    @property
    def loss_tokens(self) -> int:
        return int((self.targets != IGNORE_INDEX).sum())


class LossWithCounts(NamedTuple):
    """A micro batch's loss and counts over its loss units (e.g. pairs ranked right), which the core
    sums over the step's micro batches and ranks and reports as shares of the step's loss units."""

    loss: Tensor
    counts: dict[str, Tensor]


class BatchSource(Protocol):
    def next_batch(self, rows: int) -> Batch: ...

    def state(self) -> dict[str, Any]: ...


class Objective(Protocol):
    """Batches and loss of one kind of training."""

    def check_data(self) -> dict[str, Any]: ...

    def open(self, rank: int, world_size: int, device: torch.device, position: dict[str, Any] | None = None,
             validation: bool = False) -> BatchSource: ...

    def loss(self, model: torch.nn.Module, batch: Batch) -> Tensor | LossWithCounts: ...


def next_token_loss(model: torch.nn.Module, batch: Batch) -> Tensor:
    return model(batch.inputs, batch.targets, doc_ids=batch.doc_ids, positions=batch.positions).loss


# ---------------------------------------------------------------------------------- packed token rows


def read_token_manifest(stage_dir: str) -> dict[str, Any]:
    """The manifest of a finished token stage, or a clear error saying what is missing."""
    stage = resolve(stage_dir)
    if not stage.join(SUCCESS).exists():
        raise FileNotFoundError(f"{stage_dir}: not a finished token stage (no {SUCCESS}); run the stage that "
                                f"packs it first (`llamaline tokenize`, or `llamaline sft` packs dialogues)")
    manifest = stage.join(MANIFEST).read_json()
    missing = [shard["path"] for shard in manifest["shards"] if not resolve(shard["path"]).exists()]
    if missing:
        raise FileNotFoundError(f"{stage_dir}: {len(missing)} of its {len(manifest['shards'])} shards are missing, "
                                f"e.g. {missing[0]}; re-run the stage that packed it")
    return manifest


def example_positions(doc_ids: np.ndarray) -> np.ndarray:
    """Per token, its offset from the start of its packed example (doc_ids ascending along a row)."""
    index = np.arange(doc_ids.shape[-1])
    starts = np.zeros_like(doc_ids)
    changes = np.concatenate([np.ones(doc_ids.shape[:-1] + (1,), bool), doc_ids[..., 1:] != doc_ids[..., :-1]], -1)
    starts[changes] = np.broadcast_to(index, doc_ids.shape)[changes]
    return index - np.maximum.accumulate(starts, axis=-1)


class PackedRows:
    """Next-token prediction over the rows of a packed token stage."""

    def __init__(self, config: RunConfig, *, answers_only: bool) -> None:
        self.config = config
        self.answers_only = answers_only

    def check_data(self) -> dict[str, Any]:
        """The stage exists, is complete and fits the run (rows of seq_len + 1, the vocabulary, the
        loss masks fine-tuning needs, a shard left to train on); returns its manifest."""
        config, validation = self.config, self.config.validation
        manifest = read_token_manifest(config.data)
        row_tokens = manifest["row_tokens"]
        if row_tokens != config.seq_len + 1:
            raise ValueError(f"{config.data}: rows hold {row_tokens} tokens, so seq_len must be {row_tokens - 1}, "
                             f"not {config.seq_len} (or pack the stage again with seq_len {config.seq_len})")
        vocab = config.model_shape.vocab_size
        if manifest.get("vocab_size", 0) > vocab:
            raise ValueError(f"{config.data}: a vocabulary of {manifest['vocab_size']} tokens does not fit the "
                             f"model's {vocab}")
        if self.answers_only and not manifest.get("loss_mask"):
            raise ValueError(f"{config.data}: a token stage without loss masks (pretraining rows?); fine-tuning "
                             f"trains on packed dialogues (tasks.sft_tokens)")
        workers = config.scaling.num_workers
        if manifest["rows"] < workers:
            raise ValueError(f"{config.data}: {manifest['rows']} rows cannot feed the run's {workers} workers; "
                             f"give it more data or fewer workers")
        shards = len(manifest["shards"])
        if validation.holdout_shards >= shards:
            raise ValueError(f"{config.data}: validation.holdout_shards ({validation.holdout_shards}) leaves none of "
                             f"its {shards} shards to train on")
        if validation.data is not None:
            held_out = read_token_manifest(validation.data)
            if held_out["row_tokens"] != row_tokens:
                raise ValueError(f"{validation.data}: rows of {held_out['row_tokens']} tokens, but the training "
                                 f"rows have {row_tokens}")
        return manifest

    def open(self, rank: int, world_size: int, device: torch.device, position: dict[str, Any] | None = None,
             validation: bool = False) -> RowSource:
        reader = self.reader(rank, world_size, position, validation)
        return RowSource(reader, device, self.config.parallelism.document_masking, self.answers_only)

    def reader(self, rank: int, world_size: int, position: dict[str, Any] | None, validation: bool) -> TokenReader:
        """A rank's rows: the training shards, or the validation ones (held-out shards or a stage)."""
        config = self.config
        held_out = config.validation.holdout_shards
        shards = None
        if held_out:
            total = len(read_token_manifest(config.data)["shards"])
            shards = list(range(total - held_out, total)) if validation else list(range(total - held_out))
        stage = config.validation.data if validation and config.validation.data else config.data
        start = ReaderPosition.from_dict(position) if position is not None else None
        return TokenReader(stage, rank, world_size, config.seed, start=start, shards=shards)

    def loss(self, model: torch.nn.Module, batch: Batch) -> Tensor:
        return next_token_loss(model, batch)


class RowSource:
    """Micro batches of a rank's rows; its state is the reader's position."""

    def __init__(self, reader: TokenReader, device: torch.device, document_masking: bool, answers_only: bool):
        self.reader, self.device = reader, device
        self.document_masking, self.answers_only = document_masking, answers_only
        self._rows = iter(reader)

    def state(self) -> dict[str, Any]:
        return self.reader.state().as_dict()

    def next_batch(self, rows: int) -> Batch:
        taken = [next(self._rows) for _ in range(rows)]
        return batch_of_rows(taken, self.device, self.document_masking, self.answers_only)


def batch_of_rows(rows: Sequence[PackedRow], device: torch.device, document_masking: bool,
                  answers_only: bool) -> Batch:
    """A micro batch of packed rows: inputs and targets shifted by one; with `answers_only`, targets
    outside the loss mask ignored, the document mask always on and positions restarting per example."""
    row_tokens = len(rows[0].tokens)
    tokens = torch.from_numpy(np.stack([r.tokens for r in rows]).astype(np.int64)).to(device)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    doc_ids = positions = None
    if document_masking or answers_only:
        ids = np.stack([document_ids(r.doc_starts, row_tokens)[:-1] for r in rows])
        doc_ids = torch.from_numpy(ids).to(device)
        if answers_only:
            positions = torch.from_numpy(example_positions(ids)).to(device)
    if answers_only:
        trained = torch.from_numpy(np.stack([r.loss_mask[1:] for r in rows])).to(device)
        targets = targets.masked_fill(~trained, IGNORE_INDEX)
    return Batch(inputs, targets, doc_ids, positions)
