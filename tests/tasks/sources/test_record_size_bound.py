"""Every reader bounds one record's size: an over-size record is quarantined unread, the rest kept.

Each case writes an input holding one record of ``HUGE`` bytes among ordinary ones (streamed to
disk a chunk at a time, so the test stays light), then ingests it with ``max_record_bytes`` at
``LIMIT`` in a fresh Python process: that process resets its peak resident memory (Linux's
VmHWM) after a warm-up read, and reports how far the peak rose over its resident memory while
the part was read (so C and C++ buffers count too, not only Python's). A reader that held the
record would rise by at least its size.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tasks.documents import BadRecord, Document
from tasks.shards import RAW_EXCERPT_CHARS, part_location, quarantine_location, read_part
from tasks.sources.commoncrawl import CommonCrawlReader
from tasks.sources.jsonl import JsonlReader
from tasks.sources.wikipedia import WikipediaReader
from tasks.stage import InputFile, ShardUnit, StageSpec
from tasks.steps import Drop
from tasks.synthetic import commoncrawl as synthetic_commoncrawl
from tasks.synthetic import wikipedia as synthetic_wikipedia
from tests.helpers import split_invariant

HUGE = 64 << 20
LIMIT = 1 << 20
WARM_UP = 2 * LIMIT  # the warm-up input's over-size record: loads what reading loads (models, codecs)
MAX_GROWTH = HUGE // 8
CHUNK = 1 << 20
WORDS = b"lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor\n"
REPO = Path(__file__).resolve().parents[3]

INGEST = """
import dataclasses, json, re, sys
from tasks.sources import make_reader
from tasks.stage import InputFile, ShardUnit, StageSpec, run_shard

source, limit, root, warm_up, target = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
spec = StageSpec(root=root, name="ingest", reader=make_reader(source, max_record_bytes=limit))
run_shard(spec, ShardUnit(source, 0, InputFile.describe(warm_up)))
unit = ShardUnit(source, 1, InputFile.describe(target))

def status_kib(field):
    return int(re.search(field + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))

open("/proc/self/clear_refs", "w").write("5")  # the peak so far (the warm-up's) is forgotten
resident = status_kib("VmRSS")
receipt = run_shard(spec, unit)
print(json.dumps({"growth": (status_kib("VmHWM") - resident) << 10, "receipt": dataclasses.asdict(receipt)}))
"""


def _filler(size: int):
    """``size`` bytes of text lines, a chunk at a time."""
    chunk = WORDS * (CHUNK // len(WORDS))
    left = size
    while left > 0:
        piece = chunk[:left]
        left -= len(piece)
        yield piece


C4_OPEN, C4_CLOSE = b'{"url": "https://example.com/huge", "text": "', b'"}'


def _output(path: Path):
    """The file, gzip-compressed where its name says so."""
    return gzip.open(path, "wb", compresslevel=1) if path.suffix == ".gz" else open(path, "wb")


def write_c4(path: Path, huge: int) -> None:
    with _output(path) as out:
        out.write(json.dumps({"url": "https://example.com/1", "text": "first"}).encode() + b"\n")
        out.write(C4_OPEN)
        for piece in _filler(huge):
            out.write(piece.replace(b"\n", b" "))
        out.write(C4_CLOSE + b"\n")
        out.write(json.dumps({"url": "https://example.com/3", "text": "third"}).encode() + b"\n")


def _warc_member(
    out, record_type: str, number: int, head: bytes, body_size: int, content_type: str, body: bytes = b"",
    compress: bool = True,
) -> None:
    """One WARC record in a gzip member of its own, as Common Crawl writes them (or uncompressed):
    ``head``, then ``body`` or ``body_size`` bytes of filler."""
    body_size = body_size or len(body)
    headers = (
        f"WARC/1.0\r\nWARC-Type: {record_type}\r\nWARC-Record-ID: <urn:uuid:00000000-0000-0000-0000-{number:012d}>\r\n"
        f"WARC-Date: 2024-01-01T00:00:00Z\r\nWARC-Target-URI: https://example.com/{number}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(head) + body_size}\r\n\r\n"
    ).encode()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=1) if compress else contextlib.nullcontext(out) as member:
        member.write(headers + head + body)
        for piece in _filler(0 if body else body_size):
            member.write(piece)
        member.write(b"\r\n\r\n")


def _http(content_type: str) -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n\r\n".encode()


def write_warc(path: Path, huge: int) -> None:
    page = _http("text/html; charset=utf-8") + b"<html><body><p>"
    response, compress = "application/http; msgtype=response", path.suffix == ".gz"
    with open(path, "wb") as out:
        _warc_member(out, "response", 1, page, 2000, response, compress=compress)
        _warc_member(out, "response", 2, page, huge, response, compress=compress)
        _warc_member(out, "response", 3, _http("video/mp4"), 4 * LIMIT, response, compress=compress)
        _warc_member(out, "response", 4, page, 2000, response, compress=compress)


def write_wet(path: Path, huge: int) -> None:
    with open(path, "wb") as out:
        for number, size in enumerate((2000, huge, 2000), 1):
            _warc_member(out, "conversion", number, b"", size, "text/plain")


def write_wikipedia(path: Path, huge: int) -> None:
    def page(page_id: int, title: str) -> bytes:
        return (
            f"<page><title>{title}</title><ns>0</ns><id>{page_id}</id><revision><id>{page_id}0</id>"
            "<model>wikitext</model><text xml:space=\"preserve\">"
        ).encode()

    end = b"</text></revision></page>\n"
    with gzip.open(path, "wb", compresslevel=1) as out:
        out.write(b'<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" xml:lang="en">\n')
        out.write(page(1, "First") + b"The '''first''' article." + end)
        out.write(page(2, "Huge"))
        for piece in _filler(huge):
            out.write(piece)
        out.write(end)
        out.write(page(3, "Third") + b"The third article." + end)
        out.write(b"</mediawiki>\n")


def write_book(path: Path, huge: int) -> None:
    with open(path, "wb") as out:
        out.write(b"Title: Huge\n*** START OF THE PROJECT GUTENBERG EBOOK HUGE ***\n")
        for piece in _filler(huge):
            out.write(piece)


def write_arxiv_bulk(path: Path, huge: int) -> None:
    paper = b"\\documentclass{article}\\begin{document}\\section{Intro}Text.\\end{document}"
    with tarfile.open(path, "w") as bulk:
        for name, size in (("2401/2401.00001.gz", 0), ("2401/2401.00002.gz", huge), ("2401/2401.00003.gz", 0)):
            member = io.BytesIO()
            with gzip.GzipFile(fileobj=member, mode="wb", compresslevel=9) as tex:
                tex.write(paper.replace(b"Text.", b""))
                for piece in _filler(size):
                    tex.write(piece)
                tex.write(b"Text.\\end{document}")
            info = tarfile.TarInfo(name)
            info.size = member.tell()
            member.seek(0)
            bulk.addfile(info, member)


# source, file name, writer, (kept, {dropped reason: count}, quarantined), the huge record's locator and error
CASES = {
    "c4": ("c4", "c4-train.00000-of-01024.json.gz", write_c4, (2, {}, 1), ":line 2", f"record of {len(C4_OPEN) + HUGE + len(C4_CLOSE)} bytes"),
    "c4-plain": ("c4", "c4-train.00000-of-01024.json", write_c4, (2, {}, 1), ":line 2", f"record of {len(C4_OPEN) + HUGE + len(C4_CLOSE)} bytes"),
    "warc-plain": (
        "commoncrawl", "CC-MAIN-x.warc", write_warc, (2, {"commoncrawl:not_html": 1}, 1),
        ":record 2 <urn:uuid:00000000-0000-0000-0000-000000000002>", f"record of {HUGE + 15} bytes",
    ),
    "warc": (
        "commoncrawl", "CC-MAIN-x.warc.gz", write_warc, (2, {"commoncrawl:not_html": 1}, 1),
        ":record 2 <urn:uuid:00000000-0000-0000-0000-000000000002>", f"record of {HUGE + 15} bytes",
    ),
    "wet": (
        "commoncrawl", "CC-MAIN-x.warc.wet.gz", write_wet, (2, {}, 1),
        ":record 2 <urn:uuid:00000000-0000-0000-0000-000000000002>", f"record of {HUGE} bytes",
    ),
    "wikipedia": (
        "wikipedia", "enwiki-20240101-pages-articles.xml.gz", write_wikipedia, (2, {}, 1),
        ":page 2 (id 2, 'Huge')", f"record of {HUGE + len('Huge' '0' '2' '20' 'wikitext')} characters in the page",
    ),
    "books": ("books", "pg99999.txt", write_book, (0, {}, 1), "", "bytes, over the max_record_bytes limit"),
    "arxiv": (
        "arxiv", "arXiv_src_2401_001.tar", write_arxiv_bulk, (2, {}, 1), ":2401/2401.00002.gz",
        f"more than {LIMIT} bytes of LaTeX",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_an_over_size_record_is_quarantined_unread_and_the_rest_kept(tmp_path, case):
    source, name, write, (kept, dropped, quarantined), where, error = CASES[case]
    (tmp_path / "warm").mkdir()
    (tmp_path / "big").mkdir()
    warm_up, target = tmp_path / "warm" / name, tmp_path / "big" / name
    write(warm_up, WARM_UP)
    write(target, HUGE)
    root = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-c", INGEST, source, str(LIMIT), str(root), str(warm_up), str(target)]
    finished = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, check=False)
    assert finished.returncode == 0, finished.stderr
    report = json.loads(finished.stdout.strip().splitlines()[-1])
    receipt = report["receipt"]
    print(f"{case}: peak memory rose by {report['growth'] / 2**20:.1f} MiB reading a {HUGE >> 20} MiB record")
    assert report["growth"] < MAX_GROWTH, f"peak memory rose by {report['growth'] >> 20} MiB reading a {HUGE >> 20} MiB record"
    assert (receipt["kept"], receipt["dropped"], receipt["quarantined"]) == (kept, dropped, quarantined)
    assert receipt["docs_in"] == receipt["kept"] + sum(receipt["dropped"].values()) + receipt["quarantined"]
    stage = StageSpec(root=str(root), name="ingest", reader=JsonlReader()).stage_dir
    (line,) = quarantine_location(stage, source, 1).read_bytes().decode().splitlines()
    bad = json.loads(line)
    assert bad["locator"] == f"{target}{where}"
    assert error in bad["error"] and f"limit of {LIMIT}" in bad["error"]
    assert len(bad["raw"]) <= RAW_EXCERPT_CHARS
    docs = list(read_part(part_location(stage, source, 1)))
    assert len(docs) == kept and all(len(doc.text) < LIMIT for doc in docs)


def _jsonl_items(path: Path, limit: int) -> list:
    items = JsonlReader(max_record_bytes=limit).read(ShardUnit("c4", 0, InputFile.describe(str(path))))
    return [(type(item).__name__, getattr(item, "locator", ""), getattr(item, "error", "")) for item in items]


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n"])
def test_a_json_line_at_the_bound_is_read_and_one_byte_over_is_quarantined(tmp_path, line_end):
    record = json.dumps({"url": "u", "text": "x" * 100}).encode()
    path = tmp_path / "in.jsonl"
    path.write_bytes(record + line_end + b'{"url": "v", "text": "y"}\n')
    size = len(record) + len(line_end) - 1  # a "\r" before the "\n" is the record's
    assert [kind for kind, _, _ in _jsonl_items(path, size)] == ["Document", "Document"]
    (kind, locator, error), (next_kind, _, _) = _jsonl_items(path, size - 1)
    assert (kind, next_kind) == ("BadRecord", "Document")
    assert locator == f"{path}:line 1" and error == f"record of {size} bytes, over the max_record_bytes limit of {size - 1}"


def test_a_last_line_without_a_line_end_is_bounded_too(tmp_path):
    record = json.dumps({"url": "u", "text": "x" * 100}).encode()
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"url": "v", "text": "y"}\n' + record)
    assert [kind for kind, _, _ in _jsonl_items(path, len(record))] == ["Document", "Document"]
    assert _jsonl_items(path, len(record) - 1)[1] == (
        "BadRecord", f"{path}:line 2", f"record of {len(record)} bytes, over the max_record_bytes limit of {len(record) - 1}"
    )


def _items(reader, path: Path, byte_range=None) -> list:
    return list(reader.read(ShardUnit("x", 0, InputFile.describe(str(path)), byte_range)))


def _over_size(items: list) -> list[BadRecord]:
    return [item for item in items if isinstance(item, BadRecord) and "max_record_bytes" in item.error]


@pytest.mark.parametrize(
    ("reader", "input_path", "target_bytes"),
    [
        (CommonCrawlReader(max_record_bytes=2000), lambda folder: synthetic_commoncrawl.write_inputs(folder)[0], 4000),
        (CommonCrawlReader(max_record_bytes=1200), lambda folder: synthetic_commoncrawl.write_inputs(folder)[1], 700),
        (WikipediaReader(max_record_bytes=4000), lambda folder: synthetic_wikipedia.write_inputs(folder, copies=17)[0], 9000),
    ],
    ids=["warc", "wet", "wikipedia-multistream"],
)
def test_splits_quarantine_the_over_size_records_the_whole_read_does(tmp_path, reader, input_path, target_bytes):
    path = Path(input_path(str(tmp_path)))
    whole = _items(reader, path)
    assert _over_size(whole) and any(isinstance(item, Document) for item in whole)
    ranges = reader.split(InputFile.describe(str(path)), target_bytes)
    assert len(ranges) > 2
    splits = [item for byte_range in ranges for item in _items(reader, path, byte_range)]
    assert [split_invariant(item) for item in splits] == [split_invariant(item) for item in whole]


def test_a_history_dump_keeps_and_bounds_only_the_latest_revision(tmp_path):
    def revision(number: int, text: str) -> str:
        return f"<revision><id>{number}</id><model>wikitext</model><text>{text}</text></revision>"

    def page(page_id: int, title: str, revisions: list[str], ns: int = 0) -> str:
        return f"<page><title>{title}</title><ns>{ns}</ns><id>{page_id}</id>{''.join(revisions)}</page>"

    old, latest = "Old words. " * 80, "New words. " * 80  # 880 characters each: under the bound, two over it
    path = tmp_path / "enwiki-20240101-pages-meta-history.xml"
    path.write_text(
        '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/">'
        + page(1, "History", [revision(11, old), revision(12, old), revision(13, latest)])
        + page(2, "Grown", [revision(21, old), revision(22, latest * 2)])
        + page(3, "Talk:Grown", [revision(31, latest * 2)], ns=1)
        + "</mediawiki>"
    )
    history, grown, talk = _items(WikipediaReader(max_record_bytes=1000), path)
    assert isinstance(history, Document) and history.text == latest.strip() and history.meta["revision_id"] == 13
    chars = len("Grown" "0" "2" "22" "wikitext") + 2 * len(latest)
    assert isinstance(grown, BadRecord) and grown.error.startswith(f"record of {chars} characters in the page")
    assert "<id>22</id><model>wikitext</model><text>New words." in grown.raw and "<id>21</id>" not in grown.raw
    assert talk == Drop("wikipedia:not_article_namespace")  # dropped by its namespace whatever its size


def test_an_http_payload_that_inflates_past_the_bound_is_quarantined(tmp_path):
    bomb = gzip.compress(b"<html><body><p>" + b"a" * (4 * LIMIT), compresslevel=9)
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Encoding: gzip\r\n\r\n"
    path = tmp_path / "bomb.warc.gz"
    with open(path, "wb") as out:
        _warc_member(out, "response", 1, head, 0, "application/http; msgtype=response", body=bomb)
        _warc_member(out, "response", 2, _http("text/html"), 0, "application/http; msgtype=response", body=b"<p>ok</p>")
    bad, kept = _items(CommonCrawlReader(max_record_bytes=LIMIT), path)
    assert len(bomb) < LIMIT and isinstance(kept, Document)
    assert bad.error == f"record of more than {LIMIT} bytes once decoded, over the max_record_bytes limit of {LIMIT}"
