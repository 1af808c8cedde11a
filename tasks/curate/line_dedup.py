"""Exact line-level deduplication (CCNet), global over every part of a source (or of all sources).

Every line is normalised (:func:`normalise_line`) and hashed to 64 bits (the first 8 bytes of its
SHA-1, read little-endian, as CCNet's ``str_hash``). Documents are put in one global order,
(source, part index, row), and a line is kept only where its hash occurs for the first time in
that order: a line already seen in an earlier document goes, and so does a line repeated inside
its own document. Documents left shorter than ``min_chars`` are then dropped with a reason.

The three passes and their files are :mod:`tasks.curate.dedup_files` (read its docstring), with
line hashes as the pieces::

    <stage>/_line_hashes/<source>/part-NNNNN.{lines,distinct,json}   pass 1
    <stage>/_duplicates/<scope>/p-PPPPP.{dups,index,json}            pass 2, per hash partition
    <stage>/<source>/part-NNNNN.parquet                              pass 3: a normal stage

Pass 2's scope is each source, or with ``across_sources`` all of them together (``_all_sources``).
"""

from __future__ import annotations

import hashlib
import sys
import unicodedata
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache, partial
from typing import Any

import pyarrow as pa

from tasks.curate import dedup_files
from tasks.curate.dedup_files import DUPLICATES, REPEATED, SEEN_BEFORE, UNHASHED, DedupFiles, DedupPlan, PartHashJob
from tasks.documents import BadRecord, Document
from tasks.shards import read_part
from tasks.stage import ShardUnit, StageSpec
from tasks.steps import Drop, Step, StepStats
from tasks.storage import Location, resolve

# Bump when normalisation or hashing changes: every pass's fingerprint includes it.
NORMALISATION_VERSION = 1
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
    """A line that normalises to nothing (blank, punctuation only) is structure, not content: it
    gets UNHASHED and is never deduplicated."""
    normalised = normalise_line(line)
    if not normalised:
        return UNHASHED
    value = int.from_bytes(hashlib.sha1(normalised.encode("utf-8")).digest()[:8], "little")
    return value or 1


def split_lines(text: str) -> list[str]:
    # "\n" only, as CCNet: a "\r" stays with its line and normalises away as whitespace.
    return text.split("\n")


# ---------------------------------------------------------------- pass 1: hash every line of a part


def line_files(stage_dir: str) -> DedupFiles:
    return DedupFiles(stage_dir, HASHES_DIR, DUPLICATES_DIR, pieces="lines", scope_key="scope")


@dataclass(frozen=True)
class HashJob(PartHashJob):
    def hashing_payload(self) -> list:
        return [NORMALISATION_VERSION]


def hash_part(job: HashJob) -> dict[str, Any]:
    """Pass 1: write the part's per-line hashes and its distinct hashes by partition."""
    if job.is_done():
        return job.marker().read_json()
    hashes = array("Q")
    docs = 0
    for doc in read_part(resolve(job.part_uri)):
        docs += 1
        hashes.extend(line_hash(line) for line in split_lines(doc.text))
    return dedup_files.write_part_hashes(job, hashes, {"docs": docs})


# ------------------------------------------------------- pass 3: rewrite each part without them


@dataclass(frozen=True)
class LineDedupReader:
    """Reads one part of the input stage and removes the lines its pass-2 lists and itself repeat.

    Each document keeps its id, meta and columns; its text loses lines, and three count columns say
    how many lines it had and why the removed ones went.
    """

    files: DedupFiles
    partitions: int
    # (source, index) -> (scope, ordinal of the part in the scope's global order)
    placement: dict[tuple[str, int], tuple[str, int]]

    def read(self, unit: ShardUnit) -> Iterator[Document | Drop | BadRecord]:
        if unit.input is None:
            raise ValueError(f"{unit.source} part {unit.index}: line dedup needs an input part")
        first = dedup_files.FirstOccurrences(self.files, self.partitions, self.placement, unit)
        for row, doc in enumerate(read_part(resolve(unit.input.uri))):
            lines = split_lines(doc.text)
            verdicts = first.judge(len(lines), row)
            doc.text = "\n".join(line for line, verdict in zip(lines, verdicts) if verdict not in DUPLICATES)
            doc.columns["line_dedup_lines_in"] = len(lines)
            doc.columns["line_dedup_removed_seen_before"] = verdicts.count(SEEN_BEFORE)
            doc.columns["line_dedup_removed_repeated"] = verdicts.count(REPEATED)
            yield doc
        first.check_all_judged()


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


def plan_line_dedup(
    input_stage: Location,
    root: str,
    stage_name: str = "line_dedup",
    min_chars: int = 300,
    across_sources: bool = False,
    partitions: int | None = None,
    sources: Sequence[str] | None = None,
    input_bytes_per_partition: int = dedup_files.DEFAULT_INPUT_BYTES_PER_PARTITION,
) -> DedupPlan:
    units = dedup_files.units_to_deduplicate(input_stage, sources)
    partitions = dedup_files.partition_count(units, partitions, input_bytes_per_partition)
    files = line_files(resolve(root).join(stage_name).uri)
    hash_jobs = [HashJob(files, u.source, u.index, u.input.uri, u.input.sha256, partitions) for u in units]
    scopes = dedup_files.by_scope(hash_jobs, lambda source: ACROSS_SOURCES_SCOPE if across_sources else source)

    def scope_fingerprint(jobs: list[PartHashJob]) -> str:
        parts = [[j.source, j.index, j.fingerprint()] for j in jobs]
        return dedup_files.fingerprint([NORMALISATION_VERSION, partitions, parts])

    spec = StageSpec(
        root=root,
        name=stage_name,
        reader=LineDedupReader(files, partitions, dedup_files.placement(scopes)),
        steps=partial(_steps, min_chars),
        parameters={
            "min_chars": min_chars,
            "across_sources": across_sources,
            "partitions": partitions,
            "normalisation_version": NORMALISATION_VERSION,
            "inputs": dedup_files.inputs_fingerprint(hash_jobs),
        },
        extra_columns=dedup_files.output_columns(units, COUNT_COLUMNS),
    )
    return DedupPlan(hash_jobs, dedup_files.partition_jobs(files, scopes, partitions, scope_fingerprint), spec, units)


def run_line_dedup(
    input_stage: Location,
    root: str,
    stage_name: str = "line_dedup",
    min_chars: int = 300,
    across_sources: bool = False,
    partitions: int | None = None,
    sources: Sequence[str] | None = None,
    input_bytes_per_partition: int = dedup_files.DEFAULT_INPUT_BYTES_PER_PARTITION,
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
    manifest = dedup_files.run_plan(plan, hash_part, "line dedup")
    manifest["line_dedup"] = line_counts(manifest, plan.sources)
    return manifest


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
