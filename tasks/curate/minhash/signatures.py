"""Shingles, signatures and band buckets: (a) and (b), one task per input part."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasketch import MinHash

from tasks.curate.minhash.config import MinHashConfig, SCHEME
from tasks.curate.minhash.layout import Layout, pack, write_table
from tasks.shards import read_part
from tasks.stage import ShardUnit
from tasks.steps import batched
from tasks.storage import atomic_output, resolve


SHINGLE_BATCH = 8192  # shingles hashed at once: bounds memory on whole books (batch x num_perm)

_COMBINING = re.compile("[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]")
_PUNCTUATION = re.compile(r"[^\w\s]|_")
_DIGIT = re.compile(r"\d")


# Shingles and signatures ----------------------------------------------------------------------


def normalise(text: str) -> list[str]:
    """Words after datatrove-style simplification: lowercase, no accents, digits -> 0, no punctuation."""
    text = _COMBINING.sub("", unicodedata.normalize("NFD", text.lower()))
    text = _PUNCTUATION.sub(" ", _DIGIT.sub("0", text))
    return text.split()


def shingles(text: str, ngram: int, unit: str = "words") -> Iterator[bytes]:
    """The document's n-grams; a text shorter than one n-gram is one shingle, an empty one none."""
    words = normalise(text)
    if not words:
        return
    if unit == "chars":
        joined = " ".join(words)
        for start in range(max(1, len(joined) - ngram + 1)):
            yield joined[start : start + ngram].encode()
        return
    for start in range(max(1, len(words) - ngram + 1)):
        yield " ".join(words[start : start + ngram]).encode()


def shingle_set(text: str, ngram: int, unit: str = "words") -> set[bytes]:
    return set(shingles(text, ngram, unit))


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


class Signer:
    """Signatures for one configuration; every instance with the same seed draws the same permutations."""

    def __init__(self, config: MinHashConfig) -> None:
        self.config = config
        self._template = MinHash(num_perm=config.num_perm, seed=config.seed, scheme=SCHEME)

    def sign(self, text: str) -> np.ndarray | None:
        """The signature (uint64 x num_perm), or None when the text has no shingle."""
        minhash = self._template.copy()
        seen = False
        for batch in batched(shingles(text, self.config.ngram, self.config.shingle), SHINGLE_BATCH):
            minhash.update_batch(batch)
            seen = True
        return minhash.hashvalues.copy() if seen else None


def band_hashes(signature: np.ndarray, bands: int, rows: int) -> np.ndarray:
    return np.array(
        [
            int.from_bytes(hashlib.blake2b(signature[b * rows : (b + 1) * rows].tobytes(), digest_size=8).digest(), "little")
            for b in range(bands)
        ],
        dtype=np.uint64,
    )


# (a) signatures and (b) band buckets, one task per input part -------------------------------------


def _signature_schema(num_perm: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("position", pa.int64(), nullable=False),
            pa.field("id", pa.string(), nullable=False),
            pa.field("empty", pa.bool_(), nullable=False),
            pa.field("signature", pa.list_(pa.uint64(), num_perm), nullable=False),
        ]
    )


BUCKET_SCHEMA = pa.schema(
    [
        pa.field("band", pa.uint16(), nullable=False),
        pa.field("partition", pa.uint16(), nullable=False),
        pa.field("band_hash", pa.uint64(), nullable=False),
        pa.field("position", pa.int64(), nullable=False),
    ]
)


def sign_part(layout: Layout, config: MinHashConfig, unit: ShardUnit) -> dict[str, int]:
    signer = Signer(config)
    bands, rows = config.bands_rows
    empty_signature = np.full(config.num_perm, np.iinfo(np.uint64).max, dtype=np.uint64)
    ids: list[str] = []
    empty: list[bool] = []
    signatures: list[np.ndarray] = []
    for doc in read_part(resolve(unit.input.uri)):
        signature = signer.sign(doc.text)
        ids.append(doc.id)
        empty.append(signature is None)
        signatures.append(empty_signature if signature is None else signature)
    source_index = layout.sources.index(unit.source)
    positions = pack(source_index, unit.index, np.arange(len(ids)))
    matrix = np.stack(signatures) if signatures else np.empty((0, config.num_perm), dtype=np.uint64)
    table = pa.table(
        {
            "position": positions,
            "id": ids,
            "empty": empty,
            "signature": pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel(), pa.uint64()), config.num_perm),
        },
        schema=_signature_schema(config.num_perm),
    )
    write_table(layout.part_file("signatures", "signatures", unit.source, unit.index), table)
    _write_buckets(layout, config, unit, positions, matrix, np.array(empty, dtype=bool), bands, rows)
    return {"docs": len(ids), "empty": int(sum(empty))}


def _write_buckets(layout, config, unit, positions, matrix, empty, bands, rows) -> None:
    """One row group per (band, partition), sorted by hash: a pairs task reads only its own."""
    signed = ~empty
    hashes = np.array([band_hashes(s, bands, rows) for s in matrix[signed]], dtype=np.uint64).reshape(-1, bands)
    band = np.repeat(np.arange(bands, dtype=np.uint16), hashes.shape[0])
    band_hash = hashes.T.ravel()
    position = np.tile(positions[signed], bands)
    partition = (band_hash % np.uint64(config.hash_partitions)).astype(np.uint16)
    order = np.lexsort((position, band_hash, partition, band))
    columns = {"band": band[order], "partition": partition[order], "band_hash": band_hash[order], "position": position[order]}
    target = layout.part_file("signatures", "buckets", unit.source, unit.index)
    with atomic_output(target) as stream, pq.ParquetWriter(stream, BUCKET_SCHEMA, compression="zstd") as writer:
        keys = columns["band"].astype(np.int64) * config.hash_partitions + columns["partition"]
        bounds = np.flatnonzero(np.diff(keys)) + 1
        for chunk in np.split(np.arange(len(keys)), bounds) if len(keys) else []:
            writer.write_table(pa.table({k: v[chunk] for k, v in columns.items()}, schema=BUCKET_SCHEMA))
        if not len(keys):
            writer.write_table(BUCKET_SCHEMA.empty_table())


