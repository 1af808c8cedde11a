"""The curate flow on the demo's ingested inputs, every source (Prefect harness, local Ray)."""

import pytest
from pydantic import ValidationError

from flows.curate import CurateConfig, curate
from tasks.shards import read_part
from tasks.stage import units_from_stage
from tasks.storage import resolve


@pytest.fixture(scope="module")
def curated(demo_run):
    """The demo curated its ingested inputs with the LLaMA 1 recipe; rows of its report."""
    _, _, root = demo_run
    demo_root = root / "demo"
    config = CurateConfig(input=str(demo_root / "ingest"), output=str(demo_root), quality_models=str(demo_root / "quality_models"))
    return demo_root, config, curate(config)


def test_every_stage_takes_what_the_one_before_kept(curated):
    root, _, rows = curated
    by = {(r["stage"], r["source"]): r for r in rows}
    ingested = resolve(root).join("ingest", "_manifest.json").read_json()["totals"]["by_source"]
    chains = {
        "commoncrawl": ["line_dedup", "filtered", "quality", "minhash", "curated"],
        "c4": ["filtered", "sentence_dedup", "minhash", "curated"],
        "wikipedia": ["filtered", "curated"],
        "books": ["filtered", "book_dedup", "curated"],
        "arxiv": ["filtered", "curated"],
    }
    for source, chain in chains.items():
        kept = ingested[source]["kept"]
        for stage in chain:
            row = by[(stage, source)]
            assert row["docs_in"] == kept, (source, stage)
            assert row["docs_in"] == row["kept"] + row["dropped"] + row["quarantined"]
            kept = row["kept"]
    assert by[("filtered", "c4")]["dropped"] > 0  # the C4 rules removed something
    assert by[("curated", "c4")]["kept"] > 0


def test_curated_documents_carry_pii_counts(curated):
    root, _, _ = curated
    docs = [d for u in units_from_stage(resolve(root).join("curated")) for d in read_part(resolve(u.input.uri))]
    assert docs and all("pii" in d.meta for d in docs)
    assert {d.meta["language"] for d in docs if d.source == "commoncrawl"} <= {"en"}
    assert {d.meta["bucket"] for d in docs if d.source == "commoncrawl"} <= {"head", "middle"}


def test_rerun_does_no_work_and_changes_nothing(curated):
    _, config, rows = curated
    assert curate(config) == rows


def test_quality_filtering_needs_models(curated):
    root, config, _ = curated
    with pytest.raises(ValueError, match="filters \\['commoncrawl'\\] by quality"):
        curate(config.model_copy(update={"quality_models": None}))


def test_a_bad_recipe_fails_before_any_work(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: x\nsources:\n  c4:\n    filters:\n      - name: c4_quality\n        params: {min_sentence: 5}\n")
    with pytest.raises(ValidationError, match="min_sentence"):
        CurateConfig(recipe=str(recipe))
    with pytest.raises(ValidationError, match="no recipe named"):
        CurateConfig(recipe="llama9")
