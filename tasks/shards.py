"""The shard format every stage writes.

Layout of a stage::

    <root>/<stage>/<source>/part-NNNNN.parquet      documents (zstd, small row groups)
    <root>/<stage>/_receipts/<source>/part-NNNNN.json  per-part counts: the part's completion marker
    <root>/<stage>/_quarantine/<source>/part-NNNNN.jsonl  records that failed, with their error
    <root>/<stage>/_manifest.json                   parameters, inputs, counts, bytes, wall time
    <root>/<stage>/_SUCCESS                         the stage's completion marker: per source, the
                                                    fingerprint of the run that finished it
                                                    (tasks.executor.Marker)

Every file is written through :func:`tasks.storage.atomic_output`. A part counts as done only when
its receipt exists, and the receipt is written after the part and its quarantine file, so a crash
at any point leaves either a finished part or one a rerun redoes.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.documents import BadRecord, Document, document_schema
from tasks.storage import Location, atomic_output, write_json_atomic

MANIFEST = "_manifest.json"
SUCCESS = "_SUCCESS"
RECEIPTS = "_receipts"
QUARANTINE = "_quarantine"
COMPRESSION = "zstd"
RAW_EXCERPT_CHARS = 4096


def part_name(index: int) -> str:
    if not 0 <= index <= 99999:
        raise ValueError(f"part index out of range 0..99999: {index}")
    return f"part-{index:05d}"


def part_location(stage_dir: Location, source: str, index: int) -> Location:
    return stage_dir.join(source, part_name(index) + ".parquet")


def receipt_location(stage_dir: Location, source: str, index: int) -> Location:
    return stage_dir.join(RECEIPTS, source, part_name(index) + ".json")


def quarantine_location(stage_dir: Location, source: str, index: int) -> Location:
    return stage_dir.join(QUARANTINE, source, part_name(index) + ".jsonl")


class ShardWriter:
    """Streams documents into one Parquet part in row groups; nothing is visible until close."""

    def __init__(
        self,
        target: Location,
        extra_columns: pa.Schema | None = None,
        row_group_rows: int = 2048,
        row_group_bytes: int = 32 << 20,
    ) -> None:
        self.target = target
        self.schema = document_schema(extra_columns)
        self.row_group_rows = row_group_rows
        self.row_group_bytes = row_group_bytes
        self.rows = 0
        self._buffer: list[Document] = []
        self._buffered_bytes = 0
        self._output = atomic_output(target)
        self._writer: pq.ParquetWriter | None = None

    def __enter__(self) -> ShardWriter:
        stream = self._output.__enter__()
        self._writer = pq.ParquetWriter(
            stream,
            self.schema,
            compression=COMPRESSION,
            # Deterministic bytes: no per-write metadata beyond the pyarrow version.
            write_statistics=True,
        )
        return self

    def write(self, doc: Document) -> None:
        self._buffer.append(doc)
        self._buffered_bytes += len(doc.text)
        if len(self._buffer) >= self.row_group_rows or self._buffered_bytes >= self.row_group_bytes:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        columns: dict[str, list[Any]] = {
            "id": [d.id for d in self._buffer],
            "source": [d.source for d in self._buffer],
            "text": [d.text for d in self._buffer],
            "meta": [d.meta_json() for d in self._buffer],
        }
        for name in self.schema.names[4:]:
            columns[name] = [d.columns.get(name) for d in self._buffer]
        self._writer.write_table(pa.Table.from_pydict(columns, schema=self.schema))
        self.rows += len(self._buffer)
        self._buffer.clear()
        self._buffered_bytes = 0

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._flush()
            self._writer.close()
        finally:
            self._output.__exit__(exc_type, exc, tb)


class QuarantineWriter:
    """Collects bad records of one part as JSON lines: locator, error, raw excerpt."""

    def __init__(self, target: Location) -> None:
        self.target = target
        self.count = 0
        self.reasons: Counter[str] = Counter()
        self._output = None
        self._stream = None

    def add(self, record: BadRecord) -> None:
        if self._stream is None:
            self._output = atomic_output(self.target)
            self._stream = self._output.__enter__()
        line = {"locator": record.locator, "error": record.error, "raw": record.raw[:RAW_EXCERPT_CHARS]}
        if record.reason:
            line["reason"] = record.reason
            self.reasons[record.reason] += 1
        self._stream.write(json.dumps(line, ensure_ascii=False, sort_keys=True).encode() + b"\n")
        self.count += 1

    def __enter__(self) -> QuarantineWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._output is not None:
            self._output.__exit__(exc_type, exc, tb)


@dataclass
class PartReceipt:
    """What one part of a stage consumed and produced; the counts must reconcile."""

    source: str
    index: int
    path: str
    input: str | None
    byte_range: list[int] | None = None  # [start, end) of a split input
    fingerprint: str = ""  # of the stage parameters that produced it: other parameters redo it
    docs_in: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    quarantined: int = 0
    # Of the quarantined records whose reader named a reason (BadRecord.reason): how many per reason.
    quarantined_reasons: dict[str, int] = field(default_factory=dict)
    rows: int = 0
    bytes: int = 0
    text_chars: int = 0
    ids_disambiguated: int = 0  # documents renamed <id>~k: their natural key came earlier (tasks.unique_ids)
    sha256: str = ""
    wall_seconds: float = 0.0
    steps: dict[str, dict] = field(default_factory=dict)

    def check(self) -> None:
        dropped = sum(self.dropped.values())
        if self.docs_in != self.kept + dropped + self.quarantined:
            raise ValueError(
                f"{self.path}: counts do not reconcile: in={self.docs_in} != kept={self.kept} "
                f"+ dropped={dropped} + quarantined={self.quarantined}"
            )
        if sum(self.quarantined_reasons.values()) > self.quarantined:
            raise ValueError(
                f"{self.path}: {sum(self.quarantined_reasons.values())} quarantined records have reasons, "
                f"but only {self.quarantined} were quarantined"
            )
        if self.rows != self.kept:
            raise ValueError(f"{self.path}: {self.rows} rows written but {self.kept} documents kept")

    def save(self, location: Location) -> None:
        self.check()
        write_json_atomic(location, asdict(self))


def summarise(receipts: list[PartReceipt]) -> dict[str, Any]:
    """Totals over all parts and per source, for the manifest."""

    def total(parts: list[PartReceipt]) -> dict[str, Any]:
        dropped: Counter[str] = Counter()
        quarantined_reasons: Counter[str] = Counter()
        for r in parts:
            dropped.update(r.dropped)
            quarantined_reasons.update(r.quarantined_reasons)
        totals = {
            "parts": len(parts),
            "docs_in": sum(r.docs_in for r in parts),
            "kept": sum(r.kept for r in parts),
            "dropped": dict(sorted(dropped.items())),
            "dropped_total": sum(dropped.values()),
            "quarantined": sum(r.quarantined for r in parts),
            "bytes": sum(r.bytes for r in parts),
            "text_chars": sum(r.text_chars for r in parts),
        }
        # Only where a reader named reasons: the totals of a manifest written before reasons
        # existed still equal those recomputed from its parts (tasks.validate compares them).
        if quarantined_reasons:
            totals["quarantined_reasons"] = dict(sorted(quarantined_reasons.items()))
        return totals

    sources = sorted({r.source for r in receipts})
    summary = total(receipts)
    summary["by_source"] = {s: total([r for r in receipts if r.source == s]) for s in sources}
    return summary


def read_part(location: Location, batch_rows: int = 1024):
    """Stream the documents of a part back, row group by row group (typed extra columns included)."""
    with location.open_random_access() as f:
        parquet = pq.ParquetFile(f)
        extra = [name for name in parquet.schema_arrow.names if name not in ("id", "source", "text", "meta")]
        for batch in parquet.iter_batches(batch_size=batch_rows):
            columns = batch.to_pydict()
            for row in range(batch.num_rows):
                yield Document(
                    id=columns["id"][row],
                    source=columns["source"][row],
                    text=columns["text"][row],
                    meta=json.loads(columns["meta"][row]),
                    columns={name: columns[name][row] for name in extra},
                )
