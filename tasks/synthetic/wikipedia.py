"""A small English Wikipedia dump (MediaWiki export 0.11, bz2 multistream) with known ground truth.

Each article carries every kind of markup the reader must remove (templates, references, comments,
files and images, categories, interlanguage links, tables, magic words, bare URLs, bold and italic
quotes) around phrases it must keep (link text, section titles, HTML tag text, list items, prose).
Beside the articles: a redirect, a text-only redirect of an old dump, a talk page, an article that
is all templates, a revision with deleted text, and two malformed pages (no text element, a non-
numeric id). :func:`expected_pages` gives, for the same seed, what each page must become.

Names and the phrases the checks look for are coined from syllables (no article shares one); the
prose around them is English-like (:mod:`tasks.synthetic.english`), so articles pass language ID
and train a quality model that finds encyclopedic text likely.

Deterministic for a seed: the same call writes byte-identical files.
"""

from __future__ import annotations

import bz2
import random
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from tasks.synthetic.english import SYLLABLES, encyclopedic_paragraph

DUMP_NAME = "enwiki-20220601-pages-articles-multistream.xml.bz2"
PAGES_PER_STREAM = 100  # as in Wikimedia's multistream dumps
DOCUMENT = "document"
BAD = "bad"

HEADER = """<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.11/" version="0.11" xml:lang="en">
  <siteinfo>
    <sitename>Wikipedia</sitename>
    <dbname>enwiki</dbname>
    <namespaces>
      <namespace key="-2" case="first-letter">Media</namespace>
      <namespace key="0" case="first-letter" />
      <namespace key="1" case="first-letter">Talk</namespace>
      <namespace key="6" case="first-letter">File</namespace>
      <namespace key="14" case="first-letter">Category</namespace>
    </namespaces>
  </siteinfo>
"""
FOOTER = "</mediawiki>\n"


@dataclass(frozen=True)
class ExpectedPage:
    """What one page of the dump must become."""

    title: str
    page_id: str
    outcome: str  # DOCUMENT, a drop reason ("wikipedia:redirect", ...) or BAD
    kept: tuple[str, ...] = ()  # phrases the document's text contains
    removed: tuple[str, ...] = ()  # phrases and markup it must not contain


def write_inputs(folder: str, seed: int = 0, copies: int = 1) -> list[str]:
    """Write the dump into ``folder``; ``copies`` repeats the page set (distinct ids) for benchmarks."""
    path = Path(folder) / DUMP_NAME
    write_multistream(path, HEADER, [xml for _, xml in _pages(seed, copies)])
    return [str(path)]


def write_multistream(path: Path, header: str, pages: list[str]) -> None:
    """A bz2 multistream dump as Wikimedia writes one: header, pages in streams of 100, footer."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        out.write(bz2.compress(header.encode()))
        for start in range(0, len(pages), PAGES_PER_STREAM):
            out.write(bz2.compress("".join(pages[start : start + PAGES_PER_STREAM]).encode()))
        out.write(bz2.compress(FOOTER.encode()))


def article_xml(title: str, page_id: int, wikitext: str) -> str:
    """One article page (namespace 0) with one revision, as an export writes it."""
    return _page_xml(title, str(page_id), 0, _revision(page_id, _text(wikitext)))


def expected_pages(seed: int = 0, copies: int = 1) -> list[ExpectedPage]:
    return [expected for expected, _ in _pages(seed, copies)]


def _pages(seed: int, copies: int) -> list[tuple[ExpectedPage, str]]:
    rng = random.Random(seed)
    pages = []
    next_id = 10
    for copy in range(copies):
        suffix = f" {copy}" if copy else ""
        for builder in (_article, _article, _redirect, _article, _talk, _no_text, _article, _all_templates,
                        _text_redirect, _bad_id, _deleted_text, _article):
            pages.append(builder(rng, next_id, suffix))
            next_id += 1
    return pages


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))


def _phrase(rng: random.Random, words: int = 3) -> str:
    return " ".join(_word(rng) for _ in range(words))


def _paragraph(rng: random.Random, subject: str | None = None) -> str:
    return encyclopedic_paragraph(rng, subject or _phrase(rng, 2).title())


def _page_xml(title: str, page_id: str, namespace: int, revision: str, redirect: str | None = None) -> str:
    redirect_xml = f"    <redirect title={quoteattr(redirect)} />\n" if redirect else ""
    return (
        f"  <page>\n    <title>{escape(title)}</title>\n    <ns>{namespace}</ns>\n    <id>{page_id}</id>\n"
        f"{redirect_xml}{revision}  </page>\n"
    )


def _revision(page_id: int, text_xml: str) -> str:
    return (
        f"    <revision>\n      <id>{page_id * 7}</id>\n"
        f"      <timestamp>2022-06-01T12:00:00Z</timestamp>\n"
        f"      <model>wikitext</model>\n      <format>text/x-wiki</format>\n{text_xml}    </revision>\n"
    )


def _text(wikitext: str) -> str:
    return f'      <text bytes="{len(wikitext.encode())}" xml:space="preserve">{escape(wikitext)}</text>\n'


def _article(rng: random.Random, page_id: int, suffix: str) -> tuple[ExpectedPage, str]:
    title = f"{_phrase(rng, 2).title()}{suffix}"
    keep = {name: _phrase(rng) for name in (
        "italic", "link_text", "link_target", "section", "subsection", "span", "small", "external", "item",
        "nowiki", "quote",
    )}
    gone = {name: _phrase(rng) for name in (
        "infobox", "ref", "cite", "comment", "file_caption", "image_caption", "table_header", "table_cell",
        "category", "interlanguage", "gallery", "math",
    )}
    first, second, third, fourth = (_paragraph(rng, title) for _ in range(4))
    wikitext = f"""{{{{Infobox settlement|name={gone['infobox']}|population=1234}}}}
'''{title}''' is a ''{keep['italic']}'' near [[{keep['link_target']}]] and [[Some target|{keep['link_text']}]]s.<ref>{gone['ref']} {{{{cite web|url=http://ref.example.org|title={gone['cite']}}}}}</ref> {first}<ref name="n1"/>
<!-- {gone['comment']} -->
__NOTOC__
[[File:Photo {page_id}.jpg|thumb|right|{gone['file_caption']} with [[Inner link]]]]
[[Image:Old.png|{gone['image_caption']}]]

== {keep['section']} ==
Prose with <span style="color:red">{keep['span']}</span> and <small>{keep['small']}</small> &amp; more. [http://example.org/{page_id} {keep['external']}] and a bare http://bare.example.org/{page_id} link. {second}
{{| class="wikitable"
! {gone['table_header']}
|-
| {gone['table_cell']} || {{{{flag|X}}}}
|}}
* {keep['item']} with [[Linked item|shown]]
<blockquote>{keep['quote']}</blockquote>
<nowiki>{keep['nowiki']}</nowiki>
<math>{gone['math']}</math>
<gallery>
Example.jpg|{gone['gallery']}
</gallery>

=== {keep['subsection']} ===
{third}

{fourth}

== References ==
{{{{Reflist}}}}
<references />

[[Category:{gone['category']}]]
[[fr:{gone['interlanguage']}]]
"""
    kept = (title, *keep.values(), first, second, third, fourth, "& more")
    markup = ("[[", "]]", "{{", "}}", "<ref", "'''", "''", "==", "{|", "|}", "<", "http://", "NOTOC")
    removed = (*gone.values(), "References", *markup)
    page_id_text = str(page_id)
    return (
        ExpectedPage(title, page_id_text, DOCUMENT, kept, removed),
        _page_xml(title, page_id_text, 0, _revision(page_id, _text(wikitext))),
    )


def _redirect(rng: random.Random, page_id: int, suffix: str) -> tuple[ExpectedPage, str]:
    title, target = f"{_phrase(rng, 2).title()}{suffix}", _phrase(rng, 2).title()
    revision = _revision(page_id, _text(f"#REDIRECT [[{target}]]\n{{{{R from move}}}}"))
    return ExpectedPage(title, str(page_id), "wikipedia:redirect"), _page_xml(title, str(page_id), 0, revision, target)


def _text_redirect(rng: random.Random, page_id: int, suffix: str) -> tuple[ExpectedPage, str]:
    """Dumps before schema 0.5 mark a redirect only in its text."""
    title, target = f"{_phrase(rng, 2).title()}{suffix}", _phrase(rng, 2).title()
    revision = _revision(page_id, _text(f"#redirect [[{target}]]"))
    return ExpectedPage(title, str(page_id), "wikipedia:redirect"), _page_xml(title, str(page_id), 0, revision)


def _talk(rng: random.Random, page_id: int, suffix: str) -> tuple[ExpectedPage, str]:
    title = f"Talk:{_phrase(rng, 2).title()}{suffix}"
    revision = _revision(page_id, _text(f"== Merge? ==\n{_paragraph(rng)} ~~~~"))
    expected = ExpectedPage(title, str(page_id), "wikipedia:not_article_namespace")
    return expected, _page_xml(title, str(page_id), 1, revision)


def _all_templates(rng: random.Random, page_id: int, suffix: str) -> tuple[ExpectedPage, str]:
    title = f"{_phrase(rng, 2).title()}{suffix}"
    revision = _revision(page_id, _text("{{Short description|none}}\n{{Disambiguation}}\n[[Category:Stubs]]"))
    return ExpectedPage(title, str(page_id), "wikipedia:empty_text"), _page_xml(title, str(page_id), 0, revision)


def _deleted_text(rng: random.Random, page_id: int, suffix: str) -> tuple[ExpectedPage, str]:
    title = f"{_phrase(rng, 2).title()}{suffix}"
    revision = _revision(page_id, '      <text deleted="deleted" />\n')
    return ExpectedPage(title, str(page_id), "wikipedia:text_deleted"), _page_xml(title, str(page_id), 0, revision)


def _no_text(rng: random.Random, page_id: int, suffix: str) -> tuple[ExpectedPage, str]:
    title = f"{_phrase(rng, 2).title()}{suffix}"
    return ExpectedPage(title, str(page_id), BAD), _page_xml(title, str(page_id), 0, _revision(page_id, ""))


def _bad_id(rng: random.Random, page_id: int, suffix: str) -> tuple[ExpectedPage, str]:
    title, bad_id = f"{_phrase(rng, 2).title()}{suffix}", f"{page_id}x"
    revision = _revision(page_id, _text(_paragraph(rng)))
    return ExpectedPage(title, bad_id, BAD), _page_xml(title, bad_id, 0, revision)
