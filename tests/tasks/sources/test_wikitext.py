from pathlib import Path

import pytest

from tasks.documents import Document
from tasks.sources.wikipedia import WikipediaReader
from tasks.sources.wikitext import WikitextCleaner
from tasks.stage import InputFile, ShardUnit
from tasks.synthetic import wikipedia_markup
from tasks.synthetic.wikipedia_markup import LANGUAGES, write_markup_dump

FORBIDDEN = ("<ref", "{|", "|}", "[[", "]]", "{{", "}}", "'''", "<!--")
ARTICLES = 40
SEEDS = (0, 1)


def read_documents(path):
    return list(WikipediaReader().read(ShardUnit("wikipedia", 0, InputFile.describe(path))))


def missing_or_out_of_order(text, kept):
    position, missing = 0, []
    for phrase in kept:
        found = text.find(phrase, position)
        if found < 0:
            missing.append(phrase)
        else:
            position = found + len(phrase)
    return missing


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("language", sorted(LANGUAGES))
def test_adversarial_dump_leaves_no_markup_and_every_sentence(tmp_path, language, seed):
    path, articles = write_markup_dump(str(tmp_path), language, seed, ARTICLES)
    items = read_documents(path)
    assert [type(i) for i in items] == [Document] * ARTICLES
    for article, doc in zip(articles, items):
        assert doc.meta["page_id"] == article.page_id
        assert [m for m in FORBIDDEN if m in doc.text] == [], article.title
        assert [w for w in article.hidden if w in doc.text] == [], article.title
        assert missing_or_out_of_order(doc.text, article.kept) == [], article.title


def test_adversarial_dumps_use_every_shape(tmp_path):
    """The seeded dumps of the test above, together, hold every construct the generator knows."""
    used = set()
    for seed in SEEDS:
        for language in LANGUAGES:
            _, articles = write_markup_dump(str(tmp_path / f"{seed}"), language, seed, ARTICLES)
            used.update(construct for article in articles for construct in article.constructs)
    tables = ("BLOCKS", "STRAY_BLOCKS", "UNCLOSED_BLOCKS", "AFTER_SENTENCE", "PARAGRAPH_END", "UNCLOSED_PARAGRAPH_END")
    known = {name for table in tables for name in getattr(wikipedia_markup, table)}
    known |= {"word:" + shape for shape in wikipedia_markup.WORD_MARKUP + wikipedia_markup.UNCLOSED_WORD_MARKUP}
    known |= {"heading:" + shape for shape in wikipedia_markup.HEADING_MARKUP}
    known |= {"list", "wrapper", "pre", "unclosed_comment", "categories_interlanguage"}
    assert known - used == set()


def test_same_seed_same_dump(tmp_path):
    a, _ = write_markup_dump(str(tmp_path / "a"), "de", seed=5, articles=10)
    b, _ = write_markup_dump(str(tmp_path / "b"), "de", seed=5, articles=10)
    c, _ = write_markup_dump(str(tmp_path / "c"), "de", seed=6, articles=10)
    assert Path(a).read_bytes() == Path(b).read_bytes() != Path(c).read_bytes()


A, B = "Alpha is a small town.", "Beta is an old village."


@pytest.mark.parametrize(
    ("wikitext", "text"),
    [
        # An unclosed <ref>: its citation template goes, the next paragraph and a later ref's prose stay.
        (f"{A}<ref>{{{{cite web|title=x|work={{{{lang|fr|y}}}}}}}}\n\n{B}", f"{A}\n\n{B}"),
        (f"{A}<ref>{{{{cite web|title=x}}}} {B}<ref>y</ref> Gamma.", f"{A} {B} Gamma."),
        # ... and what follows the tag is shown, as MediaWiki shows it.
        (f"{A}<ref>Smith 2001.\n\n{B}", f"{A}Smith 2001.\n\n{B}"),
        # A reference inside a table cell, never closed, does not take the table's end with it.
        (f"{{|\n| a<ref>x\n|}}\n{A}", A),
        # A comment never closed hides the rest of the page.
        (f"{A}\n<!-- x\n\n{B}", A),
        # nowiki and pre text is what the page shows, brackets included.
        (f"{A} <nowiki>[[x]] {{{{y}}}}</nowiki>", f"{A} [[x]] {{{{y}}}}"),
        # Tables: indented, written with pipe templates, text after the end, never closed, opened by a template.
        (f"{A}\n:{{| class=x\n| a\n|}}\n{B}", f"{A}\n\n{B}"),
        (f"{A}\n{{{{(!}}}}\n{{{{!}}}} a\n{{{{!)}}}}\n{B}", f"{A}\n\n{B}"),
        (f"{{|\n| a\n|}} {A}", A),
        (f"{{| class=x\n! a !! b\n|-\n| c\n{A}", A),
        (f"{{{{Election box begin}}}}\n! a !! b\n|-\n| c\n|}}\n{A}", A),
        # A line starting with "!" is a header row only in a table's shape.
        ("!!! is a band.\n!Kung live there.", "!!! is a band.\n!Kung live there."),
        # "<" in prose is no tag; a stray HTML tag is.
        ("If a<b and c>d then.</div>", "If a<b and c>d then."),
        # An unpaired "{{" is not closed by a "}}" the parser failed to pair (nesting past its depth limit).
        ("{{cite web|x\n\n" + A + "\n\n" + "{{a|" * 60 + "x" + "}}" * 60 + "\n\n" + B, f"{A}\n\n{B}"),
        (f"{A}\n[[simple:X]]\n[[be-tarask:Y]]", A),
    ],
)
def test_cleaning_decisions(wikitext, text):
    assert WikitextCleaner.for_language("en").to_text(wikitext) == text
