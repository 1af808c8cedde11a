"""The curate flow end to end on the synthetic inputs of four sources (Prefect harness, local Ray)."""

import pytest
from pydantic import ValidationError

from flows.curate import CurateConfig, curate
from flows.ingest import IngestConfig, ingest
from tasks.shards import read_part
from tasks.stage import units_from_stage
from tasks.storage import resolve
from tasks.synthetic import c4, commoncrawl, wikipedia


@pytest.fixture(scope="module")
def curated(tmp_path_factory, prefect_api, ray_local):
    root = tmp_path_factory.mktemp("curate")
    for source, module in (("c4", c4), ("commoncrawl", commoncrawl), ("wikipedia", wikipedia)):
        ingest(IngestConfig(source=source, inputs=module.write_inputs(str(root / "raw" / source), 0), output=str(root)))
    rows = curate(CurateConfig(input=str(root / "ingest"), output=str(root)))
    return root, rows


def test_every_stage_takes_what_the_one_before_kept(curated):
    root, rows = curated
    by = {(r["stage"], r["source"]): r for r in rows}
    ingested = resolve(root).join("ingest", "_manifest.json").read_json()["totals"]["by_source"]
    chains = {
        "commoncrawl": ["line_dedup", "filtered", "minhash", "curated"],
        "c4": ["filtered", "minhash", "curated"],
        "wikipedia": ["filtered", "curated"],
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


def test_curated_documents_carry_language_and_pii_counts(curated):
    root, _ = curated
    docs = [d for u in units_from_stage(resolve(root).join("curated")) for d in read_part(resolve(u.input.uri))]
    assert docs and all("pii" in d.meta for d in docs)
    assert {d.meta["language"] for d in docs if d.source == "commoncrawl"} <= {"en"}


def test_rerun_does_no_work_and_changes_nothing(curated):
    root, rows = curated
    assert curate(CurateConfig(input=str(root / "ingest"), output=str(root))) == rows


def test_a_bad_recipe_fails_before_any_work(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: x\nsources:\n  c4:\n    filters:\n      - name: c4_quality\n        params: {min_sentence: 5}\n")
    with pytest.raises(ValidationError, match="min_sentence"):
        CurateConfig(recipe=str(recipe))
    with pytest.raises(ValidationError, match="no recipe named"):
        CurateConfig(recipe="llama9")
