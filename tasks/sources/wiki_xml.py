"""The XML parsing of a MediaWiki dump with a bound on each page's text (see :class:`PageParser`)."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator

OVER_SIZE = "{urn:llamaline}over_size_chars"  # set on a page whose text passed the parser's bound


class PageParser:
    """An XML pull parser (``feed``, ``read_events``, ``close``) that bounds the text of each page.

    Events are the root's start and the end of each of its children (pages, siteinfo); like
    ``XMLPullParser``, a parse error is raised after the events before it have been read.
    """

    def __init__(self, max_chars: int) -> None:
        self._builder = _BoundedPageBuilder(max_chars)
        self._parser = ET.XMLParser(target=self._builder)
        self._error: ET.ParseError | None = None

    def feed(self, data: bytes) -> None:
        if self._error is None:
            try:
                self._parser.feed(data)
            except ET.ParseError as exc:
                self._error = exc

    def close(self) -> None:
        if self._error is None:
            try:
                self._parser.close()
            except ET.ParseError as exc:
                self._error = exc

    def read_events(self) -> Iterator[tuple[str, ET.Element]]:
        events, self._builder.events = self._builder.events, []
        yield from events
        if self._error is not None:
            raise self._error


class _BoundedPageBuilder(ET.TreeBuilder):
    """ElementTree's tree builder, keeping at most ``max_chars`` of each page's character data.

    The characters past the bound are counted, not kept: the page then carries the count in its
    ``OVER_SIZE`` attribute, and memory holds ``max_chars`` however large the page. A full-history
    dump's page keeps only its latest revision (the one read), and the bound is on that one.
    ``data`` runs for every piece of text the parser reports: it does as little as it can.
    """

    def __init__(self, max_chars: int) -> None:
        super().__init__()
        self.max_chars = max_chars
        self.events: list[tuple[str, ET.Element]] = []
        self._keep = super().data
        self._depth = 0
        self._page: ET.Element | None = None
        self._limit = sys.maxsize  # max_chars while inside a page
        self._chars = 0  # of the current page, its earlier revisions left out
        self._before_revisions: int | None = None  # the page's characters when its first revision began

    def start(self, tag: str, attrs: dict[str, str]) -> ET.Element:
        element = super().start(tag, attrs)
        self._depth += 1
        if self._depth == 1:
            self.events.append(("start", element))
        elif self._depth == 2 and tag.rpartition("}")[2] == "page":
            self._page, self._chars, self._limit, self._before_revisions = element, 0, self.max_chars, None
        elif self._depth == 3 and self._page is not None and tag.rpartition("}")[2] == "revision":
            if self._before_revisions is None:
                self._before_revisions = self._chars
            else:
                for older in self._page.findall(tag)[:-1]:
                    self._page.remove(older)
                self._chars = self._before_revisions
        return element

    def data(self, data: str) -> None:
        self._chars += len(data)
        if self._chars <= self._limit:
            self._keep(data)
        elif (room := len(data) - (self._chars - self._limit)) > 0:
            self._keep(data[:room])  # the page's first max_chars stay: its quarantine excerpt

    def end(self, tag: str) -> ET.Element:
        element = super().end(tag)
        self._depth -= 1
        if self._depth == 1:
            if self._page is not None and self._chars > self._limit:
                element.set(OVER_SIZE, str(self._chars))
            self._page, self._limit = None, sys.maxsize
            self.events.append(("end", element))
        return element
