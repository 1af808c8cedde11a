"""arXiv LaTeX sources: one paper is one document.

An input is one paper as arXiv serves it (``2101.00001.gz`` or ``.tar.gz``: a gzipped tar of the
project, or a gzipped single ``.tex``), or one of arXiv's bulk ``.tar`` files of such papers.
Archives are read from the stream in memory, never extracted: a member that is a link, a device
or has an absolute or ``..`` path makes the paper a :class:`BadRecord`, and so do more than
``max_members`` members, more than ``max_unpacked_bytes`` decompressed (a decompression bomb is
stopped there, not expanded) or more than ``max_record_bytes`` of LaTeX.

Cleaning follows RedPajama's arxiv_cleaner (see RECIPE.md) on the project's main file with its
``\\input``/``\\include`` files inlined: the whole project is skipped when a ``.tex`` file is not
UTF-8; comments go (full-line, then inline ones, where ``\\%`` is not a comment and the character
before ``%`` stays); argument-free ``\\newcommand``/``\\renewcommand``/``\\def`` macros of all the
project's files are expanded in place (their definitions removed); the text starts at the first
``\\chapter``/``\\part``/``\\section``/``\\subsection``/``\\subsubsection``/``\\paragraph``/
``\\subparagraph`` after ``\\begin{document}`` and ends before ``\\appendix``,
``\\begin{references}``, ``\\begin{thebibliography}``, ``\\bibliography{`` or ``\\end{document}``.
Sectioning commands after the first one stay in the text, as in RedPajama's data.
"""

from __future__ import annotations

import gzip
import io
import posixpath
import re
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from tasks.documents import BadRecord, Document, make_doc_id
from tasks.sources import over_size
from tasks.stage import ShardUnit
from tasks.steps import Drop
from tasks.storage import resolve

LICENCE = "unknown"  # arXiv licences are per paper and not in the source archives
CONVENTIONAL_MAIN = ("main", "ms", "paper", "article", "manuscript")
MAX_INPUT_DEPTH = 16  # TeX's own limit on nested \input files is about this
MAX_MACRO_CHARS = 10_000  # an expanded macro past this is a macro bomb: left as written

NEW_ID = re.compile(r"^(\d{4}\.\d{4,5})(v\d+)?$")
OLD_ID = re.compile(r"^([a-z][a-z\-]*)(?:\.[A-Z]{2})?[/_]?(\d{7})(v\d+)?$")  # hep-th9901001 -> hep-th/9901001

FULL_LINE_COMMENT = re.compile(r"^[ \t]*%.*\n?", re.M)
# From a line's start, escaped pairs (\% and \\ included) are text: the first other % opens the comment.
INLINE_COMMENT = re.compile(r"^((?:[^%\\\n]++|\\.)*+)%.*", re.M)
COMMENT_ENVIRONMENT = re.compile(r"\\begin\s*\{comment\}.*?\\end\s*\{comment\}", re.S)
DOCUMENT_CLASS = re.compile(r"\\document(?:class|style)(?![A-Za-z@])")
INPUT = re.compile(r"\\(?:input|include)(?![A-Za-z@])\s*(?:\{([^{}]*)\}|([^\s{}\\%]+))")
DEFINITION = re.compile(
    r"\\(?:(?:re)?newcommand(?![A-Za-z@])\s*\*?\s*(?:\{\s*\\([A-Za-z]+)\s*\}|\\([A-Za-z]+))|def\s*\\([A-Za-z]+))"
)
BEGIN_DOCUMENT = re.compile(r"\\begin\s*\{document\}")
SECTION = re.compile(
    r"\\(?:chapter|part|section|subsection|subsubsection|paragraph|subparagraph)(?![A-Za-z@])\s*\*?\s*[\[{]"
)
END_OF_TEXT = re.compile(
    r"\\appendix(?![A-Za-z@])|\\begin\s*\{(?:references|REFERENCES|thebibliography)\}"
    r"|\\bibliography\s*\{|\\printbibliography(?![A-Za-z@])|\\end\s*\{document\}"
)
TITLE = re.compile(r"\\title\s*(?:\[[^\]]*\])?\s*(?=\{)")
SPACES = re.compile(r"\s*")
BLANKS = re.compile(r"[ \t]*\n?")  # after a heading: it already ends its line
CONTROL_WORD = re.compile(r"\\\\|\\([A-Za-z]+)")  # "\\" first: in "\\foo" the foo is text, not a macro


class BadArchive(ValueError):
    """A paper that cannot be read safely or at all; the message names the member."""


class NotLatex(Exception):
    """A paper whose source is a gzipped PDF or PostScript file, as some of arXiv's are."""


@dataclass(frozen=True)
class ArxivReader:
    max_unpacked_bytes: int = 1 << 30  # all members of one paper, decompressed (figures included)
    max_members: int = 10_000
    max_record_bytes: int = 64 << 20  # the LaTeX of one paper, held in memory, and its inlined text

    def read(self, unit: ShardUnit) -> Iterator[Document | Drop | BadRecord]:
        if unit.input is None:
            raise ValueError(f"{unit.source} part {unit.index}: an arXiv unit needs an input file")
        location = resolve(unit.input.uri)
        if location.name.endswith(".tar"):
            yield from self._read_bulk(unit, location)
            return
        try:
            with location.open_input() as raw:
                yield self._paper(unit, location.name, raw, location.uri)
        except OSError as exc:
            yield BadRecord(location.uri, f"unreadable input: {exc}", "")

    def _read_bulk(self, unit: ShardUnit, location) -> Iterator[Document | Drop | BadRecord]:
        """arXiv's bulk files: a plain tar of ``<yymm>/<id>.gz`` papers (and ``<id>.pdf`` for PDF-only ones)."""
        last = "the start"
        try:
            with location.open_input() as raw, tarfile.open(fileobj=raw, mode="r|") as bulk:
                for member in bulk:
                    last = _printable(member.name)
                    locator = f"{location.uri}:{last}"
                    if member.isdir():
                        continue
                    try:
                        _check_member(member)
                    except BadArchive as exc:
                        yield BadRecord(locator, str(exc), "")
                        continue
                    if not member.name.endswith(".gz"):
                        yield Drop("arxiv:no_latex_source")
                        continue
                    yield self._paper(unit, posixpath.basename(last), bulk.extractfile(member), locator)
        except (OSError, EOFError, tarfile.TarError) as exc:
            yield BadRecord(f"{location.uri}:after {last}", f"unreadable bulk archive: {exc}", "")

    def _paper(self, unit: ShardUnit, file_name: str, stream, locator: str) -> Document | Drop | BadRecord:
        try:
            paper = clean_project(self._load(stream, file_name), self.max_record_bytes)
        except NotLatex:
            return Drop("arxiv:not_latex")
        except BadArchive as exc:
            return BadRecord(locator, str(exc), "")
        except _TooLarge:
            return BadRecord(locator, f"unpacks past the {self.max_unpacked_bytes}-byte limit", "")
        except (OSError, EOFError, zlib.error, tarfile.TarError) as exc:
            return BadRecord(locator, f"unreadable archive: {type(exc).__name__}: {exc}", "")
        if not paper.text:
            return Drop("arxiv:no_section")
        arxiv_id, version = parse_arxiv_id(file_name)
        meta = {"licence": LICENCE, "provenance": locator, "main_file": paper.main_file}
        if arxiv_id:
            meta.update(arxiv_id=arxiv_id, url=f"https://arxiv.org/abs/{arxiv_id}")
        if version:
            meta["version"] = version
        if paper.title:
            meta["title"] = paper.title
        key = arxiv_id or f"file:{file_name}"
        return Document(id=make_doc_id(unit.source, key), source=unit.source, text=paper.text, meta=meta)

    def _load(self, stream, file_name: str) -> dict[str, str]:
        """The project's .tex files by normalised path, decoded; a single gzipped file is the project."""
        unpacked = _Bounded(gzip.GzipFile(fileobj=stream), self.max_unpacked_bytes)
        head = unpacked.peek(tarfile.BLOCKSIZE)
        if not head:
            raise BadArchive("empty: no LaTeX source")
        if _is_tar_header(head):
            raw_files = self._tex_members(unpacked)
        else:
            if head.startswith((b"%PDF", b"%!PS")):
                raise NotLatex
            name = file_name.removesuffix(".gz").removesuffix(".tex") + ".tex"
            raw_files = {name: _read_at_most(unpacked, self.max_record_bytes, "the gzipped .tex file")}
        return {name: _decode(name, data) for name, data in raw_files.items()}

    def _tex_members(self, unpacked: _Bounded) -> dict[str, bytes]:
        files: dict[str, bytes] = {}
        tex_bytes = members = 0
        current = "the first member"
        try:
            archive = tarfile.open(fileobj=unpacked, mode="r|")  # a stream: members in order, no seeking
            for member in archive:
                current = repr(member.name)
                members += 1
                if members > self.max_members:
                    raise BadArchive(f"more than {self.max_members} members")
                name = _check_member(member)
                if member.isdir():
                    continue
                if member.size > self.max_unpacked_bytes - unpacked.count:
                    raise BadArchive(f"member {current} unpacks past the {self.max_unpacked_bytes}-byte limit")
                if not name.lower().endswith(".tex"):
                    continue
                tex_bytes += member.size
                if tex_bytes > self.max_record_bytes:
                    error = over_size(f"at least {tex_bytes}", self.max_record_bytes, "bytes of LaTeX")
                    raise BadArchive(f"{error} (at member {current})")
                files[name] = archive.extractfile(member).read()
        except _TooLarge:
            raise BadArchive(f"unpacks past the {self.max_unpacked_bytes}-byte limit (at member {current})") from None
        if not files:
            raise BadArchive(f"no .tex file among {members} members")
        return files


class _TooLarge(Exception):
    pass


class _Bounded(io.RawIOBase):
    """A decompressing stream that counts what it yields and raises past ``limit`` bytes."""

    def __init__(self, stream, limit: int) -> None:
        self._stream = stream
        self._limit = limit
        self._pending = b""  # peeked bytes, served again first
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._pending:
            data, self._pending = self._pending[: len(buffer)], self._pending[len(buffer) :]
        else:
            data = self._stream.read(len(buffer))
            self.count += len(data)
            if self.count > self._limit:
                raise _TooLarge
        buffer[: len(data)] = data
        return len(data)

    def peek(self, size: int) -> bytes:
        """Up to ``size`` bytes from the start, without consuming them."""
        head = b""
        while len(head) < size:
            chunk = self.read(size - len(head))
            if not chunk:
                break
            head += chunk
        self._pending = head + self._pending
        return head


def _is_tar_header(block: bytes) -> bool:
    if len(block) < tarfile.BLOCKSIZE:
        return False
    if block.count(0) == tarfile.BLOCKSIZE:
        return True  # an empty archive: its end-of-archive marker
    try:
        tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")  # checks the header checksum
    except (tarfile.HeaderError, ValueError):
        return False
    return True


def _check_member(member: tarfile.TarInfo) -> str:
    """The member's normalised path; raises for links, special files and paths that leave the project."""
    name = member.name
    if member.issym() or member.islnk():
        raise BadArchive(f"member {name!r} is a link (to {member.linkname!r})")
    if not (member.isreg() or member.isdir()) or member.issparse():
        raise BadArchive(f"member {name!r} is a special file (tar type {member.type!r})")
    parts = re.split(r"[\\/]", name)
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
        raise BadArchive(f"member {name!r} has a path outside the project")
    return _printable(posixpath.normpath(name).removeprefix("./"))


def _printable(name: str) -> str:
    """A member name that is not UTF-8 keeps its odd bytes as escapes, so it can go into JSON and Parquet."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _read_at_most(stream, limit: int, what: str) -> bytes:
    chunks, total = [], 0
    while chunk := stream.read(64 << 10):
        total += len(chunk)
        if total > limit:
            raise BadArchive(f"{what}: {over_size(f'more than {limit}', limit, 'bytes of LaTeX')}")
        chunks.append(chunk)
    return b"".join(chunks)


def _decode(name: str, data: bytes) -> str:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadArchive(f"member {name!r} is not UTF-8 ({exc.reason} at byte {exc.start}): project skipped") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def parse_arxiv_id(file_name: str) -> tuple[str | None, str | None]:
    """arXiv id and version from a source file's name: ``2101.00001v2.tar.gz``, ``hep-th9901001.gz``."""
    stem = file_name
    for suffix in (".tar.gz", ".tgz", ".gz", ".tar", ".tex"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    new = NEW_ID.match(stem)
    if new:
        return new.group(1), new.group(2)
    old = OLD_ID.match(stem)
    if old:
        return f"{old.group(1)}/{old.group(2)}", old.group(3)
    return None, None


@dataclass(frozen=True)
class CleanPaper:
    main_file: str
    title: str | None
    text: str  # "" when the paper has no section-like header


def clean_project(files: dict[str, str], max_chars: int) -> CleanPaper:
    """The cleaned text of a project given as {path: LaTeX}."""
    files = {path: strip_comments(text) for path, text in files.items()}  # the raw texts can go now
    main = find_main(files, max_chars)
    document = inline_inputs(files, main, max_chars)
    macros = collect_macros([*(files[path] for path in sorted(files)), document])  # the document's own win
    document = expand_macros(strip_definitions(document), macros)
    return CleanPaper(main_file=main, title=find_title(document), text=cut_to_body(document))


def strip_comments(text: str) -> str:
    text = FULL_LINE_COMMENT.sub("", text)
    text = INLINE_COMMENT.sub(r"\1", text)
    return COMMENT_ENVIRONMENT.sub("", text)


def find_main(files: dict[str, str], max_chars: int) -> str:
    """The file LaTeX is run on.

    Candidates are the files with ``\\documentclass`` (all files for plain TeX); one that another
    candidate inputs is a part, not the main file. Then a conventional name (main.tex, ms.tex, ...),
    then the most text once its inputs are inlined, then the path decide.
    """
    candidates = [path for path in sorted(files) if DOCUMENT_CLASS.search(files[path])] or sorted(files)
    inputs = {path: set(_inputs_of(files, path)) for path in candidates}
    roots = [p for p in candidates if not any(p in inputs[other] for other in candidates if other != p)]

    def rank(path: str) -> tuple:
        stem = posixpath.splitext(posixpath.basename(path))[0].lower()
        return stem not in CONVENTIONAL_MAIN, -len(inline_inputs(files, path, max_chars)), path

    return min(roots or candidates, key=rank)


def _inputs_of(files: dict[str, str], path: str) -> Iterator[str]:
    for match in INPUT.finditer(files[path]):
        target = _find_input(files, match.group(1) or match.group(2), path)
        if target:
            yield target


def _find_input(files: dict[str, str], name: str, including: str) -> str | None:
    """LaTeX looks in the project root (the directory it runs in); we also try the including file's folder."""
    name = name.strip()
    for folder in dict.fromkeys(["", posixpath.dirname(including)]):
        for candidate in (name, name + ".tex"):
            path = posixpath.normpath(posixpath.join(folder, candidate)).removeprefix("./")
            if path in files:
                return path
    return None


def inline_inputs(files: dict[str, str], main: str, max_chars: int) -> str:
    """``main`` with ``\\input``/``\\include`` files inlined, recursively; cycles and missing files stay as written."""
    produced = 0

    def inline(path: str, active: tuple[str, ...]) -> str:
        nonlocal produced

        def replace(match: re.Match) -> str:
            target = _find_input(files, match.group(1) or match.group(2), path)
            if target is None or target in active or len(active) >= MAX_INPUT_DEPTH:
                return match.group(0)
            return inline(target, (*active, target))

        text = INPUT.sub(replace, files[path])
        produced += len(text)
        if produced > max_chars:
            raise BadArchive(f"inlining the inputs of {main!r} gives more than {max_chars} characters")
        return text

    return inline(main, (main,))


def _braced(text: str, start: int) -> tuple[str, int] | None:
    """The balanced ``{...}`` group opening at ``start``: its content and the index after it."""
    depth = 0
    index = start
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 2  # an escaped character, \{ and \} included
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : index], index + 1
        index += 1
    return None


@dataclass(frozen=True)
class Definition:
    name: str
    value: str | None  # None: the macro takes arguments and is not expanded
    start: int
    end: int


def find_definitions(text: str) -> Iterator[Definition]:
    for match in DEFINITION.finditer(text):
        name = match.group(1) or match.group(2) or match.group(3)
        after = SPACES.match(text, match.end()).end()
        if after >= len(text) or text[after] != "{":
            yield Definition(name, None, match.start(), match.end())  # [n] arguments, or \def parameters
            continue
        group = _braced(text, after)
        if group is not None:
            yield Definition(name, group[0], match.start(), group[1])


def collect_macros(texts: list[str]) -> dict[str, str]:
    """Argument-free macros of the texts, fully expanded; a later definition replaces an earlier one."""
    raw: dict[str, str | None] = {}
    for text in texts:
        for definition in find_definitions(text):
            raw[definition.name] = definition.value
    plain = {name: value for name, value in raw.items() if value is not None}
    resolved: dict[str, str | None] = {}

    def resolve_macro(name: str, active: tuple[str, ...]) -> str | None:
        if name in resolved:
            return resolved[name]
        if name in active or len(active) > 32:
            return None  # recursive (or absurdly deep): every macro on the cycle stays as written
        unresolved = False

        def replace(match: re.Match) -> str:
            nonlocal unresolved
            if match.group(1) not in plain:
                return match.group(0)
            value = resolve_macro(match.group(1), (*active, name))
            if value is None:
                unresolved = True
                return match.group(0)
            return value

        value = CONTROL_WORD.sub(replace, plain[name])
        resolved[name] = None if unresolved or len(value) > MAX_MACRO_CHARS else value
        return resolved[name]

    expanded = {name: resolve_macro(name, ()) for name in plain}
    return {name: value for name, value in expanded.items() if value is not None}


def strip_definitions(text: str) -> str:
    """Remove the argument-free definitions: once expanded they only leave their values behind."""
    kept, position = [], 0
    for definition in find_definitions(text):
        if definition.value is not None and definition.start >= position:
            kept.append(text[position : definition.start])
            position = definition.end
    kept.append(text[position:])
    return "".join(kept)


def expand_macros(text: str, macros: dict[str, str]) -> str:
    return CONTROL_WORD.sub(lambda match: macros.get(match.group(1) or "", match.group(0)), text)


def find_title(document: str) -> str | None:
    match = TITLE.search(document)
    group = _braced(document, match.end()) if match else None
    if group is None:
        return None
    title = re.sub(r"\\\\|\\newline(?![A-Za-z])", " ", group[0])
    return re.sub(r"\s+", " ", title).strip() or None


def cut_to_body(document: str) -> str:
    """From the first section-like header after ``\\begin{document}`` to the bibliography or appendix."""
    begin = BEGIN_DOCUMENT.search(document)
    section = SECTION.search(document, begin.end() if begin else 0)
    if section is None:
        return ""
    end = END_OF_TEXT.search(document, section.start())
    body = headings_as_lines(document[section.start() : end.start() if end else len(document)])
    body = "\n".join(line.rstrip() for line in body.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", body).strip()


def headings_as_lines(body: str) -> str:
    """``\\section*[short]{Title}`` and its kin become ``Title`` on a line of its own.

    The heading text is prose the model should see; the command around it is markup.
    """
    pieces, position = [], 0
    for match in SECTION.finditer(body):
        if match.start() < position:
            continue
        opening = match.end() - 1  # at "[" or "{"
        if body[opening] == "[":
            close = body.find("]", opening)
            opening = close + len(SPACES.match(body, close + 1).group()) + 1 if close >= 0 else -1
            if opening < 0 or opening >= len(body) or body[opening] != "{":
                continue
        group = _braced(body, opening)
        if group is None:
            continue
        title, after = group
        pieces += [body[position : match.start()], "\n", re.sub(r"\s+", " ", title).strip(), "\n"]
        position = BLANKS.match(body, after).end()
    pieces.append(body[position:])
    return "".join(pieces)
