"""The comparison ingest stage: JSON-lines comparisons into ``<root>/<stage>/<source>/part-NNNNN.parquet``.

The dialogue ingest (:func:`tasks.dialogues.ingest.ingest_dialogues`, one part per input file
through the one stage executor) with the :data:`~tasks.preferences.records.COMPARISON_COLUMNS`
columns; read the parts back with :func:`~tasks.preferences.records.read_comparisons`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tasks.dialogues.ingest import ingest_dialogues
from tasks.preferences.records import COMPARISON_COLUMNS
from tasks.stage import Reader

COMPARISON_STAGE = "comparisons"


def ingest_comparisons(
    source: str, inputs: Sequence[str], root: str, reader: Reader, stage: str = COMPARISON_STAGE
) -> dict[str, Any]:
    """Read every input with ``reader`` (a :mod:`tasks.preferences.readers` one) into stage
    ``stage`` under ``root`` as source ``source``; return the stage manifest."""
    return ingest_dialogues(source, inputs, root, reader, stage, columns=COMPARISON_COLUMNS)
