"""Exact line-level deduplication (CCNet), global over every part of a source (or of all sources).

Every line is normalised (:func:`normalise_line`) and hashed to 64 bits (the first 8 bytes of its
SHA-1, read little-endian, as CCNet's ``str_hash``). Documents are put in one global order,
(source, part index, row), and a line is kept only where its hash occurs for the first time in
that order: a line already seen in an earlier document goes, and so does a line repeated inside
its own document. Documents left shorter than ``min_chars`` are then dropped with a reason.

No worker ever holds the hashes of the whole corpus. Three passes, each rerunnable and skipping
finished work by its completion markers, link through files in the stage folder::

    <stage>/_line_hashes/<source>/part-NNNNN.lines     pass 1: every line's hash, in document order
    <stage>/_line_hashes/<source>/part-NNNNN.distinct  pass 1: the part's distinct hashes, grouped by
                                                       hash partition (hash mod P), sorted in each
    <stage>/_line_hashes/<source>/part-NNNNN.json      pass 1 marker: counts, partition offsets
    <stage>/_duplicates/<scope>/p-PPPPP.dups           pass 2: per partition, the hashes each part
                                                       must drop entirely (first seen in an earlier
                                                       part), grouped by part
    <stage>/_duplicates/<scope>/p-PPPPP.index          pass 2: where each part's group starts
    <stage>/_duplicates/<scope>/p-PPPPP.json           pass 2 marker
    <stage>/<source>/part-NNNNN.parquet                pass 3: a normal stage (run_stage)

Pass 1 runs one Ray task per part, pass 2 one per (scope, partition): its memory is that
partition's share of the distinct hashes, so more partitions bound it tighter. Pass 3 runs one
task per part and holds only that part's hashes. A part owns a hash when it is the first part (in
the global order) where the hash occurs; inside its owner, pass 3 keeps the first occurrence only.
Binary files are raw little-endian uint64 arrays, so a pass reads just its slice of them.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import unicodedata
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache, partial
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.documents import DOCUMENT_SCHEMA, BadRecord, Document
from tasks.shards import part_name, read_part
from tasks.stage import (
    ShardUnit,
    StageSpec,
    load_manifest,
    run_stage,
    stage_is_complete,
    units_from_stage,
)
from tasks.steps import Drop, Step, StepStats
from tasks.storage import Location, atomic_output, resolve, write_json_atomic

# Bump when normalisation or hashing changes: every pass's fingerprint includes it.
NORMALISATION_VERSION = 1
HASH_DTYPE = np.dtype("<u8")
# A line that normalises to nothing (blank, punctuation only) is structure, not content: it is
# never deduplicated. Its hash is stored as 0; a real hash of 0 (p = 2**-64) is moved to 1.
UNHASHED = 0
DEFAULT_INPUT_BYTES_PER_PARTITION = 256 << 20
HASHES_DIR = "_line_hashes"
DUPLICATES_DIR = "_duplicates"
ACROSS_SOURCES_SCOPE = "_all_sources"
COUNT_COLUMNS = pa.schema(
    [
        pa.field("line_dedup_lines_in", pa.int32()),
        pa.field("line_dedup_removed_seen_before", pa.int32()),
        pa.field("line_dedup_removed_repeated", pa.int32()),
    ]
)


@cache
def _normalisation_table() -> dict[int, str | None]:
    """One str.translate table: accents and punctuation and control characters go, digits -> 0.

    Applied after NFD, so an accented letter is its base letter plus a combining mark (Mn) to drop.
    Built once per process (about a second: it scans every code point).
    """
    table: dict[int, str | None] = {}
    for code in range(sys.maxunicode + 1):
        category = unicodedata.category(chr(code))
        if category == "Mn" or category.startswith("P"):
            table[code] = None
        elif category == "Cc":
            table[code] = " "
        elif category == "Nd":
            table[code] = "0"
    return table


def normalise_line(line: str) -> str:
    """CCNet's dedup normalisation, widened as the recipe asks.

    CCNet's ``normalize_for_dedup`` lowercases, maps digits to 0 and removes only a fixed set of
    CJK/typographic punctuation and control characters; we also strip accents and remove every
    Unicode punctuation character (category P*), and collapse whitespace, so lines that differ
    only by case, digits, punctuation, accents or spacing hash alike.
    """
    line = line.lower()
    if not line.isascii():
        line = unicodedata.normalize("NFD", line)
    return " ".join(line.translate(_normalisation_table()).split())


def line_hash(line: str) -> int:
    normalised = normalise_line(line)
    if not normalised:
        return UNHASHED
    value = int.from_bytes(hashlib.sha1(normalised.encode("utf-8")).digest()[:8], "little")
    return value or 1


def split_lines(text: str) -> list[str]:
    # "\n" only, as CCNet: a "\r" stays with its line and normalises away as whitespace.
    return text.split("\n")


def _read_u64(location: Location, start: int = 0, count: int | None = None) -> np.ndarray:
    with location.open_random_access() as f:
        f.seek(start * HASH_DTYPE.itemsize)
        data = f.read() if count is None else f.read(count * HASH_DTYPE.itemsize)
    return np.frombuffer(data, dtype=HASH_DTYPE)


def _write_u64(location: Location, values: np.ndarray) -> None:
    with atomic_output(location) as stream:
        stream.write(np.ascontiguousarray(values, dtype=HASH_DTYPE).tobytes())


def _fingerprint(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _marker_matches(marker: Location, fingerprint: str) -> bool:
    return marker.exists() and marker.read_json().get("fingerprint") == fingerprint


# ---------------------------------------------------------------- pass 1: hash every line of a part


@dataclass(frozen=True)
class HashJob:
    stage_dir: str
    source: str
    index: int
    part_uri: str
    part_sha256: str
    partitions: int

    def fingerprint(self) -> str:
        return _fingerprint([NORMALISATION_VERSION, self.part_sha256, self.partitions])


def _hashes_location(stage_dir: str, source: str, index: int, suffix: str) -> Location:
    return resolve(stage_dir).join(HASHES_DIR, source, f"{part_name(index)}.{suffix}")


def hash_part(job: HashJob) -> dict[str, Any]:
    """Pass 1: write the part's per-line hashes and its distinct hashes by partition."""
    marker = _hashes_location(job.stage_dir, job.source, job.index, "json")
    if _marker_matches(marker, job.fingerprint()):
        return marker.read_json()
    hashes = array("Q")
    docs = 0
    for doc in read_part(resolve(job.part_uri)):
        docs += 1
        hashes.extend(line_hash(line) for line in split_lines(doc.text))
    per_line = np.frombuffer(hashes, dtype=np.uint64) if hashes else np.zeros(0, dtype=np.uint64)
    distinct = np.unique(per_line[per_line != UNHASHED])  # sorted
    partition_of = distinct % np.uint64(job.partitions)
    by_partition = np.argsort(partition_of, kind="stable")  # stays sorted by hash inside a partition
    counts = np.bincount(partition_of.astype(np.int64), minlength=job.partitions)
    offsets = [0, *np.cumsum(counts).tolist()]
    _write_u64(_hashes_location(job.stage_dir, job.source, job.index, "lines"), per_line)
    _write_u64(_hashes_location(job.stage_dir, job.source, job.index, "distinct"), distinct[by_partition])
    summary = {
        "fingerprint": job.fingerprint(),
        "source": job.source,
        "index": job.index,
        "docs": docs,
        "lines": int(per_line.size),
        "distinct": int(distinct.size),
        "partition_offsets": offsets,
    }
    write_json_atomic(marker, summary)
    return summary


# ---------------------------------------------- pass 2: per partition, who saw each hash first


@dataclass(frozen=True)
class PartitionJob:
    stage_dir: str
    scope: str
    partition: int
    partitions: int
    parts: tuple[tuple[str, int, str], ...]  # (source, index, pass-1 fingerprint) in global order

    def fingerprint(self) -> str:
        return _fingerprint([NORMALISATION_VERSION, self.partitions, [list(p) for p in self.parts]])


def _duplicates_location(stage_dir: str, scope: str, partition: int, suffix: str) -> Location:
    return resolve(stage_dir).join(DUPLICATES_DIR, scope, f"p-{partition:05d}.{suffix}")


def find_duplicates(job: PartitionJob) -> dict[str, Any]:
    """Pass 2: for one partition, list per part the hashes an earlier part of the scope owns."""
    marker = _duplicates_location(job.stage_dir, job.scope, job.partition, "json")
    if _marker_matches(marker, job.fingerprint()):
        return marker.read_json()
    slices: list[np.ndarray] = []
    owners: list[np.ndarray] = []
    for ordinal, (source, index, _) in enumerate(job.parts):
        offsets = _hashes_location(job.stage_dir, source, index, "json").read_json()["partition_offsets"]
        start, end = offsets[job.partition], offsets[job.partition + 1]
        if end > start:
            slices.append(_read_u64(_hashes_location(job.stage_dir, source, index, "distinct"), start, end - start))
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
    _write_u64(_duplicates_location(job.stage_dir, job.scope, job.partition, "dups"), dup_hashes[grouped])
    _write_u64(_duplicates_location(job.stage_dir, job.scope, job.partition, "index"), index)
    summary = {
        "fingerprint": job.fingerprint(),
        "scope": job.scope,
        "partition": job.partition,
        "parts": len(job.parts),
        "hashes_in": int(hashes.size),
        "owned": int(hashes.size - dup_hashes.size),
        "duplicates": int(dup_hashes.size),
    }
    write_json_atomic(marker, summary)
    return summary


# ------------------------------------------------------- pass 3: rewrite each part without them


@dataclass(frozen=True)
class LineDedupReader:
    """Reads one part of the input stage and removes the lines its pass-2 lists and itself repeat.

    Each document keeps its id, meta and columns; its text loses lines, and three count columns say
    how many lines it had and why the removed ones went.
    """

    stage_dir: str
    partitions: int
    # (source, index) -> (scope, ordinal of the part in the scope's global order)
    placement: dict[tuple[str, int], tuple[str, int]]

    def owned_elsewhere(self, source: str, index: int) -> set[int]:
        scope, ordinal = self.placement[(source, index)]
        dropped: set[int] = set()
        for partition in range(self.partitions):
            bounds = _read_u64(_duplicates_location(self.stage_dir, scope, partition, "index"), ordinal, 2)
            start, end = int(bounds[0]), int(bounds[1])
            if end > start:
                dups = _duplicates_location(self.stage_dir, scope, partition, "dups")
                dropped.update(_read_u64(dups, start, end - start).tolist())
        return dropped

    def read(self, unit: ShardUnit) -> Iterator[Document | Drop | BadRecord]:
        if unit.input is None:
            raise ValueError(f"{unit.source} part {unit.index}: line dedup needs an input part")
        lines_at = _hashes_location(self.stage_dir, unit.source, unit.index, "lines")
        hashes = _read_u64(lines_at).tolist()
        owned_elsewhere = self.owned_elsewhere(unit.source, unit.index)
        seen_in_part: set[int] = set()
        position = 0
        for row, doc in enumerate(read_part(resolve(unit.input.uri))):
            lines = split_lines(doc.text)
            doc_hashes = hashes[position : position + len(lines)]
            position += len(lines)
            if len(doc_hashes) != len(lines):
                raise ValueError(f"{lines_at.uri}: fewer line hashes than lines at {unit.input.uri} row {row}")
            kept: list[str] = []
            in_doc: set[int] = set()
            seen_before = repeated = 0
            for line, value in zip(lines, doc_hashes):
                if value == UNHASHED:
                    kept.append(line)
                elif value in in_doc:
                    repeated += 1
                else:
                    in_doc.add(value)
                    if value in owned_elsewhere or value in seen_in_part:
                        seen_before += 1
                    else:
                        kept.append(line)
            seen_in_part |= in_doc
            doc.text = "\n".join(kept)
            doc.columns["line_dedup_lines_in"] = len(lines)
            doc.columns["line_dedup_removed_seen_before"] = seen_before
            doc.columns["line_dedup_removed_repeated"] = repeated
            yield doc
        if position != len(hashes):
            raise ValueError(f"{lines_at.uri}: {len(hashes)} line hashes but {position} lines in {unit.input.uri}")


@dataclass
class LineDedupStats(StepStats):
    lines_in: int = 0
    lines_kept: int = 0
    removed_seen_before: int = 0
    removed_repeated: int = 0
    lines_of_dropped_docs: int = 0  # lines left in documents then dropped as too short
    chars_kept: int = 0

    def as_dict(self) -> dict:
        counts = {
            "lines_in": self.lines_in,
            "lines_kept": self.lines_kept,
            "removed_seen_before": self.removed_seen_before,
            "removed_repeated": self.removed_repeated,
            "lines_of_dropped_docs": self.lines_of_dropped_docs,
            "chars_kept": self.chars_kept,
        }
        return {**super().as_dict(), **counts}


class DedupedLength(Step):
    """Counts what line dedup removed and drops documents left under ``min_chars`` characters."""

    name = "line_dedup"

    def __init__(self, min_chars: int) -> None:
        super().__init__()
        if min_chars < 0:
            raise ValueError(f"min_chars must be >= 0, got {min_chars}")
        self.min_chars = min_chars
        self.stats = LineDedupStats()

    def apply(self, doc: Document) -> Document | Drop:
        lines_in = doc.columns["line_dedup_lines_in"]
        seen_before = doc.columns["line_dedup_removed_seen_before"]
        repeated = doc.columns["line_dedup_removed_repeated"]
        remaining = lines_in - seen_before - repeated
        self.stats.lines_in += lines_in
        self.stats.removed_seen_before += seen_before
        self.stats.removed_repeated += repeated
        if len(doc.text.strip()) < self.min_chars:
            self.stats.lines_of_dropped_docs += remaining
            return self.drop("too_short")
        self.stats.lines_kept += remaining
        self.stats.chars_kept += len(doc.text)
        return doc


def _steps(min_chars: int) -> list[Step]:
    return [DedupedLength(min_chars)]


# ----------------------------------------------------------------------------- the whole algorithm


def _scope_of(source: str, across_sources: bool) -> str:
    return ACROSS_SOURCES_SCOPE if across_sources else source


def _partitions_for(units: Sequence[ShardUnit], bytes_per_partition: int) -> int:
    total = sum(u.input.size for u in units if u.input is not None)
    return max(1, math.ceil(total / bytes_per_partition))


def _output_columns(units: Sequence[ShardUnit]) -> pa.Schema:
    """Typed columns earlier stages added (carried through), then this stage's counts."""
    with resolve(units[0].input.uri).open_random_access() as f:
        schema = pq.ParquetFile(f).schema_arrow
    own = set(DOCUMENT_SCHEMA.names) | set(COUNT_COLUMNS.names)
    return pa.schema([f for f in schema if f.name not in own] + list(COUNT_COLUMNS))


def _run_remote(function, jobs: Sequence[Any]) -> list[Any]:
    import ray

    from infra.ray_env import ensure_ray

    ensure_ray()
    # Retries cover a worker that died; each job's marker makes a retry skip finished work.
    remote = ray.remote(function).options(max_retries=2, retry_exceptions=[OSError])
    return ray.get([remote.remote(job) for job in jobs])


@dataclass(frozen=True)
class LineDedupPlan:
    """The three passes' jobs and the pass-3 stage spec for one input stage."""

    hash_jobs: list[HashJob]
    partition_jobs: list[PartitionJob]
    spec: StageSpec
    units: list[ShardUnit]


def plan_line_dedup(
    input_stage: Location,
    root: str,
    stage_name: str = "line_dedup",
    min_chars: int = 300,
    across_sources: bool = False,
    partitions: int | None = None,
    sources: Sequence[str] | None = None,
    input_bytes_per_partition: int = DEFAULT_INPUT_BYTES_PER_PARTITION,
) -> LineDedupPlan:
    units = sorted(units_from_stage(input_stage, sources), key=lambda u: (u.source, u.index))
    if not units:
        raise ValueError(f"{input_stage.uri}: no parts to deduplicate (sources={sources})")
    partitions = partitions or _partitions_for(units, input_bytes_per_partition)
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    stage_dir = resolve(root).join(stage_name)
    hash_jobs = [HashJob(stage_dir.uri, u.source, u.index, u.input.uri, u.input.sha256, partitions) for u in units]
    scopes: dict[str, list[HashJob]] = {}
    for job in hash_jobs:
        scopes.setdefault(_scope_of(job.source, across_sources), []).append(job)
    placement = {
        (job.source, job.index): (scope, ordinal) for scope, jobs in scopes.items() for ordinal, job in enumerate(jobs)
    }
    partition_jobs = [
        PartitionJob(stage_dir.uri, scope, p, partitions, tuple((j.source, j.index, j.fingerprint()) for j in jobs))
        for scope, jobs in sorted(scopes.items())
        for p in range(partitions)
    ]
    spec = StageSpec(
        root=root,
        name=stage_name,
        reader=LineDedupReader(stage_dir.uri, partitions, placement),
        steps=partial(_steps, min_chars),
        parameters={
            "min_chars": min_chars,
            "across_sources": across_sources,
            "partitions": partitions,
            "normalisation_version": NORMALISATION_VERSION,
            "inputs": _fingerprint([[j.source, j.index, j.part_sha256] for j in hash_jobs]),
        },
        extra_columns=_output_columns(units),
    )
    return LineDedupPlan(hash_jobs, partition_jobs, spec, units)


def run_line_dedup(
    input_stage: Location,
    root: str,
    stage_name: str = "line_dedup",
    min_chars: int = 300,
    across_sources: bool = False,
    partitions: int | None = None,
    sources: Sequence[str] | None = None,
    input_bytes_per_partition: int = DEFAULT_INPUT_BYTES_PER_PARTITION,
) -> dict[str, Any]:
    """Deduplicate the lines of a finished stage's parts into stage ``stage_name``; return its manifest.

    ``across_sources`` puts all sources in one global order (by source name) instead of one order
    per source. ``partitions`` (pass 2's hash partitions) defaults to one per
    ``input_bytes_per_partition`` bytes of input parts, which bounds a pass-2 worker's memory.
    The manifest's ``line_dedup`` entry sums the line counts; they reconcile or this raises.
    """
    plan = plan_line_dedup(
        input_stage, root, stage_name, min_chars, across_sources, partitions, sources, input_bytes_per_partition
    )
    sources_run = sorted({u.source for u in plan.units})
    if not stage_is_complete(plan.spec, sources_run):
        hashed = _run_remote(hash_part, plan.hash_jobs)
        found = _run_remote(find_duplicates, plan.partition_jobs)
        run_stage(plan.spec, plan.units)
        _check_hash_counts(hashed, found)
    manifest = load_manifest(plan.spec)
    manifest["line_dedup"] = line_counts(manifest, sources_run)
    return manifest


def _check_hash_counts(hashed: list[dict], found: list[dict]) -> None:
    distinct = sum(h["distinct"] for h in hashed)
    owned = sum(f["owned"] for f in found)
    duplicates = sum(f["duplicates"] for f in found)
    if owned + duplicates != distinct:
        raise RuntimeError(f"line dedup: {owned} owned + {duplicates} duplicate hashes != {distinct} distinct")


def line_counts(manifest: dict[str, Any], sources: Sequence[str]) -> dict[str, int]:
    """Line totals of the given sources' parts; every line is kept or removed for one reason."""
    keys = ("lines_in", "lines_kept", "removed_seen_before", "removed_repeated", "lines_of_dropped_docs", "chars_kept")
    totals = dict.fromkeys(keys, 0)
    for part in manifest["parts"]:
        if part["source"] in sources:
            stats = part["steps"]["line_dedup"]
            for key in keys:
                totals[key] += stats[key]
    accounted = sum(totals[k] for k in keys[1:5])
    if accounted != totals["lines_in"]:
        raise RuntimeError(f"line dedup: {totals['lines_in']} lines in, but {accounted} kept or removed")
    return totals
