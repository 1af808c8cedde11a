"""Splitting a bz2 multistream dump: every page lands in exactly one split, as the whole-file read has it."""

from __future__ import annotations

import bz2
from pathlib import Path

import pytest

from tasks.documents import BadRecord, Document
from tasks.sources.wikipedia import WikipediaReader
from tasks.stage import InputFile, ShardUnit, StageSpec, plan_units, run_shard
from tasks.steps import Drop
from tasks.synthetic.wikipedia import write_inputs
from tests.helpers import split_invariant

READER = WikipediaReader()
COPIES = 17  # 204 pages: a header stream, three page streams, a footer stream


def _read(path: Path, byte_range=None) -> list:
    return list(READER.read(ShardUnit("wikipedia", 0, InputFile.describe(str(path)), byte_range)))


def _stream_starts(path: Path) -> list[int]:
    starts, data, offset = [], path.read_bytes(), 0
    while offset < len(data):
        starts.append(offset)
        stream = bz2.BZ2Decompressor()
        stream.decompress(data[offset:])
        offset = len(data) - len(stream.unused_data)
    return starts


@pytest.fixture(scope="module")
def dump(tmp_path_factory):
    (path,) = write_inputs(str(tmp_path_factory.mktemp("wiki")), copies=COPIES)
    return Path(path), _read(Path(path))


@pytest.mark.parametrize("target_bytes", [997, 9_000, 30_000])
def test_splits_read_what_the_whole_file_reads(dump, target_bytes):
    path, whole = dump
    ranges = READER.split(InputFile.describe(str(path)), target_bytes)
    assert ranges[0][0] == 0 and ranges[-1][1] == path.stat().st_size and len(ranges) > 1
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    starts = _stream_starts(path)
    assert len(starts) == 5 and any(start not in starts for start, _ in ranges[1:])  # a split begins inside a stream
    splits = [_read(path, r) for r in ranges]
    if target_bytes < 10_000:
        assert any(not items for items in splits)  # splits with no stream start inside them
    assert [split_invariant(i) for items in splits for i in items] == [split_invariant(i) for i in whole]
    assert len(whole) == 12 * COPIES


def test_a_split_names_pages_by_their_stream(dump):
    path, _ = dump
    starts = _stream_starts(path)
    input_file = InputFile.describe(str(path))
    for byte_range in READER.split(input_file, 20_000)[1:]:
        for item in _read(path, byte_range):
            where = item.meta["provenance"] if isinstance(item, Document) else getattr(item, "locator", None)
            if where is not None:
                offset = int(where.split(" of the stream at byte ")[1].split(" ")[0])
                assert offset in starts[1:-1] and where.startswith(f"{path}:page ")


def test_a_corrupt_stream_is_quarantined_once_and_the_next_split_goes_on(dump, tmp_path):
    path, whole = dump
    starts = _stream_starts(path)
    data = bytearray(path.read_bytes())
    middle = (starts[2] + starts[3]) // 2  # inside the second page stream
    data[middle : middle + 32] = b"\x00" * 32
    corrupt = tmp_path / path.name
    corrupt.write_bytes(bytes(data))
    ranges = [(0, starts[2]), (starts[2], starts[3]), (starts[3], len(data))]
    first, second, third = (_read(corrupt, r) for r in ranges)
    # The corrupt stream is no stream to the second split, so the first, ending just before, reports it.
    assert [split_invariant(i) for i in first[:-1]] == [split_invariant(i) for i in whole[:100]] and second == []
    assert isinstance(first[-1], BadRecord) and "the rest of the split is unreadable" in first[-1].error
    assert f"of the stream at byte {starts[2]}" in first[-1].locator
    assert [split_invariant(i) for i in third] == [split_invariant(i) for i in whole[200:]]


@pytest.mark.parametrize("name", ["enwiki-20220601-pages-articles.xml.bz2", "enwiki-20220601-pages-articles.xml"])
def test_a_dump_that_is_not_multistream_is_one_unit(dump, tmp_path, name):
    path, whole = dump
    single = tmp_path / name
    xml = bz2.decompress(path.read_bytes())
    single.write_bytes(bz2.compress(xml) if name.endswith(".bz2") else xml)
    input_file = InputFile.describe(str(single))
    assert READER.split(input_file, 1_000) == [(0, input_file.size)]
    with pytest.raises(ValueError, match="multistream"):
        _read(single, (1_000, input_file.size))


def test_run_shard_over_the_splits_reconciles(dump, tmp_path):
    path, whole = dump
    units = plan_units("wikipedia", READER, [InputFile.describe(str(path))], split_bytes=15_000)
    assert len(units) > 3 and all(u.byte_range for u in units)
    spec = StageSpec(root=str(tmp_path / "out"), name="ingest", reader=READER)
    receipts = [run_shard(spec, unit) for unit in units]
    assert sum(r.docs_in for r in receipts) == len(whole)
    assert sum(r.kept for r in receipts) == sum(isinstance(i, Document) for i in whole)
    assert sum(r.quarantined for r in receipts) == sum(isinstance(i, BadRecord) for i in whole)
    assert sum(sum(r.dropped.values()) for r in receipts) == sum(isinstance(i, Drop) for i in whole)
