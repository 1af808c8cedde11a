"""(c) Candidate pairs per band partition and their verification."""

from __future__ import annotations


import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.curate.minhash.config import MinHashConfig
from tasks.curate.minhash.layout import Layout, ROW_BITS, ROW_MASK, pack, write_table
from tasks.storage import resolve


PAIRS_ROW_GROUP = 1 << 16


# (c) candidate pairs per band partition and their verification -----------------------------------

PAIR_SCHEMA = pa.schema([pa.field("a", pa.int64(), nullable=False), pa.field("b", pa.int64(), nullable=False)])


def band_pairs(layout: Layout, band: int, partition: int, bucket_files: list[str]) -> dict[str, int]:
    """Documents with the same band hash: each is paired with the smallest position of its bucket
    and with the one before it in position order (so a member that fails verification against the
    smallest can still join through its neighbour, as an unverified chain would link it)."""
    fs = resolve(layout.root).fs
    filters = [("band", "=", band), ("partition", "=", partition)]
    tables = [pq.read_table(path, columns=["band_hash", "position"], filters=filters, filesystem=fs) for path in bucket_files]
    table = pa.concat_tables(tables) if tables else pa.table({"band_hash": pa.array([], pa.uint64()), "position": pa.array([], pa.int64())})
    hashes = table.column("band_hash").to_numpy()
    positions = table.column("position").to_numpy()
    order = np.lexsort((positions, hashes))
    hashes, positions = hashes[order], positions[order]
    starts = np.ones(len(hashes), dtype=bool)
    starts[1:] = hashes[1:] != hashes[:-1]
    first = positions[starts][np.cumsum(starts) - 1]
    follows = ~starts
    previous = np.roll(positions, 1)
    chained = follows & (previous != first)
    a = np.concatenate([first[follows], previous[chained]])
    b = np.concatenate([positions[follows], positions[chained]])
    pairs = np.unique(np.stack([a, b], axis=1), axis=0) if len(a) else np.empty((0, 2), dtype=np.int64)
    target = layout.folder("pairs").join(f"b{band:03d}-p{partition:03d}.parquet")
    write_table(target, pa.table({"a": pairs[:, 0], "b": pairs[:, 1]}, schema=PAIR_SCHEMA), PAIRS_ROW_GROUP)
    return {"entries": len(hashes), "pairs": len(pairs)}


def estimate_similarity(layout: Layout, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard of each (a, b) from signatures; every a lies in one part, b anywhere."""
    if not len(a):
        return np.empty(0, dtype=np.float32)
    left = layout.signature_matrix(int(a[0]) >> ROW_BITS)[a & ROW_MASK]
    similarity = np.empty(len(a), dtype=np.float32)
    b_parts = b >> ROW_BITS
    for part_key in np.unique(b_parts):
        chosen = b_parts == part_key
        right = layout.signature_matrix(int(part_key))[b[chosen] & ROW_MASK]
        similarity[chosen] = (left[chosen] == right).mean(axis=1)
    return similarity


VERIFIED_SCHEMA = pa.schema(list(PAIR_SCHEMA) + [pa.field("similarity", pa.float32(), nullable=False)])


def verify_part(layout: Layout, config: MinHashConfig, source: str, part: int, pair_files: list[str]) -> dict[str, int]:
    """The candidate pairs whose smaller position lies in this part, deduplicated over bands, scored."""
    low = int(pack(layout.sources.index(source), part, np.zeros(1))[0])
    high = low + (1 << ROW_BITS)
    fs = resolve(layout.root).fs
    filters = [("a", ">=", low), ("a", "<", high)]
    tables = [pq.read_table(path, filters=filters, filesystem=fs) for path in pair_files]
    table = pa.concat_tables(tables) if tables else PAIR_SCHEMA.empty_table()
    if not table.num_rows:
        return {"candidates": 0, "verified": 0}
    pairs = np.unique(np.stack([table.column("a").to_numpy(), table.column("b").to_numpy()], axis=1), axis=0)
    similarity = estimate_similarity(layout, pairs[:, 0], pairs[:, 1])
    agreeing = np.rint(similarity.astype(np.float64) * config.num_perm)
    keep = agreeing >= config.min_agreeing if config.verify else np.ones(len(pairs), dtype=bool)
    if keep.any():
        kept = {"a": pairs[keep, 0], "b": pairs[keep, 1], "similarity": similarity[keep]}
        write_table(layout.part_file("verified", None, source, part), pa.table(kept, schema=VERIFIED_SCHEMA))
    return {"candidates": len(pairs), "verified": int(keep.sum())}


