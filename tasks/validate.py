"""Check a finished stage against its manifest, part by part, and gather its statistics.

A part passes when its file exists with the recorded size and checksum, holds the recorded rows
in the document schema of its own source with JSON-object ``meta``, and its quarantine file
holds the recorded number of records. The stage passes when every part passes, every count
reconciles, the manifest totals equal the sum of its parts, no visible part lies in the stage
folder that the manifest does not list, and no two documents of the stage, in one part or in two,
share an id (:func:`check_unique_ids`: hash-partitioned on Ray, no process holds all the ids).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.documents import DOCUMENT_SCHEMA
from tasks.executor import read_marker
from tasks.shards import MANIFEST, SUCCESS, PartReceipt, quarantine_location, summarise
from tasks.storage import Location, resolve, sha256_of
from tasks.unique_ids import find_duplicate_ids


@dataclass
class PartCheck:
    path: str
    source: str
    rows: int = 0
    text_chars: int = 0
    min_chars: int = 0
    max_chars: int = 0
    row_groups: int = 0
    problems: list[str] = field(default_factory=list)


def check_part(stage_dir_uri: str, part: dict[str, Any]) -> PartCheck:
    receipt = PartReceipt(**part)
    location = resolve(receipt.path)
    check = PartCheck(path=receipt.path, source=receipt.source)
    problems = check.problems
    try:
        receipt.check()
    except ValueError as exc:
        problems.append(str(exc))
    if not location.is_file():
        problems.append(f"{receipt.path}: part listed in the manifest is missing")
        return check
    if location.size() != receipt.bytes:
        problems.append(f"{receipt.path}: size {location.size()} != manifest {receipt.bytes}")
    if sha256_of(location) != receipt.sha256:
        problems.append(f"{receipt.path}: sha256 differs from the manifest (file changed after writing)")
    try:
        _check_rows(location, receipt, check)
    except (pa.ArrowException, OSError) as exc:
        problems.append(f"{receipt.path}: unreadable Parquet: {exc}")
    quarantined = quarantine_location(resolve(stage_dir_uri), receipt.source, receipt.index)
    found = len(quarantined.read_bytes().splitlines()) if quarantined.exists() else 0
    if found != receipt.quarantined:
        problems.append(f"{quarantined.uri}: {found} quarantined records, manifest says {receipt.quarantined}")
    return check


def _check_rows(location: Location, receipt: PartReceipt, check: PartCheck) -> None:
    with location.open_random_access() as f:
        parquet = pq.ParquetFile(f)
        schema = parquet.schema_arrow
        for expected in DOCUMENT_SCHEMA:
            if schema.get_field_index(expected.name) < 0 or schema.field(expected.name).type != expected.type:
                check.problems.append(f"{receipt.path}: column {expected.name!r} missing or not {expected.type}")
                return
        check.row_groups = parquet.num_row_groups
        lengths: list[int] = []
        for batch in parquet.iter_batches(columns=["id", "source", "text", "meta"]):
            for row, (doc_id, source, text, meta) in enumerate(zip(*(c.to_pylist() for c in batch.columns))):
                where = f"{receipt.path}: record {check.rows + row} ({doc_id})"
                if source != receipt.source:
                    check.problems.append(f"{where}: source {source!r} in a {receipt.source!r} part")
                if not _is_json_object(meta):
                    check.problems.append(f"{where}: meta is not a JSON object")
                lengths.append(len(text))
            check.rows += batch.num_rows
    if check.rows != receipt.rows:
        check.problems.append(f"{receipt.path}: {check.rows} rows, manifest says {receipt.rows}")
    check.text_chars = sum(lengths)
    check.min_chars = min(lengths, default=0)
    check.max_chars = max(lengths, default=0)


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except (TypeError, json.JSONDecodeError):
        return False


def check_stage_level(stage_dir: Location, manifest: dict[str, Any]) -> list[str]:
    """Checks that need the whole manifest: markers, totals and parts nobody listed."""
    problems = []
    marker = stage_dir.join(SUCCESS)
    if not marker.exists():
        problems.append(f"{marker.uri}: completion marker missing: the stage did not finish")
    else:
        marked = read_marker(stage_dir).fingerprints
        for source, run in manifest["runs"].items():
            if marked.get(source) != run["fingerprint"]:
                problems.append(f"{marker.uri}: source {source!r} is not marked finished by the run in {MANIFEST}")
    receipts = [PartReceipt(**p) for p in manifest["parts"]]
    recomputed = summarise(receipts)
    if recomputed != manifest["totals"]:
        problems.append(f"{stage_dir.join(MANIFEST).uri}: totals differ from the sum of the parts")
    listed = {resolve(r.path).path for r in receipts}
    for source in sorted({r.source for r in receipts} | _source_folders(stage_dir)):
        for part in stage_dir.join(source).list_files(".parquet"):
            if part.path not in listed:
                problems.append(f"{part.uri}: part not listed in the manifest")
    return problems


def check_unique_ids(
    stage_dir: Location, manifest: dict[str, Any], scratch_root: Location | None = None
) -> list[str]:
    """One problem per document whose id an earlier document of the stage holds, naming both
    (part file and record), up to a few per hash bucket, and their count when more were found.

    ``scratch_root`` (default: the stage folder) holds a temporary index of the ids."""
    parts = sorted(manifest["parts"], key=lambda p: (p["source"], p["index"]))
    rows = sum(p["rows"] for p in parts)
    count, examples = find_duplicate_ids([p["path"] for p in parts], rows, scratch_root or stage_dir)
    problems = [
        f"{again}: record {again_row}: duplicate id {doc_id!r}, also at {first}: record {first_row}"
        for doc_id, first, first_row, again, again_row in examples
    ]
    if count > len(problems):
        problems.append(f"{stage_dir.uri}: {count} documents share an id with an earlier one ({len(problems)} listed)")
    return problems


def _source_folders(stage_dir: Location) -> set[str]:
    import pyarrow.fs as pafs

    infos = stage_dir.fs.get_file_info(pafs.FileSelector(stage_dir.path))
    return {i.base_name for i in infos if i.type == pafs.FileType.Directory and not i.base_name.startswith(("_", "."))}


def stage_report(manifest: dict[str, Any], checks: list[PartCheck], stage_problems: list[str]) -> dict[str, Any]:
    """Per-source statistics and every problem found, ready for artifacts and the CLI."""
    by_source: dict[str, dict[str, Any]] = {}
    for source, totals in manifest["totals"]["by_source"].items():
        parts = [c for c in checks if c.source == source]
        rows = sum(c.rows for c in parts)
        chars = sum(c.text_chars for c in parts)
        by_source[source] = {
            "parts": len(parts),
            "docs_in": totals["docs_in"],
            "kept": rows,
            "dropped": totals["dropped_total"],
            "quarantined": totals["quarantined"],
            "bytes": totals["bytes"],
            "text_chars": chars,
            "mean_chars": round(chars / rows, 1) if rows else 0.0,
            "min_chars": min((c.min_chars for c in parts if c.rows), default=0),
            "max_chars": max((c.max_chars for c in parts), default=0),
        }
    problems = stage_problems + [p for c in checks for p in c.problems]
    return {
        "stage": manifest["stage"],
        "stage_dir": manifest["stage_dir"],
        "valid": not problems,
        "problems": problems,
        "by_source": by_source,
        "dropped_by_reason": manifest["totals"]["dropped"],
        "parts": [asdict(c) for c in checks],
    }
