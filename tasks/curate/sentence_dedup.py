"""C4's sentence-span deduplication, global over every part of a source.

Raffel et al. (C4): "we discarded all but one of any three-sentence span occurring more than once
in the data set". Each line of a document is split into sentences (sentencex: rule-based, with
per-language abbreviation lists, lossless: a line's sentences concatenate back to the line), each
sentence normalised as CCNet's line dedup does (:func:`tasks.curate.line_dedup.normalise_line`:
lowercase, digits -> 0, accents and every Unicode punctuation character removed, whitespace
collapsed), and every window of ``n_sentences`` consecutive sentences of the document (across line
breaks) hashed to 64 bits (SHA-1's first 8 bytes, the sentences joined by a newline, which no
normalised sentence holds, so sentence boundaries count). A window whose sentences all normalise
to nothing (punctuation, blanks) is structure, not content, and is never a duplicate.

Documents are put in one global order per source, (part index, row). A span is a duplicate where
its hash occurred before in that order: in an earlier document, or earlier in the same document.
Every sentence a duplicate span covers is removed, so the first occurrence of each span is kept
and all later ones go. Seen-before is decided on the input as it is: a span's first occurrence
counts even if its document is dropped afterwards (as datatrove and CCNet do). A line left with
no sentence disappears, with the blank lines around it collapsed to one; other lines keep their
layout. A document that lost sentences is then dropped when fewer than ``min_sentences``
sentences or ``min_words`` words are left (datatrove's SentenceDedupFilter rule: a document
dedup did not touch is not judged here).

The passes and files mirror :mod:`tasks.curate.line_dedup` (read its docstring), with span
hashes in place of line hashes::

    <stage>/_span_hashes/<source>/part-NNNNN.spans       pass 1: every span's hash, in document order
    <stage>/_span_hashes/<source>/part-NNNNN.distinct    pass 1: distinct hashes by partition
    <stage>/_span_hashes/<source>/part-NNNNN.json        pass 1 marker
    <stage>/_span_duplicates/<source>/p-PPPPP.{dups,index,json}   pass 2: per partition, the
                                                         hashes each part must drop entirely
    <stage>/<source>/part-NNNNN.parquet                  pass 3: a normal stage (run_stage)

Pass 2's memory is one partition's share of the source's distinct span hashes; pass 3's is one
part's. Every pass skips work its completion marker (with a fingerprint of its inputs, the
splitter's version and the parameters) says is done, so a rerun after a crash rebuilds the same
bytes.
"""

from __future__ import annotations

import hashlib
import math
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache, partial
from importlib.metadata import version
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sentencex import segment

from tasks.curate.line_dedup import (
    DEFAULT_INPUT_BYTES_PER_PARTITION,
    HASH_DTYPE,
    NORMALISATION_VERSION,
    UNHASHED,
    _fingerprint,
    _marker_matches,
    _read_u64,
    _run_remote,
    _write_u64,
    normalise_line,
)
from tasks.documents import DOCUMENT_SCHEMA, BadRecord, Document
from tasks.shards import part_name, read_part
from tasks.stage import ShardUnit, StageSpec, load_manifest, run_stage, stage_is_complete, units_from_stage
from tasks.steps import Drop, Step, StepStats
from tasks.storage import Location, resolve, write_json_atomic

# Bump when span hashing or the removal rule changes: every pass's fingerprint includes it.
SPAN_VERSION = 1
HASHES_DIR = "_span_hashes"
DUPLICATES_DIR = "_span_duplicates"
COLUMN_PREFIX = "sentence_dedup_"
COUNT_COLUMNS = pa.schema(
    [
        pa.field(f"{COLUMN_PREFIX}sentences_in", pa.int32()),
        pa.field(f"{COLUMN_PREFIX}sentences_removed", pa.int32()),
        pa.field(f"{COLUMN_PREFIX}spans_in", pa.int32()),
        pa.field(f"{COLUMN_PREFIX}spans_seen_before", pa.int32()),
        pa.field(f"{COLUMN_PREFIX}spans_repeated", pa.int32()),
    ]
)


@cache
def _splitter_version() -> str:
    return version("sentencex")


# ------------------------------------------------------------------------- sentences and spans


def split_sentences(line: str, language: str = "en") -> list[str]:
    """The sentences of one line, whitespace kept: they concatenate back to the line exactly.

    A blank line has none. Whitespace the splitter returns on its own (leading indentation)
    joins the sentence after it, so every sentence holds some non-space text.
    """
    if not line.strip():
        return []
    pieces = list(segment(language, line))
    if "".join(pieces) != line:  # never lose text to a splitter quirk: the line stays one sentence
        return [line]
    sentences: list[str] = []
    pending = ""
    for piece in pieces:
        if piece.strip():
            sentences.append(pending + piece)
            pending = ""
        else:
            pending += piece
    if pending:
        sentences[-1] += pending
    return sentences


def document_sentences(text: str, language: str = "en") -> tuple[list[str], list[list[str]]]:
    """The document's lines ("\\n" only, as line dedup) and each line's sentences."""
    lines = text.split("\n")
    return lines, [split_sentences(line, language) for line in lines]


def span_hashes(sentences: Sequence[str], n_sentences: int) -> list[int]:
    """One hash per window of ``n_sentences`` consecutive sentences (none when there are fewer)."""
    normalised = [normalise_line(s) for s in sentences]
    hashes = []
    for start in range(len(normalised) - n_sentences + 1):
        window = normalised[start : start + n_sentences]
        if not any(window):
            hashes.append(UNHASHED)
            continue
        digest = hashlib.sha1("\n".join(window).encode("utf-8")).digest()
        hashes.append(int.from_bytes(digest[:8], "little") or 1)
    return hashes


def span_count(sentences: int, n_sentences: int) -> int:
    return max(0, sentences - n_sentences + 1)


def reassemble(lines: Sequence[str], sentences: Sequence[Sequence[str]], removed: set[int]) -> str:
    """The text without the sentences at the (document-wide) positions in ``removed``.

    A line that lost some sentences keeps the others (its trailing space trimmed); a line that
    lost all goes, and the blank lines around it collapse into one (none at either end).
    """
    kept: list[str] = []
    gap = False  # a line went since the last line with text
    position = 0
    for line, line_sentences in zip(lines, sentences):
        if not line_sentences:
            if not (gap and (not kept or not kept[-1].strip())):
                kept.append(line)
            continue
        left = [s for i, s in enumerate(line_sentences, position) if i not in removed]
        position += len(line_sentences)
        if not left:
            gap = True
        else:
            kept.append(line if len(left) == len(line_sentences) else "".join(left).rstrip())
            gap = False
    if gap:
        while kept and not kept[-1].strip():
            kept.pop()
    return "\n".join(kept)


def _flatten(sentences: Sequence[Sequence[str]]) -> list[str]:
    return [s for line in sentences for s in line]


# ----------------------------------------------------------- pass 1: hash every span of a part


@dataclass(frozen=True)
class SpanParameters:
    """What decides a span's hash: part of every pass's fingerprint."""

    n_sentences: int
    language: str

    def fingerprint_payload(self) -> list:
        return [NORMALISATION_VERSION, SPAN_VERSION, _splitter_version(), self.n_sentences, self.language]


@dataclass(frozen=True)
class HashJob:
    stage_dir: str
    source: str
    index: int
    part_uri: str
    part_sha256: str
    partitions: int
    spans: SpanParameters

    def fingerprint(self) -> str:
        return _fingerprint([*self.spans.fingerprint_payload(), self.part_sha256, self.partitions])


def _hashes_location(stage_dir: str, source: str, index: int, suffix: str) -> Location:
    return resolve(stage_dir).join(HASHES_DIR, source, f"{part_name(index)}.{suffix}")


def hash_part(job: HashJob) -> dict[str, Any]:
    """Pass 1: write the part's span hashes in document order and its distinct ones by partition."""
    marker = _hashes_location(job.stage_dir, job.source, job.index, "json")
    if _marker_matches(marker, job.fingerprint()):
        return marker.read_json()
    hashes = array("Q")
    docs = sentences = 0
    for doc in read_part(resolve(job.part_uri)):
        docs += 1
        flat = _flatten(document_sentences(doc.text, job.spans.language)[1])
        sentences += len(flat)
        hashes.extend(span_hashes(flat, job.spans.n_sentences))
    per_span = np.frombuffer(hashes, dtype=np.uint64) if hashes else np.zeros(0, dtype=np.uint64)
    distinct = np.unique(per_span[per_span != UNHASHED])  # sorted
    partition_of = distinct % np.uint64(job.partitions)
    by_partition = np.argsort(partition_of, kind="stable")  # stays sorted by hash inside a partition
    counts = np.bincount(partition_of.astype(np.int64), minlength=job.partitions)
    _write_u64(_hashes_location(job.stage_dir, job.source, job.index, "spans"), per_span)
    _write_u64(_hashes_location(job.stage_dir, job.source, job.index, "distinct"), distinct[by_partition])
    summary = {
        "fingerprint": job.fingerprint(),
        "source": job.source,
        "index": job.index,
        "docs": docs,
        "sentences": sentences,
        "spans": int(per_span.size),
        "distinct": int(distinct.size),
        "partition_offsets": [0, *np.cumsum(counts).tolist()],
    }
    write_json_atomic(marker, summary)
    return summary


# ---------------------------------------------- pass 2: per partition, who saw each hash first


@dataclass(frozen=True)
class PartitionJob:
    stage_dir: str
    source: str
    partition: int
    partitions: int
    parts: tuple[tuple[int, str], ...]  # (part index, pass-1 fingerprint) in global order

    def fingerprint(self) -> str:
        return _fingerprint([SPAN_VERSION, self.partitions, [list(p) for p in self.parts]])


def _duplicates_location(stage_dir: str, source: str, partition: int, suffix: str) -> Location:
    return resolve(stage_dir).join(DUPLICATES_DIR, source, f"p-{partition:05d}.{suffix}")


def find_duplicates(job: PartitionJob) -> dict[str, Any]:
    """Pass 2: for one partition, list per part the span hashes an earlier part owns."""
    marker = _duplicates_location(job.stage_dir, job.source, job.partition, "json")
    if _marker_matches(marker, job.fingerprint()):
        return marker.read_json()
    slices: list[np.ndarray] = []
    owners: list[np.ndarray] = []
    for ordinal, (index, _) in enumerate(job.parts):
        offsets = _hashes_location(job.stage_dir, job.source, index, "json").read_json()["partition_offsets"]
        start, end = offsets[job.partition], offsets[job.partition + 1]
        if end > start:
            distinct = _hashes_location(job.stage_dir, job.source, index, "distinct")
            slices.append(_read_u64(distinct, start, end - start))
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
    _write_u64(_duplicates_location(job.stage_dir, job.source, job.partition, "dups"), dup_hashes[grouped])
    _write_u64(_duplicates_location(job.stage_dir, job.source, job.partition, "index"), index)
    summary = {
        "fingerprint": job.fingerprint(),
        "source": job.source,
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
class SentenceDedupReader:
    """Reads one part of the input stage and removes the sentences its duplicate spans cover.

    Each document keeps its id, meta and columns; its text loses sentences, and count columns say
    how many sentences and spans it had and why spans were duplicates.
    """

    stage_dir: str
    partitions: int
    spans: SpanParameters
    ordinals: dict[tuple[str, int], int]  # (source, index) -> the part's place in its source's order

    def owned_elsewhere(self, source: str, index: int) -> set[int]:
        ordinal = self.ordinals[(source, index)]
        dropped: set[int] = set()
        for partition in range(self.partitions):
            bounds = _read_u64(_duplicates_location(self.stage_dir, source, partition, "index"), ordinal, 2)
            start, end = int(bounds[0]), int(bounds[1])
            if end > start:
                dups = _duplicates_location(self.stage_dir, source, partition, "dups")
                dropped.update(_read_u64(dups, start, end - start).tolist())
        return dropped

    def read(self, unit: ShardUnit) -> Iterator[Document | Drop | BadRecord]:
        if unit.input is None:
            raise ValueError(f"{unit.source} part {unit.index}: sentence dedup needs an input part")
        spans_at = _hashes_location(self.stage_dir, unit.source, unit.index, "spans")
        hashes = _read_u64(spans_at).tolist()
        owned_elsewhere = self.owned_elsewhere(unit.source, unit.index)
        seen_in_part: set[int] = set()
        n = self.spans.n_sentences
        position = 0
        for row, doc in enumerate(read_part(resolve(unit.input.uri))):
            lines, sentences = document_sentences(doc.text, self.spans.language)
            sentence_count = sum(len(s) for s in sentences)
            spans = span_count(sentence_count, n)
            doc_hashes = hashes[position : position + spans]
            position += spans
            if len(doc_hashes) != spans:
                raise ValueError(f"{spans_at.uri}: fewer span hashes than spans at {unit.input.uri} row {row}")
            removed: set[int] = set()
            in_doc: set[int] = set()
            seen_before = repeated = 0
            for start, value in enumerate(doc_hashes):
                if value == UNHASHED:
                    continue
                if value in in_doc:
                    repeated += 1
                else:
                    in_doc.add(value)
                    if value not in owned_elsewhere and value not in seen_in_part:
                        continue
                    seen_before += 1
                removed.update(range(start, start + n))
            seen_in_part |= in_doc
            if removed:
                doc.text = reassemble(lines, sentences, removed)
            doc.columns[f"{COLUMN_PREFIX}sentences_in"] = sentence_count
            doc.columns[f"{COLUMN_PREFIX}sentences_removed"] = len(removed)
            doc.columns[f"{COLUMN_PREFIX}spans_in"] = spans
            doc.columns[f"{COLUMN_PREFIX}spans_seen_before"] = seen_before
            doc.columns[f"{COLUMN_PREFIX}spans_repeated"] = repeated
            yield doc
        if position != len(hashes):
            raise ValueError(f"{spans_at.uri}: {len(hashes)} span hashes but {position} spans in {unit.input.uri}")


@dataclass
class SentenceDedupStats(StepStats):
    sentences_in: int = 0
    sentences_kept: int = 0
    sentences_removed: int = 0
    sentences_of_dropped_docs: int = 0  # left in documents then dropped as too short
    spans_in: int = 0
    spans_seen_before: int = 0
    spans_repeated: int = 0
    docs_changed: int = 0

    def as_dict(self) -> dict:
        counts = {key: getattr(self, key) for key in COUNT_KEYS}
        return {**super().as_dict(), **counts}


COUNT_KEYS = (
    "sentences_in",
    "sentences_kept",
    "sentences_removed",
    "sentences_of_dropped_docs",
    "spans_in",
    "spans_seen_before",
    "spans_repeated",
    "docs_changed",
)


class DedupedLength(Step):
    """Counts what sentence dedup removed; drops documents it shortened below the minimums."""

    name = "sentence_dedup"

    def __init__(self, min_sentences: int, min_words: int) -> None:
        super().__init__()
        if min_sentences < 0 or min_words < 0:
            raise ValueError(f"min_sentences and min_words must be >= 0, got {min_sentences}, {min_words}")
        self.min_sentences = min_sentences
        self.min_words = min_words
        self.stats = SentenceDedupStats()

    def apply(self, doc: Document) -> Document | Drop:
        sentences_in = doc.columns[f"{COLUMN_PREFIX}sentences_in"]
        removed = doc.columns[f"{COLUMN_PREFIX}sentences_removed"]
        left = sentences_in - removed
        self.stats.sentences_in += sentences_in
        self.stats.sentences_removed += removed
        self.stats.spans_in += doc.columns[f"{COLUMN_PREFIX}spans_in"]
        self.stats.spans_seen_before += doc.columns[f"{COLUMN_PREFIX}spans_seen_before"]
        self.stats.spans_repeated += doc.columns[f"{COLUMN_PREFIX}spans_repeated"]
        if removed:
            self.stats.docs_changed += 1
            reason = self._too_short(doc.text, left)
            if reason:
                self.stats.sentences_of_dropped_docs += left
                return self.drop(reason)
        self.stats.sentences_kept += left
        return doc

    def _too_short(self, text: str, sentences_left: int) -> str | None:
        if sentences_left < self.min_sentences:
            return "too_few_sentences"
        if len(text.split()) < self.min_words:
            return "too_few_words"
        return None


def _steps(min_sentences: int, min_words: int) -> list[Step]:
    return [DedupedLength(min_sentences, min_words)]


# ----------------------------------------------------------------------------- the whole algorithm


def _partitions_for(units: Sequence[ShardUnit], bytes_per_partition: int) -> int:
    total = sum(u.input.size for u in units if u.input is not None)
    return max(1, math.ceil(total / bytes_per_partition))


def _output_columns(units: Sequence[ShardUnit]) -> pa.Schema:
    """Typed columns earlier stages added (carried through), then this stage's counts."""
    with resolve(units[0].input.uri).open_random_access() as f:
        schema = pq.ParquetFile(f).schema_arrow
    own = set(DOCUMENT_SCHEMA.names) | set(COUNT_COLUMNS.names)
    return pa.schema([f for f in schema if f.name not in own] + list(COUNT_COLUMNS))


@dataclass(frozen=True)
class SentenceDedupPlan:
    """The three passes' jobs and the pass-3 stage spec for one input stage."""

    hash_jobs: list[HashJob]
    partition_jobs: list[PartitionJob]
    spec: StageSpec
    units: list[ShardUnit]


def plan_sentence_dedup(
    input_stage: Location,
    root: str,
    stage_name: str = "sentence_dedup",
    n_sentences: int = 3,
    min_sentences: int = 3,
    min_words: int = 50,
    language: str = "en",
    partitions: int | None = None,
    sources: Sequence[str] | None = None,
    input_bytes_per_partition: int = DEFAULT_INPUT_BYTES_PER_PARTITION,
) -> SentenceDedupPlan:
    if n_sentences < 1:
        raise ValueError(f"n_sentences must be >= 1, got {n_sentences}")
    units = sorted(units_from_stage(input_stage, sources), key=lambda u: (u.source, u.index))
    if not units:
        raise ValueError(f"{input_stage.uri}: no parts to deduplicate (sources={sources})")
    partitions = partitions or _partitions_for(units, input_bytes_per_partition)
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    stage_dir = resolve(root).join(stage_name)
    spans = SpanParameters(n_sentences, language)
    hash_jobs = [
        HashJob(stage_dir.uri, u.source, u.index, u.input.uri, u.input.sha256, partitions, spans) for u in units
    ]
    by_source: dict[str, list[HashJob]] = {}
    for job in hash_jobs:
        by_source.setdefault(job.source, []).append(job)
    ordinals = {(job.source, job.index): o for jobs in by_source.values() for o, job in enumerate(jobs)}
    partition_jobs = [
        PartitionJob(stage_dir.uri, source, p, partitions, tuple((j.index, j.fingerprint()) for j in jobs))
        for source, jobs in sorted(by_source.items())
        for p in range(partitions)
    ]
    spec = StageSpec(
        root=root,
        name=stage_name,
        reader=SentenceDedupReader(stage_dir.uri, partitions, spans, ordinals),
        steps=partial(_steps, min_sentences, min_words),
        parameters={
            "n_sentences": n_sentences,
            "min_sentences": min_sentences,
            "min_words": min_words,
            "language": language,
            "partitions": partitions,
            "span_hashing": _fingerprint(spans.fingerprint_payload()),
            "inputs": _fingerprint([[j.source, j.index, j.part_sha256] for j in hash_jobs]),
        },
        extra_columns=_output_columns(units),
    )
    return SentenceDedupPlan(hash_jobs, partition_jobs, spec, units)


def run_sentence_dedup(
    input_stage: Location,
    root: str,
    stage_name: str = "sentence_dedup",
    n_sentences: int = 3,
    min_sentences: int = 3,
    min_words: int = 50,
    language: str = "en",
    partitions: int | None = None,
    sources: Sequence[str] | None = None,
    input_bytes_per_partition: int = DEFAULT_INPUT_BYTES_PER_PARTITION,
) -> dict[str, Any]:
    """Deduplicate the sentence spans of a finished stage's parts into ``stage_name``; return its manifest.

    Each source is its own global order. ``partitions`` (pass 2's hash partitions) defaults to one
    per ``input_bytes_per_partition`` bytes of input parts, which bounds a pass-2 worker's memory.
    The manifest's ``sentence_dedup`` entry holds the documents, sentences and spans of the sources
    run; they reconcile or this raises.
    """
    plan = plan_sentence_dedup(
        input_stage, root, stage_name, n_sentences, min_sentences, min_words, language, partitions, sources,
        input_bytes_per_partition,
    )
    sources_run = sorted({u.source for u in plan.units})
    if not stage_is_complete(plan.spec, sources_run):
        hashed = _run_remote(hash_part, plan.hash_jobs)
        found = _run_remote(find_duplicates, plan.partition_jobs)
        run_stage(plan.spec, plan.units)
        _check_hash_counts(hashed, found)
    manifest = load_manifest(plan.spec)
    manifest["sentence_dedup"] = sentence_counts(manifest, sources_run)
    return manifest


def _check_hash_counts(hashed: list[dict], found: list[dict]) -> None:
    distinct = sum(h["distinct"] for h in hashed)
    owned = sum(f["owned"] for f in found)
    duplicates = sum(f["duplicates"] for f in found)
    if owned + duplicates != distinct:
        raise RuntimeError(f"sentence dedup: {owned} owned + {duplicates} duplicate hashes != {distinct} distinct")


def sentence_counts(manifest: dict[str, Any], sources: Sequence[str]) -> dict[str, Any]:
    """Documents, sentences and spans of the given sources' parts; every one accounted for."""
    totals: dict[str, Any] = dict.fromkeys(("docs_in", "docs_kept", "docs_quarantined", *COUNT_KEYS), 0)
    dropped: dict[str, int] = {}
    for part in manifest["parts"]:
        if part["source"] not in sources:
            continue
        totals["docs_in"] += part["docs_in"]
        totals["docs_kept"] += part["kept"]
        totals["docs_quarantined"] += part["quarantined"]
        for reason, count in part["dropped"].items():
            dropped[reason] = dropped.get(reason, 0) + count
        for key in COUNT_KEYS:
            totals[key] += part["steps"]["sentence_dedup"][key]
    totals["docs_dropped"] = dict(sorted(dropped.items()))
    if totals["docs_in"] != totals["docs_kept"] + sum(dropped.values()) + totals["docs_quarantined"]:
        raise RuntimeError(f"sentence dedup: documents do not reconcile: {totals}")
    sentences = totals["sentences_kept"] + totals["sentences_removed"] + totals["sentences_of_dropped_docs"]
    if sentences != totals["sentences_in"]:
        raise RuntimeError(f"sentence dedup: {totals['sentences_in']} sentences in, but {sentences} kept or removed")
    return totals
