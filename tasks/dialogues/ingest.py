"""The dialogue ingest stage: JSON-lines dialogues into ``<root>/<stage>/<source>/part-NNNNN.parquet``.

One part per input file, through the stage executor every document source uses
(:func:`tasks.stage.run_stage`): receipts, quarantine, manifest, reruns that skip finished parts
and a finished stage. Parts carry the :data:`~tasks.dialogues.records.MESSAGES_COLUMNS` column;
read them back with :func:`~tasks.dialogues.records.read_dialogues`. Records built on dialogues
with columns of their own (comparisons, :mod:`tasks.preferences`) ingest here too, naming them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from tasks.dialogues.records import MESSAGES_COLUMNS
from tasks.stage import InputFile, Reader, StageSpec, plan_units, run_stage

DIALOGUE_STAGE = "dialogues"


def ingest_dialogues(
    source: str,
    inputs: Sequence[str],
    root: str,
    reader: Reader,
    stage: str = DIALOGUE_STAGE,
    columns: pa.Schema = MESSAGES_COLUMNS,
) -> dict[str, Any]:
    """Read every input (a file URI) with ``reader`` into stage ``stage`` under ``root``, as
    source ``source``, the documents' typed ``columns`` those the reader fills; return the stage
    manifest (every source of the stage, counts reconciled)."""
    if not inputs:
        raise ValueError(f"dialogue ingest of {source}: no input files")
    spec = StageSpec(
        root=root,
        name=stage,
        reader=reader,
        parameters={"source": source, "reader": repr(reader)},
        extra_columns=columns,
    )
    units = plan_units(source, reader, [InputFile.describe(uri) for uri in inputs], split_bytes=None)
    return run_stage(spec, units)
