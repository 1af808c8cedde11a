"""Tokenize and pack a document stage into shuffled training rows (read back by `tasks.token_reader`).

Layout of a token stage::

    <root>/<stage>/shard-NNNNN.parquet     rows: tokens, doc_starts, source, part, row_in_part
    <root>/<stage>/_packed/<source>/part-NNNNN.parquet|.json   per input part (removed when done)
    <root>/<stage>/_receipts/shard-NNNNN.json                 per output shard
    <root>/<stage>/_manifest.json, _SUCCESS   (the stage is one scope: tasks.executor.WHOLE_STAGE)

Packing (LLaMA/torchtitan style): every document becomes `<s> ids </s>`; the documents of one
input part, in part order, are concatenated and cut into rows of `seq_len + 1` tokens (inputs are
row[:-1], targets row[1:]), a document running on into the next row. The tail of each part that
does not fill a row is dropped and counted (`tokens_dropped`): under one row per part.
`doc_starts` lists the offsets in the row where a document's `<s>` is, so training can keep
attention within documents (`tasks.token_reader.document_ids`).

Global shuffle without one process holding the corpus: each packed row gets a 64-bit key drawn
from (seed, source, part); a part's rows are written sorted by key. Output shard j takes the key
range [j, j+1) * 2^64 / S from every part (only the row groups overlapping it, found from the
first key of each row group), and sorts by key. The shards in order are thus the rows sorted by a
random key: a uniform permutation. Same inputs, tokenizer and seed give byte-identical shards.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.tokenizer import Tokenizer
from tasks.executor import WHOLE_STAGE, finished_receipt, fingerprint, mark, run_marked, run_tasks
from tasks.shards import COMPRESSION, MANIFEST, RECEIPTS, part_name, read_part
from tasks.stage import ShardUnit
from tasks.steps import batched
from tasks.storage import Location, atomic_output, resolve, sha256_of, write_json_atomic
from tasks.version import code_version

PACKED = "_packed"
ENCODE_BATCH_DOCS = 256
PACKED_ROW_GROUP_ROWS = 256  # granularity at which shards pick their key range out of a part
SHARD_ROW_GROUP_ROWS = 1024  # granularity at which the reader permutes and streams
KEY_SPACE = 1 << 64
FORMAT_VERSION = 1


def token_type(vocab_size: int) -> pa.DataType:
    return pa.uint16() if vocab_size <= 1 << 16 else pa.int32()


def shard_schema(vocab_size: int, seq_len: int, loss_mask: bool = False, labels: bool = False) -> pa.Schema:
    fields = [
        ("tokens", pa.list_(token_type(vocab_size), seq_len + 1)),
        ("doc_starts", pa.list_(pa.int32())),
        ("source", pa.string()),
        ("part", pa.int32()),
        ("row_in_part", pa.int32()),
    ]
    if loss_mask:
        fields.insert(2, ("loss_mask", pa.list_(pa.bool_(), seq_len + 1)))
    if labels:
        fields.insert(2, ("labels", pa.list_(pa.int32())))
    return pa.schema(fields)


def shard_location(stage_dir: Location, index: int) -> Location:
    return stage_dir.join(f"shard-{index:05d}.parquet")


@dataclass
class PackedPart:
    """One input part's rows, in part order, and what packing did (summed per source in the manifest)."""

    rows: np.ndarray  # (n, row_tokens)
    doc_starts: pa.ListArray  # per row, in-row offsets where documents (or examples) start
    loss_mask: np.ndarray | None  # (n, row_tokens) bools: tokens trained on as targets; None: all
    counts: dict[str, int]  # documents, tokens, rows, ... (ints, summed per source)
    dropped: dict[str, int] = field(default_factory=dict)  # records not packed, by reason
    labels: pa.ListArray | None = None  # per row, integers of a packer's own (e.g. each pair's rating); None: none


class Packer(Protocol):
    """Turns one input part into rows. `name` goes into the stage's fingerprint and manifest."""

    name: str
    loss_mask: bool
    labels: bool  # whether its rows carry lists of integer labels (PackedPart.labels)
    tail: str  # what becomes of the tokens that do not fill a row (for the manifest)

    def pack(self, unit: ShardUnit, tokenizer: Tokenizer, row_tokens: int, dtype: np.dtype) -> PackedPart: ...


@dataclass(frozen=True)
class DocumentPacker:
    """Pretraining rows: every document `<s> ids </s>`, concatenated in part order and cut into
    rows, a document running on into the next row; the part's tail under one row is dropped."""

    name: str = "documents"
    loss_mask: bool = False
    labels: bool = False
    tail: str = "dropped: each part's last tokens that do not fill a row"

    def pack(self, unit: ShardUnit, tokenizer: Tokenizer, row_tokens: int, dtype: np.dtype) -> PackedPart:
        if unit.input is None:
            raise ValueError(f"{unit.source} part {unit.index}: tokenizing needs an input part")

        def encoded() -> Iterator[list[int]]:
            for docs in batched(read_part(resolve(unit.input.uri)), ENCODE_BATCH_DOCS):
                yield from tokenizer.encode_batch([d.text for d in docs], bos=True, eos=True)

        rows, starts, documents, tokens = pack_stream(encoded(), row_tokens, dtype)
        counts = {"documents": documents, "tokens": tokens, "rows": len(rows),
                  "tokens_dropped": tokens - len(rows) * row_tokens}
        return PackedPart(rows, row_doc_starts(starts, len(rows), row_tokens), None, counts)


@dataclass(frozen=True)
class PackJob:
    """What every packing task shares; picklable for Ray."""

    stage_dir_uri: str
    tokenizer: Tokenizer
    seq_len: int
    seed: int
    fingerprint: str
    packer: Packer = DocumentPacker()

    @property
    def stage_dir(self) -> Location:
        return resolve(self.stage_dir_uri)

    @property
    def row_tokens(self) -> int:
        return self.seq_len + 1


# ---------------------------------------------------------------- phase 1: one input part


def pack_stream(token_lists: Iterator[Sequence[int]], row_tokens: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Concatenate documents' ids and cut them into rows.

    Returns (rows (n, row_tokens), doc start positions in the stream, documents, tokens) where
    rows hold the first n * row_tokens tokens of the stream.
    """
    chunks: list[np.ndarray] = []
    lengths: list[int] = []
    for ids in token_lists:
        chunks.append(np.asarray(ids, dtype=dtype))
        lengths.append(len(ids))
    stream = np.concatenate(chunks) if chunks else np.zeros(0, dtype=dtype)
    starts = np.concatenate([[0], np.cumsum(lengths[:-1], dtype=np.int64)]) if lengths else np.zeros(0, np.int64)
    n_rows = len(stream) // row_tokens
    return stream[: n_rows * row_tokens].reshape(n_rows, row_tokens), starts.astype(np.int64), len(lengths), len(stream)


def row_doc_starts(starts: np.ndarray, n_rows: int, row_tokens: int) -> pa.ListArray:
    """Per row, the in-row offsets of the documents starting in it (int32 lists)."""
    starts = starts[starts < n_rows * row_tokens]
    row_bounds = np.searchsorted(starts, np.arange(n_rows + 1, dtype=np.int64) * row_tokens)
    return pa.ListArray.from_arrays(pa.array(row_bounds, pa.int32()), pa.array(starts % row_tokens, pa.int32()))


class BuiltRows(NamedTuple):
    tokens: np.ndarray  # (rows, row_tokens)
    loss_mask: np.ndarray  # (rows, row_tokens) bools, False where an item came without a mask and in padding
    doc_starts: list[list[int]]  # per row, in-row offsets of its items' documents, then of its padding if any
    items: list[list[int]]  # per row, the numbers (in order added) of the items it holds, in row order


class RowBuilder:
    """Whole items into rows by best-fit decreasing: the longest first, each into the fullest row it
    still fits (a new row when none has room); each row's rest is `pad_id` padding, a document of
    its own. An item is one document (a fine-tuning example) or several laid end to end (a
    comparison's chosen then rejected side), never split across rows. Rows are in the order they
    were opened, items in a row longest first: the same items always give the same rows."""

    def __init__(self, row_tokens: int, pad_id: int) -> None:
        self.row_tokens, self.pad_id = row_tokens, pad_id
        self._items: list[tuple[Sequence[int], Sequence[bool] | None, Sequence[int]]] = []

    def add(self, ids: Sequence[int], mask: Sequence[bool] | None = None, doc_starts: Sequence[int] = (0,)) -> None:
        """One item: its ids, its loss mask (None: no token trained on) and the offsets in it where its
        documents start."""
        if len(ids) > self.row_tokens:
            raise ValueError(f"an item of {len(ids)} tokens does not fit a row of {self.row_tokens}")
        self._items.append((ids, mask, doc_starts))

    def finish(self, dtype: np.dtype) -> BuiltRows:
        order = sorted(range(len(self._items)), key=lambda n: -len(self._items[n][0]))
        rows: list[list[int]] = []  # item numbers per row
        room: list[int] = []
        by_room: list[tuple[int, int]] = []  # (room left, row), sorted: the fullest row that fits by bisect
        for n in order:
            length = len(self._items[n][0])
            at = bisect.bisect_left(by_room, (length, -1))
            if at == len(by_room):
                rows.append([])
                room.append(self.row_tokens)
                row = len(rows) - 1
            else:
                _, row = by_room.pop(at)
            rows[row].append(n)
            room[row] -= length
            bisect.insort(by_room, (room[row], row))
        tokens = np.full((len(rows), self.row_tokens), self.pad_id, dtype=dtype)
        masks = np.zeros((len(rows), self.row_tokens), dtype=bool)
        starts: list[list[int]] = []
        for r, members in enumerate(rows):
            offset, row_starts = 0, []
            for n in members:
                ids, mask, item_starts = self._items[n]
                row_starts.extend(offset + start for start in item_starts)
                tokens[r, offset:offset + len(ids)] = ids
                if mask is not None:
                    masks[r, offset:offset + len(ids)] = mask
                offset += len(ids)
            if offset < self.row_tokens:
                row_starts.append(offset)  # the padding
            starts.append(row_starts)
        return BuiltRows(tokens, masks, starts, rows)


def row_keys(seed: int, source: str, part: int, n_rows: int) -> np.ndarray:
    source_word = int.from_bytes(hashlib.blake2b(source.encode(), digest_size=8).digest(), "little")
    generator = np.random.PCG64(np.random.SeedSequence([seed, source_word, part]))
    return generator.random_raw(n_rows).astype(np.uint64)


def packed_location(stage_dir: Location, source: str, part: int, suffix: str) -> Location:
    return stage_dir.join(PACKED, source, part_name(part) + suffix)


def pack_part(job: PackJob, unit: ShardUnit) -> dict[str, Any]:
    """Pack one input part and write its rows sorted by shuffle key; skip if done."""
    receipt_at = packed_location(job.stage_dir, unit.source, unit.index, ".json")
    done = finished_receipt(receipt_at, job.fingerprint)
    if done is not None:
        return done
    dtype = np.dtype(token_type(job.tokenizer.vocab_size).to_pandas_dtype())
    packed = job.packer.pack(unit, job.tokenizer, job.row_tokens, dtype)
    n_rows = len(packed.rows)
    keys = row_keys(job.seed, unit.source, unit.index, n_rows)
    order = np.argsort(keys, kind="stable")
    columns = {
        "key": pa.array(keys[order], pa.uint64()),
        "tokens": pa.FixedSizeListArray.from_arrays(pa.array(packed.rows[order].reshape(-1)), job.row_tokens),
        "doc_starts": packed.doc_starts.take(pa.array(order)),
        "row_in_part": pa.array(order, pa.int32()),
    }
    if packed.loss_mask is not None:
        columns["loss_mask"] = pa.FixedSizeListArray.from_arrays(
            pa.array(packed.loss_mask[order].reshape(-1), pa.bool_()), job.row_tokens)
    if packed.labels is not None:
        columns["labels"] = packed.labels.take(pa.array(order))
    target = packed_location(job.stage_dir, unit.source, unit.index, ".parquet")
    with atomic_output(target) as stream:
        pq.write_table(pa.table(columns), stream, row_group_size=PACKED_ROW_GROUP_ROWS, compression=COMPRESSION)
    receipt = {
        "source": unit.source,
        "part": unit.index,
        "input": unit.input.uri if unit.input else None,
        "path": target.uri,
        "fingerprint": job.fingerprint,
        **packed.counts,
        "dropped": dict(sorted(packed.dropped.items())),
        # First key of every row group: where each output shard's key range lies in this part.
        "row_group_first_keys": [int(k) for k in keys[order][::PACKED_ROW_GROUP_ROWS]],
    }
    write_json_atomic(receipt_at, receipt)
    return receipt


# ---------------------------------------------------------------- phase 2: one output shard


def key_bounds(shard: int, shards: int) -> tuple[int, int]:
    return shard * KEY_SPACE // shards, (shard + 1) * KEY_SPACE // shards


def row_groups_in_range(first_keys: Sequence[int], low: int, high: int) -> list[int]:
    """Row groups of a key-sorted part that may hold keys in [low, high)."""
    groups = []
    for group, first in enumerate(first_keys):
        next_first = first_keys[group + 1] if group + 1 < len(first_keys) else KEY_SPACE
        if first < high and next_first >= low:
            groups.append(group)
    return groups


@dataclass(frozen=True)
class ShardPlan:
    index: int
    shards: int
    # (source, part, packed file uri, row groups to read)
    reads: tuple[tuple[str, int, str, tuple[int, ...]], ...]


def write_shard(job: PackJob, plan: ShardPlan, schema: pa.Schema) -> dict[str, Any]:
    """Gather one key range from every part, sort it by key, write the shard; skip if done."""
    receipt_at = job.stage_dir.join(RECEIPTS, f"shard-{plan.index:05d}.json")
    done = finished_receipt(receipt_at, job.fingerprint)
    if done is not None and done["shards"] == plan.shards:
        return done
    low, high = key_bounds(plan.index, plan.shards)
    pieces, ordinals = [], []
    for ordinal, (source, part, uri, groups) in enumerate(plan.reads):
        with resolve(uri).open_random_access() as f:
            rows = pq.ParquetFile(f).read_row_groups(list(groups))
        keys = rows.column("key").to_numpy()
        selected = rows.filter(pa.array((keys >= low) & (keys < high)))
        pieces.append(selected.append_column("source", pa.array([source] * len(selected), pa.string()))
                      .append_column("part", pa.array([part] * len(selected), pa.int32())))
        ordinals.append(np.full(len(selected), ordinal))
    if not pieces:
        shard = schema.empty_table()
    else:
        gathered = pa.concat_tables(pieces)
        # Ties of 64-bit keys are all but impossible; the row's origin still makes the order total.
        order = np.lexsort((gathered.column("row_in_part").to_numpy(), np.concatenate(ordinals),
                            gathered.column("key").to_numpy()))
        shard = gathered.take(pa.array(order, pa.int64())).select(schema.names).cast(schema)
    target = shard_location(job.stage_dir, plan.index)
    with atomic_output(target) as stream:
        pq.write_table(shard, stream, row_group_size=SHARD_ROW_GROUP_ROWS, compression=COMPRESSION)
    with target.open_random_access() as f:
        metadata = pq.ParquetFile(f).metadata
    receipt = {
        "index": plan.index,
        "shards": plan.shards,
        "path": target.uri,
        "fingerprint": job.fingerprint,
        "rows": shard.num_rows,
        "row_groups": [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)],
        "bytes": target.size(),
        "sha256": sha256_of(target),
    }
    write_json_atomic(receipt_at, receipt)
    return receipt


def plan_shards(packed: Sequence[dict[str, Any]], shards: int) -> list[ShardPlan]:
    plans = []
    for index in range(shards):
        low, high = key_bounds(index, shards)
        reads = []
        for receipt in packed:
            groups = row_groups_in_range(receipt["row_group_first_keys"], low, high)
            if groups:
                reads.append((receipt["source"], receipt["part"], receipt["path"], tuple(groups)))
        plans.append(ShardPlan(index, shards, tuple(reads)))
    return plans


# ---------------------------------------------------------------- the stage


def tokenize_and_pack(
    input_units: Sequence[ShardUnit],
    tokenizer: Tokenizer,
    out_root: str,
    *,
    stage_name: str = "tokens",
    seq_len: int,
    seed: int,
    rows_per_shard: int = 16384,
    packer: Packer = DocumentPacker(),
) -> dict[str, Any]:
    """Tokenize the parts of a finished stage (documents, or what `packer` reads) into shuffled
    packed rows; return the manifest.

    Parts are packed as Ray tasks, then every output shard is gathered as a Ray task. A finished
    stage with the same inputs, tokenizer and parameters is returned as it is; an interrupted run
    redoes only the parts and shards without a receipt.
    """
    if seq_len < 1 or rows_per_shard < 1:
        raise ValueError(f"seq_len and rows_per_shard must be positive, got {seq_len}, {rows_per_shard}")
    keys = [(u.source, u.index) for u in input_units]
    if len(set(keys)) != len(keys):
        raise ValueError(f"stage {stage_name}: two input units have the same source and index")
    units = sorted(input_units, key=lambda u: (u.source, u.index))
    stage_dir = resolve(out_root).join(stage_name)
    parameters = {
        "seq_len": seq_len,
        "seed": seed,
        "rows_per_shard": rows_per_shard,
        "format": FORMAT_VERSION,
        "packer": packer.name,
        "tokenizer_sha256": hashlib.sha256(tokenizer.model_proto).hexdigest(),
        "inputs": [(u.source, u.index, u.input.uri if u.input else None, u.input.sha256 if u.input else None)
                   for u in units],
    }
    stage_fingerprint = fingerprint(parameters)

    def pack_and_gather() -> dict[str, Any]:
        job = PackJob(stage_dir.uri, tokenizer, seq_len, seed, stage_fingerprint, packer)
        packed = run_tasks(pack_part, [(unit,) for unit in units], shared=(job,), label=f"{stage_name}: packing parts")
        total_rows = sum(r["rows"] for r in packed)
        shards = max(1, math.ceil(total_rows / rows_per_shard))
        for stale in stage_dir.list_files(".parquet"):
            if int(stale.name.removeprefix("shard-").split(".")[0]) >= shards:
                stale.delete()
        schema = shard_schema(tokenizer.vocab_size, seq_len, packer.loss_mask, packer.labels)
        plans = plan_shards(packed, shards)
        written = run_tasks(write_shard, [(plan, schema) for plan in plans], shared=(job,), label=f"{stage_name}: shards")
        manifest = {
            "stage": stage_name,
            "stage_dir": stage_dir.uri,
            "fingerprint": stage_fingerprint,
            "code_version": code_version(),
            "seq_len": seq_len,
            "row_tokens": seq_len + 1,
            "seed": seed,
            "vocab_size": tokenizer.vocab_size,
            "token_type": str(token_type(tokenizer.vocab_size)),
            "bos_id": tokenizer.bos_id,
            "eos_id": tokenizer.eos_id,
            "tokenizer_sha256": parameters["tokenizer_sha256"],
            "packer": packer.name,
            "loss_mask": packer.loss_mask,
            "labels": packer.labels,
            "tail": packer.tail,
            "rows": total_rows,
            "tokens": total_rows * (seq_len + 1),
            "sources": _per_source(packed),
            "inputs": [{k: v for k, v in r.items() if k not in ("path", "fingerprint", "row_group_first_keys")}
                       for r in packed],
            "shards": [{k: s[k] for k in ("path", "rows", "row_groups", "bytes", "sha256")} for s in written],
        }
        write_json_atomic(stage_dir.join(MANIFEST), manifest)
        return manifest

    manifest = run_marked(stage_dir, {WHOLE_STAGE: stage_fingerprint}, pack_and_gather,
                          reuse=lambda: stage_dir.join(MANIFEST).read_json())
    stage_dir.join(PACKED).delete()  # the packed parts serve no one once the stage is marked
    return manifest


def _per_source(packed: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Parts and every count of the parts' receipts, summed per source."""
    totals: dict[str, dict[str, Any]] = {}
    for receipt in packed:
        source = totals.setdefault(receipt["source"], {"parts": 0, "dropped": {}})
        source["parts"] += 1
        for name, value in receipt.items():
            if isinstance(value, int) and not isinstance(value, bool) and name != "part":
                source[name] = source.get(name, 0) + value
        for reason, count in receipt.get("dropped", {}).items():
            source["dropped"][reason] = source["dropped"].get(reason, 0) + count
    for source in totals.values():
        if "tokens_dropped" in source:
            source["tokens_packed"] = source["tokens"] - source["tokens_dropped"]
    return dict(sorted(totals.items()))


def write_rows_stage(stage_dir: str, rows: np.ndarray, doc_starts: Sequence[Sequence[int]], vocab_size: int,
                     shards: int = 1, row_group_rows: int = SHARD_ROW_GROUP_ROWS,
                     labels: Sequence[Sequence[int]] | None = None) -> str:
    """A finished token stage made directly from rows already in memory (tests, benchmarks):
    `rows` (n, seq_len + 1) in order, cut into `shards` shards of near-equal size; `labels`, a list
    of integers per row, for a stage whose rows carry them."""
    stage = resolve(stage_dir)
    seq_len = rows.shape[1] - 1
    entries = []
    schema = shard_schema(vocab_size, seq_len, labels=labels is not None)
    for index, chunk in enumerate(np.array_split(np.arange(len(rows)), shards)):
        columns = {
            "tokens": pa.FixedSizeListArray.from_arrays(pa.array(rows[chunk].reshape(-1)), rows.shape[1]),
            "doc_starts": pa.array([list(doc_starts[i]) for i in chunk], pa.list_(pa.int32())),
            "source": pa.array(["rows"] * len(chunk)),
            "part": pa.array([0] * len(chunk), pa.int32()),
            "row_in_part": pa.array(chunk, pa.int32()),
        }
        if labels is not None:
            columns["labels"] = pa.array([list(labels[i]) for i in chunk], pa.list_(pa.int32()))
        table = pa.table(columns).select(schema.names).cast(schema)
        target = shard_location(stage, index)
        with atomic_output(target) as stream:
            pq.write_table(table, stream, row_group_size=row_group_rows, compression=COMPRESSION)
        groups = [min(row_group_rows, len(chunk) - start) for start in range(0, len(chunk), row_group_rows)]
        entries.append({"path": target.uri, "rows": len(chunk), "row_groups": groups})
    digest = hashlib.sha256(rows.tobytes() + json.dumps([list(map(int, d)) for d in doc_starts]).encode())
    if labels is not None:
        digest.update(json.dumps([list(map(int, row)) for row in labels]).encode())
    manifest = {"stage_dir": stage.uri, "fingerprint": digest.hexdigest(), "seq_len": seq_len,
                "row_tokens": seq_len + 1, "rows": len(rows), "tokens": int(rows.size), "vocab_size": vocab_size,
                "labels": labels is not None, "shards": entries}
    write_json_atomic(stage.join(MANIFEST), manifest)
    mark(stage, {WHOLE_STAGE: manifest["fingerprint"]})
    return stage.uri
