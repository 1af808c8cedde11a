"""The files and hash partitions that the exact-dedup stages share (line dedup, sentence-span dedup).

Both stages cut every document into pieces (:mod:`tasks.curate.line_dedup`: lines;
:mod:`tasks.curate.sentence_dedup`: spans of consecutive sentences), hash each piece to 64 bits, put
the documents of a scope (one source, or all sources) in one global order, (source, part index,
row), and keep a piece only where its hash occurs first in that order. A piece that is structure,
not content, hashes to :data:`UNHASHED` and is never a duplicate.

No worker ever holds the hashes of a whole scope. Three passes, each rerunnable and skipping
finished work by its completion markers (which hold a fingerprint of the pass's inputs), link
through files in the stage folder; the stage names the two folders and the pieces::

    <stage>/<hashes_dir>/<source>/part-NNNNN.<pieces>   pass 1: every piece's hash, in document order
    <stage>/<hashes_dir>/<source>/part-NNNNN.distinct   pass 1: the part's distinct hashes, grouped by
                                                        hash partition (hash mod P), sorted in each
    <stage>/<hashes_dir>/<source>/part-NNNNN.json       pass 1 marker: counts, partition offsets
    <stage>/<duplicates_dir>/<scope>/p-PPPPP.dups       pass 2: per partition, the hashes each part
                                                        must drop entirely (first seen in an earlier
                                                        part), grouped by part
    <stage>/<duplicates_dir>/<scope>/p-PPPPP.index      pass 2: where each part's group starts
    <stage>/<duplicates_dir>/<scope>/p-PPPPP.json       pass 2 marker
    <stage>/<source>/part-NNNNN.parquet                 pass 3: a normal stage (run_stage)

Pass 1 runs one Ray task per part, pass 2 one per (scope, partition): its memory is that
partition's share of the scope's distinct hashes, so more partitions bound it tighter. Pass 3 runs
one task per part and holds only that part's hashes. A part owns a hash when it is the first part
(in the global order) where the hash occurs; inside its owner, pass 3 keeps the first occurrence
only. Binary files are raw little-endian uint64 arrays, so a pass reads just its slice of them.

What is a stage's own: how a document becomes pieces and hashes (its pass 1 loop) and how pass 3
rewrites a document from them (its reader and steps). Everything else is here.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.documents import DOCUMENT_SCHEMA
from tasks.executor import finished_receipt, fingerprint, run_tasks
from tasks.shards import part_name
from tasks.stage import (
    ShardUnit,
    StageSpec,
    bound_to_inputs,
    load_manifest,
    run_stage,
    stage_is_complete,
    units_from_stage,
)
from tasks.storage import Location, atomic_output, resolve, write_json_atomic

HASH_DTYPE = np.dtype("<u8")
# The hash of a piece that normalises to nothing; a real hash of 0 (p = 2**-64) is moved to 1.
UNHASHED = 0
DEFAULT_INPUT_BYTES_PER_PARTITION = 256 << 20


def read_u64(location: Location, start: int = 0, count: int | None = None) -> np.ndarray:
    with location.open_random_access() as f:
        f.seek(start * HASH_DTYPE.itemsize)
        data = f.read() if count is None else f.read(count * HASH_DTYPE.itemsize)
    return np.frombuffer(data, dtype=HASH_DTYPE)


def write_u64(location: Location, values: np.ndarray) -> None:
    with atomic_output(location) as stream:
        stream.write(np.ascontiguousarray(values, dtype=HASH_DTYPE).tobytes())


@dataclass(frozen=True)
class DedupFiles:
    """Where one dedup stage's passes put their files.

    ``pieces`` names what is hashed (the suffix of pass 1's per-piece file and its count in the
    pass-1 marker); ``scope_key`` is the field naming the scope in pass 2's markers.
    """

    stage_dir: str
    hashes_dir: str
    duplicates_dir: str
    pieces: str
    scope_key: str

    def part_file(self, source: str, index: int, suffix: str) -> Location:
        return resolve(self.stage_dir).join(self.hashes_dir, source, f"{part_name(index)}.{suffix}")

    def partition_file(self, scope: str, partition: int, suffix: str) -> Location:
        return resolve(self.stage_dir).join(self.duplicates_dir, scope, f"p-{partition:05d}.{suffix}")


# ------------------------------------------------------------- pass 1: hash every piece of a part


@dataclass(frozen=True)
class PartHashJob(ABC):
    """Pass 1's job for one part; a stage's subclass adds what its hashing needs."""

    files: DedupFiles
    source: str
    index: int
    part_uri: str
    part_sha256: str
    partitions: int

    @abstractmethod
    def hashing_payload(self) -> list:
        """Everything that decides a piece's hash (versions, parameters)."""

    def fingerprint(self) -> str:
        return fingerprint([*self.hashing_payload(), self.part_sha256, self.partitions])

    def marker(self) -> Location:
        return self.files.part_file(self.source, self.index, "json")

    def is_done(self) -> bool:
        return finished_receipt(self.marker(), self.fingerprint()) is not None


def write_part_hashes(job: PartHashJob, hashes: array, counts: dict[str, int]) -> dict[str, Any]:
    """Pass 1's files for one part: its pieces' hashes in document order, its distinct ones by
    partition, and the marker with ``counts`` (what the stage counted while hashing)."""
    per_piece = np.frombuffer(hashes, dtype=np.uint64) if hashes else np.zeros(0, dtype=np.uint64)
    distinct = np.unique(per_piece[per_piece != UNHASHED])  # sorted
    partition_of = distinct % np.uint64(job.partitions)
    by_partition = np.argsort(partition_of, kind="stable")  # stays sorted by hash inside a partition
    per_partition = np.bincount(partition_of.astype(np.int64), minlength=job.partitions)
    write_u64(job.files.part_file(job.source, job.index, job.files.pieces), per_piece)
    write_u64(job.files.part_file(job.source, job.index, "distinct"), distinct[by_partition])
    summary = {
        "fingerprint": job.fingerprint(),
        "source": job.source,
        "index": job.index,
        **counts,
        job.files.pieces: int(per_piece.size),
        "distinct": int(distinct.size),
        "partition_offsets": [0, *np.cumsum(per_partition).tolist()],
    }
    write_json_atomic(job.marker(), summary)
    return summary


# ---------------------------------------------- pass 2: per partition, who saw each hash first


@dataclass(frozen=True)
class PartitionJob:
    files: DedupFiles
    scope: str
    partition: int
    partitions: int
    parts: tuple[tuple[str, int], ...]  # (source, index) of the scope's parts, in global order
    # of what decides the partition's lists: the parts' pass-1 fingerprints, the stage's versions
    fingerprint: str


def find_duplicates(job: PartitionJob) -> dict[str, Any]:
    """Pass 2: for one partition, list per part the hashes an earlier part of the scope owns."""
    files = job.files
    marker = files.partition_file(job.scope, job.partition, "json")
    done = finished_receipt(marker, job.fingerprint)
    if done is not None:
        return done
    slices: list[np.ndarray] = []
    owners: list[np.ndarray] = []
    for ordinal, (source, index) in enumerate(job.parts):
        offsets = files.part_file(source, index, "json").read_json()["partition_offsets"]
        start, end = offsets[job.partition], offsets[job.partition + 1]
        if end > start:
            slices.append(read_u64(files.part_file(source, index, "distinct"), start, end - start))
            owners.append(np.full(end - start, ordinal, dtype=np.uint32))
    hashes = np.concatenate(slices) if slices else np.zeros(0, dtype=HASH_DTYPE)
    ordinals = np.concatenate(owners) if owners else np.zeros(0, dtype=np.uint32)
    # Parts were concatenated in global order and hashes are distinct inside a part, so after a
    # stable sort by hash the first of each run of equal hashes is its owner; the rest repeat it.
    order = np.argsort(hashes, kind="stable")
    sorted_hashes = hashes[order]
    repeats = np.zeros(sorted_hashes.size, dtype=bool)
    repeats[1:] = sorted_hashes[1:] == sorted_hashes[:-1]
    dup_hashes = sorted_hashes[repeats]
    dup_ordinals = ordinals[order][repeats]
    grouped = np.lexsort((dup_hashes, dup_ordinals))
    counts = np.bincount(dup_ordinals.astype(np.int64), minlength=len(job.parts))
    index = np.concatenate([[0], np.cumsum(counts)]).astype(HASH_DTYPE)
    write_u64(files.partition_file(job.scope, job.partition, "dups"), dup_hashes[grouped])
    write_u64(files.partition_file(job.scope, job.partition, "index"), index)
    summary = {
        "fingerprint": job.fingerprint,
        files.scope_key: job.scope,
        "partition": job.partition,
        "parts": len(job.parts),
        "hashes_in": int(hashes.size),
        "owned": int(hashes.size - dup_hashes.size),
        "duplicates": int(dup_hashes.size),
    }
    write_json_atomic(marker, summary)
    return summary


# -------------------------------------------- pass 3: which pieces of each document are duplicates

# What pass 3 finds for each piece of a document, in its scope's global order:
STRUCTURE = 0  # hashed to UNHASHED: never a duplicate
FIRST = 1  # the hash's first occurrence
SEEN_BEFORE = 2  # first in its document, but an earlier document holds the hash
REPEATED = 3  # earlier in its own document
DUPLICATES = frozenset({SEEN_BEFORE, REPEATED})


def owned_elsewhere(files: DedupFiles, partitions: int, scope: str, ordinal: int) -> set[int]:
    """The hashes of the part at ``ordinal`` in its scope's order that an earlier part owns."""
    dropped: set[int] = set()
    for partition in range(partitions):
        bounds = read_u64(files.partition_file(scope, partition, "index"), ordinal, 2)
        start, end = int(bounds[0]), int(bounds[1])
        if end > start:
            dropped.update(read_u64(files.partition_file(scope, partition, "dups"), start, end - start).tolist())
    return dropped


class FirstOccurrences:
    """Pass 3's view of one part: judges the pieces of its documents, one document after another.

    Holds the part's piece hashes (pass 1) and the hashes earlier parts own (pass 2), so its
    memory is one part's.
    """

    def __init__(
        self, files: DedupFiles, partitions: int, placement: dict[tuple[str, int], tuple[str, int]], unit: ShardUnit
    ) -> None:
        self.hashes_at = files.part_file(unit.source, unit.index, files.pieces)
        self.hashes = read_u64(self.hashes_at).tolist()
        self.owned_elsewhere = owned_elsewhere(files, partitions, *placement[(unit.source, unit.index)])
        self.seen_in_part: set[int] = set()
        self.position = 0
        self.pieces = files.pieces
        self.input_uri = unit.input.uri

    def judge(self, pieces: int, row: int) -> list[int]:
        """The verdict on each of the next document's ``pieces`` pieces (the document at ``row``)."""
        doc_hashes = self.hashes[self.position : self.position + pieces]
        self.position += pieces
        if len(doc_hashes) != pieces:
            raise ValueError(f"{self.hashes_at.uri}: fewer hashes than {self.pieces} at {self.input_uri} row {row}")
        verdicts: list[int] = []
        in_doc: set[int] = set()
        for value in doc_hashes:
            if value == UNHASHED:
                verdicts.append(STRUCTURE)
            elif value in in_doc:
                verdicts.append(REPEATED)
            else:
                in_doc.add(value)
                verdicts.append(SEEN_BEFORE if value in self.owned_elsewhere or value in self.seen_in_part else FIRST)
        self.seen_in_part |= in_doc
        return verdicts

    def check_all_judged(self) -> None:
        if self.position != len(self.hashes):
            raise ValueError(
                f"{self.hashes_at.uri}: {len(self.hashes)} hashes but {self.position} {self.pieces} in {self.input_uri}"
            )


# ----------------------------------------------------------------------------- planning and running


def units_to_deduplicate(input_stage: Location, sources: Sequence[str] | None) -> list[ShardUnit]:
    """The input stage's parts in global order, (source, part index)."""
    units = sorted(units_from_stage(input_stage, sources), key=lambda u: (u.source, u.index))
    if not units:
        raise ValueError(f"{input_stage.uri}: no parts to deduplicate (sources={sources})")
    return units


def partition_count(units: Sequence[ShardUnit], partitions: int | None, input_bytes_per_partition: int) -> int:
    """``partitions``, or by default one per ``input_bytes_per_partition`` bytes of input parts."""
    if not partitions:
        total = sum(u.input.size for u in units if u.input is not None)
        partitions = max(1, math.ceil(total / input_bytes_per_partition))
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    return partitions


def output_columns(units: Sequence[ShardUnit], count_columns: pa.Schema) -> pa.Schema:
    """Typed columns earlier stages added (carried through), then the stage's own counts."""
    with resolve(units[0].input.uri).open_random_access() as f:
        schema = pq.ParquetFile(f).schema_arrow
    own = set(DOCUMENT_SCHEMA.names) | set(count_columns.names)
    return pa.schema([f for f in schema if f.name not in own] + list(count_columns))


def inputs_fingerprint(hash_jobs: Sequence[PartHashJob]) -> str:
    return fingerprint([[j.source, j.index, j.part_sha256] for j in hash_jobs])


def by_scope(hash_jobs: Sequence[PartHashJob], scope_of: Callable[[str], str]) -> dict[str, list[PartHashJob]]:
    """Scope -> the pass-1 jobs of its parts, in global order (``hash_jobs`` are in it)."""
    scopes: dict[str, list[PartHashJob]] = {}
    for job in hash_jobs:
        scopes.setdefault(scope_of(job.source), []).append(job)
    return scopes


def placement(scopes: dict[str, list[PartHashJob]]) -> dict[tuple[str, int], tuple[str, int]]:
    """(source, index) -> (scope, the part's ordinal in the scope's global order)."""
    return {
        (job.source, job.index): (scope, ordinal) for scope, jobs in scopes.items() for ordinal, job in enumerate(jobs)
    }


def partition_jobs(
    files: DedupFiles,
    scopes: dict[str, list[PartHashJob]],
    partitions: int,
    scope_fingerprint: Callable[[list[PartHashJob]], str],
) -> list[PartitionJob]:
    """Pass 2's jobs, one per (scope, partition); ``scope_fingerprint`` is the stage's own payload."""
    return [
        PartitionJob(files, scope, p, partitions, tuple((j.source, j.index) for j in jobs), scope_fingerprint(jobs))
        for scope, jobs in sorted(scopes.items())
        for p in range(partitions)
    ]


@dataclass(frozen=True)
class DedupPlan:
    """The three passes' jobs and the pass-3 stage spec for one input stage."""

    hash_jobs: list[PartHashJob]
    partition_jobs: list[PartitionJob]
    spec: StageSpec
    units: list[ShardUnit]

    @property
    def sources(self) -> list[str]:
        return sorted({u.source for u in self.units})


def run_plan(plan: DedupPlan, hash_part: Callable[[Any], dict[str, Any]], stage_label: str) -> dict[str, Any]:
    """Run the passes unless the stage is complete for the plan's sources; return its manifest."""
    if not stage_is_complete(bound_to_inputs(plan.spec, plan.units), plan.sources):
        hashed = run_tasks(hash_part, [(job,) for job in plan.hash_jobs], label=f"{stage_label}: hashing parts")
        found = run_tasks(find_duplicates, [(job,) for job in plan.partition_jobs], label=f"{stage_label}: partitions")
        run_stage(plan.spec, plan.units)
        check_hash_counts(stage_label, hashed, found)
    return load_manifest(plan.spec)


def check_hash_counts(stage_label: str, hashed: list[dict], found: list[dict]) -> None:
    distinct = sum(h["distinct"] for h in hashed)
    owned = sum(f["owned"] for f in found)
    duplicates = sum(f["duplicates"] for f in found)
    if owned + duplicates != distinct:
        raise RuntimeError(f"{stage_label}: {owned} owned + {duplicates} duplicate hashes != {distinct} distinct")
