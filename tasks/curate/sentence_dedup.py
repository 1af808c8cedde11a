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

The three passes and their files are :mod:`tasks.curate.dedup_files` (read its docstring), with
span hashes as the pieces and each source its own scope::

    <stage>/_span_hashes/<source>/part-NNNNN.{spans,distinct,json}      pass 1
    <stage>/_span_duplicates/<source>/p-PPPPP.{dups,index,json}         pass 2, per hash partition
    <stage>/<source>/part-NNNNN.parquet                                 pass 3: a normal stage

Pass 2's memory is one partition's share of the source's distinct span hashes; pass 3's is one
part's. Every pass skips work its completion marker (with a fingerprint of its inputs, the
splitter's version and the parameters) says is done, so a rerun after a crash rebuilds the same
bytes.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache, partial
from importlib.metadata import version
from typing import Any

import pyarrow as pa
from sentencex import segment

from tasks.curate import dedup_files
from tasks.curate.dedup_files import DUPLICATES, REPEATED, SEEN_BEFORE, UNHASHED, DedupFiles, DedupPlan, PartHashJob
from tasks.curate.line_dedup import NORMALISATION_VERSION, normalise_line
from tasks.documents import BadRecord, Document
from tasks.shards import read_part
from tasks.stage import ShardUnit, StageSpec
from tasks.steps import Drop, Step, StepStats
from tasks.storage import Location, resolve

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


def span_files(stage_dir: str) -> DedupFiles:
    # Each source is its own scope, so pass 2's markers name it as the source.
    return DedupFiles(stage_dir, HASHES_DIR, DUPLICATES_DIR, pieces="spans", scope_key="source")


@dataclass(frozen=True)
class HashJob(PartHashJob):
    spans: SpanParameters

    def hashing_payload(self) -> list:
        return self.spans.fingerprint_payload()


def hash_part(job: HashJob) -> dict[str, Any]:
    """Pass 1: write the part's span hashes in document order and its distinct ones by partition."""
    if job.is_done():
        return job.marker().read_json()
    hashes = array("Q")
    docs = sentences = 0
    for doc in read_part(resolve(job.part_uri)):
        docs += 1
        flat = _flatten(document_sentences(doc.text, job.spans.language)[1])
        sentences += len(flat)
        hashes.extend(span_hashes(flat, job.spans.n_sentences))
    return dedup_files.write_part_hashes(job, hashes, {"docs": docs, "sentences": sentences})


# ------------------------------------------------------- pass 3: rewrite each part without them


@dataclass(frozen=True)
class SentenceDedupReader:
    """Reads one part of the input stage and removes the sentences its duplicate spans cover.

    Each document keeps its id, meta and columns; its text loses sentences, and count columns say
    how many sentences and spans it had and why spans were duplicates.
    """

    files: DedupFiles
    partitions: int
    spans: SpanParameters
    # (source, index) -> (scope: the source, ordinal of the part in the source's global order)
    placement: dict[tuple[str, int], tuple[str, int]]

    def read(self, unit: ShardUnit) -> Iterator[Document | Drop | BadRecord]:
        if unit.input is None:
            raise ValueError(f"{unit.source} part {unit.index}: sentence dedup needs an input part")
        first = dedup_files.FirstOccurrences(self.files, self.partitions, self.placement, unit)
        n = self.spans.n_sentences
        for row, doc in enumerate(read_part(resolve(unit.input.uri))):
            lines, sentences = document_sentences(doc.text, self.spans.language)
            sentence_count = sum(len(s) for s in sentences)
            spans = span_count(sentence_count, n)
            verdicts = first.judge(spans, row)
            removed = {
                sentence
                for start, verdict in enumerate(verdicts)
                if verdict in DUPLICATES
                for sentence in range(start, start + n)
            }
            if removed:
                doc.text = reassemble(lines, sentences, removed)
            doc.columns[f"{COLUMN_PREFIX}sentences_in"] = sentence_count
            doc.columns[f"{COLUMN_PREFIX}sentences_removed"] = len(removed)
            doc.columns[f"{COLUMN_PREFIX}spans_in"] = spans
            doc.columns[f"{COLUMN_PREFIX}spans_seen_before"] = verdicts.count(SEEN_BEFORE)
            doc.columns[f"{COLUMN_PREFIX}spans_repeated"] = verdicts.count(REPEATED)
            yield doc
        first.check_all_judged()


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
    input_bytes_per_partition: int = dedup_files.DEFAULT_INPUT_BYTES_PER_PARTITION,
) -> DedupPlan:
    if n_sentences < 1:
        raise ValueError(f"n_sentences must be >= 1, got {n_sentences}")
    units = dedup_files.units_to_deduplicate(input_stage, sources)
    partitions = dedup_files.partition_count(units, partitions, input_bytes_per_partition)
    files = span_files(resolve(root).join(stage_name).uri)
    spans = SpanParameters(n_sentences, language)
    hash_jobs = [HashJob(files, u.source, u.index, u.input.uri, u.input.sha256, partitions, spans) for u in units]
    scopes = dedup_files.by_scope(hash_jobs, lambda source: source)

    def scope_fingerprint(jobs: list[PartHashJob]) -> str:
        return dedup_files.fingerprint([SPAN_VERSION, partitions, [[j.index, j.fingerprint()] for j in jobs]])

    spec = StageSpec(
        root=root,
        name=stage_name,
        reader=SentenceDedupReader(files, partitions, spans, dedup_files.placement(scopes)),
        steps=partial(_steps, min_sentences, min_words),
        parameters={
            "n_sentences": n_sentences,
            "min_sentences": min_sentences,
            "min_words": min_words,
            "language": language,
            "partitions": partitions,
            "span_hashing": dedup_files.fingerprint(spans.fingerprint_payload()),
            "inputs": dedup_files.inputs_fingerprint(hash_jobs),
        },
        extra_columns=dedup_files.output_columns(units, COUNT_COLUMNS),
    )
    return DedupPlan(hash_jobs, dedup_files.partition_jobs(files, scopes, partitions, scope_fingerprint), spec, units)


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
    input_bytes_per_partition: int = dedup_files.DEFAULT_INPUT_BYTES_PER_PARTITION,
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
    manifest = dedup_files.run_plan(plan, hash_part, "sentence dedup")
    manifest["sentence_dedup"] = sentence_counts(manifest, plan.sources)
    return manifest


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
