"""Splitting a gzip WARC/WET file: every record lands in exactly one split, as the whole-file read has it."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from tasks.documents import BadRecord, Document
from tasks.sources.commoncrawl import CommonCrawlReader
from tasks.stage import InputFile, ShardUnit, StageSpec, plan_units, run_shard
from tasks.steps import Drop
from tasks.synthetic.commoncrawl import CRAWL, WARC_NAME, WET_NAME, write_inputs
from tests.helpers import split_invariant

READER = CommonCrawlReader()


def _concatenated(tmp_path: Path, name: str, seeds=(0, 1, 2)) -> Path:
    """One file of several synthetic files' members: large enough for many splits."""
    target = tmp_path / "big" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    files = [write_inputs(str(tmp_path / f"seed{seed}"), seed=seed)[name == WET_NAME] for seed in seeds]
    target.write_bytes(b"".join(Path(file).read_bytes() for file in files))
    return target


def _read(path: Path, byte_range=None) -> list:
    return list(READER.read(ShardUnit("commoncrawl", 0, InputFile.describe(str(path)), byte_range)))


def _split_reads(path: Path, target_bytes: int) -> list[list]:
    input_file = InputFile.describe(str(path))
    return [_read(path, byte_range) for byte_range in READER.split(input_file, target_bytes)]


def _member_starts(path: Path) -> list[int]:
    starts, data, offset = [], path.read_bytes(), 0
    while offset < len(data):
        starts.append(offset)
        member = gzip.zlib.decompressobj(wbits=31)
        member.decompress(data[offset:])
        offset = len(data) - len(member.unused_data)
    return starts


@pytest.fixture(scope="module")
def big_files(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("cc")
    return {name: _concatenated(tmp_path, name) for name in (WARC_NAME, WET_NAME)}


@pytest.mark.parametrize("name", [WARC_NAME, WET_NAME])
@pytest.mark.parametrize("splits", [None, 9, 2])
def test_splits_read_what_the_whole_file_reads(big_files, name, splits):
    path = big_files[name]
    whole = _read(path)
    target_bytes = 211 if splits is None else path.stat().st_size // splits + 1
    ranges = READER.split(InputFile.describe(str(path)), target_bytes)
    assert ranges[0][0] == 0 and ranges[-1][1] == path.stat().st_size and len(ranges) > 1
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    starts = _member_starts(path)
    assert any(start not in starts for start, _ in ranges[1:])  # some split begins inside a record
    splits = [_read(path, r) for r in ranges]
    if splits is None:
        assert any(not items for items in splits)  # a split with no record start inside it
    assert [split_invariant(i) for items in splits for i in items] == [split_invariant(i) for i in whole]


def test_a_split_names_records_by_their_gzip_member_and_knows_the_crawl(big_files):
    path = big_files[WARC_NAME]
    starts = _member_starts(path)
    for items in _split_reads(path, 3_000)[1:]:
        for item in items:
            if isinstance(item, Document):
                offset = int(item.meta["provenance"].rsplit("record at byte ", 1)[1])
                assert offset in starts and item.meta["crawl"] == CRAWL
            if isinstance(item, BadRecord):
                assert f"{path}:record at byte " in item.locator


def test_a_corrupt_member_is_quarantined_and_its_split_goes_on(big_files, tmp_path):
    source = big_files[WARC_NAME]
    data = bytearray(source.read_bytes())
    starts = _member_starts(source)
    victim = len(starts) // 2  # a response in the middle of the file
    middle = (starts[victim] + starts[victim + 1]) // 2
    data[middle : middle + 16] = b"\xff" * 16
    corrupt = tmp_path / WARC_NAME
    corrupt.write_bytes(bytes(data))

    whole = _read(corrupt)
    assert "the rest of the file cannot be read" in whole[-1].error  # the whole-file read stops there

    intact_items = [split_invariant(i) for i in _read(source)]
    intact_by_member = _items_by_member(source, starts)
    for target_bytes in (500, 30_000):  # many splits; a few, the corrupt member inside one
        items = [i for split in _split_reads(corrupt, target_bytes) for i in split]
        bad = [i for i in items if isinstance(i, BadRecord) and f"byte {starts[victim]}" in i.locator]
        assert bad and all("bad gzip data" in b.error or "block" in b.error for b in bad)
        rest = [split_invariant(i) for i in items if i not in bad]
        expected = [e for n, member in enumerate(intact_by_member) if n != victim for e in member]
        assert rest == expected and len(expected) == len(intact_items) - 1


def _items_by_member(path: Path, starts: list[int]) -> list[list[tuple]]:
    ends = starts[1:] + [path.stat().st_size]
    return [[split_invariant(i) for i in _read(path, (s, e))] for s, e in zip(starts, ends)]


def test_an_uncompressed_warc_is_one_unit(tmp_path):
    plain = tmp_path / "plain.warc"
    plain.write_bytes(gzip.decompress(Path(write_inputs(str(tmp_path))[0]).read_bytes()))
    input_file = InputFile.describe(str(plain))
    assert READER.split(input_file, 1_000) == [(0, input_file.size)]
    assert [split_invariant(i) for i in _read(plain, (0, input_file.size))] == [split_invariant(i) for i in _read(plain)]
    with pytest.raises(ValueError, match="uncompressed WARC"):
        _read(plain, (1_000, input_file.size))


def test_run_shard_over_the_splits_reconciles(big_files, tmp_path):
    path = big_files[WARC_NAME]
    input_file = InputFile.describe(str(path))
    units = plan_units("commoncrawl", READER, [input_file], split_bytes=8_000)
    assert len(units) > 3 and all(u.byte_range for u in units)
    spec = StageSpec(root=str(tmp_path / "out"), name="ingest", reader=READER)
    receipts = [run_shard(spec, unit) for unit in units]
    whole = _read(path)
    assert sum(r.docs_in for r in receipts) == len(whole)
    assert sum(r.kept for r in receipts) == sum(isinstance(i, Document) for i in whole)
    assert sum(r.quarantined for r in receipts) == sum(isinstance(i, BadRecord) for i in whole)
    assert sum(sum(r.dropped.values()) for r in receipts) == sum(isinstance(i, Drop) for i in whole)
