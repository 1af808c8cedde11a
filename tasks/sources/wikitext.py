"""Wikitext to the plain prose a reader of the rendered article sees, in MediaWiki's own order.

1. Comments and extension tags, found as MediaWiki's preprocessor finds them: left to right, each
   tag from its opening to the first closing tag of its name, nothing inside read as wikitext.
   References, code listings, formulas, galleries and the other non-prose blocks go; ``nowiki`` and
   ``pre`` text is shielded from pass 2 and shown as written. A comment with no end hides the rest
   of the page, as in MediaWiki; a non-prose block with no end runs to the end of its paragraph.
   A reference ends within its paragraph and before the next ``<ref``, else it is unclosed: as
   MediaWiki shows the text after an unclosed ``<ref>``, only the citation templates and links that
   directly follow the tag go with it (the usual shape: ``<ref>{{cite web|...}}`` never closed).
2. Wiki tables, line by line as MediaWiki's table pass reads them: a line starting (after ``:``
   indents) with ``{|`` (or the pipe templates ``{{(!}}``, ``{{{!}}``) opens one, with ``|}`` (or
   ``{{!)}}``, ``{{!}}}``) closes one, nested tables counted; text after the closing edge stays.
   A table never closed loses its opening line here and its rows in pass 3. Template braces are
   paired as MediaWiki's preprocessor pairs them (each ``}}`` closes the latest open ``{{``); an
   opener left unpaired is marked as text, or mwparserfromhell would close it at a ``}}`` it
   failed to pair elsewhere (nesting past its depth limit) and take the prose between.
3. mwparserfromhell parses the rest, and templates, files, categories, interlanguage links and bare
   URLs are pruned from the tree. What it cannot parse it leaves as text (an opener whose closer is
   missing, a closer without opener, nesting past its depth limit); those leftovers go too: an
   unparsed template or file link takes the rest of its line and the ``|`` lines after it (its
   parameters), as do the rows of a table opened by a template or never closed; a stray ``}}``,
   ``]]``, ``|}``, ``[[``, a ``{|`` inside a line (no table there in MediaWiki either) or an HTML
   tag is dropped alone.

Then link text, section titles (a title whose section ends up empty goes with it), list items and
HTML tag text are rendered as lines of text; bold and italic quotes and magic words removed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import mwparserfromhell
from mwparserfromhell.nodes import Comment, ExternalLink, Heading, Tag, Template, Text, Wikilink
from mwparserfromhell.wikicode import Wikicode

MEDIA_NAMESPACE_KEYS = frozenset({"6", "-2"})  # File: and Media:
CATEGORY_NAMESPACE_KEY = "14"

# Canonical English names work on every wiki; these are each language's own names and the aliases
# MediaWiki's language files accept for them (File/Media, Category). The dump's <siteinfo> adds the
# wiki's current names at read time, which covers any language configured beyond these.
ENGLISH_MEDIA = ("file", "image", "media")
ENGLISH_CATEGORY = ("category",)
LOCAL_MEDIA = {
    "bg": ("файл", "картинка", "изображение", "медия"),
    "ca": ("fitxer", "imatge", "arxiu", "multimèdia"),
    "cs": ("soubor", "obrázek", "média"),
    "da": ("fil", "billede", "medie"),
    "de": ("datei", "bild", "medium"),
    "es": ("archivo", "imagen", "medio"),
    "fr": ("fichier", "image", "média"),
    "hr": ("datoteka", "slika", "mediji"),
    "hu": ("fájl", "kép", "média"),
    "it": ("file", "immagine"),
    "nl": ("bestand", "afbeelding"),
    "pl": ("plik", "grafika"),
    "pt": ("ficheiro", "arquivo", "imagem", "multimédia"),
    "ro": ("fișier", "fişier", "imagine"),
    "ru": ("файл", "изображение", "медиа"),
    "sl": ("slika", "datoteka"),
    "sr": ("датотека", "слика", "медиј", "datoteka", "slika", "medij"),
    "sv": ("fil", "bild"),
    "uk": ("файл", "зображення", "медіа"),
}
LOCAL_CATEGORY = {
    "bg": ("категория",),
    "ca": ("categoria",),
    "cs": ("kategorie",),
    "da": ("kategori",),
    "de": ("kategorie",),
    "es": ("categoría",),
    "fr": ("catégorie",),
    "hr": ("kategorija",),
    "hu": ("kategória",),
    "it": ("categoria",),
    "nl": ("categorie",),
    "pl": ("kategoria",),
    "pt": ("categoria",),
    "ro": ("categorie",),
    "ru": ("категория",),
    "sl": ("kategorija",),
    "sr": ("категорија", "kategorija"),
    "sv": ("kategori",),
    "uk": ("категорія",),
}

# Extension tags whose content is not article prose: footnotes, code listings, and tags that render
# images, formulas or widgets; includeonly text is shown only where a page is transcluded.
NON_PROSE_BLOCKS = (
    "ref", "references", "gallery", "imagemap", "math", "chem", "ce", "score", "timeline", "graph", "hiero",
    "syntaxhighlight", "source", "categorytree", "inputbox", "templatedata", "templatestyles", "mapframe",
    "maplink", "indicator", "includeonly",
)
VERBATIM_BLOCKS = ("nowiki", "pre")  # shown as written, not read as wikitext
NON_PROSE_TAGS = frozenset(NON_PROSE_BLOCKS) | {"table"}  # an HTML <table> goes like a wiki table
# Tag names a leftover "<name ...>" may carry (MediaWiki's allowed HTML and extension tags): any other
# "<word ...>" in prose, such as "if a<b and c>d", is text.
HTML_TAGS = frozenset(
    "abbr b bdi bdo big blockquote br caption center cite code data dd del dfn div dl dt em font h1 h2 h3 h4 h5 "
    "h6 hr i ins kbd li mark ol p poem q rb rp rt rtc ruby s samp small span strike strong sub sup table td th "
    "time tr tt u ul var wbr noinclude onlyinclude section".split()
) | NON_PROSE_TAGS | set(VERBATIM_BLOCKS)

BLOCK_START = re.compile(r"<!--|<(" + "|".join(NON_PROSE_BLOCKS + VERBATIM_BLOCKS) + r")(?=[\s/>])", re.IGNORECASE)
COMMENT_END = "-->"
# A paragraph ends at a blank line or where a heading line begins.
PARAGRAPH_END = re.compile(r"\n[ \t]*\n|\n(?==)")
REF_START = re.compile(r"<ref(?=[\s/>])", re.IGNORECASE)
# Citation markup right after an unclosed <ref>: a template or wiki link (balanced) or an external link.
CITATION_START = re.compile(r"\s*(?:(\{\{|\[\[)|\[(?:[a-z]+:)?//[^\]\n]*\])", re.IGNORECASE)
BRACKETS = re.compile(r"\{\{|\}\}|\[\[|\]\]")
SHIELD = re.compile(r"\x00(\d+)\x00")  # XML text cannot hold NUL, so no wikitext does
UNPAIRED_OPENER = "\x01"  # stands for a "{{" that no "}}" closes; no more in wikitext than NUL
TEMPLATE_BRACES = re.compile(r"\{\{|\}\}")
# A table edge at a line's start, also written with the pipe templates that stand for it.
TABLE_EDGE = re.compile(r"[ \t]*(?::[ \t]*)*(?:(\{\||\{\{\(!\}\}|\{\{\{!\}\})|\|\}|\{\{!\)\}\}|\{\{!\}\}\})")
# A table row, header row or parameter line left at a line's start ("| cell", "! a !! b"); "!!! is
# a band" and "!Kung" are prose.
TABLE_ROW = re.compile(r"[ \t]*(?:\||!(?:[ \t]|[^!\n]+!!))")
HTML_ATTRIBUTES = r"""(?:\s+[\w-]+\s*=\s*(?:"[^"]*"|'[^']*'|[^\s"'<>]+))*\s*/?>"""
LEFTOVER = re.compile(r"\{\{|\x01|\{\||\[\[|\]\]|\}\}|\|\}|</?(?P<tag>[A-Za-z][A-Za-z0-9]*)" + HTML_ATTRIBUTES)
SUSPECT = re.compile(r"\{\{|\x01|\{\||\[\[|\]\]|\}\}|\|\}|<[/A-Za-z]|\n[ \t]*[|!]")
LINK_TARGET_END = re.compile(r"[|\]\n]")

# Interlanguage links ([[fr:Paris]]) name another wiki by its code (a language, or "simple" for Simple
# English) and show no text.
INTERLANGUAGE_PREFIX = re.compile(r"(?:[a-z]{2,3}(?:-[a-z]+)*|simple)$")
MAGIC_WORD = re.compile(r"__(\w+?)__")
LEFTOVER_QUOTES = re.compile(r"'{2,}")  # unbalanced bold/italic the parser could not pair
# Brackets emptied by removed templates: "Brahui ({{IPA|...}}) is" would read "Brahui () is".
EMPTIED_BRACKETS = re.compile(r" \(\s*[,;:]?\s*\)")  # after a space: "f()" in prose about code stays
SPACE_RUNS = re.compile(r"[ \t]{2,}")
BLANK_RUNS = re.compile(r"\n{3,}")


@dataclass(frozen=True)
class WikitextCleaner:
    """Wikitext to plain text for one wiki: which link prefixes name files and categories there."""

    media_prefixes: frozenset[str]
    category_prefixes: frozenset[str]

    @classmethod
    def for_language(cls, language: str, site_namespaces: dict[str, str] | None = None) -> WikitextCleaner:
        media = set(ENGLISH_MEDIA) | set(LOCAL_MEDIA.get(language, ()))
        category = set(ENGLISH_CATEGORY) | set(LOCAL_CATEGORY.get(language, ()))
        for key, name in (site_namespaces or {}).items():
            if key in MEDIA_NAMESPACE_KEYS:
                media.add(_namespace_form(name))
            elif key == CATEGORY_NAMESPACE_KEY:
                category.add(_namespace_form(name))
        return cls(frozenset(media), frozenset(category))

    def to_text(self, wikitext: str) -> str:
        shielded, verbatim = _without_hidden_blocks(wikitext)
        text = _unpaired_openers_marked(_without_tables(shielded))
        if verbatim:
            text = SHIELD.sub(lambda m: verbatim[int(m.group(1))], text)
        code = mwparserfromhell.parse(text)
        self._prune(code, _Line(at_start=True))
        return _render_sections(code)

    def _prune(self, code: Wikicode, line: _Line) -> None:
        """Remove non-prose nodes and unparsed leftovers in place, at every depth, in one pass over the tree."""
        kept = []
        for node in code.nodes:
            if isinstance(node, Text):
                value = node.value
                if line.skipping or SUSPECT.search(value) or (line.at_start and TABLE_ROW.match(value)):
                    value = self._without_leftovers(value, line)
                else:
                    line.passed(value)
                if value:
                    kept.append(Text(value) if value is not node.value else node)
                continue
            if line.skipping:  # on the line of an unparsed template or table
                continue
            if isinstance(node, (Template, Comment)) or (isinstance(node, ExternalLink) and not node.brackets):
                continue
            if isinstance(node, Wikilink) and self._is_non_prose_target(str(node.title), node.text is not None):
                continue
            if isinstance(node, Tag):
                tag = str(node.tag).strip().lower()
                if tag in NON_PROSE_TAGS:
                    continue
                if tag == "br":  # a line break inside prose (poems, addresses) separates words
                    kept.append(Text("\n"))
                    line.at_start = True
                    continue
                if tag in VERBATIM_BLOCKS:  # its text is what the page shows, brackets and all
                    kept.append(node)
                    line.at_start = False
                    continue
            for child in _children(node):
                self._prune(child, _Line())
            kept.append(node)
            line.at_start = False
        code.nodes = kept

    def _without_leftovers(self, value: str, line: _Line) -> str:
        pieces = []
        for number, part in enumerate(value.split("\n")):
            if number:
                pieces.append("\n")
                line.skipping, line.at_start = False, True
            if line.skipping:
                continue
            if line.at_start and TABLE_ROW.match(part):
                line.skipping = True
                continue
            part, line.skipping = self._line_without_leftovers(part)
            pieces.append(part)
            line.passed(part)
        return "".join(pieces)

    def _line_without_leftovers(self, part: str) -> tuple[str, bool]:
        """The line without unparsed markup, and whether the rest of the line (and its ``|`` lines) goes too."""
        pieces, position = [], 0
        for found in LEFTOVER.finditer(part):
            pieces.append(part[position : found.start()])
            position = found.end()
            marker = found.group(0)
            if marker in ("{{", UNPAIRED_OPENER):
                return "".join(pieces), True
            if marker == "[[":
                target = LINK_TARGET_END.split(part[position:], maxsplit=1)[0]
                if self._is_non_prose_target(target, has_text=True):
                    return "".join(pieces), True
            elif found.group("tag") is not None:
                name = found.group("tag").lower()
                if name not in HTML_TAGS:
                    pieces.append(marker)
                elif name == "br":
                    pieces.append("\n")
        pieces.append(part[position:])
        return "".join(pieces), False

    def _is_non_prose_target(self, target: str, has_text: bool) -> bool:
        title = target.strip()
        if title.startswith(":"):  # [[:Category:X]] is an inline link to the category page: prose
            return False
        prefix, colon, _ = title.partition(":")
        if not colon:
            return False
        prefix = _namespace_form(prefix)
        if prefix in self.media_prefixes or prefix in self.category_prefixes:
            return True
        return not has_text and INTERLANGUAGE_PREFIX.match(prefix) is not None


@dataclass
class _Line:
    """Where pruning stands on the current line: at its start (rows are recognised there), skipping its rest."""

    at_start: bool = False
    skipping: bool = False

    def passed(self, text: str) -> None:
        last_line = text.rpartition("\n")
        if last_line[1]:
            self.at_start = not last_line[2].strip(" \t")
        elif text.strip(" \t"):
            self.at_start = False


def _without_hidden_blocks(wikitext: str) -> tuple[str, list[str]]:
    """Pass 1: comments and non-prose extension blocks removed; verbatim blocks replaced by shields."""
    if "<" not in wikitext:
        return wikitext, []
    pieces: list[str] = []
    verbatim: list[str] = []
    position = 0
    while found := BLOCK_START.search(wikitext, position):
        pieces.append(wikitext[position : found.start()])
        if found.group(1) is None:
            end = wikitext.find(COMMENT_END, found.end())
            position = len(wikitext) if end < 0 else end + len(COMMENT_END)
            continue
        name = found.group(1).lower()
        paragraph_end = PARAGRAPH_END.search(wikitext, found.end())
        limit = paragraph_end.start() if paragraph_end else len(wikitext)
        if name == "ref" and (next_ref := REF_START.search(wikitext, found.end(), limit)):
            limit = next_ref.start()
        opening_end = wikitext.find(">", found.end(), limit)
        if opening_end < 0:  # "<ref name=x" never finished: nothing after it in the paragraph is prose
            position = limit if name not in VERBATIM_BLOCKS else found.end()
            continue
        if wikitext[found.end() : opening_end].rstrip().endswith("/"):  # <ref name=x />, <nowiki/>
            position = opening_end + 1
            continue
        closing = _closing_tag(name).search(wikitext, opening_end + 1, limit if name == "ref" else len(wikitext))
        if name in VERBATIM_BLOCKS:
            if closing:
                pieces.append(f"\x00{len(verbatim)}\x00")
                verbatim.append(wikitext[found.start() : closing.end()])
            position = closing.end() if closing else opening_end + 1  # unclosed: the tag alone goes
        elif closing:
            position = closing.end()
        else:
            position = _citation_end(wikitext, opening_end + 1, limit) if name == "ref" else limit
    pieces.append(wikitext[position:])
    return "".join(pieces), verbatim


def _citation_end(text: str, position: int, limit: int) -> int:
    """Where the citation markup directly after ``position`` ends: templates, wiki and external links in a row."""
    while found := CITATION_START.match(text, position, limit):
        if found.group(1) is None:  # [http://... label]
            position = found.end()
            continue
        depth = 0
        for bracket in BRACKETS.finditer(text, found.start(1), limit):
            depth += 1 if bracket.group() in ("{{", "[[") else -1
            if not depth:
                position = bracket.end()
                break
        else:  # never closed: the rest of the paragraph is that template's
            return limit
    return position


_CLOSING_TAGS: dict[str, re.Pattern[str]] = {}


def _closing_tag(name: str) -> re.Pattern[str]:
    if name not in _CLOSING_TAGS:
        _CLOSING_TAGS[name] = re.compile(rf"</{name}\s*>", re.IGNORECASE)
    return _CLOSING_TAGS[name]


def _without_tables(text: str) -> str:
    """Pass 2: the lines of every wiki table; an unclosed table gives back the lines after its ``{|``."""
    if "{|" not in text and "!}}" not in text:
        return text
    lines = text.split("\n")
    kept: list[str] = []
    start = 0
    while True:
        depth, outermost = 0, (0, 0)
        for number in range(start, len(lines)):
            edge = TABLE_EDGE.match(lines[number])
            if edge and edge.group(1) is not None:
                if not depth:
                    outermost = (number, len(kept))
                depth += 1
            elif depth and edge:
                depth -= 1
                if not depth:
                    kept.append(lines[number][edge.end() :])  # text after a table's end is outside it
            elif not depth:
                kept.append(lines[number])
        if not depth:
            return "\n".join(kept)
        opened_at, kept_before = outermost
        del kept[kept_before:]
        start = opened_at + 1


def _unpaired_openers_marked(text: str) -> str:
    if "{{" not in text:
        return text
    open_at: list[int] = []
    for brace in TEMPLATE_BRACES.finditer(text):
        if brace.group() == "{{":
            open_at.append(brace.start())
        elif open_at:
            open_at.pop()
    if not open_at:
        return text
    pieces, position = [], 0
    for start in open_at:
        pieces += [text[position:start], UNPAIRED_OPENER]
        position = start + 2
    pieces.append(text[position:])
    return "".join(pieces)


def _namespace_form(name: str) -> str:
    return name.replace("_", " ").strip().casefold()


def _children(node: Any) -> list[Wikicode]:
    if isinstance(node, Tag):
        return [node.contents] if node.contents is not None else []
    if isinstance(node, Wikilink):
        return [node.text] if node.text is not None else []
    if isinstance(node, ExternalLink):
        return [node.title] if node.title is not None else []
    if isinstance(node, Heading):
        return [node.title]
    return []


def _render_sections(code: Wikicode) -> str:
    """Text of the lead and each section; a heading is kept only above a section that has text.

    ``pending`` holds the headings seen since the last text, outermost first: a subsection with text
    brings its parent headings along, a section left empty (references, gallery) disappears.
    """
    parts: list[str] = []
    pending: list[tuple[int, str]] = []
    body: list[Any] = []

    def flush() -> None:
        text = _plain(Wikicode(body))
        if text:
            parts.extend(title for _, title in pending)
            pending.clear()
            parts.append(text)
        body.clear()

    for node in code.nodes:
        if isinstance(node, Heading):
            flush()
            title = _plain(node.title)
            while pending and pending[-1][0] >= node.level:
                pending.pop()
            if title:
                pending.append((node.level, title))
        else:
            body.append(node)
    flush()
    return "\n\n".join(parts)


def _plain(code: Wikicode) -> str:
    text = code.strip_code(normalize=True, collapse=True)
    text = MAGIC_WORD.sub(lambda m: "" if m.group(1).isupper() else m.group(0), text)
    text = EMPTIED_BRACKETS.sub("", LEFTOVER_QUOTES.sub("", text))
    # List markers and removed nodes leave indents and double spaces; layout is not prose.
    lines = "\n".join(SPACE_RUNS.sub(" ", line).strip() for line in text.split("\n"))
    return BLANK_RUNS.sub("\n\n", lines).strip()
