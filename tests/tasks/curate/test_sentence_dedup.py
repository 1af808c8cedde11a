"""C4 sentence-span dedup: which sentences go, which documents drop, determinism, crash and rerun."""

from __future__ import annotations

import random
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tasks.curate.sentence_dedup import (
    DUPLICATES_DIR,
    HASHES_DIR,
    document_sentences,
    reassemble,
    run_sentence_dedup,
    span_hashes,
    split_sentences,
)
from tasks.documents import Document, make_doc_id
from tasks.shards import SUCCESS, read_part
from tasks.stage import ShardUnit, StageSpec, run_stage, units_from_stage
from tasks.storage import resolve
from tests.helpers import InlineReader
from tests.tasks.curate.test_crash_rerun import kill_when, outputs

MIN_SENTENCES, MIN_WORDS = 2, 8


def words(n: int) -> str:
    """A digit-free tag per number: digits normalise to 0, so numbered sentences would all collide."""
    return "".join("bcdefghijk"[int(d)] for d in str(n))


def s(tag: str, n: int) -> str:
    return f"The {tag} sentence {words(n)} tells its own small story."


def line(*sentences: str) -> str:
    return " ".join(sentences)


NEWSLETTER = (
    "Sign up for our newsletter today.", "We never share your address with anyone.", "Unsubscribe at any time."
)
# The same span as NEWSLETTER after normalisation: case, punctuation and digits differ.
NEWSLETTER_VARIANT = (
    "SIGN UP for our newsletter, today!", "We NEVER share your address with anyone!", "Unsubscribe at any time…"
)

# (source, part index) -> documents in row order; the comments say what dedup must do.
CORPUS: dict[tuple[str, int], tuple[str, ...]] = {
    ("c4", 0): (
        # c4/0/0: the first newsletter span anywhere: kept whole.
        "\n".join([line(s("a", 1), s("a", 2), s("a", 3)), line(*NEWSLETTER), line(s("a", 4), s("a", 5))]),
        # c4/0/1: the newsletter (as a variant) goes with its line and the blank line after it; the
        # span c1 c2 c3 repeats inside the document: its second copy goes, the rest of that line stays.
        "\n".join([
            line(s("c", 1), s("c", 2), s("c", 3), s("c", 4)), "", line(*NEWSLETTER_VARIANT), "",
            line(s("c", 5), s("c", 6), s("c", 1), s("c", 2), s("c", 3)),
        ]),
        # c4/0/2: nothing but the newsletter: nothing left, dropped.
        line(*NEWSLETTER),
    ),
    ("c4", 1): (
        # c4/1/0: a1 a2 a3 was first seen in part 0 (a2 a3 a4 was not: there a3 ran into the newsletter).
        "\n".join([line(s("d", 1), s("d", 2)), line(s("a", 1), s("a", 2), s("a", 3), s("a", 4)), line(s("d", 3))]),
        # c4/1/1: under the minimums, but dedup did not touch it: kept.
        "Short one. Two.",
        # c4/1/2: two sentences left, but too few words.
        line("Yes.", "Maybe.", *NEWSLETTER),
    ),
    ("web", 0): (
        # web/0/0: the newsletter again, but web is its own global order: kept.
        "\n".join([line(*NEWSLETTER), line(s("w", 1), s("w", 2))]),
    ),
}


def ingest(root, corpus=CORPUS) -> Path:
    spec = StageSpec(root=str(root), name="ingest", reader=InlineReader(corpus))
    run_stage(spec, [ShardUnit(*key) for key in corpus])
    return Path(root) / "ingest"


def doc_id(source: str, index: int, row: int) -> str:
    return make_doc_id(source, f"{index}-{row}")


def output_texts(root, stage="sentence_dedup") -> dict[str, str]:
    stage_dir = resolve(str(root)).join(stage)
    return {d.id: d.text for u in units_from_stage(stage_dir) for d in read_part(resolve(u.input.uri))}


def dedup(root, ingested, **options) -> dict:
    options = {"min_sentences": MIN_SENTENCES, "min_words": MIN_WORDS, "partitions": 4, **options}
    return run_sentence_dedup(resolve(str(ingested)), str(root), **options)


# ---------------------------------------------------------------------------------- the splitter


@pytest.mark.parametrize(
    "text, sentences",
    [
        ("We use tools, e.g. hammers and saws. They help.", ["We use tools, e.g. hammers and saws. ", "They help."]),
        ("Dr. Smith went to Washington. He stayed.", ["Dr. Smith went to Washington. ", "He stayed."]),
        ("Pi is 3.14 today. Prices rose 2.5% in the U.S. economy.",
         ["Pi is 3.14 today. ", "Prices rose 2.5% in the U.S. economy."]),
        ('He said "Stop." Then he left. Was it over? Yes!',
         ['He said "Stop." ', "Then he left. ", "Was it over? ", "Yes!"]),
        ("Wait... What happened next? Nobody knew...", ["Wait... ", "What happened next? ", "Nobody knew..."]),
        ("“Quoted sentence.” Another one.", ["“Quoted sentence.” ", "Another one."]),
        ("  Indented. Next.  ", ["  Indented. ", "Next.  "]),
        ("   ", []),
    ],
)
def test_the_splitter_keeps_abbreviations_decimals_quotes_and_ellipses_whole(text, sentences):
    assert split_sentences(text) == sentences
    assert "".join(sentences) == (text if text.strip() else "")  # lossless


def test_a_splitter_that_would_lose_text_leaves_the_line_whole(monkeypatch):
    import tasks.curate.sentence_dedup as module

    monkeypatch.setattr(module, "segment", lambda language, line: [piece + " " for piece in line.split(". ")])
    assert split_sentences("One. Two.") == ["One. Two."]


def test_span_hashes_normalise_and_respect_sentence_boundaries():
    assert span_hashes(list(NEWSLETTER), 3) == span_hashes(list(NEWSLETTER_VARIANT), 3)
    assert span_hashes(["a b.", "c.", "d."], 3) != span_hashes(["a.", "b c.", "d."], 3)  # same words, other sentences
    assert span_hashes(["One.", "Two."], 3) == []
    assert span_hashes(["...", "!", "--"], 3) == [0]  # punctuation only: never a duplicate
    assert len(span_hashes([s("x", i) for i in range(5)], 3)) == 3


def test_reassembly_keeps_the_layout_of_what_is_left():
    text = "Head one. Head two.\n\nGone one. Gone two.\n\nTail one. Tail two.\n"
    lines, sentences = document_sentences(text)
    assert reassemble(lines, sentences, set()) == text
    assert reassemble(lines, sentences, {2, 3}) == "Head one. Head two.\n\nTail one. Tail two.\n"
    assert reassemble(lines, sentences, {1, 2}) == "Head one.\n\nGone two.\n\nTail one. Tail two.\n"
    assert reassemble(lines, sentences, {0, 1, 2, 3}) == "Tail one. Tail two.\n"
    assert reassemble(lines, sentences, {4, 5}) == "Head one. Head two.\n\nGone one. Gone two."


# ------------------------------------------------------------------------------- the whole stage


@pytest.fixture(scope="module")
def deduped(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("sentence_dedup")
    manifest = dedup(root, ingest(root))
    return root, manifest


def test_duplicate_spans_go_and_the_first_occurrence_stays(deduped):
    root, manifest = deduped
    assert output_texts(root) == {
        doc_id("c4", 0, 0): CORPUS[("c4", 0)][0],
        doc_id("c4", 0, 1): "\n".join(
            [line(s("c", 1), s("c", 2), s("c", 3), s("c", 4)), "", line(s("c", 5), s("c", 6))]
        ),
        doc_id("c4", 1, 0): "\n".join([line(s("d", 1), s("d", 2)), s("a", 4), s("d", 3)]),
        doc_id("c4", 1, 1): "Short one. Two.",
        doc_id("web", 0, 0): CORPUS[("web", 0)][0],
    }
    assert manifest["totals"]["dropped"] == {
        "sentence_dedup:too_few_sentences": 1,
        "sentence_dedup:too_few_words": 1,
    }


def test_counts_reconcile_documents_sentences_and_spans(deduped):
    _, manifest = deduped
    counts = manifest["sentence_dedup"]
    assert counts["docs_in"] == 7 and counts["docs_kept"] == 5
    assert counts["docs_dropped"] == {"sentence_dedup:too_few_sentences": 1, "sentence_dedup:too_few_words": 1}
    assert counts["docs_in"] == counts["docs_kept"] + sum(counts["docs_dropped"].values()) + counts["docs_quarantined"]
    # sentences per document: 8, 12, 3 | 7, 2, 5 | 5
    assert counts["sentences_in"] == 42
    # c4/0/1: newsletter 3 + repeated c1-c3 3; c4/0/2: 3; c4/1/0: a1-a3 3; c4/1/2: newsletter 3
    assert counts["sentences_removed"] == 15
    assert counts["sentences_of_dropped_docs"] == 2  # "Yes." "Maybe."
    assert counts["sentences_kept"] == 42 - 15 - 2
    assert counts["spans_in"] == 6 + 10 + 1 + 5 + 0 + 3 + 3
    assert counts["spans_seen_before"] == 4 and counts["spans_repeated"] == 1
    assert counts["docs_changed"] == 4


def test_kept_documents_carry_their_counts_and_metadata(deduped):
    root, _ = deduped
    docs = list(read_part(resolve(str(root)).join("sentence_dedup", "c4", "part-00000.parquet")))
    assert [d.meta for d in docs] == [{"row": 0}, {"row": 1}]
    assert docs[1].columns == {
        "sentence_dedup_sentences_in": 12,
        "sentence_dedup_sentences_removed": 6,
        "sentence_dedup_spans_in": 10,
        "sentence_dedup_spans_seen_before": 1,
        "sentence_dedup_spans_repeated": 1,
    }


def test_span_hashes_are_split_into_partitions_per_source(deduped):
    root, _ = deduped
    stage = resolve(str(root)).join("sentence_dedup")
    markers = [stage.join(DUPLICATES_DIR, "c4", f"p-{p:05d}.json").read_json() for p in range(4)]
    # owned by part 0 and seen again in part 1: newsletter and a1 a2 a3
    assert sum(m["duplicates"] for m in markers) == 2
    assert all(m["hashes_in"] < sum(n["hashes_in"] for n in markers) for m in markers)
    assert stage.join(HASHES_DIR, "web", "part-00000.json").read_json()["spans"] == 3


def part_hashes(manifest: dict) -> list[tuple]:
    return [(p["source"], p["index"], p["sha256"]) for p in manifest["parts"]]


def test_same_input_gives_identical_bytes_whatever_the_partitions(deduped, tmp_path):
    _, first = deduped
    for partitions in (1, 3):
        root = tmp_path / f"p{partitions}"
        again = dedup(root, ingest(root), partitions=partitions)
        assert part_hashes(again) == part_hashes(first)
        assert again["sentence_dedup"] == first["sentence_dedup"]


def test_changed_minimums_redo_the_stage(tmp_path, ray_local):
    ingested = ingest(tmp_path)
    loose = dedup(tmp_path, ingested, min_sentences=0, min_words=0)
    assert loose["totals"]["dropped"] == {} and output_texts(tmp_path)[doc_id("c4", 0, 2)] == ""
    strict = dedup(tmp_path, ingested)
    assert sum(strict["totals"]["dropped"].values()) == 2 and doc_id("c4", 0, 2) not in output_texts(tmp_path)


def test_a_stage_without_parts_is_an_error(tmp_path, ray_local):
    ingested = ingest(tmp_path, {("c4", 0): ("Only one document here.",)})
    with pytest.raises(ValueError, match="no parts"):
        dedup(tmp_path, ingested, sources=["absent"])
    with pytest.raises(ValueError, match="n_sentences"):
        dedup(tmp_path, ingested, n_sentences=0)


# ----------------------------------------------------------------- killed mid-run, then run again

PARTS, DOCS_PER_PART = 4, 30
FOOTERS = tuple(tuple(f"Footer {words(k)} line {words(j)} says a fixed thing." for j in range(3)) for k in range(4))


@dataclass(frozen=True)
class SyntheticC4:
    """Pages of original sentences, each with one of a few shared three-sentence footers, and every
    fourth page repeating a span of an earlier page of its part, every fifth one its own first line."""

    def read(self, unit: ShardUnit) -> Iterator[Document]:
        for row in range(DOCS_PER_PART):
            rng = random.Random(f"{unit.index}-{row}")
            own = [s(f"p{unit.index}r{words(row)}", i) for i in range(rng.randint(4, 9))]
            if row % 4 == 3:
                own[1:1] = [s(f"p{unit.index}r{words(row - 1)}", i) for i in range(3)]
            lines = [line(*own[:3]), line(*own[3:]), line(*FOOTERS[rng.randrange(len(FOOTERS))])]
            if row % 5 == 0:
                lines.append(lines[0])
            text = "\n".join(lines)
            yield Document(make_doc_id(unit.source, f"{unit.index}-{row}"), unit.source, text, {"row": row})


DRIVER = textwrap.dedent(
    """
    import sys
    from tasks.ray_runtime import ensure_ray
    from tests.tasks.curate.test_sentence_dedup import dedup_for_crash
    ensure_ray()  # RAY_ADDRESS: the test session's Ray
    print("connected", flush=True)
    dedup_for_crash(*sys.argv[1:])
    """
)


def dedup_for_crash(ingested: str, root: str) -> dict:
    return run_sentence_dedup(resolve(ingested), root, min_sentences=3, min_words=10, partitions=3)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory, ray_local) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    run_stage(StageSpec(str(root), "ingest", SyntheticC4()), [ShardUnit("c4", i) for i in range(PARTS)])
    return root / "ingest"


@pytest.fixture(scope="module")
def clean_run(synthetic, tmp_path_factory) -> tuple[dict, dict[str, str]]:
    root = tmp_path_factory.mktemp("clean")
    manifest = dedup_for_crash(str(synthetic), str(root))
    counts = manifest["sentence_dedup"]
    assert counts["spans_seen_before"] > 0 and counts["spans_repeated"] > 0  # the comparison is not vacuous
    return manifest, outputs(root)


@pytest.mark.parametrize(
    "first_output",
    [
        f"sentence_dedup/{HASHES_DIR}/c4/part-*.json",  # pass 1 has begun: most of the run to do
        "sentence_dedup/_receipts/c4/part-*.json",  # passes 1 and 2 done, most of pass 3 to do
    ],
)
def test_killed_mid_run_reruns_to_identical_outputs(first_output, synthetic, clean_run, tmp_path):
    clean, clean_outputs = clean_run
    crashed = tmp_path / "crashed"
    kill_when(DRIVER, [str(synthetic), str(crashed)], crashed, first_output)
    assert not (crashed / "sentence_dedup" / SUCCESS).exists(), "the kill came after the run had finished"
    rerun = dedup_for_crash(str(synthetic), str(crashed))
    assert rerun["totals"] == clean["totals"] and rerun["sentence_dedup"] == clean["sentence_dedup"]
    assert outputs(crashed) == clean_outputs
