"""The stage check finds ids shared across parts (and inside one), naming both places, bucket by bucket."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from tasks.documents import Document
from tasks.executor import mark
from tasks.stage import ShardUnit, StageSpec, run_shard, write_manifest
from tasks.unique_ids import MAX_EXAMPLES, buckets_of, find_duplicate_ids
from tasks.validate import check_part, check_stage_level, check_unique_ids


@dataclass(frozen=True)
class FixedIds:
    """A reader whose documents carry the ids it is given, repeats included: a stage made by hand."""

    ids_by_part: tuple[tuple[str, ...], ...]

    def read(self, unit):
        for doc_id in self.ids_by_part[unit.index]:
            yield Document(doc_id, unit.source, f"text of {doc_id} " * 10)


def hand_made_stage(tmp_path, ids_by_part):
    """Parts, receipts and manifest written as a stage run writes them, without its id pass."""
    spec = StageSpec(root=str(tmp_path), name="ingest", reader=FixedIds(ids_by_part))
    units = [ShardUnit("toy", n) for n in range(len(ids_by_part))]
    receipts = [run_shard(spec, unit) for unit in units]
    manifest = write_manifest(spec, units, receipts, 0.0)
    mark(spec.stage_dir, {"toy": spec.fingerprint()})
    return spec, manifest


def test_a_duplicate_id_across_two_parts_fails_naming_both(tmp_path, ray_local):
    spec, manifest = hand_made_stage(tmp_path, (("a", "b", "c"), ("d", "b")))
    # Each part on its own is fine: only the stage-wide check sees the repeat.
    assert all(not check_part(spec.stage_dir.uri, p).problems for p in manifest["parts"])
    assert check_stage_level(spec.stage_dir, manifest) == []
    (problem,) = check_unique_ids(spec.stage_dir, manifest)
    first, second = (p["path"] for p in manifest["parts"])
    assert problem == f"{second}: record 1: duplicate id 'b', also at {first}: record 1"
    assert not [p for p in (tmp_path / "ingest").iterdir() if p.name.startswith("_unique_ids")]  # scratch removed


def test_a_duplicate_inside_one_part_is_named_too(tmp_path, ray_local):
    spec, manifest = hand_made_stage(tmp_path, (("a", "b", "a"),))
    (part,) = (p["path"] for p in manifest["parts"])
    assert check_unique_ids(spec.stage_dir, manifest) == [
        f"{part}: record 2: duplicate id 'a', also at {part}: record 0"
    ]


def test_every_duplicate_is_found_across_many_buckets_and_counted(tmp_path, ray_local):
    ids = tuple(f"doc-{n}" for n in range(200))
    spec, manifest = hand_made_stage(tmp_path, (ids, ids[::-1][:60], ("fresh",)))
    paths = [p["path"] for p in manifest["parts"]]
    # 7 buckets of ~40 ids: the 60 repeats spread over them, each found in its own bucket.
    count, examples = find_duplicate_ids(paths, 261, spec.stage_dir, rows_per_bucket=40)
    assert count == len(examples) == 60
    assert sorted(e[0] for e in examples) == sorted(ids[140:])
    assert len(set(buckets_of(pa.array([e[0] for e in examples]), 7).tolist())) == 7
    assert all(first == paths[0] and again == paths[1] for _, first, _, again, _ in examples)
    assert all(int(doc_id.split("-")[1]) == row == 199 - again_row for doc_id, _, row, _, again_row in examples)


def test_many_duplicates_are_all_counted_and_some_listed(tmp_path, ray_local):
    ids = tuple(f"doc-{n}" for n in range(200))
    spec, manifest = hand_made_stage(tmp_path, (ids, ids[:150]))
    problems = check_unique_ids(spec.stage_dir, manifest)  # one bucket at this size
    assert len(problems) == MAX_EXAMPLES + 1
    assert problems[-1] == f"{spec.stage_dir.uri}: 150 documents share an id with an earlier one (20 listed)"


def test_an_unreadable_part_leaves_the_others_checked(tmp_path, ray_local):
    spec, manifest = hand_made_stage(tmp_path, (("a",), ("b",), ("a",)))
    with open(manifest["parts"][1]["path"], "wb") as broken:
        broken.write(b"not parquet")
    problems = check_unique_ids(spec.stage_dir, manifest)
    assert problems == [f"{manifest['parts'][2]['path']}: record 0: duplicate id 'a', also at {manifest['parts'][0]['path']}: record 0"]
    assert any("unreadable Parquet" in p for p in check_part(spec.stage_dir.uri, manifest["parts"][1]).problems)
