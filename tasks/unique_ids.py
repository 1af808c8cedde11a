"""Document ids unique within a stage, whatever repeats in its inputs; and the check of a stage's ids.

A reader names a document by its source's natural key (:func:`tasks.documents.make_doc_id`: C4's
URL, Common Crawl's WARC-Record-ID, Wikipedia's language and page id, ...). Natural keys repeat in
real data: a URL twice in one C4 file or in two of its 1024, a page twice in a dump or in two
dumps of one wiki, a record in two crawl files. A stage part sees one input, or one byte range of
it, so it cannot know of a repeat in another file or in another split of its own file: uniqueness
is the stage's, and :func:`disambiguate` makes it hold once the parts of a run are written.

The rule. The stage's documents are taken in one global order, (source, part index, row): input
order, then record order inside an input. The parts of one split file are consecutive and in file
order, so this order (and all that follows) does not depend on how a file was split. The first
occurrence of a natural key keeps its natural id; the k-th is renamed ``<natural id>~k``. Every
document is kept: whether two records are the same document is deduplication, which the curation
recipe does with its own rules and audit (line dedup, MinHash), and that audit needs two distinct
ids to name a dropped copy and the one it duplicates.

Why not the alternatives. Deriving every id from the record's position in its input (file,
offset) would make ids change when a file is moved or renamed, and a whole-file read and a split
read name positions differently (record numbers against gzip-member or bz2-stream offsets).
Adding a content digest and dropping exact repeats here would need every text's digest and would
change the row counts of finished parts from other parts' content; renaming needs only the ids,
leaves every row where it was, and leaves the ids of the (overwhelmingly many) unique keys as
they were, joinable to their source.

Memory: no process holds the ids of a stage. Pass 1, one Ray task per part, writes the part's ids
with their rows into ``B`` buckets by a hash of the natural id (an Arrow IPC file with one record
batch per bucket, so a reader fetches just its bucket). Pass 2, one task per bucket, reads its
bucket from every part: all occurrences of a natural key meet in one bucket. Pass 3, one task
per part that holds a renamed document, rewrites that part. ``B`` keeps a bucket near
:data:`ROWS_PER_BUCKET` ids. Passes 1 and 2 also check a finished stage
(:func:`find_duplicate_ids`, used by ``llamaline shards``), naming both places of a duplicate.

Crash safety. Pass 2 renames only documents whose id is held by an earlier one; each takes the
smallest occurrence number that no document of its key holds. A crash between two rewrites leaves
some parts renamed; on the rerun the renamed documents hold their numbers and the others take the
remaining ones in order, which are the numbers a run without the crash gave them. A part is
rewritten beside the stage, its receipt saved with the new checksum, and then moved into place:
a crash before the move leaves the old part, which the rerun renames again, to the same bytes.
Scratch files live in ``<stage>/_unique_ids-<sources>/`` and are deleted when the passes end.
"""

from __future__ import annotations

import math
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.documents import REPEAT_MARK, REPEAT_SUFFIX, REQUIRED_COLUMNS, repeat_id, split_repeat
from tasks.executor import run_each
from tasks.shards import PartReceipt, ShardWriter, part_location, part_name, read_part, receipt_location
from tasks.storage import Location, atomic_output, resolve, sha256_of

SCRATCH = "_unique_ids"
ROWS_PER_BUCKET = 1 << 21  # ids a pass-2 task holds: ~200 MB in Arrow at ~40 characters an id
ID_SCHEMA = pa.schema([pa.field("id", pa.string(), nullable=False), pa.field("row", pa.int64(), nullable=False)])
MAX_EXAMPLES = 20  # duplicates listed per bucket by the check; all of them are counted



def bucket_count(rows: int, rows_per_bucket: int = ROWS_PER_BUCKET) -> int:
    return max(1, math.ceil(rows / rows_per_bucket))


def buckets_of(ids: pa.Array, buckets: int) -> np.ndarray:
    """The bucket of each id: by its natural id, so every occurrence of a key lands in the same one."""
    if buckets == 1:
        return np.zeros(len(ids), dtype=np.int64)
    naturals = natural_ids(ids).to_pylist()
    return np.fromiter((zlib.crc32(n.encode()) % buckets for n in naturals), dtype=np.int64, count=len(naturals))


# ------------------------------------------------------------- pass 1: a part's ids, by bucket


@dataclass(frozen=True)
class PartIds:
    scratch: str
    ordinal: int  # of the part in the global order
    part: str
    buckets: int


def index_file(scratch: str, ordinal: int) -> Location:
    return resolve(scratch).join("ids", f"part-{ordinal:06d}.arrow")


def index_part_ids(job: PartIds) -> int:
    """Pass 1: write the part's ids and rows, one record batch per bucket; return its row count."""
    with resolve(job.part).open_random_access() as f:
        ids = pq.ParquetFile(f).read(columns=["id"]).column("id").combine_chunks()
    if ids.null_count:
        raise ValueError(f"{job.part}: {ids.null_count} documents without an id")
    buckets = buckets_of(ids, job.buckets)
    order = np.argsort(buckets, kind="stable")  # rows stay in order inside a bucket
    sorted_ids = ids.take(pa.array(order))
    sorted_rows = pa.array(order, type=pa.int64())
    bounds = np.searchsorted(buckets[order], np.arange(job.buckets + 1))
    with atomic_output(index_file(job.scratch, job.ordinal)) as stream, pa.ipc.new_file(stream, ID_SCHEMA) as writer:
        for bucket in range(job.buckets):
            start, length = int(bounds[bucket]), int(bounds[bucket + 1] - bounds[bucket])
            writer.write_batch(
                pa.record_batch([sorted_ids.slice(start, length), sorted_rows.slice(start, length)], schema=ID_SCHEMA)
            )
    return len(ids)


# --------------------------------------------------- pass 2: a bucket's ids from every part


@dataclass(frozen=True)
class BucketJob:
    scratch: str
    bucket: int
    parts: int  # ordinals 0 .. parts - 1


Occurrence = tuple[str, int, int]  # (id, part ordinal, row)


def natural_ids(ids: pa.Array) -> pa.Array:
    characters = ids.buffers()[2]
    if characters is None or REPEAT_MARK.encode() not in characters.to_pybytes():  # mostly: no renamed id
        return ids
    return pc.replace_substring_regex(ids, pattern=REPEAT_SUFFIX, replacement="")


def repeated_keys(job: BucketJob) -> list[list[Occurrence]]:
    """The occurrences of each natural id found more than once in this bucket, in global order."""
    ids: list[pa.Array] = []
    ordinals: list[np.ndarray] = []
    rows: list[np.ndarray] = []
    for ordinal in range(job.parts):
        try:
            with index_file(job.scratch, ordinal).open_random_access() as f:
                batch = pa.ipc.open_file(f).get_batch(job.bucket)
        except FileNotFoundError:  # the check's pass 1 could not read this part
            continue
        ids.append(batch.column("id"))
        rows.append(batch.column("row").to_numpy())
        ordinals.append(np.full(batch.num_rows, ordinal, dtype=np.int64))
    if not ids or not sum(len(i) for i in ids):
        return []
    all_ids = pa.concat_arrays(ids)
    all_ordinals, all_rows = np.concatenate(ordinals), np.concatenate(rows)
    naturals = natural_ids(all_ids)
    # Hash-count the natural ids, then sort only the repeated ones: the rest (nearly all) never
    # leave Arrow. The parts' batches were concatenated in global order and the sort is stable.
    counts = pa.table({"natural": naturals}).group_by("natural").aggregate([("natural", "count")])
    repeated = counts.filter(pc.greater(counts["natural_count"], 1))["natural"]
    if not len(repeated):
        return []
    positions = np.flatnonzero(pc.is_in(naturals, value_set=repeated.combine_chunks()).to_numpy(zero_copy_only=False))
    in_order = naturals.take(pa.array(positions))
    picked = positions[pc.sort_indices(in_order).to_numpy()]
    groups: list[list[Occurrence]] = []
    previous = None
    for doc_id, natural, ordinal, row in zip(
        all_ids.take(pa.array(picked)).to_pylist(),
        naturals.take(pa.array(picked)).to_pylist(),
        all_ordinals[picked].tolist(),
        all_rows[picked].tolist(),
    ):
        if natural != previous:
            groups.append([])
            previous = natural
        groups[-1].append((doc_id, ordinal, row))
    return groups


def renumber(ids: Sequence[str]) -> list[str]:
    """The ids the occurrences of one natural key (in global order) must have.

    An id held by no earlier occurrence stays; a later holder of a taken id gets the smallest
    occurrence number (from 2) that no occurrence holds. From the natural ids this numbers the
    occurrences 1, 2, 3, ...; from a state where some were already renamed, it gives the others
    the numbers that the run from the natural ids gave them.
    """
    natural = split_repeat(ids[0])[0]
    kept: set[str] = set()
    taken: set[int] = set()
    later: list[int] = []
    for position, doc_id in enumerate(ids):
        if doc_id in kept:
            later.append(position)
        else:
            kept.add(doc_id)
            taken.add(split_repeat(doc_id)[1])
    result = list(ids)
    number = 2
    for position in later:
        while number in taken:
            number += 1
        result[position] = repeat_id(natural, number)
        taken.add(number)
    return result


def plan_renames(job: BucketJob) -> list[tuple[int, int]]:
    """Pass 2 of :func:`disambiguate`: write this bucket's renames, one record batch per part.

    Returns (part ordinal, record batch) for each part with a rename.
    """
    renames: list[tuple[int, int, str]] = []
    for group in repeated_keys(job):
        wanted = renumber([doc_id for doc_id, _, _ in group])
        renames += [(ordinal, row, new) for (old, ordinal, row), new in zip(group, wanted) if new != old]
    if not renames:
        return []
    by_part: dict[int, list[tuple[int, str]]] = {}
    for ordinal, row, new_id in sorted(renames):
        by_part.setdefault(ordinal, []).append((row, new_id))
    with atomic_output(renames_file(job.scratch, job.bucket)) as stream, pa.ipc.new_file(stream, ID_SCHEMA) as writer:
        for part_renames in by_part.values():
            new_ids = pa.array([doc_id for _, doc_id in part_renames], pa.string())
            writer.write_batch(pa.record_batch([new_ids, pa.array([r for r, _ in part_renames], pa.int64())], schema=ID_SCHEMA))
    return [(ordinal, batch) for batch, ordinal in enumerate(by_part)]


def renames_file(scratch: str, bucket: int) -> Location:
    return resolve(scratch).join("renames", f"bucket-{bucket:06d}.arrow")


# ------------------------------------------------------- pass 3: rewrite a part with new ids


@dataclass(frozen=True)
class RewriteJob:
    scratch: str
    stage_dir: str
    source: str
    index: int
    renames: tuple[tuple[int, int], ...]  # (bucket, record batch of its renames file)


def rewrite_part(job: RewriteJob) -> PartReceipt:
    """Pass 3: the part with its renamed ids, byte for byte what writing those ids first gives."""
    new_ids: dict[int, str] = {}
    for bucket, batch_index in job.renames:
        with renames_file(job.scratch, bucket).open_random_access() as f:
            batch = pa.ipc.open_file(f).get_batch(batch_index)
        new_ids.update(zip(batch.column("row").to_pylist(), batch.column("id").to_pylist()))
    stage_dir = resolve(job.stage_dir)
    target = part_location(stage_dir, job.source, job.index)
    staged = resolve(job.scratch).join("rewritten", job.source, part_name(job.index) + ".parquet")
    with target.open_random_access() as f:
        schema = pq.ParquetFile(f).schema_arrow
    extra = pa.schema([f for f in schema if f.name not in REQUIRED_COLUMNS])
    with ShardWriter(staged, extra if len(extra) else None) as writer:
        for row, doc in enumerate(read_part(target)):
            doc.id = new_ids.get(row, doc.id)
            writer.write(doc)
    receipt_at = receipt_location(stage_dir, job.source, job.index)
    receipt = PartReceipt(**receipt_at.read_json())
    receipt.bytes = staged.size()
    receipt.sha256 = sha256_of(staged)
    receipt.ids_disambiguated = len(new_ids)
    receipt.save(receipt_at)
    staged.fs.move(staged.path, target.path)
    return receipt


# -------------------------------------------------------------------------------- the passes


def disambiguate(
    stage_dir: Location, receipts: Sequence[PartReceipt], rows_per_bucket: int = ROWS_PER_BUCKET
) -> list[PartReceipt]:
    """Rename repeated natural keys across the parts of a run (see the module docstring).

    Returns the receipts in global order, those of rewritten parts updated.
    """
    ordered = sorted(receipts, key=lambda r: (r.source, r.index))
    rows = sum(r.rows for r in ordered)
    if not rows:
        return ordered
    scratch = stage_dir.join(f"{SCRATCH}-{'+'.join(sorted({r.source for r in ordered}))}")
    scratch.delete()  # a crashed run's leftovers: this run recomputes everything
    buckets = bucket_count(rows, rows_per_bucket)
    indexed = run_each(index_part_ids, [PartIds(scratch.uri, n, r.path, buckets) for n, r in enumerate(ordered)])
    for receipt, found in zip(ordered, indexed):
        if found != receipt.rows:
            raise ValueError(f"{receipt.path}: {found} ids, its receipt says {receipt.rows} rows")
    plans = run_each(plan_renames, [BucketJob(scratch.uri, b, len(ordered)) for b in range(buckets)])
    renames: dict[int, list[tuple[int, int]]] = {}
    for bucket, plan in enumerate(plans):
        for ordinal, batch in plan:
            renames.setdefault(ordinal, []).append((bucket, batch))
    jobs = [
        RewriteJob(scratch.uri, stage_dir.uri, ordered[o].source, ordered[o].index, tuple(r))
        for o, r in sorted(renames.items())
    ]
    rewritten = {(r.source, r.index): r for r in run_each(rewrite_part, jobs)}
    scratch.delete()
    return [rewritten.get((r.source, r.index), r) for r in ordered]


@dataclass(frozen=True)
class Duplicate:
    doc_id: str
    first: tuple[int, int]  # (part ordinal, row) of the first holder
    again: tuple[int, int]  # of a later one


def duplicates_in_bucket(job: BucketJob) -> tuple[int, list[Duplicate]]:
    """Pass 2 of the check: how many documents hold an id an earlier one holds, and some of them."""
    count, examples = 0, []
    for group in repeated_keys(job):
        first: dict[str, tuple[int, int]] = {}
        for doc_id, ordinal, row in group:
            if doc_id not in first:
                first[doc_id] = (ordinal, row)
                continue
            count += 1
            if len(examples) < MAX_EXAMPLES:
                examples.append(Duplicate(doc_id, first[doc_id], (ordinal, row)))
    return count, examples


def index_readable_part(job: PartIds) -> str | None:
    """The check's pass 1: an unreadable part is left out (its own check reports it)."""
    try:
        index_part_ids(job)
    except (OSError, pa.ArrowException, TypeError, ValueError) as exc:
        return f"{job.part}: ids not read: {exc}"
    return None


def find_duplicate_ids(
    parts: Sequence[str], rows: int, scratch_root: Location, rows_per_bucket: int = ROWS_PER_BUCKET
) -> tuple[int, list[tuple[str, str, int, str, int]]]:
    """Documents of ``parts`` (part files, in global order) whose id an earlier document holds.

    Returns their count and up to :data:`MAX_EXAMPLES` per bucket as (id, first part, its row,
    repeating part, its row). ``scratch_root`` holds the ids index while the check runs.
    """
    if not parts:
        return 0, []
    scratch = scratch_root.join(f"{SCRATCH}-check-{uuid.uuid4().hex}")
    buckets = bucket_count(rows, rows_per_bucket)
    try:
        run_each(index_readable_part, [PartIds(scratch.uri, n, p, buckets) for n, p in enumerate(parts)])
        found = run_each(duplicates_in_bucket, [BucketJob(scratch.uri, b, len(parts)) for b in range(buckets)])
    finally:
        scratch.delete()
    count = sum(n for n, _ in found)
    examples = [
        (d.doc_id, parts[d.first[0]], d.first[1], parts[d.again[0]], d.again[1]) for _, listed in found for d in listed
    ]
    return count, examples
