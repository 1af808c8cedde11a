"""MinHash near-duplicate removal across documents and sources, as separate rerunnable stages.

The algorithm is datatrove's and RedPajama's: shingle each document (word n-grams after
normalisation, or character n-grams), compute a MinHash signature, cut it into ``bands`` bands
of ``rows`` values, treat two documents as candidates when any band is equal, link candidates
into clusters with connected components, and keep one document per cluster.

Signatures are :class:`datasketch.MinHash` with the ``affine64`` scheme (64-bit hash values,
like datatrove) built from one seed, so every worker draws the same permutations. Bands x rows
come from datasketch's own optimal-parameter search (``datasketch.lsh._optimal_param``, by
default equal weights on false positives and false negatives), which gives RedPajama's table: 128 permutations
at threshold 0.7 -> 14 x 9, 0.8 -> 9 x 13, 0.9 -> 5 x 25.

Stages, each a folder beside the final one and each skipped when its ``_SUCCESS`` marker holds
the same fingerprint (parameters plus the digest of the stage before it)::

    <root>/<name>-signatures/signatures/<source>/part-NNNNN.parquet  position, id, empty, signature
    <root>/<name>-signatures/buckets/<source>/part-NNNNN.parquet     band, partition, band_hash, position
    <root>/<name>-pairs/b<band>-p<partition>.parquet                 candidate pairs a < b of one band
    <root>/<name>-verified/<source>/part-NNNNN.parquet               pairs (a in that part) that pass
                                                                     verification, estimated Jaccard
    <root>/<name>-clusters/_components/round-RRR/<operation>/tNNNNN.parquet
                                                                     edges of the connected-components
                                                                     rounds, by destination partition
                                                                     (removed once the stage is done)
    <root>/<name>-clusters/<source>/part-NNNNN.parquet               dropped position -> representative
    <root>/<name>-audit/audit.parquet                                dropped id -> kept id, similarity
    <root>/<name>/...                                                the filtered documents (run_stage)

A *position* packs (source index, part, row) into one int64 whose order is that of the tuple, and
the source index follows the sorted source names: the smallest position of a cluster is the
smallest (source, part, row), the deterministic representative. A stage whose marker is missing
or stale is wiped and redone whole: no half-written intermediate file of an earlier run survives.

Clustering is distributed connected components (alternating large-star / small-star, see
:func:`cluster`): no process holds all verified pairs. Its result does not depend on the
partition count: the same input gives byte-identical cluster files for any ``cluster_partitions``.

Memory: a signature task holds one part's signatures; a pairs task one band partition's hashes
(raise ``hash_partitions`` to shrink it); a verify or audit task one part's signatures plus one
other part's at a time; a clustering task one of ``cluster_partitions`` hash partitions of the
edges (about 2 x pairs / partitions edges), except that all edges of one node meet in one task:
in the last rounds a cluster's edges gather at its representative, so the largest cluster's size
is a floor no partition count lowers.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from datasketch import MinHash
from datasketch.lsh import _optimal_param

from tasks.documents import BadRecord, Document
from tasks.shards import SUCCESS, part_name, read_part
from tasks.stage import PartReader, ShardUnit, StageSpec, run_stage, units_from_stage
from tasks.steps import Drop, batched
from tasks.storage import Location, atomic_output, resolve, sha256_of, write_json_atomic

SCHEME = "affine64"
SHINGLE_BATCH = 8192  # shingles hashed at once: bounds memory on whole books (batch x num_perm)
PART_BITS = 17  # part indices 0..99999
ROW_BITS = 32
SOURCE_BITS = 63 - PART_BITS - ROW_BITS
ROW_MASK = (1 << ROW_BITS) - 1
PART_MASK = (1 << PART_BITS) - 1
PAIRS_ROW_GROUP = 1 << 16

_COMBINING = re.compile("[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]")
_PUNCTUATION = re.compile(r"[^\w\s]|_")
_DIGIT = re.compile(r"\d")


@dataclass(frozen=True)
class MinHashConfig:
    threshold: float = 0.8
    num_perm: int = 128
    ngram: int = 5
    shingle: str = "words"  # "words": word n-grams; "chars": character n-grams
    seed: int = 1
    hash_partitions: int = 1  # per band: more partitions, less memory per pairs task
    # Partitions of the clustering's edge files: a clustering task holds about 1/this of the
    # verified pairs (see the module docstring). How the work is split, not what it computes.
    cluster_partitions: int = 4
    verify: bool = True  # drop candidate pairs whose estimated Jaccard is clearly under the threshold
    # Verification is a one-sided binomial test on a candidate pair's equal hash values: it drops
    # the pair when a similarity at the threshold gives so few with at most this probability (see
    # min_agreeing). The estimate's error at 128 permutations is about 0.035: dropping every pair
    # estimated under the threshold (0.5, the rule before) throws away a quarter of the banded
    # pairs at exactly the threshold and one in eight at 0.82; 0.01 drops almost no pair at or
    # above it and still 95% of the bands' chance collisions at 0.6 (threshold 0.8, 128 permutations).
    verify_false_rejection: float = 0.01
    # Weight of missed pairs in the band search (false positives weigh 1 - this). 0.5 gives the
    # RedPajama table, whose LSH finds a pair at exactly the threshold only ~40% of the time;
    # with verification on, a higher weight buys recall near the threshold at no precision cost.
    false_negative_weight: float = 0.5
    drop_reason: str = "minhash:duplicate"

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if self.shingle not in ("words", "chars"):
            raise ValueError(f"shingle must be 'words' or 'chars', got {self.shingle!r}")
        if not 0.0 < self.false_negative_weight < 1.0:
            raise ValueError(f"false_negative_weight must be in (0, 1), got {self.false_negative_weight}")
        if not 0.0 < self.verify_false_rejection < 1.0:
            raise ValueError(f"verify_false_rejection must be in (0, 1), got {self.verify_false_rejection}")
        if self.ngram < 1 or self.num_perm < 2 or self.hash_partitions < 1 or self.cluster_partitions < 1:
            raise ValueError(f"ngram >= 1, num_perm >= 2, hash_partitions >= 1, cluster_partitions >= 1 needed: {self}")

    @property
    def bands_rows(self) -> tuple[int, int]:
        return _optimal_param(self.threshold, self.num_perm, 1.0 - self.false_negative_weight, self.false_negative_weight)

    @property
    def min_agreeing(self) -> int:
        """The fewest equal hash values (of ``num_perm``) a verified pair has: the largest k with
        P(Binomial(num_perm, threshold) < k) <= ``verify_false_rejection``."""
        n, p = self.num_perm, self.threshold
        below = 0.0
        for k in range(n + 1):
            log_mass = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * math.log(p) + (n - k) * math.log1p(-p)
            below += math.exp(log_mass)
            if below > self.verify_false_rejection:
                return k
        return n

    def describe(self) -> dict[str, Any]:
        """The parameters the results depend on (the clustering's partition count is not one)."""
        bands, rows = self.bands_rows
        parameters = {k: v for k, v in asdict(self).items() if k != "cluster_partitions"}
        return {**parameters, "bands": bands, "rows": rows, "scheme": SCHEME}


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


def pack(source_index: int, part: int, rows: np.ndarray) -> np.ndarray:
    if not 0 <= source_index < (1 << SOURCE_BITS):
        raise ValueError(f"too many sources for a position: index {source_index}")
    return (np.int64(source_index) << (PART_BITS + ROW_BITS)) | (np.int64(part) << ROW_BITS) | rows.astype(np.int64)


def unpack(position: int) -> tuple[int, int, int]:
    return position >> (PART_BITS + ROW_BITS), (position >> ROW_BITS) & PART_MASK, position & ROW_MASK


# Stage bookkeeping ------------------------------------------------------------------------------


def _fingerprint(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _files_under(folder: Location) -> list[Location]:
    if not folder.exists():
        return []
    infos = folder.fs.get_file_info(pafs.FileSelector(folder.path, recursive=True))
    prefix = folder.path.rstrip("/") + "/"
    relative = sorted(i.path.removeprefix(prefix) for i in infos if i.type == pafs.FileType.File)
    return [folder.join(*r.split("/")) for r in relative if not any(p.startswith("_") for p in r.split("/"))]


def _digest(folder: Location) -> str:
    """Of every output file under the folder: equal when a redone stage wrote the same bytes."""
    prefix = folder.path.rstrip("/") + "/"
    lines = [f"{f.path.removeprefix(prefix)} {sha256_of(f)}" for f in _files_under(folder)]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _run_once(folder: Location, fingerprint: str, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run a stage unless its marker holds this fingerprint; a stale or partial stage is wiped first."""
    marker = folder.join(SUCCESS)
    if marker.exists():
        done = marker.read_json()
        if done.get("fingerprint") == fingerprint:
            return done
    folder.delete()
    stats = work()
    record = {"fingerprint": fingerprint, "digest": _digest(folder), "stats": stats}
    write_json_atomic(marker, record)
    return record


def _map(function: Callable, calls: Sequence[tuple]) -> list:
    """Run ``function(*call)`` for every call as Ray tasks; results in call order."""
    import ray

    remote = ray.remote(function).options(max_retries=2, retry_exceptions=[OSError])
    return ray.get([remote.remote(*call) for call in calls])


def _write_table(target: Location, table: pa.Table, row_group_size: int | None = None) -> None:
    with atomic_output(target) as stream:
        pq.write_table(table, stream, compression="zstd", row_group_size=row_group_size)


@dataclass(frozen=True)
class _Layout:
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


def sign_part(layout: _Layout, config: MinHashConfig, unit: ShardUnit) -> dict[str, int]:
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
    _write_table(layout.part_file("signatures", "signatures", unit.source, unit.index), table)
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


# (c) candidate pairs per band partition and their verification -----------------------------------

PAIR_SCHEMA = pa.schema([pa.field("a", pa.int64(), nullable=False), pa.field("b", pa.int64(), nullable=False)])


def band_pairs(layout: _Layout, band: int, partition: int, bucket_files: list[str]) -> dict[str, int]:
    """Documents with the same band hash: each is paired with the smallest position of its bucket."""
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
    a, b = first[~starts], positions[~starts]
    pairs = np.unique(np.stack([a, b], axis=1), axis=0) if len(a) else np.empty((0, 2), dtype=np.int64)
    target = layout.folder("pairs").join(f"b{band:03d}-p{partition:03d}.parquet")
    _write_table(target, pa.table({"a": pairs[:, 0], "b": pairs[:, 1]}, schema=PAIR_SCHEMA), PAIRS_ROW_GROUP)
    return {"entries": len(hashes), "pairs": len(pairs)}


def estimate_similarity(layout: _Layout, a: np.ndarray, b: np.ndarray) -> np.ndarray:
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


def verify_part(layout: _Layout, config: MinHashConfig, source: str, part: int, pair_files: list[str]) -> dict[str, int]:
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
        _write_table(layout.part_file("verified", None, source, part), pa.table(kept, schema=VERIFIED_SCHEMA))
    return {"candidates": len(pairs), "verified": int(keep.sum())}


# (d) connected components: alternating large-star / small-star over hash-partitioned edge files --
#
# Kiveris et al., "Connected Components in MapReduce and Beyond" (SoCC 2014). Edges live in files
# partitioned by a hash of the node that owns them; a task reads one partition's edges from every
# file of the phase before, applies one operation node by node, and writes one file whose row
# groups are its output per destination partition. Large-star links every larger neighbour of a
# node to the smallest node of its neighbourhood; small-star links a node and its smaller
# neighbours to the smallest of them. Alternated, they turn every component into a star around its
# smallest node, in O(log n) rounds in practice (O(log^2 n) proven), a long chain included; the
# loop stops at the first round whose large-star input is already such a star forest (an operation
# would then change nothing). Every operation is per node and every node's edges meet in one
# partition, so the edge sets, round count and results do not depend on the partition count.

CLUSTER_SCHEMA = pa.schema(
    [pa.field("position", pa.int64(), nullable=False), pa.field("representative", pa.int64(), nullable=False)]
)
EDGE_SCHEMA = pa.schema(
    [
        pa.field("destination", pa.int64(), nullable=False),
        pa.field("node", pa.int64(), nullable=False),
        pa.field("neighbour", pa.int64(), nullable=False),
    ]
)


def hash_partition(nodes: np.ndarray, partitions: int) -> np.ndarray:
    """The partition of each node: splitmix64's finaliser, so positions of one part spread evenly."""
    mixed = nodes.astype(np.uint64)
    mixed ^= mixed >> np.uint64(30)
    mixed *= np.uint64(0xBF58476D1CE4E5B9)
    mixed ^= mixed >> np.uint64(27)
    mixed *= np.uint64(0x94D049BB133111EB)
    mixed ^= mixed >> np.uint64(31)
    return (mixed % np.uint64(partitions)).astype(np.int64)


def _unique_edges(node: np.ndarray, neighbour: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (node, neighbour) without self-loops, sorted by node then neighbour."""
    order = np.lexsort((neighbour, node))
    node, neighbour = node[order], neighbour[order]
    keep = node != neighbour
    keep[1:] &= (node[1:] != node[:-1]) | (neighbour[1:] != neighbour[:-1])
    return node[keep], neighbour[keep]


@dataclass(frozen=True)
class _Neighbourhoods:
    """Sorted distinct edges grouped by node: each node's smallest and largest neighbour."""

    node: np.ndarray  # per edge
    neighbour: np.ndarray  # per edge
    group: np.ndarray  # per edge: index of its node in ``nodes``
    nodes: np.ndarray
    smallest: np.ndarray
    largest: np.ndarray

    @classmethod
    def of(cls, node: np.ndarray, neighbour: np.ndarray) -> _Neighbourhoods:
        node, neighbour = _unique_edges(node, neighbour)
        starts = np.ones(len(node), dtype=bool)
        starts[1:] = node[1:] != node[:-1]
        first = np.flatnonzero(starts)
        last = np.empty_like(first)
        last[:-1], last[-1:] = first[1:] - 1, len(node) - 1
        return cls(node, neighbour, np.cumsum(starts) - 1, node[first], neighbour[first], neighbour[last])

    def star_forest(self) -> bool:
        """Whether every node is a centre (all neighbours larger) or a leaf (one, smaller neighbour)."""
        centre = self.smallest > self.nodes
        leaf = (self.smallest == self.largest) & (self.smallest < self.nodes)
        return bool(np.all(centre | leaf))

    def large_star(self) -> tuple[np.ndarray, np.ndarray]:
        """Every larger neighbour of a node, linked to the smallest of the node's closed
        neighbourhood. Input: both directions of every edge. Output: (larger, smaller) endpoints."""
        smallest = np.minimum(self.nodes, self.smallest)[self.group]
        larger = self.neighbour > self.node
        return self.neighbour[larger], smallest[larger]

    def small_star(self) -> tuple[np.ndarray, np.ndarray]:
        """A node and its smaller neighbours, each linked to the smallest of them. Input: every
        edge once, as (larger, smaller). Output: (larger, smaller) endpoints."""
        smallest = self.smallest[self.group]
        moved = self.neighbour != smallest
        return np.concatenate([self.neighbour[moved], self.nodes]), np.concatenate([smallest[moved], self.smallest])


def large_star(node: np.ndarray, neighbour: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return _Neighbourhoods.of(node, neighbour).large_star()


def small_star(node: np.ndarray, neighbour: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return _Neighbourhoods.of(node, neighbour).small_star()


def _read_inbox(senders: Sequence[Location], destination: int) -> tuple[np.ndarray, np.ndarray]:
    """The edges every sender of the phase before wrote for this destination."""
    filters = [("destination", "=", destination)]
    tables = [pq.read_table(s.path, columns=["node", "neighbour"], filters=filters, filesystem=s.fs) for s in senders]
    table = pa.concat_tables(tables) if tables else EDGE_SCHEMA.empty_table().select(["node", "neighbour"])
    return table.column("node").to_numpy(), table.column("neighbour").to_numpy()


def _write_edges(target: Location, destination: np.ndarray, node: np.ndarray, neighbour: np.ndarray) -> None:
    """Edges sorted by (node, neighbour), written grouped by destination, one row group (or more)
    per destination: a reader skips the others. Slices of the sorted columns, no further copies."""
    order = np.argsort(destination, kind="stable")
    columns = {"destination": destination[order], "node": node[order], "neighbour": neighbour[order]}
    del order
    bounds = np.flatnonzero(np.diff(columns["destination"])) + 1
    with atomic_output(target) as stream, pq.ParquetWriter(stream, EDGE_SCHEMA, compression="zstd") as writer:
        for start, stop in zip(np.append(0, bounds), np.append(bounds, len(node))) if len(node) else []:
            table = pa.table({k: v[start:stop] for k, v in columns.items()}, schema=EDGE_SCHEMA)
            writer.write_table(table, row_group_size=PAIRS_ROW_GROUP)
        if not len(node):
            writer.write_table(EDGE_SCHEMA.empty_table())


def _write_both_directions(target: Location, larger: np.ndarray, smaller: np.ndarray, partitions: int) -> None:
    node, neighbour = np.concatenate([larger, smaller]), np.concatenate([smaller, larger])
    node, neighbour = _unique_edges(node, neighbour)
    _write_edges(target, hash_partition(node, partitions), node, neighbour)


def scatter_pairs(verified_file: Location, target: Location, partitions: int) -> dict[str, int]:
    """One part's verified pairs, both directions, to the partitions of their nodes."""
    table = pq.read_table(verified_file.path, columns=["a", "b"], filesystem=verified_file.fs)
    _write_both_directions(target, table.column("b").to_numpy(), table.column("a").to_numpy(), partitions)
    return {"pairs": table.num_rows}


def large_star_partition(senders: list[Location], partition: int, target: Location, partitions: int) -> dict[str, int]:
    hoods = _Neighbourhoods.of(*_read_inbox(senders, partition))
    # Small-star needs each edge once, at its larger endpoint.
    larger, smaller = _unique_edges(*hoods.large_star())
    _write_edges(target, hash_partition(larger, partitions), larger, smaller)
    return {"edges": len(hoods.node), "not_star": int(not hoods.star_forest())}


def small_star_partition(senders: list[Location], partition: int, target: Location, partitions: int) -> dict[str, int]:
    larger, smaller = small_star(*_read_inbox(senders, partition))
    _write_both_directions(target, larger, smaller, partitions)
    return {"edges": len(larger)}


def label_partition(senders: list[Location], partition: int, target: Location) -> dict[str, Any]:
    """In a star forest around the smallest nodes: each leaf and its centre, sent to the leaf's part."""
    hoods = _Neighbourhoods.of(*_read_inbox(senders, partition))
    leaf = hoods.smallest < hoods.nodes
    leaves, centres = hoods.nodes[leaf], hoods.smallest[leaf]
    part_keys = leaves >> ROW_BITS
    _write_edges(target, part_keys, leaves, centres)
    return {"duplicates": len(leaves), "clusters": int((~leaf).sum()), "parts": np.unique(part_keys).tolist()}


def write_part_clusters(senders: list[Location], part_key: int, target: Location) -> dict[str, int]:
    positions, representatives = _read_inbox(senders, part_key)
    order = np.argsort(positions)
    rows = {"position": positions[order], "representative": representatives[order]}
    _write_table(target, pa.table(rows, schema=CLUSTER_SCHEMA))
    return {"rows": len(positions)}


def _task_file(folder: Location, task: int) -> Location:
    return folder.join(f"t{task:05d}.parquet")


def _memory_reset() -> int:
    """Reset this process's peak RSS to its current RSS (Linux); return the current RSS in bytes."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        return _proc_status_bytes("VmRSS")
    except OSError:
        return 0


def _proc_status_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {field}")


def _peak_rss() -> int:
    try:
        return _proc_status_bytes("VmHWM")
    except OSError:  # not Linux: the worker process's lifetime peak, an upper bound
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measured(function: Callable, *args: Any) -> tuple[Any, dict[str, int]]:
    """``function(*args)`` and the peak RSS of the process while it ran (the task's memory)."""
    start = _memory_reset()
    result = function(*args)
    return result, {"start_rss": start, "peak_rss": _peak_rss()}


@dataclass
class _ComponentsRun:
    """The driver of one clustering: runs each phase as Ray tasks and keeps their memory reports."""

    layout: _Layout
    partitions: int
    memory: list[dict[str, Any]]

    @property
    def work(self) -> Location:
        return self.layout.folder("clusters").join("_components")

    def phase(self, name: str, function: Callable, calls: list[tuple]) -> list:
        results = _map(measured, [(function, *call) for call in calls])
        self.memory.extend({"phase": name, "task": i, **report} for i, (_, report) in enumerate(results))
        return [result for result, _ in results]

    def round_folder(self, round_index: int, operation: str) -> Location:
        return self.work.join(f"round-{round_index:03d}", operation)

    def run(self, verified: list[Location]) -> dict[str, int]:
        if not verified:
            return {"pairs": 0, "duplicates": 0, "clusters": 0, "rounds": 0}
        edges = [_task_file(self.round_folder(0, "large-star"), i) for i in range(len(verified))]
        scattered = self.phase("scatter", scatter_pairs, [(f, e, self.partitions) for f, e in zip(verified, edges)])
        stars, rounds = self.star_forest(edges)
        label_files = [_task_file(self.work.join("labels"), p) for p in range(self.partitions)]
        labels = self.phase("labels", label_partition, [(stars, p, label_files[p]) for p in range(self.partitions)])
        part_keys = sorted({key for result in labels for key in result["parts"]})
        self.phase("write", write_part_clusters, [(label_files, key, self._cluster_file(key)) for key in part_keys])
        self.work.delete()
        return {
            "pairs": sum(r["pairs"] for r in scattered),
            "duplicates": sum(r["duplicates"] for r in labels),
            "clusters": sum(r["clusters"] for r in labels),
            "rounds": rounds,
        }

    def star_forest(self, edges: list[Location]) -> tuple[list[Location], int]:
        """Rounds of large-star then small-star until large-star's input is a star forest: its
        files, and the number of rounds. A round's files go once the next round has read them."""
        for round_index in itertools.count():
            stars = edges
            edges = [_task_file(self.round_folder(round_index, "small-star"), p) for p in range(self.partitions)]
            calls = [(stars, p, edges[p], self.partitions) for p in range(self.partitions)]
            if not sum(r["not_star"] for r in self.phase("large-star", large_star_partition, calls)):
                return stars, round_index + 1
            if round_index:
                self.work.join(f"round-{round_index - 1:03d}").delete()
            small = edges
            edges = [_task_file(self.round_folder(round_index + 1, "large-star"), p) for p in range(self.partitions)]
            calls = [(small, p, edges[p], self.partitions) for p in range(self.partitions)]
            self.phase("small-star", small_star_partition, calls)

    def _cluster_file(self, part_key: int) -> Location:
        source, part = part_key >> PART_BITS, part_key & PART_MASK
        return self.layout.part_file("clusters", None, self.layout.sources[source], part)


def cluster(layout: _Layout, verified: list[Location], partitions: int) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """Write each part's dropped position -> representative; return stats and every task's memory."""
    run = _ComponentsRun(layout, partitions, [])
    return run.run(verified), run.memory


# Audit and the filter stage ----------------------------------------------------------------------

AUDIT_SCHEMA = pa.schema(
    [
        pa.field("dropped_id", pa.string(), nullable=False),
        pa.field("dropped_source", pa.string(), nullable=False),
        pa.field("dropped_part", pa.int32(), nullable=False),
        pa.field("dropped_row", pa.int64(), nullable=False),
        pa.field("kept_id", pa.string(), nullable=False),
        pa.field("kept_source", pa.string(), nullable=False),
        pa.field("kept_part", pa.int32(), nullable=False),
        pa.field("kept_row", pa.int64(), nullable=False),
        pa.field("similarity", pa.float32(), nullable=False),
    ]
)


def audit_part(layout: _Layout, cluster_file: str) -> pa.Table:
    """For one part's dropped documents: the kept document each duplicates, with ids and similarity."""
    table = pq.read_table(cluster_file, filesystem=resolve(layout.root).fs)
    dropped = table.column("position").to_numpy()
    kept = table.column("representative").to_numpy()
    similarity = estimate_similarity(layout, dropped, kept)
    dropped_ids = layout.read_signatures(int(dropped[0]) >> ROW_BITS, ["id"]).column("id").to_pylist()
    kept_ids: list[str] = [""] * len(kept)
    for part_key in np.unique(kept >> ROW_BITS):
        ids = layout.read_signatures(int(part_key), ["id"]).column("id").to_pylist()
        for i in np.flatnonzero((kept >> ROW_BITS) == part_key):
            kept_ids[i] = ids[kept[i] & ROW_MASK]

    def describe(positions: np.ndarray) -> tuple[list[str], list[int], list[int]]:
        where = [unpack(int(p)) for p in positions]
        return [layout.sources[s] for s, _, _ in where], [p for _, p, _ in where], [r for _, _, r in where]

    d_source, d_part, d_row = describe(dropped)
    k_source, k_part, k_row = describe(kept)
    return pa.table(
        {
            "dropped_id": [dropped_ids[r] for r in d_row],
            "dropped_source": d_source,
            "dropped_part": d_part,
            "dropped_row": d_row,
            "kept_id": kept_ids,
            "kept_source": k_source,
            "kept_part": k_part,
            "kept_row": k_row,
            "similarity": similarity,
        },
        schema=AUDIT_SCHEMA,
    )


@dataclass(frozen=True)
class ClusterDuplicateDropper:
    """Reads a part of the input stage back and drops the rows the clustering marked as duplicates."""

    clusters_dir: str
    reason: str

    def read(self, unit: ShardUnit) -> Iterator[Document | Drop | BadRecord]:
        marked = resolve(self.clusters_dir).join(unit.source, part_name(unit.index) + ".parquet")
        drop_rows: set[int] = set()
        if marked.exists():
            positions = pq.read_table(marked.path, columns=["position"], filesystem=marked.fs).column("position")
            drop_rows = {p & ROW_MASK for p in positions.to_pylist()}
        for row, doc in enumerate(PartReader().read(unit)):
            yield Drop(self.reason) if row in drop_rows else doc


def _input_units(input_stage: Location | Mapping[str, Location], sources: Sequence[str] | None) -> list[ShardUnit]:
    """The parts to deduplicate: of one stage, or of each source's own stage (sources that took
    different paths through curation meet here)."""
    if isinstance(input_stage, Location):
        return units_from_stage(input_stage, sources)
    wanted = sorted(input_stage) if sources is None else sorted(sources)
    return [u for source in wanted for u in units_from_stage(input_stage[source], [source])]


def run_dedup(
    input_stage: Location | Mapping[str, Location],
    root: str,
    stage_name: str,
    config: MinHashConfig,
    sources: Sequence[str] | None = None,
) -> dict:
    """Every stage of one dedup run; returns the filter stage's manifest."""
    units = _input_units(input_stage, sources)
    if not units:
        raise ValueError(f"{input_stage}: no parts for sources {sources}")
    layout = _Layout(root, stage_name, tuple(sorted({u.source for u in units})), config.num_perm)
    bands, _ = config.bands_rows

    from tasks.ray_runtime import ensure_ray

    ensure_ray()
    inputs = [(u.source, u.index, u.input.sha256) for u in units]
    signed = _run_once(
        layout.folder("signatures"),
        _fingerprint({"stage": "signatures", "config": config.describe(), "sources": layout.sources, "inputs": inputs}),
        lambda: _totals(_map(sign_part, [(layout, config, u) for u in units])),
    )
    bucket_files = [f.path for f in _files_under(layout.folder("signatures").join("buckets"))]
    paired = _run_once(
        layout.folder("pairs"),
        _fingerprint({"stage": "pairs", "after": signed["digest"]}),
        lambda: _totals(
            _map(band_pairs, [(layout, b, p, bucket_files) for b in range(bands) for p in range(config.hash_partitions)])
        ),
    )
    pair_files = [f.path for f in _files_under(layout.folder("pairs"))]
    verified = _run_once(
        layout.folder("verified"),
        _fingerprint({"stage": "verified", "after": paired["digest"], "min_agreeing": config.min_agreeing, "verify": config.verify}),
        lambda: _totals(_map(verify_part, [(layout, config, u.source, u.index, pair_files) for u in units])),
    )
    clustered = _run_once(
        layout.folder("clusters"),
        _fingerprint({"stage": "clusters", "after": verified["digest"]}),
        lambda: cluster(layout, _files_under(layout.folder("verified")), config.cluster_partitions)[0],
    )
    audit_at = audit_location(root, stage_name)
    _run_once(
        layout.folder("audit"),
        _fingerprint({"stage": "audit", "after": clustered["digest"]}),
        lambda: _write_audit(layout, audit_at),
    )
    spec = StageSpec(
        root=root,
        name=stage_name,
        reader=ClusterDuplicateDropper(layout.folder("clusters").uri, config.drop_reason),
        parameters={**config.describe(), "sources": list(layout.sources), "clusters": clustered["digest"]},
    )
    return run_stage(spec, units)


def audit_location(root: str, stage_name: str) -> Location:
    """The audit file of a dedup run: one row per dropped document, the kept one it duplicates."""
    return resolve(root).join(f"{stage_name}-audit", "audit.parquet")


def _write_audit(layout: _Layout, target: Location) -> dict[str, int]:
    cluster_files = [f.path for f in _files_under(layout.folder("clusters"))]
    tables = _map(audit_part, [(layout, path) for path in cluster_files])
    audit = pa.concat_tables(tables) if tables else AUDIT_SCHEMA.empty_table()
    _write_table(target, audit)
    return {"dropped": audit.num_rows}


def _totals(stats: list[dict[str, int]]) -> dict[str, int]:
    totals: dict[str, int] = {"tasks": len(stats)}
    for entry in stats:
        for key, value in entry.items():
            totals[key] = totals.get(key, 0) + value
    return totals


def run_minhash_dedup(
    input_stage: Location | Mapping[str, Location],
    root: str,
    stage_name: str = "minhash",
    threshold: float = 0.8,
    num_perm: int = 128,
    ngram: int = 5,
    seed: int = 1,
    sources: list[str] | None = None,
    cluster_partitions: int = 4,
) -> dict:
    """Near-duplicate documents across the given sources of a finished stage: keep one per cluster.

    Returns the manifest of the filter stage ``<root>/<stage_name>``; :func:`audit_location` names
    the audit file (dropped id -> kept id and estimated similarity). ``cluster_partitions`` splits
    the clustering's edges (memory per task) and does not change the result.
    """
    config = MinHashConfig(threshold=threshold, num_perm=num_perm, ngram=ngram, seed=seed, cluster_partitions=cluster_partitions)
    return run_dedup(input_stage, root, stage_name, config, sources)
