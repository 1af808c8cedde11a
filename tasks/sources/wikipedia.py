"""MediaWiki XML dumps (``*-pages-articles*.xml.bz2``, multistream or not, also .gz or plain .xml).

Streamed page by page with an incremental XML parser: the finished ``<page>`` element is cleared
before the next is read, so memory holds one page whatever the dump's size. The XML declaration or
byte-order mark decides the encoding (UTF-8, UTF-16, ISO-8859-1, ...); the export schema version
(0.3 .. 0.11) only changes the element namespace, which is taken from the root element.

Every ``<page>`` yields exactly one item:

- a :class:`Document` for an article (namespace 0, not a redirect), its wikitext turned into plain
  text by :class:`tasks.sources.wikitext.WikitextCleaner`: link text kept, link markup gone;
  templates, references, comments, files and images, galleries, formulas, code listings,
  categories, interlanguage links, tables, magic words and bare URLs removed, also where the markup
  is unbalanced; bold and italic quotes removed; HTML tags replaced by their text; section titles
  kept as lines (a title whose section ends up empty is dropped with it);
- a :class:`Drop` for a page the recipe excludes (``wikipedia:not_article_namespace``,
  ``wikipedia:redirect``, ``wikipedia:text_deleted``, ``wikipedia:not_wikitext``,
  ``wikipedia:empty_text``);
- a :class:`BadRecord` for a page that cannot be read (no title, no id, no text element), naming
  the file, the page number and its title and id where known; also for a page holding more than
  ``max_record_bytes`` characters (title, text, all), which the parser stops keeping at that bound.

A compressed stream that ends early or XML that stops being well-formed leaves the rest of the
file unreadable: one BadRecord says so, naming the position.

The language comes from the dump's file name (``enwiki-...`` -> ``en``), else from the root
element's ``xml:lang``. A reader accepts the 20 languages of the LLaMA recipe unless its
``languages`` say otherwise; a dump of another language is a configuration error (ValueError), not a
bad record.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from tasks.documents import BadRecord, Document, make_doc_id
from tasks.shards import RAW_EXCERPT_CHARS
from tasks.sources import MAX_RECORD_BYTES, over_size
from tasks.sources.splits import covers_whole, even_ranges, next_member
from tasks.sources.wiki_xml import OVER_SIZE, PageParser
from tasks.sources.wikitext import WikitextCleaner
from tasks.stage import InputFile, ShardUnit
from tasks.steps import Drop
from tasks.storage import resolve

SOURCE = "wikipedia"
LICENCE = "CC BY-SA"
LLAMA_LANGUAGES = tuple("bg ca cs da de en es fr hr hu it nl pl pt ro ru sl sr sv uk".split())

ARTICLE_NAMESPACE = 0
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
MULTISTREAM_SUFFIX = "-multistream.xml.bz2"
# A bz2 stream: "BZh", the block size digit, then the first block's magic (pi's digits in BCD).
STREAM_START = re.compile(rb"BZh[1-9]\x31\x41\x59\x26\x53\x59")
STREAM_START_BYTES = 10
PAGE_START = b"<page"
READ_CHUNK = 1 << 20
PROBE_PIECE = 64 << 10
PROBE_OUTPUT = 64
XML_PIECE = 64 << 10

DUMP_NAME = re.compile(r"^([a-z][a-z0-9_]*?)wiki-")
# Old dumps mark redirects only in the text: '#REDIRECT [[Target]]' or a localised magic word.
REDIRECT_TEXT = re.compile(r"^\s*#[^\W\d_]+\s*:?\s*\[\[")
URL_SAFE = ";@$!*(),/~:"  # the characters MediaWiki leaves unescaped in article URLs


def dump_language(file_name: str) -> str | None:
    """The wiki's language from a dump file name: ``enwiki-20220620-pages-articles.xml.bz2`` -> en."""
    match = DUMP_NAME.match(file_name)
    return match.group(1).replace("_", "-") if match else None


def article_url(language: str, title: str) -> str:
    return f"https://{language}.wikipedia.org/wiki/{quote(title.replace(' ', '_'), safe=URL_SAFE)}"


@dataclass(frozen=True)
class WikipediaReader:
    """Reads one MediaWiki XML dump file per shard unit; see the module docstring."""

    languages: tuple[str, ...] = LLAMA_LANGUAGES
    max_record_bytes: int = MAX_RECORD_BYTES  # characters in one page (at least as many bytes)

    def __post_init__(self) -> None:
        if not self.languages:
            raise ValueError("WikipediaReader needs at least one language")
        malformed = [code for code in self.languages if not re.fullmatch(r"[a-z][a-z0-9-]*", code)]
        if malformed:
            raise ValueError(f"not Wikipedia language codes: {malformed}")

    def read(self, unit: ShardUnit) -> Iterator[Document | Drop | BadRecord]:
        if unit.input is None:
            raise ValueError(f"{unit.source} part {unit.index}: a Wikipedia unit needs an input dump file")
        uri = unit.input.uri
        location = resolve(uri)
        language = dump_language(location.name)
        if language is not None:
            self.check_language(language, uri)
        parse = _DumpParse(self, unit.source, uri, language)
        if covers_whole(unit.byte_range, unit.input.size):
            with location.open_input() as raw, _decompressed(raw, location.name) as stream:
                yield from parse.pages(stream)
            return
        if not is_multistream(location.name):
            raise ValueError(f"{uri}: only a bz2 multistream dump (*-multistream.xml.bz2) can be read in byte ranges")
        with location.open_random_access() as raw, location.open_random_access() as probe:
            yield from parse.split_pages(raw, probe, *unit.byte_range)

    def split(self, input_file: InputFile, target_bytes: int) -> list[tuple[int, int]]:
        """Even byte ranges of a bz2 multistream dump; any other dump stays one range.

        A split finds its first stream from any offset (see :func:`_next_stream`); a single bz2
        stream, gzip or plain XML has no boundary a reader can find without reading from the start.
        """
        if not is_multistream(resolve(input_file.uri).name):
            return [(0, input_file.size)]
        return even_ranges(input_file.size, target_bytes)

    def check_language(self, language: str, uri: str) -> None:
        if language not in self.languages:
            raise ValueError(
                f"{uri}: Wikipedia language {language!r} is not among the configured languages "
                f"{list(self.languages)}; add it to WikipediaReader(languages=...) to ingest it"
            )


def _decompressed(raw: Any, name: str) -> Any:
    if name.endswith(".bz2"):
        return _OneBlockReads(bz2.BZ2File(raw))  # reads multistream dumps (concatenated streams) as one
    if name.endswith(".gz"):
        return _OneBlockReads(gzip.GzipFile(fileobj=raw))
    return contextlib.nullcontext(raw)


class _OneBlockReads(contextlib.AbstractContextManager):
    """Hands the XML parser each decompressed block as it comes (``read1``).

    A plain ``read(n)`` gathers several blocks and, when the stream is truncated, raises away the
    blocks it had gathered: the pages in them would be lost with the broken end.
    """

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def read(self, size: int = -1) -> bytes:
        return self._stream.read1(size if size > 0 else io.DEFAULT_BUFFER_SIZE)

    def __exit__(self, *exc_info: Any) -> None:
        self._stream.close()


class _DumpParse:
    """The state of one pass over a dump: namespace, language, site names, page count."""

    def __init__(self, reader: WikipediaReader, source: str, uri: str, language: str | None) -> None:
        self.reader = reader
        self.source = source
        self.uri = uri
        self.language = language
        self.ns = ""
        self.site_namespaces: dict[str, str] = {}
        self.cleaner: WikitextCleaner | None = None
        self.root: ET.Element | None = None
        # A split names a page by its stream's byte offset (as the multistream index does) and
        # its number in that stream: the same name whatever the split sizes.
        self.stream_start: int | None = None
        self.pages_seen = 0  # in the file; in the current stream for a split

    def pages(self, stream: Any) -> Iterator[Document | Drop | BadRecord]:
        yield from self._items(self._file_events(PageParser(self.reader.max_record_bytes), stream))

    def _file_events(self, parser: PageParser, stream: Any) -> Iterator[tuple[str, ET.Element]]:
        while piece := stream.read(XML_PIECE):
            parser.feed(piece)
            yield from parser.read_events()
        parser.close()
        yield from parser.read_events()

    def split_pages(self, raw: Any, probe: Any, start: int, end: int) -> Iterator[Document | Drop | BadRecord]:
        """The pages of the streams that start in [start, end), parsed after the dump's header.

        A split after the first feeds the parser the first stream up to its first ``<page>`` (the
        ``<mediawiki>`` start tag and ``<siteinfo>``), then its own streams; it closes the document
        only when it reaches the file's end, so a split that ends before is well-formed so far.
        Like :class:`tasks.sources.commoncrawl.CommonCrawlReader`, a split also takes bytes after
        its last stream that are no stream (the next split, starting at a stream, skips them).
        """
        position = 0 if start == 0 else _next_stream(probe, start)
        if position is None or position >= end:
            return
        parser = PageParser(self.reader.max_record_bytes)
        if start > 0:
            yield from self._items(self._header_events(parser, _Bz2Streams(raw, 0)))
        yield from self._items(self._stream_events(parser, _Bz2Streams(raw, position), probe, end))

    def _header_events(self, parser: PageParser, streams: _Bz2Streams) -> Iterator[tuple[str, ET.Element]]:
        header = b""
        for piece in streams.stream():
            header += piece
            if PAGE_START in header:
                break
        parser.feed(header.partition(PAGE_START)[0])
        yield from parser.read_events()

    def _stream_events(
        self, parser: PageParser, streams: _Bz2Streams, probe: Any, end: int
    ) -> Iterator[tuple[str, ET.Element]]:
        while not streams.at_end():
            if streams.offset >= end and _starts_stream(probe, streams.offset):
                return
            self.stream_start, self.pages_seen = streams.offset, 0
            for piece in streams.stream():
                parser.feed(piece)
                yield from parser.read_events()
        parser.close()
        yield from parser.read_events()

    def _items(self, events: Iterator[tuple[str, ET.Element]]) -> Iterator[Document | Drop | BadRecord]:
        root = self.root
        try:
            for event, elem in events:
                if root is None:
                    root = self.root = elem
                    self._start(root)
                elif event == "end" and elem.tag == self.ns + "page":
                    self.pages_seen += 1
                    yield self._page(elem)
                    root.clear()  # the finished page and anything before it: memory stays flat
                elif event == "end" and elem.tag == self.ns + "siteinfo":
                    self._read_siteinfo(elem)
                    root.clear()
        except _NotADump as exc:
            yield BadRecord(f"{self.uri}:root element", str(exc), "")
        except ET.ParseError as exc:
            yield self._unreadable_rest(root, f"malformed XML ({exc})", _xml_position(exc))
        except (OSError, EOFError) as exc:  # truncated or corrupt compression
            yield self._unreadable_rest(root, f"unreadable input ({type(exc).__name__}: {exc})", "")

    def _start(self, root: ET.Element) -> None:
        namespace, _, local = root.tag.rpartition("}")
        if local != "mediawiki":
            raise _NotADump(f"not a MediaWiki XML export: root element is <{local}>")
        self.ns = namespace + "}" if namespace else ""
        if self.language is None:
            self.language = root.get(XML_LANG)
            if not self.language:
                raise ValueError(f"{self.uri}: no language in the file name (<lang>wiki-...) nor in xml:lang")
            self.reader.check_language(self.language, self.uri)

    def _read_siteinfo(self, siteinfo: ET.Element) -> None:
        for namespace in siteinfo.iter(self.ns + "namespace"):
            if namespace.text:
                self.site_namespaces[namespace.get("key", "")] = namespace.text

    def _unreadable_rest(self, root: ET.Element | None, error: str, position: str) -> BadRecord:
        if root is None:
            return BadRecord(f"{self.uri}:start{position}", f"no MediaWiki XML: empty or not XML: {error}", "")
        where = f"{self.uri}:{self._page_name(self.pages_seen + 1)}{_page_label(root, self.ns)}{position}"
        if self.stream_start is None:
            rest = f"the rest of the file after page {self.pages_seen} is unreadable"
        else:
            rest = "the rest of the split is unreadable"
        return BadRecord(where, f"{error}; {rest}", "")

    def _page_name(self, number: int) -> str:
        if self.stream_start is None:
            return f"page {number}"
        return f"page {number} of the stream at byte {self.stream_start}"

    def _page(self, page: ET.Element) -> Document | Drop | BadRecord:
        locator = f"{self.uri}:{self._page_name(self.pages_seen)}{_page_label_of(page, self.ns)}"
        chars = page.attrib.pop(OVER_SIZE, None)
        try:
            return self._page_item(page, locator, None if chars is None else int(chars))
        except _OverSizePage as exc:
            for element in page.iter():
                element.text = element.text and element.text[:RAW_EXCERPT_CHARS]
            error = over_size(exc.chars, self.reader.max_record_bytes, "characters in the page")
            return BadRecord(locator, error, _raw_page(page)[:RAW_EXCERPT_CHARS])
        except _BadPage as exc:
            return BadRecord(locator, str(exc), _raw_page(page))

    def _page_item(self, page: ET.Element, locator: str, over_size_chars: int | None) -> Document | Drop:
        ns = self.ns
        title = page.findtext(ns + "title")
        if not title:
            raise _BadPage("page has no title")
        page_id = _integer(page.findtext(ns + "id"), "page id")
        if self._namespace_of(page, title) != ARTICLE_NAMESPACE:
            return Drop(f"{SOURCE}:not_article_namespace")
        if page.find(ns + "redirect") is not None:
            return Drop(f"{SOURCE}:redirect")
        revisions = page.findall(ns + "revision")
        if not revisions:
            raise _BadPage("page has no revision")
        revision = revisions[-1]  # full-history dumps list revisions oldest first
        text_element = revision.find(ns + "text")
        if text_element is None:
            raise _BadPage("revision has no text element")
        if text_element.get("deleted") is not None:
            return Drop(f"{SOURCE}:text_deleted")
        if revision.findtext(ns + "model", "wikitext") != "wikitext":
            return Drop(f"{SOURCE}:not_wikitext")
        if over_size_chars is not None:  # a page the recipe drops anyway is dropped above, whatever its size
            raise _OverSizePage(over_size_chars)
        wikitext = text_element.text or ""
        if REDIRECT_TEXT.match(wikitext):
            return Drop(f"{SOURCE}:redirect")
        text = self._cleaner().to_text(wikitext)
        if not text:
            return Drop(f"{SOURCE}:empty_text")
        revision_id = revision.findtext(ns + "id")
        meta = {
            "url": article_url(self.language, title),
            "title": title,
            "page_id": page_id,
            "revision_id": _integer(revision_id, "revision id") if revision_id is not None else None,
            "timestamp": revision.findtext(ns + "timestamp"),
            "language": self.language,
            "licence": LICENCE,
            "provenance": locator,
        }
        return Document(
            id=make_doc_id(SOURCE, f"{self.language}:{page_id}"), source=self.source, text=text, meta=meta
        )

    def _namespace_of(self, page: ET.Element, title: str) -> int:
        declared = page.findtext(self.ns + "ns")
        if declared is not None:
            return _integer(declared, "namespace")
        # Schemas before 0.6 have no <ns>: the title's prefix names the namespace.
        prefix, colon, _ = title.partition(":")
        if colon:
            for key, name in self.site_namespaces.items():
                if name == prefix and key.lstrip("-").isdigit():
                    return int(key)
        return ARTICLE_NAMESPACE

    def _cleaner(self) -> WikitextCleaner:
        if self.cleaner is None:
            self.cleaner = WikitextCleaner.for_language(self.language, self.site_namespaces)
        return self.cleaner


class _Bz2Streams:
    """The bz2 streams of a file from ``offset`` on, decompressed one stream at a time.

    ``offset`` is the file position of the next stream once the current one is read.
    """

    def __init__(self, raw: Any, offset: int) -> None:
        raw.seek(offset)
        self._raw = raw
        self._pending = b""
        self.offset = offset

    def at_end(self) -> bool:
        if not self._pending:
            self._pending = self._raw.read(READ_CHUNK)
        return not self._pending

    def stream(self) -> Iterator[bytes]:
        start = self.offset
        decompressor = bz2.BZ2Decompressor()
        while not decompressor.eof:
            piece = b""
            if decompressor.needs_input:
                piece, self._pending = self._pending or self._raw.read(READ_CHUNK), b""
                if not piece:
                    raise EOFError(f"the file ends inside the bz2 stream at byte {start}")
                self.offset += len(piece)
            if output := decompressor.decompress(piece, READ_CHUNK):
                yield output
        self._pending = decompressor.unused_data
        self.offset -= len(self._pending)


def is_multistream(name: str) -> bool:
    return name.endswith(MULTISTREAM_SUFFIX)


def _next_stream(probe: Any, offset: int) -> int | None:
    """The offset of the first bz2 stream at or after ``offset`` (stream and block magic, then it decompresses)."""
    return next_member(probe, offset, lambda window: (m.start() for m in STREAM_START.finditer(window)),
                       _starts_stream, STREAM_START_BYTES)


def _starts_stream(probe: Any, offset: int) -> bool:
    """A stream starts at ``offset`` when its magic is there and its first block decompresses to XML."""
    probe.seek(offset)
    if not STREAM_START.match(probe.read(STREAM_START_BYTES)):
        return False
    probe.seek(offset)
    decompressor = bz2.BZ2Decompressor()
    output = b""
    try:
        while not output.strip() and not decompressor.eof:
            piece = probe.read(PROBE_PIECE) if decompressor.needs_input else b""
            if decompressor.needs_input and not piece:
                return False
            output += decompressor.decompress(piece, PROBE_OUTPUT)
    except OSError:
        return False
    return output.lstrip().startswith(b"<")


class _BadPage(ValueError):
    pass


class _NotADump(ValueError):
    pass


class _OverSizePage(Exception):
    def __init__(self, chars: int) -> None:
        super().__init__(chars)
        self.chars = chars


def _integer(value: str | None, what: str) -> int:
    try:
        return int((value or "").strip())
    except ValueError:
        raise _BadPage(f"{what} missing or not an integer: {value!r}") from None


def _page_label_of(page: ET.Element, ns: str) -> str:
    title, page_id = page.findtext(ns + "title"), page.findtext(ns + "id")
    known = [f"id {page_id.strip()}"] if page_id and page_id.strip() else []
    known += [repr(title)] if title else []
    return f" ({', '.join(known)})" if known else ""


def _page_label(root: ET.Element, ns: str) -> str:
    """Title and id of the page being read when the stream broke (its elements so far are in the tree)."""
    if len(root) and root[-1].tag == ns + "page":
        return _page_label_of(root[-1], ns)
    return ""


def _raw_page(page: ET.Element) -> str:
    """The page as it reads in the dump, without the export namespace on every tag (the page is discarded next)."""
    for element in page.iter():
        element.tag = element.tag.rpartition("}")[2]
    page.tail = None
    return ET.tostring(page, encoding="unicode")


def _xml_position(exc: ET.ParseError) -> str:
    line, column = getattr(exc, "position", (None, None))
    return f", XML line {line} column {column}" if line is not None else ""
