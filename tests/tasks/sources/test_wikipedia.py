import bz2
import gzip
import json
from pathlib import Path
from urllib.parse import quote

import pyarrow.parquet as pq
import pytest

from tasks.documents import BadRecord, Document, make_doc_id
from tasks.shards import part_location, quarantine_location
from tasks.sources.wikipedia import LLAMA_LANGUAGES, WikipediaReader, dump_language
from tasks.stage import InputFile, ShardUnit, StageSpec, run_shard
from tasks.steps import Drop
from tasks.synthetic.wikipedia import BAD, DOCUMENT, PAGES_PER_STREAM, expected_pages, write_inputs

CORPORA = Path(__file__).resolve().parents[3] / ".." / "shared" / "corpora"
MARKUP = ("[[", "]]", "{{", "}}", "<ref", "'''", "{|", "|}", "__NOTOC__", "__TOC__")


def read(path, reader=None):
    return list((reader or WikipediaReader()).read(ShardUnit("wikipedia", 0, InputFile.describe(str(path)))))


def outcome(item):
    if isinstance(item, Drop):
        return item.reason
    return BAD if isinstance(item, BadRecord) else DOCUMENT


def page(title, page_id, wikitext, ns=0):
    text = wikitext.replace("&", "&amp;").replace("<", "&lt;")
    return (
        f"<page><title>{title}</title><ns>{ns}</ns><id>{page_id}</id><revision><id>{page_id}0</id>"
        f"<timestamp>2022-06-01T00:00:00Z</timestamp><text>{text}</text></revision></page>"
    )


def dump_xml(*pages, version="0.10", siteinfo="", lang="en"):
    return (
        f'<mediawiki xmlns="http://www.mediawiki.org/xml/export-{version}/" version="{version}" xml:lang="{lang}">'
        f"{siteinfo}{''.join(pages)}</mediawiki>\n"
    )


def siteinfo(**keys_by_name):
    names = "".join(f'<namespace key="{key}">{name}</namespace>' for name, key in keys_by_name.items())
    return f"<siteinfo><namespaces>{names}</namespaces></siteinfo>"


def write(path, content: str | bytes):
    data = content.encode() if isinstance(content, str) else content
    compress = {".bz2": bz2.compress, ".gz": gzip.compress}.get(path.suffix, bytes)
    path.write_bytes(compress(data))
    return path


@pytest.mark.skipif(not CORPORA.is_dir(), reason=f"real sample corpora not found at {CORPORA}")
def test_real_dump_every_page_kept_without_markup():
    dump = CORPORA / "wikipedia" / "enwiki-table-markup.xml.bz2"
    with bz2.open(dump, "rt", encoding="utf-8") as f:
        pages_in_file = sum(line.strip() == "<page>" for line in f)
    items = read(dump)
    assert len(items) == pages_in_file == 5
    assert all(isinstance(i, Document) for i in items)
    for doc in items:
        assert not [m for m in MARKUP if m in doc.text], doc.meta["title"]
        assert doc.meta["language"] == "en" and doc.meta["licence"] == "CC BY-SA"
    first = items[0]
    assert first.meta["url"] == "https://en.wikipedia.org/wiki/Constructive_vote_of_no_confidence"
    assert first.meta["page_id"] == 217916 and first.meta["revision_id"] == 807605030
    assert first.meta["timestamp"] == "2017-10-29T00:56:32Z"
    assert first.id == make_doc_id("wikipedia", "en:217916")
    # Link text stays, the table of votes goes, section titles stay as lines.
    assert "the motion of no confidence which allows a parliament" in first.text
    assert "\n\nGermany\n\n" in first.text
    assert "Opposition candidate (party)" not in first.text and "absent/invalid" not in first.text


def test_synthetic_dump_matches_its_ground_truth(tmp_path):
    (path,) = write_inputs(str(tmp_path))
    expected = expected_pages()
    items = read(path)
    assert [outcome(i) for i in items] == [e.outcome for e in expected]
    for want, item in zip(expected, items):
        if isinstance(item, Document):
            assert [k for k in want.kept if k not in item.text] == []
            assert [r for r in want.removed if r in item.text] == []
            assert item.id == make_doc_id("wikipedia", f"en:{want.page_id}")
            assert item.meta["title"] == want.title
            assert item.meta["url"] == "https://en.wikipedia.org/wiki/" + want.title.replace(" ", "_")
        elif isinstance(item, BadRecord):
            assert item.locator.startswith(f"{path}:page ") and want.title in item.locator
            assert f"id {want.page_id}" in item.locator and item.raw.startswith("<page>") and want.title in item.raw


def test_section_titles_are_lines_and_empty_sections_vanish(tmp_path):
    wikitext = (
        "Lead text.\n== Empty ==\n{{Reflist}}\n== History ==\n=== Early ===\nOld times.\n"
        "== Notes ==\n<references/>"
    )
    (doc,) = read(write(tmp_path / "enwiki-x.xml", dump_xml(page("T", 1, wikitext))))
    assert doc.text == "Lead text.\n\nHistory\n\nEarly\n\nOld times."


def test_same_seed_gives_the_same_dump_and_documents(tmp_path):
    (a,) = write_inputs(str(tmp_path / "a"), seed=3)
    (b,) = write_inputs(str(tmp_path / "b"), seed=3)
    (c,) = write_inputs(str(tmp_path / "c"), seed=4)
    assert Path(a).read_bytes() == Path(b).read_bytes() != Path(c).read_bytes()
    docs_a, docs_b = ([(d.id, d.text) for d in read(p) if isinstance(d, Document)] for p in (a, b))
    assert docs_a == docs_b


@pytest.mark.parametrize(
    ("name", "encoding", "title", "words"),
    [
        ("ruwiki-20220601-pages-articles.xml.bz2", "utf-16", "Москва", "Москва — столица"),
        ("dewiki-20220601-pages-articles.xml", "iso-8859-1", "Größe", "Größe über Maß"),
    ],
)
def test_declared_encoding_decides(tmp_path, name, encoding, title, words):
    body = dump_xml(page(title, 7, f"'''{words}''' [[Ziel|Straße]]."), lang=name[:2])
    data = f'<?xml version="1.0" encoding="{encoding}"?>\n{body}'.encode(encoding)  # utf-16 starts with a BOM
    (doc,) = read(write(tmp_path / name, data))
    assert doc.text == f"{words} Straße." and doc.meta["title"] == title
    assert doc.meta["url"] == f"https://{name[:2]}.wikipedia.org/wiki/{quote(title)}"


@pytest.mark.parametrize("version", ["0.10", "0.11", "0.5"])
def test_any_export_schema_version(tmp_path, version):
    pages = (page("A", 1, "Body [[x]]."), page("Talk:A", 2, "Hi", ns=1))
    items = read(write(tmp_path / "enwiki-v.xml", dump_xml(*pages, version=version)))
    assert [outcome(i) for i in items] == [DOCUMENT, "wikipedia:not_article_namespace"]


@pytest.mark.parametrize("suffix", [".xml", ".xml.bz2", ".xml.gz"])
def test_compression_by_file_name_and_latest_revision_wins(tmp_path, suffix):
    history = page("A", 1, "Old text.").replace("</page>", "<revision><id>2</id><text>New text.</text></revision></page>")
    (doc,) = read(write(tmp_path / f"enwiki-20220601-pages-meta-history{suffix}", dump_xml(history)))
    assert doc.text == "New text." and doc.meta["revision_id"] == 2


def test_namespace_from_title_prefix_when_the_schema_has_no_ns(tmp_path):
    pages = (page("Talk:A", 1, "x"), page("Wikipedia:Rules", 2, "y"), page("Ratio: 2:1", 3, "z"))
    dump = dump_xml(*pages, version="0.3", siteinfo=siteinfo(Talk="1", Wikipedia="4")).replace("<ns>0</ns>", "")
    items = read(write(tmp_path / "enwiki-old.xml", dump))
    assert [outcome(i) for i in items] == ["wikipedia:not_article_namespace"] * 2 + [DOCUMENT]


def test_localised_file_and_category_links_are_removed(tmp_path):
    wikitext = (
        "Text [[Berlin|Hauptstadt]] [[Datei:A.jpg|mini|Bildtext]] [[Bild:B.png|Altbild]] [[file:c.svg|Lower]] "
        "[[:Kategorie:Städte|Städteliste]].\n[[Kategorie:Stadt]]\n[[en:Capital]]"
    )
    dump = dump_xml(page("Berlin", 5, wikitext), lang="de")
    (doc,) = read(write(tmp_path / "dewiki-20220601-pages-articles1.xml.bz2", dump))
    assert doc.text == "Text Hauptstadt Städteliste."
    assert doc.meta["language"] == "de" and doc.id == make_doc_id("wikipedia", "de:5")


def test_other_languages_need_configuration(tmp_path):
    # Esperanto is in no built-in alias table: the dump's own <siteinfo> names its namespaces.
    cat = page("Kato", 3, "Kato [[Dosiero:K.jpg|bildo]] [[Kategorio:Bestoj]] miaŭas.")
    dump = dump_xml(cat, siteinfo=siteinfo(Dosiero="6", Kategorio="14"), lang="eo")
    path = write(tmp_path / "eowiki-20220601-pages-articles.xml.bz2", dump)
    with pytest.raises(ValueError, match=r"eowiki.*'eo' is not among the configured languages"):
        read(path)
    (doc,) = read(path, WikipediaReader(languages=LLAMA_LANGUAGES + ("eo",)))
    assert doc.text == "Kato miaŭas." and doc.meta["url"] == "https://eo.wikipedia.org/wiki/Kato"
    with pytest.raises(ValueError, match="not Wikipedia language codes"):
        WikipediaReader(languages=("EN",))
    # Without a language in the file name, the dump's xml:lang says it.
    (named_by_root,) = read(write(tmp_path / "dump.xml", dump_xml(page("A", 1, "x"), lang="sv")))
    assert named_by_root.meta["language"] == "sv"
    assert dump_language("srwiki-20220601-pages-articles-multistream3.xml-p1p2.bz2") == "sr"


def test_truncated_bz2_keeps_what_came_before(tmp_path):
    (path,) = write_inputs(str(tmp_path), copies=30)
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])
    items = read(path)
    *complete, last = items
    assert isinstance(last, BadRecord) and "unreadable input" in last.error and "rest of the file" in last.error
    assert last.locator.startswith(f"{path}:page {len(complete) + 1}")
    assert [outcome(i) for i in complete] == [e.outcome for e in expected_pages(copies=30)[: len(complete)]]
    # The cut falls in the second of the dump's four page streams: every page of the intact first one is kept.
    assert len(complete) == PAGES_PER_STREAM


def test_malformed_xml_names_the_position_and_page(tmp_path):
    broken = page("Broken", 2, "x").replace("</title>", "</titel>")
    dump = dump_xml(page("Good", 1, "Fine."), broken, page("Lost", 3, "y"))
    items = read(write(tmp_path / "enwiki-bad.xml.bz2", dump))
    assert [outcome(i) for i in items] == [DOCUMENT, BAD]
    bad = items[1]
    assert bad.locator.startswith(f"{tmp_path / 'enwiki-bad.xml.bz2'}:page 2") and "XML line 1 column" in bad.locator
    assert "mismatched tag" in bad.error and "after page 1 is unreadable" in bad.error


def test_page_without_text_is_quarantined_and_the_run_goes_on(tmp_path):
    no_text = page("Hollow", 2, "x").replace("<text>x</text>", "")
    items = read(write(tmp_path / "enwiki-t.xml", dump_xml(page("A", 1, "a"), no_text, page("B", 3, "b"))))
    assert [outcome(i) for i in items] == [DOCUMENT, BAD, DOCUMENT]
    assert items[1].locator.endswith("enwiki-t.xml:page 2 (id 2, 'Hollow')") and "no text element" in items[1].error


@pytest.mark.parametrize("name", ["enwiki-empty.xml", "enwiki-empty.xml.bz2", "enwiki-notxml.xml"])
def test_empty_or_non_xml_file_is_one_bad_record(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"" if "empty" in name else b"hello, not xml")
    (bad,) = read(path)
    assert isinstance(bad, BadRecord) and bad.locator.startswith(str(path)) and "empty or not XML" in bad.error


def test_other_xml_is_not_a_dump(tmp_path):
    (bad,) = read(write(tmp_path / "enwiki-feed.xml", "<rss><channel/></rss>"))
    assert "not a MediaWiki XML export" in bad.error


def test_reader_through_run_shard(tmp_path):
    (path,) = write_inputs(str(tmp_path / "raw"))
    spec = StageSpec(root=str(tmp_path / "out"), name="ingest", reader=WikipediaReader())
    receipt = run_shard(spec, ShardUnit("wikipedia", 0, InputFile.describe(path)))
    expected = expected_pages()
    documents = [e for e in expected if e.outcome == DOCUMENT]
    assert receipt.docs_in == len(expected)
    assert receipt.kept == receipt.rows == len(documents)
    assert receipt.quarantined == sum(e.outcome == BAD for e in expected)
    assert receipt.dropped == {
        reason: sum(e.outcome == reason for e in expected)
        for reason in sorted({e.outcome for e in expected} - {DOCUMENT, BAD})
    }
    table = pq.read_table(part_location(spec.stage_dir, "wikipedia", 0).path)
    assert table.column("id").to_pylist() == [make_doc_id("wikipedia", f"en:{e.page_id}") for e in documents]
    assert json.loads(table.column("meta")[0].as_py())["licence"] == "CC BY-SA"
    quarantined = [json.loads(line) for line in open(quarantine_location(spec.stage_dir, "wikipedia", 0).path)]
    bad_ids = [e.page_id for e in expected if e.outcome == BAD]
    assert [q["error"] for q in quarantined] == [
        "revision has no text element",
        f"page id missing or not an integer: {bad_ids[1]!r}",
    ]
