"""The real sample corpora through ingest, quality-model training and curate (LLaMA 1 recipe).

Wikipedia, Common Crawl WARC files, Gutenberg books and two arXiv projects (packed the way arXiv's
bulk source ships them) are ingested with the `ingest` flow; `train-quality-model` trains the
English KenLM model on the ingested Wikipedia text; `curate` runs every stage. The checks are
properties: counts reconcile stage by stage, every kept document of one stage is a document of
the one before (none lost, none invented), no PII the scrubber finds is left, languages are the
configured ones.
"""

from __future__ import annotations

import gzip
import tarfile
from pathlib import Path

import pytest

from flows.curate import CurateConfig, curate
from flows.ingest import IngestConfig, ingest
from flows.quality import TrainQualityConfig, train_quality_model
from tasks.curate.pii import PIIDetector
from tasks.curate.recipe import load_recipe
from tasks.shards import MANIFEST, read_part
from tasks.stage import units_from_stage
from tasks.storage import resolve

CORPORA = Path(__file__).resolve().parents[2] / ".." / "shared" / "corpora"
RECIPE = load_recipe("llama1")
CHAINS = {  # the stages each source passes through under the LLaMA 1 recipe
    "commoncrawl": ["line_dedup", "filtered", "quality", "minhash", "curated"],
    "wikipedia": ["filtered", "curated"],
    "books": ["filtered", "book_dedup", "curated"],
    "arxiv": ["filtered", "curated"],
}

pytestmark = pytest.mark.skipif(not CORPORA.is_dir(), reason=f"real sample corpora not found at {CORPORA}")


def arxiv_inputs(folder: Path) -> list[str]:
    """A multi-file project as .tar.gz and a single-file paper as .gz, as in arXiv's bulk source."""
    folder.mkdir()
    project = folder / "hott-book.tar.gz"
    with tarfile.open(project, "w:gz") as archive:
        archive.add(CORPORA / "arxiv" / "hott-book", arcname=".")
    paper = folder / "bitcoin.gz"
    paper.write_bytes(gzip.compress((CORPORA / "arxiv" / "bitcoin" / "bitcoin.tex").read_bytes(), mtime=0))
    return [str(project), str(paper)]


@pytest.fixture(scope="module")
def curated(tmp_path_factory, prefect_api, ray_local):
    root = tmp_path_factory.mktemp("real")
    inputs = {
        "wikipedia": [str(CORPORA / "wikipedia" / "enwiki-table-markup.xml.bz2")],
        "commoncrawl": [str(CORPORA / "commoncrawl" / "CC-MAIN-2020-34-sample.warc.gz"),
                        str(CORPORA / "commoncrawl" / "whirlwind.warc.gz")],
        "books": sorted(str(p) for p in (CORPORA / "books").glob("pg*.txt")),
        "arxiv": arxiv_inputs(root / "arxiv-inputs"),
    }
    for source, files in inputs.items():
        ingest(IngestConfig(source=source, inputs=files, output=str(root)))
    models = root / "quality_models"
    # ~100 KB of Wikipedia text: a 2,000-piece vocabulary fits it (65,536 needs gigabytes).
    train_quality_model(TrainQualityConfig(input=str(root / "ingest"), output=str(models), languages=["en"],
                                           vocab_size=2000))
    rows = curate(CurateConfig(input=str(root / "ingest"), output=str(root), quality_models=str(models)))
    return root, rows


def ids(root: Path, stage: str, source: str) -> list[str]:
    return [d.id for u in units_from_stage(resolve(str(root)).join(stage), [source]) for d in read_part(resolve(u.input.uri))]


def test_counts_reconcile_and_each_stage_takes_what_the_one_before_kept(curated):
    root, rows = curated
    by = {(r["stage"], r["source"]): r for r in rows}
    ingested = resolve(str(root)).join("ingest", MANIFEST).read_json()["totals"]["by_source"]
    for source, chain in CHAINS.items():
        kept = ingested[source]["kept"]
        assert kept > 0, source
        for stage in chain:
            row = by[(stage, source)]
            assert row["docs_in"] == kept, (source, stage)
            assert row["docs_in"] == row["kept"] + row["dropped"] + row["quarantined"], (source, stage)
            kept = row["kept"]
    assert sum(by[("curated", s)]["kept"] for s in CHAINS) > 0


def test_no_document_is_lost_or_invented_between_stages(curated):
    root, rows = curated
    by = {(r["stage"], r["source"]): r for r in rows}
    for source, chain in CHAINS.items():
        before = ids(root, "ingest", source)
        for stage in chain:
            after = ids(root, stage, source)
            assert len(after) == len(set(after)) == by[(stage, source)]["kept"], (source, stage)
            assert set(after) <= set(before), (source, stage)
            order = {doc_id: n for n, doc_id in enumerate(before)}
            assert [order[i] for i in after] == sorted(order[i] for i in after), (source, stage)  # order kept
            before = after


def test_curated_text_has_no_pii_left_and_only_configured_languages(curated):
    root, _ = curated
    stage = resolve(str(root)).join("curated")
    docs = [d for u in units_from_stage(stage) for d in read_part(resolve(u.input.uri))]
    assert docs
    for doc in docs:
        options = RECIPE.sources[doc.source].pii
        detector = PIIDetector(phone_regions=tuple(options.phone_regions), ip_scope=options.ip_scope)
        assert detector.find(doc.text) == [], doc.id
        assert "pii" in doc.meta
    wikipedia_languages = set(RECIPE.sources["wikipedia"].filters[0].params["languages"])
    assert {d.meta["language"] for d in docs if d.source == "wikipedia"} <= wikipedia_languages
    assert {d.meta["language"] for d in docs if d.source == "commoncrawl"} <= {"en"}
    assert {d.meta["bucket"] for d in docs if d.source == "commoncrawl"} <= {"head", "middle"}
