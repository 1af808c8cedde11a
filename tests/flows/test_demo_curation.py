"""What the demo's curation keeps of the synthetic Common Crawl and Wikipedia, against their ground truth."""

import json

from tasks.curate.quality import BUCKET, HEAD, MIDDLE, TAIL
from tasks.shards import read_part
from tasks.stage import units_from_stage
from tasks.storage import resolve
from tasks.synthetic.commoncrawl import ENCYCLOPEDIC, SPAM, expected_records
from tasks.synthetic.wikipedia import DOCUMENT, expected_pages

DEMO_SEED = 7  # tests/flows/conftest.py's demo_run


def _documents(root, stage, source):
    units = units_from_stage(resolve(str(root / "demo" / stage)), [source])
    return [doc for unit in units for doc in read_part(resolve(unit.input.uri))]


def _drops(root, stage, source):
    manifest = json.loads((root / "demo" / stage / "_manifest.json").read_text())
    return manifest["totals"]["by_source"][source]["dropped"]


def _styles():
    return {r.url: r.style for records in expected_records(DEMO_SEED).values() for r in records if r.style}


def test_english_commoncrawl_pages_survive_line_dedup_and_language_id(demo_run):
    _, _, root = demo_run
    filtered = {doc.meta["url"] for doc in _documents(root, "filtered", "commoncrawl")}
    assert set(_styles()) <= filtered
    # The non-English pages still go, by language ID.
    assert _drops(root, "filtered", "commoncrawl")["language:not_kept"] > 0


def test_commoncrawl_keeps_head_and_middle_and_drops_the_tail(demo_run):
    _, _, root = demo_run
    curated = _documents(root, "curated", "commoncrawl")
    buckets = {doc.meta[BUCKET] for doc in curated}
    assert buckets == {HEAD, MIDDLE}
    drops = _drops(root, "quality", "commoncrawl")
    assert list(drops) == [f"quality:{TAIL}"] and drops[f"quality:{TAIL}"] > 0


def test_quality_buckets_follow_the_style_of_the_page(demo_run):
    _, _, root = demo_run
    styles = _styles()
    curated = {doc.meta["url"]: doc.meta[BUCKET] for doc in _documents(root, "curated", "commoncrawl")}
    past_quality = {doc.meta["url"] for doc in _documents(root, "quality", "commoncrawl")}
    encyclopedic = [url for url, style in styles.items() if style == ENCYCLOPEDIC]
    spam = [url for url, style in styles.items() if style == SPAM]
    assert encyclopedic and spam
    # Written like the Wikipedia the quality model learnt from: the head, and kept to the end.
    assert [curated.get(url) for url in encyclopedic] == [HEAD] * len(encyclopedic)
    # Keyword stuffing (scored, as the first test shows): the tail, the quality stage's only drop.
    assert not set(spam) & past_quality


def test_every_wikipedia_article_passes_language_id_and_is_curated(demo_run):
    _, _, root = demo_run
    articles = {page.title for page in expected_pages(DEMO_SEED) if page.outcome == DOCUMENT}
    curated = _documents(root, "curated", "wikipedia")
    assert {doc.meta["title"] for doc in curated} == articles
    assert all(doc.meta["language"] == "en" and doc.meta["language_score"] >= 0.5 for doc in curated)
    assert "language:low_score" not in _drops(root, "filtered", "wikipedia")
