"""The dedup run: the stages in order, each skipped when done, and the filter stage."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import pyarrow.parquet as pq

from tasks.curate.minhash.audit import _write_audit, audit_location
from tasks.curate.minhash.candidates import band_pairs, verify_part
from tasks.curate.minhash.components import cluster
from tasks.curate.minhash.config import MinHashConfig
from tasks.curate.minhash.layout import Layout, ROW_MASK
from tasks.curate.minhash.signatures import sign_part
from tasks.documents import BadRecord, Document
from tasks.executor import fingerprint, output_files, run_once, run_tasks
from tasks.shards import part_name
from tasks.stage import PartReader, ShardUnit, StageSpec, run_stage, units_from_stage
from tasks.steps import Drop
from tasks.storage import Location, resolve


@dataclass(frozen=True)
class ClusterDuplicateDropper:
    """Reads a part of the input stage back and drops the rows the clustering marked as duplicates."""

    clusters_dir: str
    reason: str

    def read(self, unit: ShardUnit) -> Iterator[Document | Drop | BadRecord]:
        marked = resolve(self.clusters_dir).join(unit.source, part_name(unit.index) + ".parquet")
        drop_rows: set[int] = set()
        if marked.exists():
            positions = pq.read_table(marked.path, columns=["position"], filesystem=marked.fs).column("position")
            drop_rows = {p & ROW_MASK for p in positions.to_pylist()}
        for row, doc in enumerate(PartReader().read(unit)):
            yield Drop(self.reason) if row in drop_rows else doc


def _input_units(input_stage: Location | Mapping[str, Location], sources: Sequence[str] | None) -> list[ShardUnit]:
    """The parts to deduplicate: of one stage, or of each source's own stage (sources that took
    different paths through curation meet here)."""
    if isinstance(input_stage, Location):
        return units_from_stage(input_stage, sources)
    wanted = sorted(input_stage) if sources is None else sorted(sources)
    return [u for source in wanted for u in units_from_stage(input_stage[source], [source])]


def run_dedup(
    input_stage: Location | Mapping[str, Location],
    root: str,
    stage_name: str,
    config: MinHashConfig,
    sources: Sequence[str] | None = None,
) -> dict:
    """Every stage of one dedup run; returns the filter stage's manifest."""
    units = _input_units(input_stage, sources)
    if not units:
        raise ValueError(f"{input_stage}: no parts for sources {sources}")
    layout = Layout(root, stage_name, tuple(sorted({u.source for u in units})), config.num_perm)
    bands, _ = config.bands_rows

    inputs = [(u.source, u.index, u.input.sha256) for u in units]
    signed = run_once(
        layout.folder("signatures"),
        fingerprint({"stage": "signatures", "config": config.describe(), "sources": layout.sources, "inputs": inputs}),
        lambda: _totals(run_tasks(sign_part, [(layout, config, u) for u in units])),
    )
    bucket_files = [f.path for f in output_files(layout.folder("signatures").join("buckets"))]
    paired = run_once(
        layout.folder("pairs"),
        fingerprint({"stage": "pairs", "after": signed["digest"]}),
        lambda: _totals(
            run_tasks(band_pairs, [(layout, b, p, bucket_files) for b in range(bands) for p in range(config.hash_partitions)])
        ),
    )
    pair_files = [f.path for f in output_files(layout.folder("pairs"))]
    verified = run_once(
        layout.folder("verified"),
        fingerprint({"stage": "verified", "after": paired["digest"], "min_agreeing": config.min_agreeing, "verify": config.verify}),
        lambda: _totals(run_tasks(verify_part, [(layout, config, u.source, u.index, pair_files) for u in units])),
    )
    clustered = run_once(
        layout.folder("clusters"),
        fingerprint({"stage": "clusters", "after": verified["digest"]}),
        lambda: cluster(layout, output_files(layout.folder("verified")), config.cluster_partitions)[0],
    )
    audit_at = audit_location(root, stage_name)
    run_once(
        layout.folder("audit"),
        fingerprint({"stage": "audit", "after": clustered["digest"]}),
        lambda: _write_audit(layout, audit_at),
    )
    spec = StageSpec(
        root=root,
        name=stage_name,
        reader=ClusterDuplicateDropper(layout.folder("clusters").uri, config.drop_reason),
        parameters={**config.describe(), "sources": list(layout.sources), "clusters": clustered["digest"]},
    )
    return run_stage(spec, units)


def _totals(stats: list[dict[str, int]]) -> dict[str, int]:
    totals: dict[str, int] = {"tasks": len(stats)}
    for entry in stats:
        for key, value in entry.items():
            totals[key] = totals.get(key, 0) + value
    return totals


def run_minhash_dedup(
    input_stage: Location | Mapping[str, Location],
    root: str,
    stage_name: str = "minhash",
    threshold: float = 0.8,
    num_perm: int = 128,
    ngram: int = 5,
    seed: int = 1,
    sources: list[str] | None = None,
    cluster_partitions: int = 4,
) -> dict:
    """Near-duplicate documents across the given sources of a finished stage: keep one per cluster.

    Returns the manifest of the filter stage ``<root>/<stage_name>``; :func:`audit_location` names
    the audit file (dropped id -> kept id and estimated similarity). ``cluster_partitions`` splits
    the clustering's edges (memory per task) and does not change the result.
    """
    config = MinHashConfig(threshold=threshold, num_perm=num_perm, ngram=ngram, seed=seed, cluster_partitions=cluster_partitions)
    return run_dedup(input_stage, root, stage_name, config, sources)
