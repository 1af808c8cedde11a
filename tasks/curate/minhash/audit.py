"""The audit: one row per dropped document, the kept document it duplicates and their similarity."""

from __future__ import annotations


import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.curate.minhash.candidates import estimate_similarity
from tasks.curate.minhash.layout import Layout, ROW_BITS, ROW_MASK, unpack, write_table
from tasks.executor import output_files, run_tasks
from tasks.storage import Location, resolve


# Audit and the filter stage ----------------------------------------------------------------------

AUDIT_SCHEMA = pa.schema(
    [
        pa.field("dropped_id", pa.string(), nullable=False),
        pa.field("dropped_source", pa.string(), nullable=False),
        pa.field("dropped_part", pa.int32(), nullable=False),
        pa.field("dropped_row", pa.int64(), nullable=False),
        pa.field("kept_id", pa.string(), nullable=False),
        pa.field("kept_source", pa.string(), nullable=False),
        pa.field("kept_part", pa.int32(), nullable=False),
        pa.field("kept_row", pa.int64(), nullable=False),
        pa.field("similarity", pa.float32(), nullable=False),
    ]
)


def audit_part(layout: Layout, cluster_file: str) -> pa.Table:
    """For one part's dropped documents: the kept document each duplicates, with ids and similarity."""
    table = pq.read_table(cluster_file, filesystem=resolve(layout.root).fs)
    dropped = table.column("position").to_numpy()
    kept = table.column("representative").to_numpy()
    similarity = estimate_similarity(layout, dropped, kept)
    dropped_ids = layout.read_signatures(int(dropped[0]) >> ROW_BITS, ["id"]).column("id").to_pylist()
    kept_ids: list[str] = [""] * len(kept)
    for part_key in np.unique(kept >> ROW_BITS):
        ids = layout.read_signatures(int(part_key), ["id"]).column("id").to_pylist()
        for i in np.flatnonzero((kept >> ROW_BITS) == part_key):
            kept_ids[i] = ids[kept[i] & ROW_MASK]

    def describe(positions: np.ndarray) -> tuple[list[str], list[int], list[int]]:
        where = [unpack(int(p)) for p in positions]
        return [layout.sources[s] for s, _, _ in where], [p for _, p, _ in where], [r for _, _, r in where]

    d_source, d_part, d_row = describe(dropped)
    k_source, k_part, k_row = describe(kept)
    return pa.table(
        {
            "dropped_id": [dropped_ids[r] for r in d_row],
            "dropped_source": d_source,
            "dropped_part": d_part,
            "dropped_row": d_row,
            "kept_id": kept_ids,
            "kept_source": k_source,
            "kept_part": k_part,
            "kept_row": k_row,
            "similarity": similarity,
        },
        schema=AUDIT_SCHEMA,
    )


def audit_location(root: str, stage_name: str) -> Location:
    """The audit file of a dedup run: one row per dropped document, the kept one it duplicates."""
    return resolve(root).join(f"{stage_name}-audit", "audit.parquet")


def _write_audit(layout: Layout, target: Location) -> dict[str, int]:
    cluster_files = [f.path for f in output_files(layout.folder("clusters"))]
    tables = run_tasks(audit_part, [(layout, path) for path in cluster_files])
    audit = pa.concat_tables(tables) if tables else AUDIT_SCHEMA.empty_table()
    write_table(target, audit)
    return {"dropped": audit.num_rows}


