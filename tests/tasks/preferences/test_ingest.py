"""The comparison ingest on the one executor: reconciled manifests, reasons, reading back, reruns, real HH."""

from collections import Counter

import pyarrow.parquet as pq

from tasks.preferences.ingest import COMPARISON_STAGE, ingest_comparisons
from tasks.preferences.readers import ComparisonReader, HHPairReader
from tasks.preferences.records import COMPARISON_COLUMNS, comparison_problem, read_comparisons
from tasks.storage import resolve
from tasks.validate import check_part, check_stage_level
from tests.helpers import write_jsonl_gz
from tests.tasks.preferences.test_readers import EXPECTED, comparison_lines, hh_lines


def inputs(folder):
    return (
        [str(write_jsonl_gz(folder / "rated.jsonl.gz", comparison_lines()))],
        [str(write_jsonl_gz(folder / "hh.jsonl.gz", hh_lines()))],
    )


def test_both_forms_ingest_reconcile_and_read_back(tmp_path, ray_local):
    rated, hh = inputs(tmp_path / "raw")
    root = str(tmp_path / "out")
    ingest_comparisons("rated", rated, root, ComparisonReader())
    manifest = ingest_comparisons("hh", hh, root, HHPairReader())
    by_source = manifest["totals"]["by_source"]
    assert by_source["rated"]["docs_in"] == 15 and by_source["rated"]["kept"] == 3
    assert by_source["rated"]["quarantined_reasons"] == dict(sorted(Counter(e for e in EXPECTED if e != "kept").items()))
    assert by_source["hh"]["docs_in"] == 9 and by_source["hh"]["kept"] == 2 and by_source["hh"]["quarantined"] == 7
    stage_dir = resolve(root).join(COMPARISON_STAGE)
    assert check_stage_level(stage_dir, manifest) == []
    assert all(check_part(stage_dir.uri, part).problems == [] for part in manifest["parts"])
    hh_part, rated_part = manifest["parts"]
    for name in COMPARISON_COLUMNS.names:
        assert pq.read_schema(rated_part["path"]).field(name).type == COMPARISON_COLUMNS.field(name).type
    comparisons = list(read_comparisons(rated_part["path"])) + list(read_comparisons(hh_part["path"]))
    assert [c.rating for c in comparisons] == ["significantly_better", "unsure", None, None, None]
    assert all(comparison_problem(c.context, c.chosen, c.rejected, c.rating, c.chosen_safe, c.rejected_safe, c.split) is None for c in comparisons)


def test_same_inputs_give_byte_identical_parts_and_a_rerun_does_no_work(tmp_path, ray_local):
    rated, _ = inputs(tmp_path / "raw")
    one = ingest_comparisons("rated", rated, str(tmp_path / "one"), ComparisonReader())
    two = ingest_comparisons("rated", rated, str(tmp_path / "two"), ComparisonReader())
    for a, b in zip(one["parts"], two["parts"]):
        assert open(a["path"], "rb").read() == open(b["path"], "rb").read()
    assert ingest_comparisons("rated", rated, str(tmp_path / "one"), ComparisonReader()) == one
    other = ingest_comparisons("rated", rated, str(tmp_path / "one"), ComparisonReader(split_seed=1))
    assert other["runs"]["rated"]["fingerprint"] != one["runs"]["rated"]["fingerprint"]


def test_real_hh_harmless_pairs(tmp_path, ray_local, hh_harmless):
    manifest = ingest_comparisons("hh-harmless", [str(hh_harmless)], str(tmp_path / "out"), HHPairReader())
    totals = manifest["totals"]["by_source"]["hh-harmless"]
    assert totals["docs_in"] == 2312 == totals["kept"] + totals["dropped_total"] + totals["quarantined"]
    # The whole file: 13 pairs quarantined, every one with its reason.
    assert totals["kept"] == 2299 and totals["dropped_total"] == 0
    assert totals["quarantined_reasons"] == {"contexts_differ": 5, "empty_answer": 4, "roles_out_of_order": 4}
    comparisons = list(read_comparisons(manifest["parts"][0]["path"]))
    splits = Counter(c.split for c in comparisons)
    assert splits == {"train": 2160, "test": 139}
    assert all(c.rating is None and c.chosen_safe is None and c.context[-1].role == "user" for c in comparisons)
    assert check_stage_level(resolve(manifest["stage_dir"]), manifest) == []
