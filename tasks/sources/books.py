"""Project Gutenberg plain-text e-books: one file is one book is one document.

Encoding: the first candidate that decodes the whole kept part of the file wins, tried in this
order: a byte-order mark; UTF-8 when the opening sample is valid UTF-8 with multi-byte characters
(legacy text almost never is by accident); the header's "Character set encoding:" line;
charset-normalizer's guess on the sample; cp1252; latin-1 (which decodes anything). ISO-8859-1
is read as cp1252, as the WHATWG Encoding Standard does: the C1 controls it would otherwise give
are in practice always Windows quotes and dashes.

Boilerplate: the text starts after the last start marker in the first ``HEADER_LINES`` lines
("*** START OF THE/THIS PROJECT GUTENBERG EBOOK ...", or "*END*THE SMALL PRINT ..." of 1990s
e-texts), without the producer credits that open it ("Produced by ...", "This etext was prepared
by ..."), and stops at the footer ("*** END OF ...", or from line ``FOOTER_FROM_LINE`` on,
"End of the Project Gutenberg ..."). The header's Title, Author, Language, Release Date and
EBook # go into ``meta``.

No rule may take the book with it. Copies without blank lines between paragraphs (CR, CRLF and
whitespace-only lines are normalised first) make the whole book one "paragraph": a credit is a
blank-line paragraph of at most ``MAX_CREDIT_LINES`` lines only where text follows it, else the
lines that continue its first line, and a credit or licence notice that does not end within its
bound is text and stays.
"""

from __future__ import annotations

import codecs
import io
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

import langcodes
from charset_normalizer import from_bytes

from tasks.documents import BadRecord, Document, make_doc_id
from tasks.sources import over_size
from tasks.stage import ShardUnit
from tasks.steps import Drop
from tasks.storage import Location, resolve

LICENCE = "Project Gutenberg License"
HEADER_LINES = 600
FOOTER_FROM_LINE = 100
SAMPLE_BYTES = 256 << 10

START_MARKER = re.compile(
    r"^\W*(?:\*+\s*START OF (?:THE |THIS )?(?:COPYRIGHTED )?PROJECT GUTENBERG|\*END\*?\s*THE SMALL PRINT)", re.I
)
END_MARKER = re.compile(r"^\W*\*+\s*END OF (?:THE |THIS )?(?:COPYRIGHTED )?PROJECT GUTENBERG", re.I)
# Closing lines that a marker-less header could quote: only after a start marker or late in the file.
LATE_END_MARKER = re.compile(
    r"^\W*(?:End of (?:the |this )?Project Gutenberg|Ende dieses Projekt? Gutenberg|Fin (?:de|du) Project Gutenberg)",
    re.I,
)
CREDIT = re.compile(
    r"^\W*(?:Produced by|(?:This )?E-?(?:text|book) (?:was )?(?:prepared|produced) by|Transcribed (?:from|by))", re.I
)
# The Shakespeare e-texts repeat a licence notice between these lines throughout the book.
LEGALESE_START = re.compile(r"^<<THIS ELECTRONIC VERSION OF")
LEGALESE_END = re.compile(r"SERVICE THAT CHARGES FOR DOWNLOAD")
# A rule removes boilerplate, never the book: credits and that notice are a handful of lines, so a
# "credit" or "notice" that would run on past these bounds is text and stays.
MAX_CREDIT_LINES = 8
MAX_CREDIT_CHARS = 800
MAX_CREDIT_LINE_CHARS = 200  # longer is a paragraph set as one line (copies without line wrapping)
MAX_LEGALESE_LINES = 20  # the notice is 8 lines
# Without a blank line after it, a credit goes on while the line before is unfinished, the next
# starts in lower case or inside an open parenthesis, or names the producers' usual places.
UNFINISHED_LINE = re.compile(r"(?:[,;:&/(-]|\b(?:and|by|the|of|at|from|with|for|to|in|on|de|et|und|von))$")
CREDIT_WORDS = re.compile(
    r"proof-?read|distributed|pgdp|https?://|www\.|\bonline\b|\bteam\b|e-?mail|\S@\S|internet archive"
    r"|librar(?:y|ies)\b|\bimages\b|\bscans\b",
    re.I,
)

HEADER_FIELD = re.compile(
    r"^(title|author|language|release date|posting date|character set encoding)\s*:\s*(.*)$", re.I
)
EBOOK_NUMBER = re.compile(r"\[\s*E-?(?:Book|Text)\s*#\s*(\d+)\s*\]", re.I)
OLD_STYLE_TITLE = re.compile(r"^\W*The Project Gutenberg E-?(?:Book|Text) of (.+?)(?:,? by (.+?))?\W*$", re.I)
DECLARED_ENCODING = re.compile(rb"Character set encoding:[ \t]*([^\r\n]+)", re.I)
DATE_FORMATS = ("%B %d, %Y", "%B %d %Y", "%d %B %Y", "%B, %Y", "%B %Y", "%Y-%m-%d", "%b %d, %Y", "%b, %Y", "%Y")
BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


class NotABook(ValueError):
    """The file cannot hold a plain-text e-book (empty, binary, too large)."""


@dataclass(frozen=True)
class BooksReader:
    # The file's size, checked before it is read: the largest e-books (Webster's dictionary) are ~30 MB.
    max_record_bytes: int = 64 << 20

    def read(self, unit: ShardUnit) -> Iterator[Document | Drop | BadRecord]:
        if unit.input is None:
            raise ValueError(f"{unit.source} part {unit.index}: a books unit needs an input file")
        uri = unit.input.uri
        try:
            yield self._read_book(unit, resolve(uri))
        except NotABook as exc:
            yield BadRecord(uri, str(exc), "")
        except OSError as exc:
            yield BadRecord(uri, f"unreadable input: {exc}", "")

    def _read_book(self, unit: ShardUnit, location: Location) -> Document | Drop:
        size = location.size()
        if size == 0:
            raise NotABook("empty file")
        if size > self.max_record_bytes:
            raise NotABook(over_size(size, self.max_record_bytes))
        with location.open_input() as raw:
            sample = raw.read(SAMPLE_BYTES)
        candidates = encoding_candidates(sample)
        if b"\x00" in sample and not candidates[0].startswith("utf-16"):
            raise NotABook("binary content (NUL bytes): not a plain-text e-book")
        for encoding in candidates:
            try:
                with location.open_input() as raw:
                    book = split_book(_lines(raw, encoding))
            except UnicodeDecodeError:
                continue  # a later byte disproves this encoding: start over with the next
            return self._document(unit, location, book, encoding)
        raise NotABook(f"does not decode as {' or '.join(candidates)}")  # only a UTF-16 BOM gets here

    def _document(self, unit: ShardUnit, location: Location, book: SplitBook, encoding: str) -> Document | Drop:
        text = book.text
        if not text:
            return Drop("books:no_text_after_boilerplate")
        meta = parse_header(book.header)
        number = meta.get("ebook_number")
        key = f"gutenberg:{number}" if number else location.name
        if number:
            meta["url"] = f"https://www.gutenberg.org/ebooks/{number}"
        meta.update(licence=LICENCE, provenance=location.uri, encoding=codecs.lookup(encoding).name)
        return Document(id=make_doc_id(unit.source, key), source=unit.source, text=text, meta=meta)


def _lines(raw, encoding: str) -> Iterator[str]:
    # newline=None: CRLF and lone CR become "\n"; decoding is incremental, one buffer at a time.
    with io.TextIOWrapper(io.BufferedReader(raw), encoding=encoding, errors="strict", newline=None) as text:
        yield from text


def encoding_candidates(sample: bytes) -> list[str]:
    """Encodings to try, most likely first; the last, latin-1, decodes any bytes."""
    for bom, encoding in BOMS:
        if sample.startswith(bom):
            return [encoding] if encoding == "utf-16" else [encoding, "cp1252", "latin-1"]
    ordered: list[str] = []
    non_ascii = not sample.isascii()
    if non_ascii and _valid_utf8(sample):
        ordered.append("utf-8")
    declared = _declared_encoding(sample)
    if declared:
        ordered.append(declared)
    if non_ascii:
        guess = _guess(sample)
        if guess:
            ordered.append(guess)
    ordered += ["utf-8", "cp1252", "latin-1"]
    seen: dict[str, str] = {}
    for encoding in ordered:
        seen.setdefault(codecs.lookup(encoding).name, encoding)
    return list(seen.values())


def _valid_utf8(sample: bytes) -> bool:
    try:
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)  # the sample may cut a character
    except UnicodeDecodeError:
        return False
    return True


def _guess(sample: bytes) -> str | None:
    """charset-normalizer's best guess; cp1252 where it decodes the sample to the same text.

    Gutenberg's 8-bit e-texts are ISO-8859-1: among code pages that read the sample identically
    (cp1250 and cp1252 agree on German umlauts, not on the French "è"), that one is right.
    """
    best = from_bytes(sample).best()
    if best is None:
        return None
    if {"cp1252", "latin_1"} & set(best.could_be_from_charset):
        return "cp1252"
    return _superset(best.encoding)


def _declared_encoding(sample: bytes) -> str | None:
    found = DECLARED_ENCODING.search(sample)
    if not found:
        return None
    value = found.group(1).decode("ascii", errors="ignore").strip()
    for name in [value, *re.findall(r"[A-Za-z0-9_\-]+", value)]:  # "ISO-646-US (US-ASCII)"
        try:
            return _superset(codecs.lookup(name).name)
        except LookupError:
            continue
    return None


def _superset(encoding: str) -> str:
    """ASCII text is UTF-8 too, and ISO-8859-1 labels mean cp1252 (WHATWG): decode with the superset."""
    name = codecs.lookup(encoding).name
    return {"ascii": "utf-8", "iso8859-1": "cp1252"}.get(name, name)


@dataclass
class SplitBook:
    header: list[str]  # the lines before the start marker, where the header fields are
    text: str  # the book's own lines: no trailing spaces, paragraphs parted by one blank line


def split_book(lines: Iterable[str]) -> SplitBook:
    """Cut header and footer at their markers; drop the producer credits that open the text."""
    header: list[str] = []
    body: list[str] = []
    legalese: list[str] = []  # the lines of a licence notice being skipped, until its end shows
    started = False
    for number, line in enumerate(lines, 1):
        line = line.rstrip()  # whitespace-only lines (spaces, tabs, form feeds) are blank
        if number <= HEADER_LINES and START_MARKER.match(line):
            header += body + legalese  # all so far was header (a 1990s e-text may have two start markers)
            body, legalese = [], []
            started = True
        elif END_MARKER.match(line) or ((started or number >= FOOTER_FROM_LINE) and LATE_END_MARKER.match(line)):
            break  # the rest is the footer and the licence: not even decoded
        elif legalese or LEGALESE_START.match(line):
            legalese.append(line)
            if LEGALESE_END.search(line):
                legalese = []
            elif len(legalese) > MAX_LEGALESE_LINES:
                body += legalese  # no end in sight: not the notice
                legalese = []
        else:
            body.append(line)
    body += legalese
    if not started:
        header = body[:HEADER_LINES]  # no marker: the header fields, if any, are in the text itself
    else:
        body = _without_credits(body)
    return SplitBook(header, "\n\n".join("\n".join(p) for p in _paragraphs(body)))


def _without_credits(lines: list[str]) -> list[str]:
    """The lines after the producer credits that open them (there may be several credits)."""
    start = _next_text_line(lines, 0)
    while start < len(lines) and CREDIT.match(lines[start]):
        end = _credit_end(lines, start)
        if end is None:
            break
        start = _next_text_line(lines, end)
    return lines[start:]


def _next_text_line(lines: list[str], index: int) -> int:
    while index < len(lines) and not lines[index]:
        index += 1
    return index


def _credit_end(lines: list[str], start: int) -> int | None:
    """Where the credit opening at ``start`` ends; None when it would not end within the bounds.

    A short paragraph with text after it is the credit whole. Otherwise the copy may have lost its
    blank lines, and the paragraph be the whole book: the credit is the lines that continue its first.
    """
    paragraph_end = start
    while paragraph_end < len(lines) and lines[paragraph_end]:
        paragraph_end += 1
    paragraph = lines[start:paragraph_end]
    text_after = _next_text_line(lines, paragraph_end) < len(lines)
    if text_after and len(paragraph) <= MAX_CREDIT_LINES and sum(map(len, paragraph)) <= MAX_CREDIT_CHARS:
        return paragraph_end
    if len(lines[start]) > MAX_CREDIT_LINE_CHARS:
        return None
    end = start + 1
    while end < paragraph_end and _continues_credit(lines[start:end], lines[end]):
        end += 1
        if end - start > MAX_CREDIT_LINES or sum(map(len, lines[start:end])) > MAX_CREDIT_CHARS:
            return None
    return end


def _continues_credit(credit: list[str], line: str) -> bool:
    if len(line) > MAX_CREDIT_LINE_CHARS:
        return False
    opened = "".join(credit)
    head = line.lstrip()
    return bool(
        UNFINISHED_LINE.search(credit[-1])
        or head[:1].islower()
        or head.startswith("(")
        or opened.count("(") > opened.count(")")
        or CREDIT_WORDS.search(line)
    )


def _paragraphs(lines: list[str]) -> list[list[str]]:
    paragraphs: list[list[str]] = [[]]
    for line in lines:
        if line:
            paragraphs[-1].append(line)
        elif paragraphs[-1]:
            paragraphs.append([])
    return [p for p in paragraphs if p]


def parse_header(lines: list[str]) -> dict[str, str]:
    """Title, author, language (ISO 639), release date (ISO 8601) and e-book number of the header."""
    fields: dict[str, str] = {}
    current = None
    for line in lines:
        field = HEADER_FIELD.match(line)
        if field:
            current = field.group(1).lower()
            fields.setdefault(current, field.group(2).strip())
        elif current in ("title", "author") and line[:1].isspace() and line.strip():
            # an indented next line: the subtitle, or a second author
            fields[current] += (" " if current == "title" else ", ") + line.strip()
        else:
            current = None
    meta: dict[str, str] = {}
    if not fields.get("title"):
        for line in lines[:20]:
            old_style = OLD_STYLE_TITLE.match(line)
            if old_style:
                fields["title"] = old_style.group(1)
                if old_style.group(2) and not fields.get("author"):
                    fields["author"] = old_style.group(2)
                break
    for key in ("title", "author"):
        if fields.get(key):
            meta[key] = fields[key]
    language = language_code(fields.get("language", ""))
    if language:
        meta["language"] = language
    released = release_date(fields.get("release date") or fields.get("posting date") or "")
    if released:
        meta["release_date"] = released
    for line in lines:
        number = EBOOK_NUMBER.search(line)
        if number:
            meta["ebook_number"] = str(int(number.group(1)))
            break
    return meta


@lru_cache(maxsize=256)
def language_code(name: str) -> str | None:
    """The shortest ISO 639 code of a language named in English ("Dutch" -> "nl"); the first of several."""
    for candidate in [name, *re.split(r",|;|\band\b", name)]:
        candidate = candidate.strip()
        if not candidate:
            continue
        try:
            return langcodes.find(candidate).language
        except LookupError:
            continue
    return None


def release_date(value: str) -> str | None:
    """ "December 6, 2004 [EBook #14263]" -> "2004-12-06"; a month without a day gives "2005-10"."""
    value = re.sub(r"\s+", " ", EBOOK_NUMBER.sub("", value)).strip(" .")
    for fmt in DATE_FORMATS:
        try:
            parsed = datetime.strptime(value, fmt)
        except ValueError:
            continue
        if "%d" in fmt:
            return parsed.date().isoformat()
        return parsed.strftime("%Y-%m" if "%m" in fmt or "%b" in fmt.lower() else "%Y")
    return None
