"""Read a token stage (`tasks.tokens`) for training: one data-parallel rank's rows, resumable exactly.

`TokenReader` streams a rank's rows epoch after epoch in a seeded order (row groups permuted,
then rows within each group), ranks disjoint and equal in number; its `state()` is a
`ReaderPosition` a new reader continues from, row for row. `document_ids` turns a row's
`doc_starts` into the per-token document index the model's document mask takes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.shards import MANIFEST, SUCCESS
from tasks.storage import Location, resolve


def document_ids(doc_starts: np.ndarray, row_tokens: int) -> np.ndarray:
    """Per token of a row, the index of its document in the row (0 for a document continued from
    the previous row, or the first one starting at 0), as Llama.forward's `doc_ids` wants."""
    marks = np.zeros(row_tokens, dtype=np.int32)
    marks[doc_starts[doc_starts > 0]] = 1
    return np.cumsum(marks, dtype=np.int32)


@dataclass(frozen=True)
class ReaderPosition:
    """Where a rank's reader is: the next row is number `offset` of `epoch` on this rank."""

    epoch: int
    offset: int
    rank: int
    world_size: int
    seed: int
    fingerprint: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReaderPosition:
        return cls(**data)


class PackedRow(NamedTuple):
    tokens: np.ndarray  # (seq_len + 1,), the stage's token type
    doc_starts: np.ndarray  # in-row offsets where documents start
    loss_mask: np.ndarray | None  # (seq_len + 1,) bools: which tokens are trained on as targets; None: all
    labels: np.ndarray | None = None  # the row's integer labels, for stages that carry them


@dataclass(frozen=True)
class TokenBatch:
    tokens: np.ndarray  # (B, seq_len + 1), the stage's token type
    doc_starts: list[np.ndarray]  # per row, in-row offsets where documents start
    loss_mask: np.ndarray | None  # (B, seq_len + 1) bools, for stages that carry one
    labels: list[np.ndarray] | None = None  # per row, its integer labels, for stages that carry them


class TokenReader:
    """Rows of a token stage for one data-parallel rank, epoch after epoch, resumable exactly.

    Each epoch orders the shards' row groups by a permutation drawn from (seed, epoch) and the rows
    inside each group by one drawn from (seed, epoch, group); that sequence, cut to a multiple of
    world_size, is split into world_size contiguous equal spans, one per rank: ranks get disjoint
    rows and the same number of steps. Under world_size rows a epoch are left out (different ones
    each epoch). Only the manifest and one row group at a time are held.
    """

    def __init__(self, stage_dir: str | Location, rank: int, world_size: int, seed: int,
                 start: ReaderPosition | None = None, shards: Sequence[int] | None = None) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.stage_dir = stage_dir if isinstance(stage_dir, Location) else resolve(stage_dir)
        if not self.stage_dir.join(SUCCESS).exists():
            raise FileNotFoundError(f"{self.stage_dir.uri}: no {SUCCESS}: not a finished token stage")
        manifest = self.stage_dir.join(MANIFEST).read_json()
        self.rank, self.world_size, self.seed = rank, world_size, seed
        all_shards = manifest["shards"]
        chosen = range(len(all_shards)) if shards is None else sorted(set(shards))
        if not chosen or any(not 0 <= s < len(all_shards) for s in chosen):
            raise ValueError(f"{self.stage_dir.uri}: shards {list(shards or [])} not all in 0..{len(all_shards) - 1}")
        # A position is only valid for the same selection of shards.
        self.fingerprint = manifest["fingerprint"] if shards is None else \
            f"{manifest['fingerprint']}:shards={','.join(map(str, chosen))}"
        self.row_tokens = manifest["row_tokens"]
        self.has_loss_mask = bool(manifest.get("loss_mask", False))
        self.has_labels = bool(manifest.get("labels", False))
        self._groups = [(all_shards[s]["path"], group, rows)
                        for s in chosen for group, rows in enumerate(all_shards[s]["row_groups"])]
        total_rows = sum(rows for _, _, rows in self._groups)
        self.rows_per_epoch = total_rows // world_size
        if self.rows_per_epoch == 0:
            raise ValueError(f"{self.stage_dir.uri}: {total_rows} rows cannot feed {world_size} ranks")
        start = start or ReaderPosition(0, 0, rank, world_size, seed, self.fingerprint)
        expected = (rank, world_size, seed, self.fingerprint)
        if (start.rank, start.world_size, start.seed, start.fingerprint) != expected:
            raise ValueError(f"position {start} was saved for another rank, world size, seed or stage than "
                             f"rank={rank} world_size={world_size} seed={seed} stage {self.fingerprint[:12]}")
        if not 0 <= start.offset < self.rows_per_epoch:
            raise ValueError(f"position offset {start.offset} is outside the epoch's {self.rows_per_epoch} rows")
        self._epoch, self._offset = start.epoch, start.offset

    def state(self) -> ReaderPosition:
        """The position of the next row: a reader started there yields exactly what this one would."""
        epoch, offset = self._epoch, self._offset
        if offset == self.rows_per_epoch:  # the epoch's last row was yielded: the next is the next epoch's
            epoch, offset = epoch + 1, 0
        return ReaderPosition(epoch, offset, self.rank, self.world_size, self.seed, self.fingerprint)

    def __iter__(self) -> Iterator[PackedRow]:
        """Row after row, forever; the position advances as each row is yielded."""
        while True:
            yield from self._epoch_rows()
            self._epoch, self._offset = self._epoch + 1, 0

    def batches(self, batch_size: int) -> Iterator[TokenBatch]:
        rows = iter(self)
        while True:
            taken = [next(rows) for _ in range(batch_size)]
            masks = np.stack([row.loss_mask for row in taken]) if self.has_loss_mask else None
            labels = [row.labels for row in taken] if self.has_labels else None
            yield TokenBatch(np.stack([row.tokens for row in taken]), [row.doc_starts for row in taken], masks, labels)

    def _epoch_rows(self) -> Iterator[PackedRow]:
        epoch = self._epoch
        group_order = np.random.default_rng([self.seed, epoch]).permutation(len(self._groups))
        sizes = np.array([self._groups[g][2] for g in group_order], dtype=np.int64)
        group_starts = np.concatenate([[0], np.cumsum(sizes)])
        span_start = self.rank * self.rows_per_epoch
        position = span_start + self._offset
        span_end = span_start + self.rows_per_epoch
        k = int(np.searchsorted(group_starts, position, side="right")) - 1
        while position < span_end:
            group = int(group_order[k])
            tokens, starts, masks, labels = self._read_group(group)
            row_order = np.random.default_rng([self.seed, epoch, group]).permutation(len(tokens))
            first, last = position - group_starts[k], min(span_end, group_starts[k + 1]) - group_starts[k]
            for row in row_order[first:last]:
                self._offset += 1
                yield PackedRow(tokens[row], starts[row], masks[row] if masks is not None else None,
                                labels[row] if labels is not None else None)
            position = group_starts[k + 1]
            k += 1

    def _read_group(self, group: int) -> tuple[np.ndarray, list[np.ndarray], np.ndarray | None,
                                               list[np.ndarray] | None]:
        path, row_group, _ = self._groups[group]
        columns = ["tokens", "doc_starts"] + (["loss_mask"] if self.has_loss_mask else []) \
            + (["labels"] if self.has_labels else [])
        with resolve(path).open_random_access() as f:
            table = pq.ParquetFile(f).read_row_group(row_group, columns=columns)
        tokens = table.column("tokens").combine_chunks()
        flat = tokens.flatten().to_numpy().reshape(-1, self.row_tokens)
        masks = None
        if self.has_loss_mask:
            bits = table.column("loss_mask").combine_chunks().flatten()
            masks = bits.to_numpy(zero_copy_only=False).reshape(-1, self.row_tokens)
        labels = _row_lists(table.column("labels")) if self.has_labels else None
        return flat, _row_lists(table.column("doc_starts")), masks, labels


def _row_lists(column: pa.ChunkedArray) -> list[np.ndarray]:
    """A list column's values per row, as numpy views."""
    lists = column.combine_chunks()
    offsets, values = lists.offsets.to_numpy(), lists.flatten().to_numpy()
    return [values[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
