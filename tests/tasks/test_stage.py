"""The stage contract: atomic parts, reconciled counts, quarantine, skip-completed reruns."""

import json
from dataclasses import dataclass
import os
import signal
import subprocess
import sys
import textwrap

import pyarrow.parquet as pq
import pytest

from tasks.documents import Document
from tasks.executor import read_marker
from tasks.shards import PartReceipt, part_location, quarantine_location, receipt_location
from tasks.sources.jsonl import JsonlReader
from tasks.stage import (
    InputFile,
    PartReader,
    ShardUnit,
    StageSpec,
    plan_units,
    run_shard,
    run_stage,
    units_from_stage,
)
from tasks.steps import Drop, MinLength, Step
from tasks.validate import check_part, check_stage_level
from tasks.version import code_version
from tests.helpers import doc_line, write_jsonl_gz


class RejectsPoison(Step):
    """Raises on documents containing 'poison': a bug in a step must not lose the batch."""

    name = "poison"

    def apply(self, doc):
        if "poison" in doc.text:
            raise ValueError("cannot handle poison")
        return doc


def make_spec(root, min_chars=100, name="ingest"):
    return StageSpec(
        root=str(root),
        name=name,
        reader=JsonlReader(),
        steps=lambda: [MinLength(min_chars), RejectsPoison()],
        parameters={"min_chars": min_chars},
    )


def make_units(tmp_path, files=3, per_file=30):
    units = []
    for f in range(files):
        lines = [doc_line(f * 1000 + n, words=5 if n % 7 == 0 else 60) for n in range(per_file)]
        lines[3] = b"not json"
        lines[5] = {"url": f"poison-{f}", "text": "poison " * 50}
        path = write_jsonl_gz(tmp_path / "raw" / f"in-{f}.jsonl.gz", lines)
        units.append(ShardUnit("c4", f, InputFile.describe(str(path))))
    return units


def test_counts_reconcile_and_every_record_lands_once(tmp_path):
    spec = make_spec(tmp_path / "out")
    (unit,) = make_units(tmp_path, files=1)
    receipt = run_shard(spec, unit)
    # 30 lines: 1 invalid JSON + 1 poisoned (quarantined), 5 short (n % 7 == 0, n != 0..: 0,7,14,21,28)
    assert receipt.docs_in == 30
    assert receipt.quarantined == 2
    assert receipt.dropped == {"min_length:too_short": 5}
    assert receipt.kept == receipt.rows == 23
    table = pq.read_table(part_location(spec.stage_dir, "c4", 0).path)
    assert table.num_rows == 23 and table.column_names == ["id", "source", "text", "meta"]
    quarantined = [json.loads(l) for l in open(quarantine_location(spec.stage_dir, "c4", 0).path)]
    assert [q["error"] for q in quarantined][1] == "ValueError: cannot handle poison"
    assert quarantined[0]["locator"].endswith("in-0.jsonl.gz:line 4")
    assert quarantined[0]["raw"] == "not json\n"
    # The reader names its failure's kind; a step's failure has none, so it is counted in the total only.
    assert quarantined[0]["reason"] == "invalid_json" and "reason" not in quarantined[1]
    assert receipt.quarantined_reasons == {"invalid_json": 1}
    assert receipt.steps["min_length"]["dropped"] == {"min_length:too_short": 5}


def test_receipt_refuses_counts_that_do_not_reconcile(tmp_path):
    receipt = PartReceipt("c4", 0, "p", None, docs_in=10, kept=5, rows=5, dropped={"x": 3}, quarantined=1)
    with pytest.raises(ValueError, match="do not reconcile"):
        receipt.save(receipt_location(make_spec(tmp_path).stage_dir, "c4", 0))
    counted = PartReceipt("c4", 0, "p", None, docs_in=3, kept=1, rows=1, quarantined=2, quarantined_reasons={"invalid_json": 3})
    with pytest.raises(ValueError, match="3 quarantined records have reasons, but only 2"):
        counted.save(receipt_location(make_spec(tmp_path).stage_dir, "c4", 0))


def test_stage_manifest_and_validation(tmp_path, ray_local):
    spec = make_spec(tmp_path / "out")
    manifest = run_stage(spec, make_units(tmp_path))
    totals = manifest["totals"]
    assert totals["docs_in"] == 90
    assert totals["docs_in"] == totals["kept"] + totals["dropped_total"] + totals["quarantined"]
    run = manifest["runs"]["c4"]
    assert [i["sha256"] for i in run["inputs"]] == [InputFile.describe(i["uri"]).sha256 for i in run["inputs"]]
    assert run["code_version"] == code_version() and run["parameters"]["min_chars"] == 100
    assert len(run["parameters"]["inputs_digest"]) == 64
    stage_dir = spec.stage_dir
    assert all(not p for c in [check_part(stage_dir.uri, p) for p in manifest["parts"]] for p in c.problems)
    assert check_stage_level(stage_dir, manifest) == []

    # Tampering is caught: a rewritten part, an unlisted part, a quarantine line lost.
    part0 = part_location(stage_dir, "c4", 0).path
    table = pq.read_table(part0)
    pq.write_table(table.slice(1), part0, compression="zstd")
    problems = check_part(stage_dir.uri, manifest["parts"][0]).problems
    assert any("sha256 differs" in p for p in problems) and any("22 rows, manifest says 23" in p for p in problems)
    pq.write_table(table, part_location(stage_dir, "c4", 7).path)
    assert any("part-00007.parquet: part not listed" in p for p in check_stage_level(stage_dir, manifest))
    quarantine = quarantine_location(stage_dir, "c4", 1).path
    lines = open(quarantine).readlines()
    open(quarantine, "w").writelines(lines[1:])
    assert any("1 quarantined records, manifest says 2" in p for p in check_part(stage_dir.uri, manifest["parts"][1]).problems)


def test_rerun_skips_completed_parts_and_redoes_the_rest(tmp_path, ray_local):
    spec = make_spec(tmp_path / "out")
    units = make_units(tmp_path)
    first = run_stage(spec, units)
    stage_dir = spec.stage_dir
    stamps = {u.index: os.stat(part_location(stage_dir, "c4", u.index).path).st_mtime_ns for u in units}

    assert run_stage(spec, units) == first  # finished stage: nothing runs

    # A lost completion marker and receipt: only that part is redone, to the same bytes.
    os.remove(stage_dir.join("_SUCCESS").path)
    os.remove(receipt_location(stage_dir, "c4", 1).path)
    second = run_stage(spec, units)
    after = {u.index: os.stat(part_location(stage_dir, "c4", u.index).path).st_mtime_ns for u in units}
    assert after[0] == stamps[0] and after[2] == stamps[2]
    assert after[1] != stamps[1]
    assert [p["sha256"] for p in second["parts"]] == [p["sha256"] for p in first["parts"]]

    # Other parameters: every part is redone.
    changed = run_stage(make_spec(tmp_path / "out", min_chars=10), units)
    assert changed["totals"]["dropped_total"] == 0
    assert all(os.stat(part_location(stage_dir, "c4", u.index).path).st_mtime_ns != after[u.index] for u in units)


def test_sources_written_by_separate_runs_share_the_stage(tmp_path, ray_local):
    c4_units = make_units(tmp_path, files=3)
    books_units = [ShardUnit("books", u.index, u.input) for u in c4_units[:2]]
    run_stage(make_spec(tmp_path / "out"), c4_units)
    both = run_stage(make_spec(tmp_path / "out"), books_units)
    assert sorted(both["runs"]) == ["books", "c4"]
    assert [(p["source"], p["index"]) for p in both["parts"]] == [("books", 0), ("books", 1), ("c4", 0), ("c4", 1), ("c4", 2)]
    assert both["totals"]["by_source"]["c4"]["docs_in"] == 90
    stage_dir = make_spec(tmp_path / "out").stage_dir
    assert check_stage_level(stage_dir, both) == []
    assert read_marker(stage_dir).fingerprints == {s: run["fingerprint"] for s, run in both["runs"].items()}

    # Rerun c4 with fewer inputs and other parameters: its stale third part goes, books stay.
    fewer = run_stage(make_spec(tmp_path / "out", min_chars=10), c4_units[:2])
    assert [(p["source"], p["index"]) for p in fewer["parts"]] == [("books", 0), ("books", 1), ("c4", 0), ("c4", 1)]
    assert not part_location(stage_dir, "c4", 2).exists() and not receipt_location(stage_dir, "c4", 2).exists()
    assert fewer["runs"]["books"] == both["runs"]["books"]
    assert check_stage_level(stage_dir, fewer) == []
    assert read_marker(stage_dir).fingerprints == {s: run["fingerprint"] for s, run in fewer["runs"].items()}


def test_same_inputs_give_byte_identical_parts(tmp_path, ray_local):
    units = make_units(tmp_path)
    a = run_stage(make_spec(tmp_path / "a"), units)
    b = run_stage(make_spec(tmp_path / "b"), units)
    assert [p["sha256"] for p in a["parts"]] == [p["sha256"] for p in b["parts"]]


KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    from tasks.documents import Document
    from tasks.shards import ShardWriter, part_location
    from tasks.storage import resolve
    target = part_location(resolve(sys.argv[1]), "c4", 0)
    with ShardWriter(target, row_group_rows=100) as writer:
        for n in range(1000):
            writer.write(Document(f"id{n}", "c4", "text " * 50))
        print("row groups written", flush=True)
        time.sleep(120)
    """
)


def test_writer_killed_mid_shard_leaves_no_visible_part(tmp_path, ray_local):
    stage_root = tmp_path / "out" / "ingest"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(stage_root)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "row groups written"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    leftovers = sorted(p.name for p in (stage_root / "c4").iterdir())
    assert len(leftovers) == 1 and leftovers[0].startswith("_tmp.part-00000.parquet.")
    assert (stage_root / "c4" / leftovers[0]).stat().st_size > 0  # it had written data
    assert not (stage_root / "c4" / "part-00000.parquet").exists()

    # The rerun of the stage writes the part whole and removes the remains.
    spec = make_spec(tmp_path / "out")
    (unit,) = make_units(tmp_path, files=1)
    run_stage(spec, [unit])
    assert sorted(p.name for p in (stage_root / "c4").iterdir()) == ["part-00000.parquet"]


@dataclass(frozen=True)
class EveryThirdIsARedirect:
    def read(self, unit):
        for n in range(10):
            yield Drop("toy:redirect") if n % 3 == 0 else Document(f"toy-{n}", unit.source, "x" * 500)


def test_reader_drops_are_counted_with_their_reason(tmp_path):
    spec = StageSpec(root=str(tmp_path), name="ingest", reader=EveryThirdIsARedirect())
    receipt = run_shard(spec, ShardUnit("toy", 0))
    assert (receipt.docs_in, receipt.kept, receipt.dropped) == (10, 6, {"toy:redirect": 4})


def test_a_stage_reads_an_earlier_stage_back(tmp_path, ray_local):
    first = make_spec(tmp_path / "out", name="ingest")
    run_stage(first, make_units(tmp_path, files=2))
    units = units_from_stage(first.stage_dir)
    assert [(u.source, u.index) for u in units] == [("c4", 0), ("c4", 1)]
    second = StageSpec(root=str(tmp_path / "out"), name="filtered", reader=PartReader(), steps=lambda: [MinLength(400)])
    manifest = run_stage(second, units)
    totals = manifest["totals"]
    assert totals["docs_in"] == 46 and totals["kept"] + totals["dropped_total"] == 46 and totals["quarantined"] == 0
    original = {d.id: d for u in units for d in PartReader().read(u)}
    kept = [d for u in units_from_stage(second.stage_dir) for d in PartReader().read(u)]
    assert kept and all(original[d.id] == d and len(d.text) >= 400 for d in kept)


@dataclass(frozen=True)
class LinesAreRecords:
    """A toy splittable format: every line is a record; a split takes the lines starting in its range."""

    def split(self, input_file, target_bytes):
        edges = list(range(0, input_file.size, target_bytes)) + [input_file.size]
        return list(zip(edges, edges[1:]))

    def read(self, unit):
        start, end = unit.byte_range or (0, unit.input.size)
        offset = 0
        with open(unit.input.uri, "rb") as f:
            for line in f:
                if start <= offset < end:
                    yield Document(f"l{offset}", unit.source, line.decode())
                offset += len(line)


def test_large_inputs_split_into_units_that_cover_every_record_once(tmp_path):
    big = tmp_path / "big.txt"
    big.write_bytes(b"".join(b"record %04d ............\n" % n for n in range(400)))  # 10,000 bytes
    small = tmp_path / "small.txt"
    small.write_bytes(b"one\ntwo\n")
    inputs = [InputFile.describe(str(big)), InputFile.describe(str(small))]
    units = plan_units("toy", LinesAreRecords(), inputs, split_bytes=3000)
    assert [(u.index, u.input.uri == str(big), u.byte_range) for u in units] == [
        (0, True, (0, 3000)), (1, True, (3000, 6000)), (2, True, (6000, 9000)), (3, True, (9000, 10000)), (4, False, None)
    ]
    spec = StageSpec(root=str(tmp_path / "out"), name="ingest", reader=LinesAreRecords())
    receipts = [run_shard(spec, unit) for unit in units]
    assert [r.byte_range for r in receipts][:2] == [[0, 3000], [3000, 6000]]
    assert sum(r.kept for r in receipts) == 402
    assert plan_units("toy", JsonlReader(), inputs, split_bytes=3000) == [ShardUnit("toy", 0, inputs[0]), ShardUnit("toy", 1, inputs[1])]


def test_changed_inputs_redo_a_finished_stage(tmp_path, ray_local):
    spec = make_spec(tmp_path / "out")
    units = make_units(tmp_path, files=2)
    first = run_stage(spec, units)
    write_jsonl_gz(tmp_path / "raw" / "in-1.jsonl.gz", [doc_line(n) for n in range(5)])  # upstream redone
    changed = [units[0], ShardUnit("c4", 1, InputFile.describe(units[1].input.uri))]
    second = run_stage(spec, changed)
    assert second["parts"][1]["docs_in"] == 5
    assert second["parts"][0]["sha256"] == first["parts"][0]["sha256"]  # redone, to the same bytes
