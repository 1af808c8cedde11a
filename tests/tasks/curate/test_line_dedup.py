"""CCNet line dedup: which lines go, which documents drop, reconciled counts, idempotent reruns."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.curate.dedup_files import UNHASHED
from tasks.curate.line_dedup import (
    DUPLICATES_DIR,
    HASHES_DIR,
    line_hash,
    normalise_line,
    run_line_dedup,
)
from tasks.documents import make_doc_id
from tasks.shards import read_part
from tasks.stage import ShardUnit, StageSpec, run_stage, units_from_stage
from tasks.storage import resolve
from tests.helpers import InlineReader

MIN_CHARS = 60


def words(n: int) -> str:
    """A digit-free tag per number: digits normalise to 0, so numbered lines would all collide."""
    return "".join("abcdefghij"[int(d)] for d in str(n))


def body(tag: str, n: int) -> str:
    return f"The {tag} paragraph {words(n)} says something of its own about the weather and the sea."


MENU = "Home · About · Contact"
COOKIES = "We use cookies to improve your experience."

# (source, part index) -> documents, in row order. The comments say what dedup must do.
CORPUS: dict[tuple[str, int], tuple[str, ...]] = {
    ("cc", 0): (
        # doc cc/0/0: first to hold the menu and the banner: all kept, but its own repeat goes.
        "\n".join([MENU, COOKIES, body("a", 1), "", body("a", 2), body("a", 1)]),
        # doc cc/0/1: menu and banner again, in other case/punctuation: both go.
        "\n".join(["HOME ABOUT CONTACT", body("b", 1), "We use cookies, to improve your experience!", body("b", 2)]),
    ),
    ("cc", 1): (
        # doc cc/1/0: all new: kept whole.
        "\n".join(["Café opening hours 2021", body("c", 1), body("c", 2)]),
        # doc cc/1/1: the same heading without accents, other digits: goes; the rest is short.
        "\n".join(["CAFE OPENING HOURS 1999", "Short tail line."]),
        # doc cc/1/2: only lines seen before: dropped.
        "\n".join([MENU, body("a", 2), COOKIES]),
    ),
    ("web", 0): (
        # web/0/0: shares the banner and a body line with cc; removed only across sources.
        "\n".join([COOKIES, body("a", 1), body("w", 1), body("w", 2)]),
    ),
}


def ingest(root, corpus=CORPUS) -> StageSpec:
    spec = StageSpec(root=str(root), name="ingest", reader=InlineReader(corpus))
    run_stage(spec, [ShardUnit(source, index) for source, index in corpus])
    return spec


def doc_id(source: str, index: int, row: int) -> str:
    return make_doc_id(source, f"{index}-{row}")


def output_texts(root, stage="line_dedup") -> dict[str, str]:
    return {d.id: d.text for u in units_from_stage(resolve(str(root)).join(stage)) for d in read_part(resolve(u.input.uri))}


def test_normalisation_folds_case_digits_punctuation_accents_and_spacing():
    assert normalise_line("  Café  au LAIT, 2019!! ") == "cafe au lait 0000"
    assert normalise_line("Naïve — «quoted» text\t(1.5)") == "naive quoted text 00"
    assert line_hash("Café au lait, 2019") == line_hash("cafe AU LAIT 1234") != line_hash("cafe au the")
    assert line_hash("") == line_hash("  --- ... ") == UNHASHED


@pytest.fixture(scope="module")
def deduped(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("dedup")
    ingest(root)
    manifest = run_line_dedup(resolve(str(root)).join("ingest"), str(root), min_chars=MIN_CHARS, partitions=4)
    return root, manifest


def test_exactly_the_duplicate_lines_go_and_short_documents_drop(deduped):
    root, manifest = deduped
    texts = output_texts(root)
    assert texts == {
        doc_id("cc", 0, 0): "\n".join([MENU, COOKIES, body("a", 1), "", body("a", 2)]),
        doc_id("cc", 0, 1): "\n".join([body("b", 1), body("b", 2)]),
        doc_id("cc", 1, 0): "\n".join(["Café opening hours 2021", body("c", 1), body("c", 2)]),
        # per source: web keeps what it shares with cc
        doc_id("web", 0, 0): CORPUS[("web", 0)][0],
    }
    assert manifest["totals"]["dropped"] == {"line_dedup:too_short": 2}
    assert manifest["totals"]["docs_in"] == 6 and manifest["totals"]["kept"] == 4


def test_line_counts_reconcile_with_reasons(deduped):
    _, manifest = deduped
    counts = manifest["line_dedup"]
    assert counts["lines_in"] == 6 + 4 + 3 + 2 + 3 + 4
    assert counts["removed_repeated"] == 1  # body a1 twice in cc/0/0
    # cc/0/1: menu, banner; cc/1/1: heading; cc/1/2: menu, body a2, banner
    assert counts["removed_seen_before"] == 6
    assert counts["lines_of_dropped_docs"] == 1  # "Short tail line."
    assert counts["lines_kept"] == 5 + 2 + 3 + 4
    receipts = {(p["source"], p["index"]): p for p in manifest["parts"]}
    assert receipts[("cc", 1)]["dropped"] == {"line_dedup:too_short": 2}
    assert receipts[("cc", 1)]["steps"]["line_dedup"]["removed_seen_before"] == 4


def test_kept_documents_carry_their_counts_and_metadata(deduped):
    root, _ = deduped
    part = resolve(str(root)).join("line_dedup", "cc", "part-00000.parquet")
    first, second = list(read_part(part))
    assert first.meta == {"row": 0} and second.meta == {"row": 1}
    assert first.columns == {"line_dedup_lines_in": 6, "line_dedup_removed_seen_before": 0, "line_dedup_removed_repeated": 1}
    assert second.columns == {"line_dedup_lines_in": 4, "line_dedup_removed_seen_before": 2, "line_dedup_removed_repeated": 0}


def test_hashes_are_split_into_bounded_partitions(deduped):
    root, _ = deduped
    stage = resolve(str(root)).join("line_dedup")
    distinct = stage.join(HASHES_DIR, "cc", "part-00000.distinct")
    offsets = stage.join(HASHES_DIR, "cc", "part-00000.json").read_json()["partition_offsets"]
    hashes = np.frombuffer(distinct.read_bytes(), dtype="<u8")
    # 9 non-blank lines: menu, banner and body a1 twice each, then a2, b1, b2
    assert len(offsets) == 5 and offsets[-1] == hashes.size == 6
    used = [p for p in range(4) if offsets[p + 1] > offsets[p]]
    assert len(used) > 1
    for p in range(4):
        chunk = hashes[offsets[p] : offsets[p + 1]]
        assert np.all(chunk % 4 == p) and np.all(np.diff(chunk.astype(np.float64)) > 0)
    markers = [stage.join(DUPLICATES_DIR, "cc", f"p-{p:05d}.json").read_json() for p in range(4)]
    assert sum(m["duplicates"] for m in markers) == 3  # menu, banner, body a2 (heading is per part 1 only)
    assert all(m["hashes_in"] < sum(n["hashes_in"] for n in markers) for m in markers)


def test_across_sources_removes_lines_another_source_holds_first(tmp_path, ray_local):
    ingest(tmp_path)
    manifest = run_line_dedup(
        resolve(str(tmp_path)).join("ingest"), str(tmp_path), min_chars=MIN_CHARS, partitions=3, across_sources=True
    )
    texts = output_texts(tmp_path)
    assert texts[doc_id("web", 0, 0)] == "\n".join([body("w", 1), body("w", 2)])
    assert texts[doc_id("cc", 0, 0)] == "\n".join([MENU, COOKIES, body("a", 1), "", body("a", 2)])
    assert manifest["line_dedup"]["removed_seen_before"] == 8


def test_rerun_skips_finished_work_and_rebuilds_identical_bytes(tmp_path, ray_local):
    ingest(tmp_path)
    stage_input = resolve(str(tmp_path)).join("ingest")
    first = run_line_dedup(stage_input, str(tmp_path), min_chars=MIN_CHARS, partitions=2)
    stage = resolve(str(tmp_path)).join("line_dedup")
    lines_file = stage.join(HASHES_DIR, "cc", "part-00001.lines")
    stamp = lines_file.fs.get_file_info(lines_file.path).mtime
    assert run_line_dedup(stage_input, str(tmp_path), min_chars=MIN_CHARS, partitions=2) == first
    # A finished stage is skipped whole: not even pass 1 looks at its parts (it would rewrite this).
    pass_one_marker = tmp_path / "line_dedup" / HASHES_DIR / "cc" / "part-00000.json"
    pass_one_record = pass_one_marker.read_bytes()
    pass_one_marker.unlink()
    assert run_line_dedup(stage_input, str(tmp_path), min_chars=MIN_CHARS, partitions=2) == first
    assert not pass_one_marker.exists()
    pass_one_marker.write_bytes(pass_one_record)

    # A crash after pass 3 wrote one part: its receipt and the stage marker are gone.
    stage.join("_SUCCESS").delete()
    stage.join("_receipts", "cc", "part-00001.json").delete()
    stage.join("cc", "part-00001.parquet").delete()
    again = run_line_dedup(stage_input, str(tmp_path), min_chars=MIN_CHARS, partitions=2)
    assert lines_file.fs.get_file_info(lines_file.path).mtime == stamp  # pass 1 skipped
    assert [p["sha256"] for p in again["parts"]] == [p["sha256"] for p in first["parts"]]

    elsewhere = tmp_path / "fresh"
    ingest(elsewhere)
    fresh = run_line_dedup(resolve(str(elsewhere)).join("ingest"), str(elsewhere), min_chars=MIN_CHARS, partitions=2)
    assert [p["sha256"] for p in fresh["parts"]] == [p["sha256"] for p in first["parts"]]


def test_changed_parameters_redo_the_stage(tmp_path, ray_local):
    ingest(tmp_path)
    stage_input = resolve(str(tmp_path)).join("ingest")
    loose = run_line_dedup(stage_input, str(tmp_path), min_chars=0, partitions=2)
    assert loose["totals"]["dropped"] == {} and loose["totals"]["kept"] == 6
    assert output_texts(tmp_path)[doc_id("cc", 1, 2)] == ""  # every line of it was seen before
    strict = run_line_dedup(stage_input, str(tmp_path), min_chars=MIN_CHARS, partitions=2)
    assert strict["totals"]["dropped"] == {"line_dedup:too_short": 2}
    assert doc_id("cc", 1, 2) not in output_texts(tmp_path)


def test_a_stage_without_parts_is_an_error(tmp_path, ray_local):
    ingest(tmp_path, {("cc", 0): ("only document " * 10,)})
    with pytest.raises(ValueError, match="no parts"):
        run_line_dedup(resolve(str(tmp_path)).join("ingest"), str(tmp_path), sources=["absent"])
