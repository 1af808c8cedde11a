import functools
import gzip
import json
import pickle
import shutil
import socket
import threading
import zlib
from datetime import datetime
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fastwarc.warc import ArchiveIterator, WarcRecordType

from tasks.documents import BadRecord, Document, make_doc_id
from tasks.shards import part_location, quarantine_location
from tasks import language
from tasks.sources.commoncrawl import (
    CommonCrawlReader,
    RecordError,
    crawl_file_uris,
    crawl_segment_uris,
    decode_html,
    detect_language,
)
from tasks.stage import InputFile, ShardUnit, StageSpec, run_shard
from tasks.steps import Drop
from tasks.synthetic.commoncrawl import (
    BAD,
    BOILERPLATE,
    CRAWL,
    KEPT,
    WARC_NAME,
    WET_NAME,
    expected_records,
    write_inputs,
)

CORPORA = Path(__file__).resolve().parents[3] / ".." / "shared" / "corpora" / "commoncrawl"
needs_corpora = pytest.mark.skipif(not CORPORA.is_dir(), reason=f"real sample corpora not found at {CORPORA}")


def _read(uri, reader=CommonCrawlReader()):
    return list(reader.read(ShardUnit("commoncrawl", 0, InputFile.describe(str(uri)))))


def _outcome(item):
    if isinstance(item, Document):
        return KEPT
    return item.reason if isinstance(item, Drop) else BAD


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cc")
    warc, wet = write_inputs(str(folder), seed=3)
    return {"warc": Path(warc), "wet": Path(wet), "expected": expected_records(seed=3)}


@pytest.fixture(scope="module")
def warc_items(synthetic):
    return _read(synthetic["warc"])


def test_warc_pages_match_their_ground_truth(synthetic, warc_items):
    expected = synthetic["expected"][WARC_NAME]
    assert [_outcome(i) for i in warc_items] == [e.outcome for e in expected]
    for item, truth in zip(warc_items, expected):
        if truth.outcome != KEPT:
            continue
        assert item.meta["url"] == truth.url
        assert all(paragraph in item.text for paragraph in truth.main), truth.url
        assert not [b for b in BOILERPLATE if b in item.text], truth.url
        assert "\ufffd" not in item.text
        assert (item.meta["charset"], item.meta["charset_source"]) == (truth.charset, truth.charset_source), truth.url
        assert item.meta["language"] == truth.language and 0 < item.meta["language_score"] <= 1
        assert item.meta["crawl"] == CRAWL
        assert item.id == make_doc_id("commoncrawl", item.meta["warc_record_id"])
        assert datetime.fromisoformat(item.meta["timestamp"]).tzinfo is not None
        assert item.meta["provenance"].startswith(f"{synthetic['warc']}:record ")


def test_bad_records_name_file_record_and_cause(synthetic, warc_items):
    bad = [i for i in warc_items if isinstance(i, BadRecord)]
    assert len(bad) == 2
    wrong_length, bad_bytes = bad
    for record in bad:
        assert record.locator.startswith(f"{synthetic['warc']}:record ") and "<urn:uuid:" in record.locator
    assert "Content-Length" in wrong_length.error and "wrong-length" in wrong_length.raw
    assert "utf-8 (http)" in bad_bytes.error and "bad-bytes" in bad_bytes.raw


def test_the_whole_page_without_main_content_extraction_keeps_the_boilerplate(synthetic):
    items = _read(synthetic["warc"], CommonCrawlReader(main_content=False))
    first = next(i for i in items if isinstance(i, Document))
    assert all(b in first.text for b in BOILERPLATE)


def test_wet_conversion_text_is_kept_as_it_is(synthetic):
    items = _read(synthetic["wet"])
    expected = synthetic["expected"][WET_NAME]
    assert [_outcome(i) for i in items] == [e.outcome for e in expected]
    for item, truth in zip(items, expected):
        if truth.outcome == KEPT:
            assert item.text == truth.main[0]
            assert item.meta["language"] == truth.language
            assert item.meta["url"] == truth.url and item.meta["crawl"] == CRAWL
    assert "not UTF-8" in items[-2].error


def test_generator_and_reader_are_deterministic(synthetic, tmp_path, warc_items):
    again = write_inputs(str(tmp_path / "again"), seed=3)
    assert Path(again[0]).read_bytes() == synthetic["warc"].read_bytes()
    assert Path(again[1]).read_bytes() == synthetic["wet"].read_bytes()
    other = write_inputs(str(tmp_path / "other"), seed=4)
    assert Path(other[0]).read_bytes() != synthetic["warc"].read_bytes()
    # The same input gives the same items in the same order (the file name aside).
    assert _read(again[0]) == _with_path(warc_items, synthetic["warc"], again[0])


def _member_starts(data: bytes) -> list[int]:
    starts, offset = [], 0
    while offset < len(data):
        starts.append(offset)
        inflater = zlib.decompressobj(wbits=31)
        inflater.decompress(data[offset:])
        offset = len(data) - len(inflater.unused_data)
    return starts


def test_truncated_gzip_keeps_what_came_before_and_says_where_it_ends(synthetic, warc_items, tmp_path):
    data = synthetic["warc"].read_bytes()
    starts = _member_starts(data)
    response = 1 + 3 * 4 + 1  # warcinfo, then request, response, metadata per page: the 5th response
    cuts = {
        "inside a response block": (starts[response] + starts[response + 1]) // 2,
        "inside a response header": starts[response] + 40,
        "inside a metadata header": starts[response + 1] + 40,
    }
    for where, cut_at in cuts.items():
        cut = tmp_path / f"cut-{cut_at}.warc.gz"
        cut.write_bytes(data[:cut_at])
        items = _read(cut)
        assert items[:-1] == _with_path(warc_items[: len(items) - 1], synthetic["warc"], cut), where
        assert isinstance(items[-1], BadRecord) and "truncated gzip stream" in items[-1].error, where
        assert items[-1].locator.startswith(f"{cut}:"), where
    block_cut = _read(tmp_path / f"cut-{cuts['inside a response block']}.warc.gz")
    assert len(block_cut) == 5 and "<urn:uuid:" in block_cut[-1].locator and "block ends after" in block_cut[-1].error


def _with_path(items, old, new):
    def move(item):
        if isinstance(item, Document):
            provenance = item.meta["provenance"].replace(str(old), str(new))
            return Document(item.id, item.source, item.text, {**item.meta, "provenance": provenance})
        if isinstance(item, BadRecord):
            return BadRecord(item.locator.replace(str(old), str(new)), item.error, item.raw)
        return item

    return [move(i) for i in items]


def test_uncompressed_warc_reads_alike_until_a_wrong_content_length_ends_it(synthetic, warc_items, tmp_path):
    plain = tmp_path / "plain.warc"
    plain.write_bytes(gzip.decompress(synthetic["warc"].read_bytes()))
    items = _read(plain)
    malformed = next(n for n, i in enumerate(warc_items) if isinstance(i, BadRecord))
    assert items[:malformed] == _with_path(warc_items[:malformed], synthetic["warc"], plain)
    blamed, rest = items[malformed:]
    assert "Content-Length" in blamed.error and "wrong-length" in blamed.raw
    assert "rest of the file cannot be read" in rest.error and rest.locator.startswith(f"{plain}:after record ")


def test_empty_file_is_one_bad_record(tmp_path):
    empty = tmp_path / "empty.warc.gz"
    empty.write_bytes(b"")
    assert _read(empty) == [BadRecord(f"{empty}:record 1", "empty file: no WARC records", "")]


def test_decode_html_follows_bom_header_meta_then_detection():
    page = "<p>Grüße aus Köln, Straße</p>"
    assert decode_html(page.encode("cp1252"), "text/html; charset=ISO-8859-1") == (page, "cp1252", "http")
    meta = f'<meta charset="windows-1251"><p>Привет</p>'
    assert decode_html(meta.encode("cp1251"), "text/html") == (meta, "cp1251", "meta")
    assert decode_html(b"\xef\xbb\xbf" + page.encode(), "text/html; charset=cp1251") == (page, "utf-8", "bom")
    undeclared = ("<p>" + "Съешь же ещё этих мягких булок. " * 5 + "</p>").encode("cp1251")
    assert decode_html(undeclared, None)[1:] == ("cp1251", "detected")
    cut = "<p>日本語</p>".encode("euc-jp")[:-5]  # the crawler cut the page inside a character
    assert decode_html(cut, "text/html; charset=EUC-JP", truncated=True)[0] == "<p>日本"
    with pytest.raises(RecordError, match="euc_jp"):
        decode_html(cut, "text/html; charset=EUC-JP")


def test_language_detection_runs_offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    language._language_detector.cache_clear()
    assert detect_language("Der alte Hund läuft jeden Morgen über die Straße zum Bäcker.")[0] == "de"


def test_reader_pickles_for_ray():
    reader = CommonCrawlReader(main_content=False)
    assert pickle.loads(pickle.dumps(reader)) == reader


def test_run_shard_reconciles_every_record(synthetic, tmp_path):
    spec = StageSpec(root=str(tmp_path / "out"), name="ingest", reader=CommonCrawlReader())
    receipt = run_shard(spec, ShardUnit("commoncrawl", 0, InputFile.describe(str(synthetic["warc"]))))
    expected = synthetic["expected"][WARC_NAME]
    assert receipt.docs_in == len(expected)
    assert receipt.kept == receipt.rows == sum(e.outcome == KEPT for e in expected)
    assert receipt.quarantined == sum(e.outcome == BAD for e in expected)
    drops = [e.outcome for e in expected if e.outcome not in (KEPT, BAD)]
    assert receipt.dropped == {reason: drops.count(reason) for reason in sorted(set(drops))}
    table = pq.read_table(part_location(spec.stage_dir, "commoncrawl", 0).path)
    assert table.column("meta").to_pylist()[0] and json.loads(table.column("meta")[0].as_py())["crawl"] == CRAWL
    quarantined = [json.loads(line) for line in open(quarantine_location(spec.stage_dir, "commoncrawl", 0).path)]
    assert all(q["locator"].startswith(str(synthetic["warc"])) for q in quarantined)


@needs_corpora
@pytest.mark.parametrize(
    "name", ["CC-MAIN-2020-34-sample.warc.gz", "whirlwind.warc.gz", "whirlwind.warc.wet.gz", "whirlwind.warc.wat.gz"]
)
def test_every_document_record_of_the_real_samples_lands_once(name):
    path = CORPORA / name
    with open(path, "rb") as f:
        records = sum(1 for _ in ArchiveIterator(f, record_types=WarcRecordType.response | WarcRecordType.conversion))
    items = _read(path)
    assert len(items) == records  # kept + dropped + quarantined
    for doc in (i for i in items if isinstance(i, Document)):
        assert doc.text.strip() and doc.meta["url"].startswith("http") and doc.meta["warc_record_id"]
        if doc.meta.get("charset_source") in ("bom", "http", "meta"):
            assert "\ufffd" not in doc.text, doc.meta["url"]


@needs_corpora
def test_legacy_encoded_real_pages_decode():
    docs = {d.meta["url"]: d for d in _read(CORPORA / "CC-MAIN-2020-34-sample.warc.gz") if isinstance(d, Document)}
    russian = docs["http://01spb.ru/company/"]
    assert (russian.meta["charset"], russian.meta["language"]) == ("cp1251", "ru") and "компании" in russian.text
    chinese = docs["http://0760.jxtdw.com/area/sanxiang/"]  # declared gb2312 in the HTTP header
    assert (chinese.meta["charset"], chinese.meta["language"]) == ("gb18030", "zh") and "中山英才网" in chinese.text
    legacy = [d for d in docs.values() if d.meta["charset"] not in ("utf-8",)]
    assert {d.meta["charset"] for d in legacy} >= {"cp1251", "gb18030", "cp1252"}
    assert not [d.meta["url"] for d in legacy if "\ufffd" in d.text]


@needs_corpora
def test_real_wet_text_is_the_conversion_block():
    path = CORPORA / "whirlwind.warc.wet.gz"
    with open(path, "rb") as f:
        block = next(iter(ArchiveIterator(f, record_types=WarcRecordType.conversion))).reader.read()
    (doc,) = _read(path)
    assert doc.text == block.decode("utf-8").strip()
    assert doc.meta["cc_languages"] == "spa" and doc.meta["crawl"] == "CC-MAIN-2024-22"


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def crawl_host(synthetic, tmp_path):
    """A local HTTP server laid out like Common Crawl's data host: a listing and its files."""
    root = tmp_path / "host"
    segment = "crawl-data/CC-MAIN-2023-23/segments/1685224643388.45/wet"
    (root / segment).mkdir(parents=True)
    names = [f"CC-MAIN-20230601-{n:05d}.warc.wet.gz" for n in range(3)]
    for name in names:
        shutil.copy(synthetic["wet"], root / segment / name)
    listing = "".join(f"{segment}/{name}\n" for name in names).encode()
    (root / "crawl-data/CC-MAIN-2023-23/wet.paths.gz").write_bytes(gzip.compress(listing))
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", [f"{segment}/{n}" for n in names]
    finally:
        server.shutdown()
        server.server_close()


def test_crawl_listing_and_files_stream_over_http(crawl_host, synthetic):
    base, paths = crawl_host
    uris = crawl_file_uris("CC-MAIN-2023-23", 2, base_url=base)
    assert uris == [f"{base}/{p}" for p in paths[:2]]
    remote = _read(uris[0])
    local = _read(synthetic["wet"])
    assert [(_outcome(i), getattr(i, "id", None), getattr(i, "text", None)) for i in remote] == [
        (_outcome(i), getattr(i, "id", None), getattr(i, "text", None)) for i in local
    ]
    assert remote[0].meta["provenance"].startswith(f"{uris[0]}:record ")


def test_crawl_listing_errors_are_clear(crawl_host):
    base, _ = crawl_host
    with pytest.raises(ValueError, match="not a Common Crawl crawl name"):
        crawl_file_uris("2023-23", 1, base_url=base)
    with pytest.raises(FileNotFoundError, match="CC-MAIN-2019-04"):
        crawl_file_uris("CC-MAIN-2019-04", 1, base_url=base)
    with pytest.raises(ValueError, match="lists 3 files, 5 were asked for"):
        crawl_file_uris("CC-MAIN-2023-23", 5, base_url=base)


def test_crawl_segments_select_every_file_of_the_first_segments(tmp_path):
    listing = "".join(
        f"crawl-data/CC-MAIN-2023-23/segments/{segment}/wet/CC-MAIN-{segment}-{n:05d}.warc.wet.gz\n"
        for segment in ("1685224643388.45", "1685224643388.46", "1685224643388.47")
        for n in range(3)
    )
    folder = tmp_path / "crawl-data" / "CC-MAIN-2023-23"
    folder.mkdir(parents=True)
    (folder / "wet.paths.gz").write_bytes(gzip.compress(listing.encode()))
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        uris = crawl_segment_uris("CC-MAIN-2023-23", 2, base_url=base)
        assert len(uris) == 6 and all(".45/" in u or ".46/" in u for u in uris)
        assert uris == [f"{base}/{line}" for line in listing.splitlines()[:6]]
        with pytest.raises(ValueError, match="lists 3 segments, 4 were asked for"):
            crawl_segment_uris("CC-MAIN-2023-23", 4, base_url=base)
    finally:
        server.shutdown()
        server.server_close()
