"""The perplexity histogram of a scored stage: a real PNG whose counts are the stage's documents."""

from __future__ import annotations

import base64
import io

import pytest

from tasks.curate.quality import PERPLEXITY, PERPLEXITY_SCHEMA
from tasks.curate.report import (
    PNG_MAGIC,
    PerplexityHistogram,
    perplexity_histogram,
    perplexity_histogram_png,
    perplexity_markdown,
    render_png,
)
from tasks.documents import Document
from tasks.shards import MANIFEST, PartReceipt, ShardWriter, part_location, summarise
from tasks.storage import resolve, sha256_of, write_json_atomic

CUTOFFS = {"en": {"p30": 100.0, "p60": 400.0}, "de": {"p30": 200.0, "p60": 800.0}}


def scored_stage(root, parts):
    """A scored stage written directly: each part a list of (language, perplexity, bucket or None)."""
    stage = resolve(str(root)).join("filtered")
    receipts = []
    for index, rows in enumerate(parts):
        target = part_location(stage, "commoncrawl", index)
        with ShardWriter(target, PERPLEXITY_SCHEMA) as writer:
            for row, (language, perplexity, bucket) in enumerate(rows):
                meta = {"language": language} | ({"bucket": bucket} if bucket else {})
                writer.write(Document(f"d{index}-{row}", "commoncrawl", "text", meta, {PERPLEXITY: perplexity}))
        receipts.append(PartReceipt(source="commoncrawl", index=index, path=target.uri, input=None, docs_in=len(rows),
                                    kept=len(rows), rows=len(rows), bytes=target.size(), sha256=sha256_of(target)))
    write_json_atomic(stage.join(MANIFEST), {"parts": [r.__dict__ for r in receipts], "runs": {},
                                             "totals": summarise(receipts)})
    return stage


@pytest.fixture
def stage(tmp_path):
    english = [("en", 20.0 + 10 * i, None) for i in range(50)]  # 20..510: head, middle and tail
    german = [("de", 300.0 + i, "middle") for i in range(20)] + [("de", None, None)] * 3
    return scored_stage(tmp_path, [english, german])


def test_counts_per_language_and_bucket_are_the_stages_documents(stage):
    histogram = perplexity_histogram(stage, cutoffs=CUTOFFS)
    documents = histogram.documents()
    assert documents[("en", "head")] == 8  # 20..90 < 100
    assert documents[("en", "middle")] == 30  # 100..390
    assert documents[("en", "tail")] == 12  # 400..510
    assert documents[("de", "middle")] == 20  # the bucket the quality stage recorded wins
    assert histogram.unscored == {"de": 3}
    assert histogram.edges[0] == 20.0 and histogram.edges[-1] == pytest.approx(510.0)


def test_without_cutoffs_unbucketed_documents_are_bucket_all(stage):
    documents = perplexity_histogram(stage).documents()
    assert documents == {("de", "middle"): 20, ("en", "all"): 50}


def test_png_is_a_real_image_of_one_panel_per_language(stage, tmp_path):
    from PIL import Image

    out = tmp_path / "report" / "perplexity.png"
    png = perplexity_histogram_png(stage, out, cutoffs=CUTOFFS)
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000
    assert out.read_bytes() == png
    Image.open(io.BytesIO(png)).verify()
    image = Image.open(io.BytesIO(png))
    whole = perplexity_histogram(stage, cutoffs=CUTOFFS)
    english_only = PerplexityHistogram(whole.edges, {k: v for k, v in whole.counts.items() if k[0] == "en"})
    assert image.size[1] > Image.open(io.BytesIO(render_png(english_only, CUTOFFS))).size[1]  # a panel per language


def test_only_a_scored_stage_has_a_histogram(tmp_path):
    stage = resolve(str(tmp_path)).join("plain")
    target = part_location(stage, "c4", 0)
    with ShardWriter(target) as writer:
        writer.write(Document("a", "c4", "text", {"language": "en"}))
    receipt = PartReceipt(source="c4", index=0, path=target.uri, input=None, docs_in=1, kept=1, rows=1,
                          bytes=target.size(), sha256=sha256_of(target))
    write_json_atomic(stage.join(MANIFEST), {"parts": [receipt.__dict__], "runs": {}, "totals": summarise([receipt])})
    with pytest.raises(ValueError, match="part-00000.parquet: no perplexity column"):
        perplexity_histogram(stage)


def test_markdown_embeds_the_png_and_the_counts(stage):
    histogram = perplexity_histogram(stage, cutoffs=CUTOFFS)
    png = render_png(histogram, CUTOFFS)
    markdown = perplexity_markdown(png, histogram, "Perplexity")
    encoded = markdown.split("data:image/png;base64,")[1].split(")")[0]
    assert base64.b64decode(encoded) == png
    assert "| en | tail | 12 |" in markdown and "| de | no perplexity | 3 |" in markdown


def test_artifact_is_stored_in_prefect(stage, prefect_api):
    from prefect import flow
    from prefect.client.orchestration import get_client

    from tasks.curate.report import publish_perplexity_histogram

    @flow
    def publish():
        return publish_perplexity_histogram(stage, cutoffs=CUTOFFS, key="test-perplexity")

    artifact_id = publish()
    with get_client(sync_client=True) as client:
        artifact = client.read_artifacts()
        stored = next(a for a in artifact if a.id == artifact_id)
    assert stored.type == "markdown" and stored.key == "test-perplexity"
    assert "data:image/png;base64,iVBOR" in stored.data
