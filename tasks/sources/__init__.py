"""One reader module per source format, and the registry the ingest flow picks readers from."""

from __future__ import annotations

import importlib
from typing import Literal, get_args

# The largest record a reader takes by default (its ``max_record_bytes``): far above a web page
# (Common Crawl truncates payloads at 1 MiB) or an article (MediaWiki's limit is 2 MiB). A larger
# record is quarantined, never held whole: the readers stop reading it at the bound.
MAX_RECORD_BYTES = 8 << 20

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


def make_reader(source: str, **settings):
    """A reader for ``source``: its default settings (see the reader's module), but for ``settings``."""
    if source not in _READERS:
        raise ValueError(f"no reader for source {source!r}; available: {', '.join(available_sources())}")
    module, _, name = _READERS[source].partition(":")
    return getattr(importlib.import_module(module), name)(**settings)


def over_size(size: int | str, limit: int, unit: str = "bytes") -> str:
    """The error of a record larger than its reader's ``max_record_bytes`` (``size``: "more than N" where unknown)."""
    return f"record of {size} {unit}, over the max_record_bytes limit of {limit}"
