"""Common Crawl: WARC files (HTML ``response`` records) and WET files (``conversion`` records).

A WARC response becomes the main-content text of its page (resiliparse's extractor drops
navigation, footers and other boilerplate); a WET conversion record's text is kept as it is. Other
record types (warcinfo, request, metadata, revisit) are not documents and yield nothing.

Charset of an HTML page, in the order a browser uses: byte-order mark, HTTP Content-Type header,
``<meta>`` declaration, then detection (resiliparse, uchardet-based). A page is decoded strictly:
bytes that are invalid in the charset it declares quarantine the page rather than put U+FFFD into
the text.

A record whose block is longer than ``max_record_bytes`` (its Content-Length says so before it is
read) is quarantined without being read, unless its headers already drop it (a video is
``not_html`` whatever its size); an HTTP payload that decompresses past the bound is too.

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
from tasks.language import detect_language
from tasks.sources import MAX_RECORD_BYTES, over_size
from tasks.sources.splits import covers_whole, even_ranges, next_member
from tasks.stage import InputFile, ShardUnit
from tasks.steps import Drop
from tasks.storage import resolve

SOURCE = "commoncrawl"
DATA_HOST = "https://data.commoncrawl.org"
CRAWL_NAME = re.compile(r"CC-MAIN-\d{4}-\d{2}")
HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
DOCUMENT_RECORDS = WarcRecordType.response | WarcRecordType.conversion
RAW_CHARS = 4096  # of a quarantined record's block: enough to see what went wrong
READ_CHUNK = 1 << 20
# Compressed bytes handed to zlib at a time: what zlib copies out as the unused tail of a member.
INFLATE_PIECE = 32 << 10
INFLATE_OUTPUT = 1 << 20
# A split finds its first record by the gzip member header (ID1 ID2 CM=deflate) of a WARC record.
GZIP_MAGIC = b"\x1f\x8b\x08"
WARC_MAGIC = b"WARC/"
PROBE_PIECE = 4096
PROBE_PIECES = 16  # a member whose first 64 KiB give no WARC/ header is no WARC record
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
    max_record_bytes: int = MAX_RECORD_BYTES  # of one record's block after its HTTP headers

    def read(self, unit: ShardUnit) -> Iterator[Item]:
        if unit.input is None:
            raise ValueError(f"{unit.source} part {unit.index}: a Common Crawl unit needs an input file")
        uri = unit.input.uri
        reader = _FileReader(uri, unit.source, self.main_content, self.max_record_bytes)
        if covers_whole(unit.byte_range, unit.input.size):
            with resolve(uri).open_input() as raw:
                yield from reader.items(_ByteSource(raw))
            return
        location = resolve(uri)
        with location.open_random_access() as raw, location.open_random_access() as probe:
            if probe.read(2) != GZIP_MAGIC[:2]:
                raise ValueError(f"{uri}: an uncompressed WARC file cannot be read in byte ranges")
            yield from reader.split_items(raw, probe, *unit.byte_range, unit.input.size)

    def split(self, input_file: InputFile, target_bytes: int) -> list[tuple[int, int]]:
        """Even byte ranges of a gzip WARC/WET file; an uncompressed file stays one range.

        Records are found from any offset by their gzip member (see :func:`_next_warc_member`);
        an uncompressed file has no such marker (``WARC/1.0`` may occur inside a payload).
        """
        with resolve(input_file.uri).open_random_access() as raw:
            if raw.read(2) != GZIP_MAGIC[:2]:
                return [(0, input_file.size)]
        return even_ranges(input_file.size, target_bytes)


def _next_warc_member(probe, offset: int) -> int | None:
    """The offset of the first gzip member at or after ``offset`` whose content starts a WARC record
    (the gzip magic also occurs by chance inside compressed data)."""
    return next_member(probe, offset, _gzip_magics, _starts_warc_member, len(GZIP_MAGIC))


def _gzip_magics(window: bytes) -> Iterator[int]:
    found = window.find(GZIP_MAGIC)
    while found != -1:
        yield found
        found = window.find(GZIP_MAGIC, found + 1)


def _starts_warc_member(probe, offset: int) -> bool:
    probe.seek(offset)
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    head = b""
    for _ in range(PROBE_PIECES):
        piece = inflater.unconsumed_tail or probe.read(PROBE_PIECE)
        if not piece:
            return False
        try:
            head += inflater.decompress(piece, len(WARC_MAGIC) - len(head))
        except zlib.error:
            return False
        if len(head) == len(WARC_MAGIC) or inflater.eof:
            return head == WARC_MAGIC
    return False


@dataclass(frozen=True, slots=True)
class _Read:
    """A record once read: its item (None for a record that is not a document)."""

    locator: str
    item: Item | None
    raw: str
    short: bool  # the block ended before its Content-Length


class _FileReader:
    """Walks one file's records; keeps the running record number and the crawl name.

    A whole file numbers its records from its start (``record 7``). A split cannot know how many
    records come before it, so it names a record by its gzip member's byte offset, as Common
    Crawl's own index does (``record at byte 48213``): the same name whatever the split sizes.
    """

    def __init__(self, uri: str, source: str, main_content: bool, max_record_bytes: int) -> None:
        self.uri = uri
        self.source = source
        self.main_content = main_content
        self.max_record_bytes = max_record_bytes
        self.records = 0  # in the file; in the current gzip member for a split
        self.member_start: int | None = None  # set while reading a split
        self.crawl: str | None = None

    def items(self, data: _ByteSource) -> Iterator[Item]:
        if not data.peek(2):
            yield BadRecord(f"{self.uri}:record 1", "empty file: no WARC records", "")
            return
        reported = 0
        for item in self._file_items(data):
            reported += 1
            yield item
        if not reported and not self.records:
            yield BadRecord(f"{self.uri}:record 1", "no WARC records in the file", "")

    def _file_items(self, data: _ByteSource) -> Iterator[Item]:
        if data.peek(2) != GZIP_MAGIC[:2]:
            yield from self._stream_items(_PlainStream(data))
            return
        while not data.at_end():
            member = _GzipMember(data)
            yield from self._stream_items(member)
            if member.broken:
                return

    def split_items(self, raw, probe, start: int, end: int, size: int) -> Iterator[Item]:
        """Items of the records whose gzip member starts in [start, end) of a gzip file.

        The split also takes what follows its last record up to the next WARC member (bytes that
        are no record: the next split, which starts at a WARC member, would skip them). After a
        broken member it goes on at the next WARC member, where the whole-file read stops.
        """
        if start > 0:
            self.crawl = _crawl_at_start(probe)
        position = start if start == 0 else _next_warc_member(probe, start)
        data: _ByteSource | None = None
        while position is not None and position < size:
            if position >= end and _starts_warc_member(probe, position):
                return
            if data is None or data.offset != position:
                raw.seek(position)
                data = _ByteSource(raw, position)
            self.member_start, self.records = position, 0
            member = _GzipMember(data)
            yield from self._stream_items(member)
            position = _next_warc_member(probe, member.start + 1) if member.broken else data.offset

    def _record_label(self) -> str:
        if self.member_start is None:
            return f"record {self.records}"
        if self.records == 1:
            return f"record at byte {self.member_start}"
        return f"record {self.records} of the gzip member at byte {self.member_start}"

    def _after_label(self) -> str:
        if self.member_start is not None and not self.records:
            return f"{self.uri}:gzip member at byte {self.member_start}"
        return f"{self.uri}:after {self._record_label()}"

    def _stream_items(self, stream: _PlainStream | _GzipMember) -> Iterator[Item]:
        """Items of the records in one stream: the whole plain file, or one gzip member."""
        member = stream if isinstance(stream, _GzipMember) else None
        if member is not None:
            where = f"skipping the rest of the gzip member at byte {member.start}"
        else:
            where = "the rest of the file cannot be read"
        if self.member_start is None:
            rest = "the rest of the file cannot be read"
        else:
            rest = "the split goes on at the next WARC record it finds"
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
                        yield BadRecord(self._after_label(), f"{where}: {exc}", "")
                else:
                    if held is not None and held.item is not None:
                        yield held.item
                    yield BadRecord(self._after_label(), f"not a WARC record ({exc}); {where}", "")
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
            yield BadRecord(self._after_label(), f"{broken}; {rest}", "")

    def _record(self, record: WarcRecord) -> _Read:
        """Read one record's block now (the iterator moves on) and turn it into its item."""
        record_id = record.record_id
        locator = f"{self.uri}:{self._record_label()}" + (f" {record_id}" if record_id else "")
        if record.content_length > self.max_record_bytes:
            return _Read(locator, self._over_size(record, locator), "", short=False)
        block = record.reader.read()
        if len(block) < record.content_length:
            error = _short_block(len(block), record.content_length)
            return _Read(locator, BadRecord(locator, error, _raw_text(record, block)), "", short=True)
        if not record.record_type & DOCUMENT_RECORDS:
            if record.record_type == WarcRecordType.warcinfo:
                self.crawl = _crawl_of(block) or self.crawl
            return _Read(locator, None, "", short=False)
        raw = _raw_text(record, block)
        provenance = f"{self.uri}:{self._record_label()}"
        try:
            if record.record_type == WarcRecordType.response:
                item = self._page(record, block, provenance)
            else:
                item = self._conversion(record, block, provenance)
        except RecordError as exc:
            item = BadRecord(locator, str(exc), raw)
        return _Read(locator, item, raw, short=False)

    def _over_size(self, record: WarcRecord, locator: str) -> Item | None:
        """An over-size record's item, from its headers alone: the fastwarc iterator skips its block."""
        if not record.record_type & DOCUMENT_RECORDS:
            return None
        if record.record_type == WarcRecordType.response:
            try:
                if drop := _header_drop(record):
                    return drop
            except RecordError as exc:
                return BadRecord(locator, str(exc), _raw_text(record, record.reader.read(RAW_CHARS)))
        error = over_size(record.content_length, self.max_record_bytes)
        return BadRecord(locator, error, _raw_text(record, record.reader.read(RAW_CHARS)))

    def _page(self, record: WarcRecord, payload: bytes, provenance: str) -> Document | Drop:
        if drop := _header_drop(record):
            return drop
        content_type = record.http_headers.get("Content-Type")
        mime = _mime(content_type) or _mime(record.headers.get("WARC-Identified-Payload-Type"))
        payload = _undo_http_encodings(record.http_headers, payload, self.max_record_bytes)
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


def _header_drop(record: WarcRecord) -> Drop | None:
    """The drop a response's WARC and HTTP headers decide on, before its payload is read."""
    if not record.is_http:
        return Drop(f"{SOURCE}:not_http")
    status = record.http_headers.status_code
    if status is None:
        raise RecordError(f"no HTTP status line: {record.http_headers.status_line!r}")
    if status != 200:
        return Drop(f"{SOURCE}:http_{status}")
    mime = _mime(record.http_headers.get("Content-Type")) or _mime(record.headers.get("WARC-Identified-Payload-Type"))
    if mime not in HTML_TYPES:
        return Drop(f"{SOURCE}:not_html")
    return None


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


def _undo_http_encodings(http_headers: HeaderMap, payload: bytes, max_bytes: int) -> bytes:
    """Common Crawl stores payloads decoded; other crawlers keep chunking and compression.

    Decompression stops past ``max_bytes``: a small compressed payload may inflate without end.
    """
    try:
        if "chunked" in (http_headers.get("Transfer-Encoding") or "").lower():
            payload = ChunkedReader(io.BytesIO(payload)).read()
        encodings = [e.strip().lower() for e in (http_headers.get("Content-Encoding") or "").split(",")]
        for encoding in reversed([e for e in encodings if e and e != "identity"]):
            if encoding not in CONTENT_DECODERS:
                raise RecordError(f"unsupported HTTP Content-Encoding {encoding!r}")
            payload = CONTENT_DECODERS[encoding](io.BytesIO(payload)).read(max_bytes + 1)
            if len(payload) > max_bytes:
                raise RecordError(over_size(f"more than {max_bytes}", max_bytes, "bytes once decoded"))
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


def _crawl_at_start(probe) -> str | None:
    """The crawl name in the warcinfo record that opens the file, if it does."""
    probe.seek(0)
    try:
        first = next(iter(ArchiveIterator(_GzipMember(_ByteSource(probe)), parse_http=False, auto_decode="none")), None)
        if first is not None and first.record_type == WarcRecordType.warcinfo:
            return _crawl_of(first.reader.read())
    except (OSError, ValueError):
        pass  # a broken first member: its own split reports it
    return None


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

    def __init__(self, raw, offset: int = 0) -> None:
        self._raw = raw
        self._chunk = memoryview(b"")
        self._pos = 0
        self.offset = offset

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
