"""The ingest flow on the Prefect harness and local Ray, with C4's synthetic inputs."""

import json

import pytest
from pydantic import ValidationError

from flows.ingest import IngestConfig, QuarantinedRecords, ingest
from tasks.synthetic.c4 import write_inputs


def test_ingest_a_folder_then_skip_it_on_rerun(tmp_path, prefect_api, ray_local):
    raw = tmp_path / "raw"
    write_inputs(str(raw), seed=1, files=2, docs_per_file=60)
    (raw / "_SUCCESS").write_text("")  # bookkeeping files in an input folder are not inputs
    config = IngestConfig(source="c4", inputs=[str(raw)], output=str(tmp_path / "out"))
    manifest = ingest(config)
    run = manifest["runs"]["c4"]
    assert [i["uri"].rsplit("/", 1)[1] for i in run["inputs"]] == [
        "c4-train.00000-of-01024.json.gz", "c4-train.00001-of-01024.json.gz"
    ]
    totals = manifest["totals"]["by_source"]["c4"]
    assert totals["docs_in"] == 120 == totals["kept"] + totals["dropped_total"] + totals["quarantined"]
    assert ingest(config) == manifest  # finished: nothing redone, the manifest is the same

    with pytest.raises(QuarantinedRecords, match="c4 records quarantined"):
        ingest(config.model_copy(update={"strict": True, "output": str(tmp_path / "strict")}))


def test_configs_that_cannot_work_fail_before_any_work(tmp_path):
    with pytest.raises(ValidationError, match="at least one input"):
        IngestConfig(source="c4", inputs=[])
    with pytest.raises(ValidationError):
        IngestConfig(source="gopher", inputs=["x"])


def test_crawl_options_are_checked_before_any_work():
    with pytest.raises(ValidationError, match="exactly one of crawl_segments or crawl_files"):
        IngestConfig(source="commoncrawl", crawl="CC-MAIN-2023-23")
    with pytest.raises(ValidationError, match="for the commoncrawl source"):
        IngestConfig(source="c4", crawl="CC-MAIN-2023-23", crawl_files=1)
    assert IngestConfig(source="commoncrawl", crawl="CC-MAIN-2023-23", crawl_segments=2).inputs == []


def test_max_record_bytes_reaches_the_reader_and_the_over_size_record_is_counted(tmp_path, prefect_api, ray_local):
    raw = tmp_path / "raw"
    raw.mkdir()
    lines = [json.dumps({"url": f"https://example.com/{n}", "text": "word " * words}) for n, words in enumerate((10, 400, 10))]
    (raw / "c4-train.00000-of-01024.json").write_text("\n".join(lines) + "\n")
    config = IngestConfig(source="c4", inputs=[str(raw)], output=str(tmp_path / "out"), max_record_bytes=1000)
    assert config.reader().max_record_bytes == 1000
    totals = ingest(config)["totals"]["by_source"]["c4"]
    assert (totals["docs_in"], totals["kept"], totals["dropped_total"], totals["quarantined"]) == (3, 2, 0, 1)
    with pytest.raises(ValidationError):
        IngestConfig(source="c4", inputs=[str(raw)], max_record_bytes=0)
