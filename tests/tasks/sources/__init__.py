"""Helpers shared by the reader tests."""

from __future__ import annotations

from tasks.documents import Document
from tasks.steps import Drop


def split_invariant(item) -> tuple:
    """What a reader's item must keep whatever the splitting of its input (a split names its
    records by byte offset, not by number, so provenance may differ)."""
    if isinstance(item, Document):
        return ("doc", item.id, item.text, {k: v for k, v in item.meta.items() if k != "provenance"})
    if isinstance(item, Drop):
        return ("drop", item.reason)
    return ("bad", item.error, item.raw)
