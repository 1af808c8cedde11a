"""Ids unique within a stage: a natural key repeated in one file, in two files, in two splits of a file."""

from __future__ import annotations

import bz2
import gzip
import shutil
from pathlib import Path

import pytest

from tasks.documents import make_doc_id, repeat_id, split_repeat
from tasks.shards import read_part, part_location, receipt_location
from tasks.sources.c4 import C4Reader
from tasks.sources.commoncrawl import CommonCrawlReader
from tasks.sources.wikipedia import WikipediaReader
from tasks.stage import InputFile, StageSpec, plan_units, run_shard, run_stage
from tasks.storage import resolve
from tasks.synthetic.commoncrawl import WET_NAME
from tasks.synthetic.commoncrawl import write_inputs as write_commoncrawl
from tasks.synthetic.wikipedia import DUMP_NAME
from tasks.synthetic.wikipedia import write_inputs as write_wikipedia
from tasks.unique_ids import disambiguate, renumber
from tasks.validate import check_part, check_stage_level, check_unique_ids
from tests.helpers import doc_line, write_jsonl_gz


def stage_docs(manifest):
    """Every document of a stage in global order: (source, part index, row)."""
    return [d for p in manifest["parts"] for d in read_part(resolve(p["path"]))]


def assert_valid(spec, manifest):
    assert all(not check_part(spec.stage_dir.uri, p).problems for p in manifest["parts"])
    assert check_stage_level(spec.stage_dir, manifest) == []
    assert check_unique_ids(spec.stage_dir, manifest) == []


def ingest(root, reader, source, paths, split_bytes=None):
    spec = StageSpec(root=str(root), name="ingest", reader=reader)
    units = plan_units(source, reader, [InputFile.describe(str(p)) for p in paths], split_bytes)
    return spec, units, run_stage(spec, units)


def test_renumbering_gives_the_same_ids_from_any_partly_renamed_state():
    assert renumber(["X", "X", "X"]) == ["X", "X~2", "X~3"]
    # A crash between two part rewrites: some later occurrences renamed, others still natural.
    assert renumber(["X", "X~2", "X"]) == ["X", "X~2", "X~3"]
    assert renumber(["X", "X", "X~3"]) == ["X", "X~2", "X~3"]
    # Ids already unique stay as they are (a later stage reading a stage with renamed ids).
    assert renumber(["X", "X~3"]) == ["X", "X~3"]
    assert renumber(["X~2", "X~2"]) == ["X~2", "X~3"]


def test_repeat_ids_round_trip_and_natural_ids_never_look_like_repeats():
    natural = make_doc_id("c4", "https://example.com/a~2")
    assert split_repeat(natural) == (natural, 1) and split_repeat(repeat_id(natural, 12)) == (natural, 12)
    assert repeat_id(natural, 1) == natural and split_repeat("x~1") == ("x~1", 1) and split_repeat("x~02") == ("x~02", 1)


def test_renames_spread_over_many_buckets(tmp_path, ray_local):
    lines = [doc_line(n) for n in range(100)]
    paths = [write_jsonl_gz(tmp_path / "raw" / f"c4-train.0000{n}-of-01024.json.gz", lines) for n in range(2)]
    spec = StageSpec(root=str(tmp_path / "out"), name="ingest", reader=C4Reader())
    units = plan_units("c4", C4Reader(), [InputFile.describe(str(p)) for p in paths], None)
    receipts = disambiguate(spec.stage_dir, [run_shard(spec, u) for u in units], rows_per_bucket=20)
    first, second = ([d.id for d in read_part(resolve(r.path))] for r in receipts)
    assert second == [f"{i}~2" for i in first] and [r.ids_disambiguated for r in receipts] == [0, 100]


def test_identical_records_in_one_c4_file_get_unique_ids(tmp_path, ray_local):
    revised = {**doc_line(1), "text": "the same url with another text " * 5}
    lines = [doc_line(1), doc_line(2), doc_line(1), revised, doc_line(1)]
    path = write_jsonl_gz(tmp_path / "raw" / "c4-train.00000-of-01024.json.gz", lines)
    spec, _, manifest = ingest(tmp_path / "out", C4Reader(), "c4", [path])
    docs = stage_docs(manifest)
    ids = [d.id for d in docs]
    assert len(set(ids)) == len(ids) == 5  # every record kept
    natural = ids[0]
    assert ids[2:] == [f"{natural}~2", f"{natural}~3", f"{natural}~4"] and split_repeat(ids[1])[1] == 1
    assert docs[2].text == docs[0].text and docs[3].text == revised["text"]
    assert manifest["parts"][0]["ids_disambiguated"] == 3 and manifest["runs"]["c4"]["ids_disambiguated"] == 3
    assert_valid(spec, manifest)
    assert not list(Path(spec.stage_dir.path).glob("_unique_ids*"))  # scratch removed


def test_a_key_repeated_across_c4_files_is_renamed_in_input_order(tmp_path, ray_local):
    first = write_jsonl_gz(tmp_path / "raw" / "c4-train.00000-of-01024.json.gz", [doc_line(1), doc_line(2)])
    second = write_jsonl_gz(tmp_path / "raw" / "c4-train.00001-of-01024.json.gz", [doc_line(3), doc_line(2), doc_line(1)])
    spec, _, manifest = ingest(tmp_path / "out", C4Reader(), "c4", [first, second])
    ids = [[d.id for d in read_part(resolve(p["path"]))] for p in manifest["parts"]]
    assert ids[1][1] == f"{ids[0][1]}~2" and ids[1][2] == f"{ids[0][0]}~2"
    assert [p["ids_disambiguated"] for p in manifest["parts"]] == [0, 2]
    assert_valid(spec, manifest)


def _members(data: bytes, decompressor) -> list[bytes]:
    members, offset = [], 0
    while offset < len(data):
        stream = decompressor()
        stream.decompress(data[offset:])
        end = len(data) - len(stream.unused_data)
        members.append(data[offset:end])
        offset = end
    return members


def _split_and_whole(tmp_path, reader, source, path):
    """The stage of ``path`` read whole and in byte-range splits that part its two copies."""
    split_bytes = path.stat().st_size // 2 + 1
    spec, units, split = ingest(tmp_path / "split", reader, source, [path], split_bytes)
    assert len(units) == 2 and all(u.byte_range for u in units)
    _, _, whole = ingest(tmp_path / "whole", reader, source, [path])
    assert len(whole["parts"]) == 1
    return spec, split, whole


def _check_second_copy_renamed(spec, split, whole):
    first, second = ([d for d in read_part(resolve(p["path"]))] for p in split["parts"])
    assert first and [d.id for d in second] == [f"{d.id}~2" for d in first]
    assert [d.text for d in second] == [d.text for d in first]
    # Split-invariant: the same ids and texts, in the same order, as the whole-file read gives.
    assert [(d.id, d.text) for d in stage_docs(split)] == [(d.id, d.text) for d in stage_docs(whole)]
    assert_valid(spec, split)


def test_a_record_repeated_in_two_splits_of_a_wet_file(tmp_path, ray_local):
    _, wet = write_commoncrawl(str(tmp_path / "synthetic"))
    path = tmp_path / "raw" / WET_NAME
    path.parent.mkdir()
    path.write_bytes(Path(wet).read_bytes() * 2)  # the same records (same WARC-Record-IDs) twice
    assert len(_members(path.read_bytes(), lambda: gzip.zlib.decompressobj(wbits=31))) % 2 == 0
    _check_second_copy_renamed(*_split_and_whole(tmp_path, CommonCrawlReader(), "commoncrawl", path))


def test_a_page_repeated_in_two_splits_of_a_multistream_dump(tmp_path, ray_local):
    (dump,) = write_wikipedia(str(tmp_path / "synthetic"))
    header, pages, footer = _members(Path(dump).read_bytes(), bz2.BZ2Decompressor)
    path = tmp_path / "raw" / DUMP_NAME
    path.parent.mkdir()
    path.write_bytes(header + pages + pages + footer)  # the dump lists its pages twice
    _check_second_copy_renamed(*_split_and_whole(tmp_path, WikipediaReader(), "wikipedia", path))


def test_a_rerun_after_a_crash_between_rewrites_gives_the_same_stage(tmp_path, ray_local):
    paths = [
        write_jsonl_gz(tmp_path / "raw" / f"c4-train.0000{n}-of-01024.json.gz", [doc_line(n + 10), doc_line(1)])
        for n in range(3)
    ]
    spec, units, manifest = ingest(tmp_path / "out", C4Reader(), "c4", paths)
    stage_dir = spec.stage_dir
    parts = {p["index"]: Path(p["path"]).read_bytes() for p in manifest["parts"]}
    repeated = [d.id for d in stage_docs(manifest)][1::2]  # the url every file holds
    assert repeated == [repeated[0], f"{repeated[0]}~2", f"{repeated[0]}~3"]

    # Part 2 renamed, part 1 not yet: its receipt lost, so the rerun writes it again with natural ids.
    Path(stage_dir.join("_SUCCESS").path).unlink()
    Path(receipt_location(stage_dir, "c4", 1).path).unlink()
    again = run_stage(spec, units)
    assert {p["index"]: Path(p["path"]).read_bytes() for p in again["parts"]} == parts
    assert [p["sha256"] for p in again["parts"]] == [p["sha256"] for p in manifest["parts"]]

    # Part 2's receipt saved with the renamed checksum, the crash before the renamed part moved in.
    natural = StageSpec(root=str(tmp_path / "natural"), name="ingest", reader=C4Reader())
    run_shard(natural, units[2])
    shutil.copy(part_location(natural.stage_dir, "c4", 2).path, part_location(stage_dir, "c4", 2).path)
    assert Path(part_location(stage_dir, "c4", 2).path).read_bytes() != parts[2]
    Path(stage_dir.join("_SUCCESS").path).unlink()
    third = run_stage(spec, units)
    assert {p["index"]: Path(p["path"]).read_bytes() for p in third["parts"]} == parts
    assert_valid(spec, third)


def test_an_input_listed_twice_is_refused(tmp_path):
    path = write_jsonl_gz(tmp_path / "raw" / "a.json.gz", [doc_line(1)])
    inputs = [InputFile.describe(str(path)), InputFile.describe(str(tmp_path / "raw" / ".." / "raw" / "a.json.gz"))]
    with pytest.raises(ValueError, match="a.json.gz is listed twice"):
        plan_units("c4", C4Reader(), inputs, None)
