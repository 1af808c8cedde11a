"""One reader module per source format, and the registry the ingest flow picks readers from."""

from __future__ import annotations

import importlib
from typing import Literal, get_args

SourceName = Literal["commoncrawl", "c4", "wikipedia", "books", "arxiv"]
SOURCES: tuple[str, ...] = get_args(SourceName)

_READERS = {
    "commoncrawl": "tasks.sources.commoncrawl:CommonCrawlReader",
    "c4": "tasks.sources.c4:C4Reader",
    "wikipedia": "tasks.sources.wikipedia:WikipediaReader",
    "books": "tasks.sources.books:BooksReader",
    "arxiv": "tasks.sources.arxiv:ArxivReader",
}


def available_sources() -> list[str]:
    return [source for source in SOURCES if source in _READERS]


def make_reader(source: str):
    """A reader for ``source`` with its default settings (see the reader's module for them)."""
    if source not in _READERS:
        raise ValueError(f"no reader for source {source!r}; available: {', '.join(available_sources())}")
    module, _, name = _READERS[source].partition(":")
    return getattr(importlib.import_module(module), name)()
