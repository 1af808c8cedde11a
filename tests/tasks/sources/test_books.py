import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tasks.documents import BadRecord, Document, make_doc_id
from tasks.shards import part_location, quarantine_location
from tasks.sources.books import BooksReader, encoding_candidates, language_code, release_date, split_book
from tasks.stage import InputFile, ShardUnit, StageSpec, run_shard
from tasks.steps import Drop
from tasks.synthetic.books import BAD, CREDITS, DOCUMENT, SHAPES, expected_books, shaped_book, write_inputs

CORPORA = Path(__file__).resolve().parents[3] / ".." / "shared" / "corpora"
BOILERPLATE = re.compile(
    r"PROJECT GUTENBERG|Project Gutenberg-tm|START OF TH|END OF TH|SMALL PRINT|FULL LICENSE|www\.gutenberg|Produced by"
)


def read(path, reader=None):
    return list((reader or BooksReader()).read(ShardUnit("books", 0, InputFile.describe(str(path)))))


def outcome(item):
    if isinstance(item, Drop):
        return item.reason
    return BAD if isinstance(item, BadRecord) else DOCUMENT


def book(tmp_path, body: str, header: str = "Title: T\n", encoding="utf-8", name="pg1.txt") -> Path:
    path = tmp_path / name
    start, end = "*** START OF THIS PROJECT GUTENBERG EBOOK T ***", "*** END OF THIS PROJECT GUTENBERG EBOOK T ***"
    text = f"{header}\n{start}\n\n{body}\n\n{end}\nlicence\n"
    path.write_bytes(text.encode(encoding))
    return path


def test_synthetic_books_match_their_ground_truth(tmp_path):
    paths = write_inputs(str(tmp_path), seed=3)
    for path, expected in zip(paths, expected_books(seed=3), strict=True):
        (item,) = read(path)
        assert outcome(item) == expected.outcome, path
        if expected.outcome == DOCUMENT:
            assert item.text == expected.text
            assert {k: item.meta.get(k) for k in expected.meta} == expected.meta
            assert item.id == make_doc_id("books", f"gutenberg:{expected.meta['ebook_number']}")
            assert item.meta["provenance"] == path
            assert not BOILERPLATE.search(item.text) and "\r" not in item.text
        elif expected.outcome == BAD:
            assert item.locator == path and expected.error in item.error


def test_generator_is_deterministic_and_seeded(tmp_path):
    first = [Path(p).read_bytes() for p in write_inputs(str(tmp_path / "a"), seed=1)]
    again = [Path(p).read_bytes() for p in write_inputs(str(tmp_path / "b"), seed=1)]
    other = [Path(p).read_bytes() for p in write_inputs(str(tmp_path / "c"), seed=2)]
    assert first == again and first[0] != other[0]


def test_the_old_etext_is_latin1_without_a_declared_encoding(tmp_path):
    old = write_inputs(str(tmp_path))[1]
    raw = Path(old).read_bytes()
    assert b"Character set encoding" not in raw and "ä".encode("latin-1") in raw
    (doc,) = read(old)
    assert "Märchen" in doc.meta["title"] and "ß" in doc.text
    assert doc.meta["encoding"] == "cp1252"  # the sample reads the same in cp1250: the Gutenberg default wins


def test_declared_latin1_later_bytes_decode_and_utf8_beats_a_wrong_declaration(tmp_path):
    latin = book(tmp_path, "ascii " * 50_000 + "\ncaf\xe9 na\xefve", "Character set encoding: ISO-8859-1", "latin-1")
    (doc,) = read(latin)
    assert doc.text.endswith("café naïve") and doc.meta["encoding"] == "cp1252"

    mislabelled = book(tmp_path, "déjà vu — “quoted”", "Character set encoding: ISO-8859-1", name="pg2.txt")
    (doc,) = read(mislabelled)
    assert doc.text == "déjà vu — “quoted”" and doc.meta["encoding"] == "utf-8"


def test_a_later_byte_that_breaks_the_first_guess_restarts_with_the_next(tmp_path):
    path = tmp_path / "pg3.txt"
    # The 256 KiB sample is all ASCII (read as UTF-8); a UTF-8 "é" comes after it, then a lone latin-1 byte.
    path.write_bytes(b"Title: T\n*** START OF THE PROJECT GUTENBERG EBOOK T ***\n" + b"x" * 300_000 + "\né\n".encode() + b"\xe9\n")
    assert encoding_candidates(path.read_bytes()[: 256 << 10])[:2] == ["utf-8", "cp1252"]
    (doc,) = read(path)
    assert doc.meta["encoding"] == "cp1252" and doc.text.endswith("\nÃ©\né")


def test_byte_order_marks(tmp_path):
    utf16 = tmp_path / "pg4.txt"
    utf16.write_bytes("Title: Ü\r\n*** START OF THE PROJECT GUTENBERG EBOOK Ü ***\r\nÜber alles\r\n".encode("utf-16"))
    (doc,) = read(utf16)
    assert doc.text == "Über alles" and doc.meta["title"] == "Ü"


def test_header_fields_become_meta(tmp_path):
    header = (
        "The Project Gutenberg EBook of Het Boek, by Jan Smit\n\nTitle: Het Boek\n        Een roman\n\n"
        "Author: Jan Smit\n        Piet Jansen\n\nRelease Date: February 23, 2008 [EBook #24675]\n"
        "[Last updated: May 1, 2012]\n\nLanguage: Dutch\n\nCharacter set encoding: UTF-8\n"
    )
    (doc,) = read(book(tmp_path, "Tekst.", header))
    assert doc.meta == {
        "title": "Het Boek Een roman",
        "author": "Jan Smit, Piet Jansen",
        "language": "nl",
        "release_date": "2008-02-23",
        "ebook_number": "24675",
        "url": "https://www.gutenberg.org/ebooks/24675",
        "licence": "Project Gutenberg License",
        "provenance": str(tmp_path / "pg1.txt"),
        "encoding": "utf-8",
    }
    assert doc.id == make_doc_id("books", "gutenberg:24675")


def test_without_an_ebook_number_the_file_name_is_the_key(tmp_path):
    (doc,) = read(book(tmp_path, "Text.", "Title: Anonymous\n", name="mystery.txt"))
    assert "ebook_number" not in doc.meta and "url" not in doc.meta
    assert doc.id == make_doc_id("books", "mystery.txt")


@pytest.mark.parametrize(
    ("name", "code"), [("English", "en"), ("Dutch", "nl"), ("Middle English", "enm"), ("English and French", "en"), ("Xyzzy", None)]
)
def test_language_names_become_iso_codes(name, code):
    assert language_code(name) == code


@pytest.mark.parametrize(
    ("value", "iso"),
    [("December 6, 2004 [EBook #14263]", "2004-12-06"), ("October, 2005  [EBook #9198]", "2005-10"), ("1996", "1996"), ("soon", None)],
)
def test_release_dates(value, iso):
    assert release_date(value) == iso


def test_markers_only_count_where_they_may():
    late_start = ["Title: X", *["line"] * 600, "*** START OF THE PROJECT GUTENBERG EBOOK X ***", "kept"]
    assert split_book(late_start).text.endswith("line\n*** START OF THE PROJECT GUTENBERG EBOOK X ***\nkept")
    # Without a start marker, a closing line this early is text (headers quote such phrases).
    early = ["Some text", "End of the Project Gutenberg work, as the author says", *["more"] * 120, "End of the Project Gutenberg EBook"]
    assert split_book(early).text.splitlines()[:2] == early[:2] and "EBook" not in split_book(early).text
    # A credit paragraph is dropped only where it opens the text after the start marker.
    credits = ["*** START OF THE PROJECT GUTENBERG EBOOK X ***", "", "Produced by A and", "B.", "", "Text.", "", "Produced by the sun."]
    assert split_book(credits).text == "Text.\n\nProduced by the sun."


CREDIT_IDS = [f"credit{n}-{len(c.splitlines())}-lines" for n, c in enumerate(CREDITS)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("credit", CREDITS, ids=CREDIT_IDS)
def test_the_credit_goes_and_the_book_stays_in_every_shape(tmp_path, shape, credit):
    for seed in (0, 1):  # seed 1 opens with a title page, seed 0 with a chapter heading
        raw, expected = shaped_book(shape, credit, seed)
        path = tmp_path / f"pg{seed}.txt"
        path.write_bytes(raw)
        (doc,) = read(path)
        assert isinstance(doc, Document), (shape, doc)
        assert doc.text == expected


@pytest.mark.parametrize("credit", CREDITS, ids=CREDIT_IDS)
def test_a_book_reads_the_same_with_and_without_blank_lines(tmp_path, credit):
    texts = set()
    for shape in SHAPES:
        path = tmp_path / f"{shape}.txt"
        path.write_bytes(shaped_book(shape, credit, seed=1)[0])
        (doc,) = read(path)
        texts.add(doc.text.replace("\n\n", "\n"))
    assert len(texts) == 1 and "Produced by the river" in texts.pop()


def test_a_small_book_without_blank_lines_is_not_taken_for_its_credit():
    start = "*** START OF THE PROJECT GUTENBERG EBOOK X ***"
    lines = [start, "Produced by A and the Online Distributed", "Proofreading Team at http://www.pgdp.net", "CHAPTER I", "It was night.", "The end."]
    assert split_book(lines).text == "CHAPTER I\nIt was night.\nThe end."
    # Where a blank line closes it, a short credit paragraph goes whole, whatever its lines say.
    assert split_book([start, "Produced by David Widger", "HTML version by Al Haines", "", "Text."]).text == "Text."
    # A credit-like opening that never ends within a credit's few lines is the book's prose: it stays.
    prose = ["Produced by the labour of many hands, the cathedral rose over", *["and the town below it,"] * 20, "and it was done."]
    assert split_book([start, *prose]).text == "\n".join(prose)
    # One paragraph per line, no blank lines: a long line is a paragraph, not more of the credit.
    long_line = "The online edition of this text, " + "which goes on and on, " * 20 + "ends here."
    assert split_book([start, "Produced by A. Person", long_line, "More."]).text == f"{long_line}\nMore."
    assert split_book([start, "Produced by A and the Online", "Distributed Proofreaders"]).text == ""  # nothing but a credit


def test_the_licence_notice_inside_the_text_goes_only_where_it_ends():
    start = "*** START OF THE PROJECT GUTENBERG EBOOK X ***"
    notice = ["<<THIS ELECTRONIC VERSION OF THE COMPLETE WORKS OF WILLIAM", "SHAKESPEARE IS COPYRIGHT 1990-1993", "SERVICE THAT CHARGES FOR DOWNLOAD TIME OR FOR MEMBERSHIP.>>"]
    assert split_book([start, "ACT I", *notice, "Enter Hamlet.", "", "ACT II"]).text == "ACT I\nEnter Hamlet.\n\nACT II"
    unterminated = [start, "ACT I", notice[0], *[f"Line {n} of the play." for n in range(40)]]
    assert split_book(unterminated).text == "\n".join(unterminated[1:])


def test_empty_binary_and_boilerplate_only_files(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    binary = tmp_path / "zipped.txt"
    binary.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 10)
    hollow = book(tmp_path, "", name="hollow.txt")
    assert read(empty) == [BadRecord(str(empty), "empty file", "")]
    (bad,) = read(binary)
    assert bad.locator == str(binary) and "binary content" in bad.error
    assert read(hollow) == [Drop("books:no_text_after_boilerplate")]
    (too_big,) = read(hollow, BooksReader(max_record_bytes=10))
    assert f"record of {hollow.stat().st_size} bytes, over the max_record_bytes limit of 10" == too_big.error


def test_run_shard_writes_the_book_and_quarantines_the_empty_file(tmp_path):
    paths = write_inputs(str(tmp_path / "raw"))
    spec = StageSpec(root=str(tmp_path / "out"), name="ingest", reader=BooksReader())
    good = run_shard(spec, ShardUnit("books", 0, InputFile.describe(paths[0])))
    empty = run_shard(spec, ShardUnit("books", 1, InputFile.describe(paths[3])))
    assert (good.docs_in, good.kept, good.quarantined) == (1, 1, 0)
    assert (empty.docs_in, empty.kept, empty.quarantined) == (1, 0, 1)
    table = pq.read_table(part_location(spec.stage_dir, "books", 0).path)
    assert table.column("text").to_pylist() == [expected_books()[0].text]
    assert json.loads(table.column("meta")[0].as_py())["language"] == "fr"
    (line,) = open(quarantine_location(spec.stage_dir, "books", 1).path).readlines()
    assert json.loads(line)["locator"] == paths[3]


@pytest.mark.skipif(not CORPORA.is_dir(), reason=f"real sample corpora not found at {CORPORA}")
def test_real_gutenberg_books_ingest_without_licence_text(tmp_path):
    paths = sorted((CORPORA / "books").glob("pg*.txt"))
    assert len(paths) == 6
    for path in paths:
        (doc,) = read(path)
        assert isinstance(doc, Document), path
        number = path.stem.removeprefix("pg")
        assert doc.meta["ebook_number"] == number and doc.id == make_doc_id("books", f"gutenberg:{number}")
        assert doc.meta["title"] and doc.meta["author"] and doc.meta["licence"] == "Project Gutenberg License"
        assert len(doc.text) > 0.8 * path.stat().st_size - 40_000  # the book stays, only ~20-40 KB of boilerplate go
        for phrase in ("*** START OF", "*** END OF", "END OF THIS PROJECT", "FULL LICENSE", "Project Gutenberg-tm", "Produced by "):
            assert phrase not in doc.text, (path, phrase)
        assert "\r" not in doc.text and "\ufffd" not in doc.text
        assert not re.search(r"[\x80-\x9f]", doc.text), path  # no C1 controls: Windows quotes decoded
        assert doc.text == doc.text.strip() and "\n\n\n" not in doc.text
        # The same book as copies without blank lines between paragraphs have it: only the breaks differ.
        flat = tmp_path / path.name
        flat.write_bytes(b"\n".join(line for line in path.read_bytes().splitlines() if line.strip()))
        (flat_doc,) = read(flat)
        assert flat_doc.text == doc.text.replace("\n\n", "\n"), path
    (dutch,) = read(CORPORA / "books" / "pg24675.txt")
    assert dutch.meta["language"] == "nl" and dutch.meta["author"].startswith("Gabriël")
    assert "GABRIËL" in dutch.text and "één" in dutch.text
