"""Where a dedup run keeps its files, and positions: (source, part, row) packed into one int64."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.shards import part_name
from tasks.storage import Location, atomic_output, resolve


PART_BITS = 17  # part indices 0..99999
ROW_BITS = 32
SOURCE_BITS = 63 - PART_BITS - ROW_BITS
ROW_MASK = (1 << ROW_BITS) - 1
PART_MASK = (1 << PART_BITS) - 1


def pack(source_index: int, part: int, rows: np.ndarray) -> np.ndarray:
    if not 0 <= source_index < (1 << SOURCE_BITS):
        raise ValueError(f"too many sources for a position: index {source_index}")
    return (np.int64(source_index) << (PART_BITS + ROW_BITS)) | (np.int64(part) << ROW_BITS) | rows.astype(np.int64)


def unpack(position: int) -> tuple[int, int, int]:
    return position >> (PART_BITS + ROW_BITS), (position >> ROW_BITS) & PART_MASK, position & ROW_MASK


def write_table(target: Location, table: pa.Table, row_group_size: int | None = None) -> None:
    with atomic_output(target) as stream:
        pq.write_table(table, stream, compression="zstd", row_group_size=row_group_size)


@dataclass(frozen=True)
class Layout:
    """Where each stage of one dedup run writes, and how positions map back to parts."""

    root: str
    name: str
    sources: tuple[str, ...]
    num_perm: int

    def folder(self, stage: str) -> Location:
        return resolve(self.root).join(f"{self.name}-{stage}")

    def part_file(self, stage: str, kind: str | None, source: str, part: int) -> Location:
        base = self.folder(stage) if kind is None else self.folder(stage).join(kind)
        return base.join(source, part_name(part) + ".parquet")

    def signatures_of(self, part_key: int) -> Location:
        """The signature file of the part a position's high bits (position >> 32) name."""
        source, part = part_key >> PART_BITS, part_key & PART_MASK
        return self.part_file("signatures", "signatures", self.sources[source], part)

    def read_signatures(self, part_key: int, columns: list[str]) -> pa.Table:
        return pq.read_table(self.signatures_of(part_key).path, columns=columns, filesystem=resolve(self.root).fs)

    def signature_matrix(self, part_key: int) -> np.ndarray:
        column = self.read_signatures(part_key, ["signature"]).column("signature").combine_chunks()
        return column.flatten().to_numpy().reshape(-1, self.num_perm)


