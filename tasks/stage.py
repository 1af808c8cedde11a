"""Run a document stage: read inputs, pass documents through steps, write parts, reconcile.

One *shard unit* is one input (a file, or a split of one) and becomes exactly one output part.
Units run as Ray tasks (:mod:`tasks.executor`); each is idempotent (its receipt is its completion
marker), so a rerun skips finished parts and redoes the rest, and a finished stage is skipped
whole. The stage's scopes are its sources: each run marks its own in ``_SUCCESS``. Once the parts
are written, ids that repeat across them are made unique (:mod:`tasks.unique_ids`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

import pyarrow as pa

from tasks.documents import BadRecord, Document
from tasks.executor import finished_receipt, fingerprint, is_complete, run_marked, run_tasks
from tasks.shards import (
    MANIFEST,
    QUARANTINE,
    RECEIPTS,
    PartReceipt,
    QuarantineWriter,
    ShardWriter,
    part_location,
    quarantine_location,
    receipt_location,
    summarise,
)
from tasks.steps import Drop, Step, batched
from tasks.storage import Location, resolve, sha256_of, write_json_atomic
from tasks.unique_ids import disambiguate
from tasks.version import code_version

BATCH_SIZE = 256


@dataclass(frozen=True)
class InputFile:
    uri: str
    size: int
    sha256: str

    @classmethod
    def describe(cls, uri: str) -> InputFile:
        location = resolve(uri)
        if not location.is_file():
            raise FileNotFoundError(f"input not found: {uri}")
        return cls(uri=uri, size=location.size(), sha256=sha256_of(location))


@dataclass(frozen=True)
class ShardUnit:
    source: str
    index: int
    input: InputFile | None = None
    # A split of a large input: the unit takes the records that *start* in [start, end) bytes.
    byte_range: tuple[int, int] | None = None


class Reader(Protocol):
    """Turns one shard unit's input into documents.

    Every input record yields exactly one item: a Document, a Drop with its reason (a record the
    source's rules exclude: a redirect, a non-article page), or a BadRecord for the quarantine.
    """

    def read(self, unit: ShardUnit) -> Iterator[Document | Drop | BadRecord]: ...


class SplittableReader(Reader, Protocol):
    """A reader whose format has record boundaries it can find from any byte offset."""

    def split(self, input_file: InputFile, target_bytes: int) -> list[tuple[int, int]]: ...


def plan_units(source: str, reader: Reader, inputs: Sequence[InputFile], split_bytes: int | None) -> list[ShardUnit]:
    """One unit per input, or per split of an input larger than ``split_bytes`` when the format allows."""
    seen: dict[str, str] = {}
    for input_file in inputs:
        same_file = resolve(input_file.uri).uri
        if same_file in seen:
            raise ValueError(f"{source}: input {input_file.uri} is listed twice (also as {seen[same_file]})")
        seen[same_file] = input_file.uri
    units: list[ShardUnit] = []
    for input_file in inputs:
        ranges = None
        if split_bytes and input_file.size > split_bytes and hasattr(reader, "split"):
            ranges = reader.split(input_file, split_bytes)
        for byte_range in ranges or [None]:
            units.append(ShardUnit(source, len(units), input_file, byte_range))
    return units


@dataclass
class StageSpec:
    """What a stage is: where it writes, how it reads, which steps it applies, its parameters.

    ``steps`` is a factory so every Ray task gets fresh step objects (and fresh counters).
    """

    root: str
    name: str
    reader: Reader
    steps: Callable[[], Sequence[Step]] = list
    parameters: dict[str, Any] = field(default_factory=dict)
    extra_columns: pa.Schema | None = None

    @property
    def stage_dir(self) -> Location:
        return resolve(self.root).join(self.name)

    def fingerprint(self) -> str:
        """Changes when the parameters change: a finished stage is reused only for the same ones."""
        return fingerprint({"stage": self.name, "parameters": self.parameters})


def run_shard(spec: StageSpec, unit: ShardUnit) -> PartReceipt:
    """Process one unit into one part, unless its receipt says it is already done."""
    stage_dir = spec.stage_dir
    receipt_at = receipt_location(stage_dir, unit.source, unit.index)
    done = finished_receipt(receipt_at, spec.fingerprint())
    if done is not None:
        return PartReceipt(**done)

    started = time.perf_counter()
    target = part_location(stage_dir, unit.source, unit.index)
    steps = list(spec.steps())
    receipt = PartReceipt(
        source=unit.source,
        index=unit.index,
        path=target.uri,
        input=unit.input.uri if unit.input else None,
        byte_range=list(unit.byte_range) if unit.byte_range else None,
        fingerprint=spec.fingerprint(),
    )
    dropped: dict[str, int] = {}
    text_chars = 0
    with (
        ShardWriter(target, spec.extra_columns) as writer,
        QuarantineWriter(quarantine_location(stage_dir, unit.source, unit.index)) as quarantine,
    ):
        for batch in batched(spec.reader.read(unit), BATCH_SIZE):
            receipt.docs_in += len(batch)
            docs: list[Document] = []
            for item in batch:
                if isinstance(item, BadRecord):
                    quarantine.add(item)
                elif isinstance(item, Drop):
                    dropped[item.reason] = dropped.get(item.reason, 0) + 1
                else:
                    docs.append(item)
            for kept in _apply_steps(steps, docs, quarantine, dropped):
                writer.write(kept)
                text_chars += len(kept.text)
        receipt.quarantined = quarantine.count
        receipt.quarantined_reasons = dict(sorted(quarantine.reasons.items()))
    receipt.kept = writer.rows
    receipt.rows = writer.rows
    receipt.dropped = dict(sorted(dropped.items()))
    receipt.text_chars = text_chars
    receipt.bytes = target.size()
    receipt.sha256 = sha256_of(target)
    receipt.steps = {step.name: step.stats.as_dict() for step in steps}
    receipt.wall_seconds = round(time.perf_counter() - started, 6)
    receipt.save(receipt_at)
    return receipt


def _apply_steps(
    steps: Sequence[Step], docs: list[Document], quarantine: QuarantineWriter, dropped: dict[str, int]
) -> list[Document]:
    for step in steps:
        if not docs:
            break
        try:
            results = step.run(docs)
        except Exception:
            results = _run_one_by_one(step, docs, quarantine)
        docs = []
        for result in results:
            if isinstance(result, Drop):
                dropped[result.reason] = dropped.get(result.reason, 0) + 1
            elif result is not None:
                docs.append(result)
    return docs


def _run_one_by_one(step: Step, docs: list[Document], quarantine: QuarantineWriter) -> list[Document | Drop | None]:
    """A batch raised: find the documents that fail, quarantine them, keep the rest going."""
    results: list[Document | Drop | None] = []
    for doc in docs:
        try:
            results.extend(step.run([doc]))
        except Exception as exc:
            quarantine.add(
                BadRecord(
                    locator=f"{doc.id} (step {step.name})",
                    error=f"{type(exc).__name__}: {exc}",
                    raw=json.dumps({"id": doc.id, "text": doc.text, "meta": doc.meta}, ensure_ascii=False),
                )
            )
            results.append(None)
    return results


def _sources(units: Sequence[ShardUnit]) -> list[str]:
    return sorted({u.source for u in units})


def stage_is_complete(spec: StageSpec, sources: Sequence[str]) -> bool:
    """Whether every source is marked finished with the spec's fingerprint (a spec bound to its
    units' inputs, :func:`bound_to_inputs`, as :func:`run_stage` marks it)."""
    return is_complete(spec.stage_dir, {source: spec.fingerprint() for source in sources})


def write_manifest(
    spec: StageSpec, units: Sequence[ShardUnit], receipts: Sequence[PartReceipt], wall_seconds: float
) -> dict[str, Any]:
    """Record this run's sources in the stage manifest, keeping the other sources' records.

    A stage holds several sources, often written by separate runs (one ingest run per source):
    each run replaces its own sources' parts and run record and leaves the others as they were.
    The completion marker comes after, from :func:`run_stage` (:func:`tasks.executor.run_marked`).
    """
    sources = _sources(units)
    previous = spec.stage_dir.join(MANIFEST)
    before = previous.read_json() if previous.exists() else {"runs": {}, "parts": []}
    finished_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    runs = {k: v for k, v in before["runs"].items() if k not in sources}
    for source in sources:
        runs[source] = {
            "fingerprint": spec.fingerprint(),
            "parameters": spec.parameters,
            "code_version": code_version(),
            "finished_at": finished_at,
            "wall_seconds": round(wall_seconds, 3),
            "inputs": list({u.input.uri: asdict(u.input) for u in units if u.source == source and u.input}.values()),
            "ids_disambiguated": sum(r.ids_disambiguated for r in receipts if r.source == source),
        }
    parts = [p for p in before["parts"] if p["source"] not in sources]
    parts += [asdict(r) for r in receipts]
    parts.sort(key=lambda p: (p["source"], p["index"]))
    manifest = {
        "stage": spec.name,
        "stage_dir": spec.stage_dir.uri,
        "runs": dict(sorted(runs.items())),
        "parts": parts,
        "totals": summarise([PartReceipt(**p) for p in parts]),
    }
    write_json_atomic(previous, manifest)
    return manifest


def _remove_stale_parts(spec: StageSpec, units: Sequence[ShardUnit]) -> None:
    """Before a run rewrites its sources: delete their parts (receipts, quarantine) it will not write."""
    keep = {(u.source, u.index) for u in units}
    for source in _sources(units):
        for folder, suffix in ((spec.stage_dir.join(source), ".parquet"),
                               (spec.stage_dir.join(RECEIPTS, source), ".json"),
                               (spec.stage_dir.join(QUARANTINE, source), ".jsonl")):
            for stale in folder.list_files(suffix):
                index = int(stale.name.removeprefix("part-").split(".")[0])
                if (source, index) not in keep:
                    stale.delete()


def load_manifest(spec: StageSpec) -> dict[str, Any]:
    return spec.stage_dir.join(MANIFEST).read_json()


def bound_to_inputs(spec: StageSpec, units: Sequence[ShardUnit]) -> StageSpec:
    """The spec with a digest of its units' inputs among its parameters (so in its fingerprint)."""
    described = [
        (u.source, u.index, u.input.uri if u.input else None, u.input.sha256 if u.input else None, u.byte_range)
        for u in units
    ]
    return dataclasses.replace(spec, parameters={**spec.parameters, "inputs_digest": fingerprint(described)})


def run_stage(
    spec: StageSpec,
    units: Sequence[ShardUnit],
    on_part_done: Callable[[PartReceipt], None] | None = None,
) -> dict[str, Any]:
    """Run every unit as a Ray task (finished parts are skipped) and write the manifest.

    A stage already completed with the same parameters and inputs returns its manifest without
    any work; changed inputs (an upstream stage redone differently) redo it.
    """
    spec = bound_to_inputs(spec, units)
    indices = [(u.source, u.index) for u in units]
    if len(set(indices)) != len(indices):
        raise ValueError(f"stage {spec.name}: two units write the same part")

    def run_parts() -> dict[str, Any]:
        _remove_stale_parts(spec, units)
        started = time.perf_counter()
        receipts = run_tasks(
            run_shard, [(unit,) for unit in units], shared=(spec,), label=f"{spec.name}: parts", on_result=on_part_done
        )
        receipts = disambiguate(spec.stage_dir, receipts)
        return write_manifest(spec, units, receipts, time.perf_counter() - started)

    sources = {source: spec.fingerprint() for source in _sources(units)}
    return run_marked(spec.stage_dir, sources, run_parts, reuse=lambda: load_manifest(spec))



@dataclass(frozen=True)
class PartReader:
    """Reads the parts of an earlier stage: a unit's input is one part file."""

    def read(self, unit: ShardUnit) -> Iterator[Document | Drop | BadRecord]:
        if unit.input is None:
            raise ValueError(f"{unit.source} part {unit.index}: a part reader needs an input part")
        from tasks.shards import read_part

        yield from read_part(resolve(unit.input.uri))


def units_from_stage(stage_dir: Location, sources: Sequence[str] | None = None) -> list[ShardUnit]:
    """One unit per part of a finished stage (optionally only some sources), inputs as in its manifest."""
    manifest = stage_dir.join(MANIFEST)
    if not manifest.exists():
        raise FileNotFoundError(f"{manifest.uri}: no manifest: {stage_dir.uri} is not a finished stage")
    parts = manifest.read_json()["parts"]
    return [
        ShardUnit(p["source"], p["index"], InputFile(uri=p["path"], size=p["bytes"], sha256=p["sha256"]))
        for p in parts
        if sources is None or p["source"] in sources
    ]
