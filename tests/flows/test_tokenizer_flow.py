"""train-tokenizer on the demo's curated corpus, then loading it back (Prefect harness)."""

import json

from flows.tokenizer import TrainTokenizerConfig, train_tokenizer_flow
from tasks.tokenizer import Tokenizer
from tasks.token_reader import TokenReader


def test_train_on_the_curated_stage_then_reuse_it_as_an_existing_one(demo_run, tmp_path):
    _, _, root = demo_run
    config = TrainTokenizerConfig(
        input=str(root / "demo" / "curated"), output=str(tmp_path / "tok"), vocab_size=400,
        trainer_options={"hard_vocab_limit": False},
    )
    summary = train_tokenizer_flow(config)
    assert (summary["bos_id"], summary["eos_id"], summary["unk_id"]) == (1, 2, 0) and summary["trained"]
    assert {p.name for p in (tmp_path / "tok").iterdir()} >= {"tokenizer.model", "tokenizer.json", "tokenizer_config.json"}
    tokenizer = Tokenizer.load(tmp_path / "tok" / "tokenizer.model")
    text = "A curated corpus, 2026 — ünïcode ☃"
    assert tokenizer.decode(tokenizer.encode(text)) == text

    copied = train_tokenizer_flow(TrainTokenizerConfig(existing=str(tmp_path / "tok" / "tokenizer.model"),
                                                       output=str(tmp_path / "copy")))
    assert not copied["trained"]
    assert (tmp_path / "copy" / "tokenizer.model").read_bytes() == (tmp_path / "tok" / "tokenizer.model").read_bytes()


def test_the_demo_packs_its_curated_text_into_rows_training_reads(demo_run):
    _, _, root = demo_run
    tokens = root / "demo" / "tokens"
    manifest = json.loads((tokens / "_manifest.json").read_text())
    assert manifest["seq_len"] == 128 and manifest["rows"] > 0
    assert manifest["tokens"] == manifest["rows"] * 129
    reader = TokenReader(str(tokens), rank=0, world_size=1, seed=0)
    rows = [row for _, row in zip(range(manifest["rows"]), reader)]
    assert len(rows) == manifest["rows"] and all(len(row.tokens) == 129 for row in rows)


def test_the_demo_mixes_its_sources_by_the_recipe(demo_run):
    _, _, root = demo_run
    manifest = json.loads((root / "demo" / "mixed" / "_manifest.json").read_text())
    plan = json.loads((root / "demo" / "mixed" / "_mixture.json").read_text())
    assert sorted(plan["sources"]) == ["arxiv", "books", "c4"]
    # The demo's two books cannot hit a fractional epoch to 0.5 points (a book is one document);
    # tests/tasks/test_mix.py asserts that bar on corpora of hundreds of documents.
    assert sum(row["realised_tokens"] for row in plan["sources"].values()) == plan["realised_tokens"]
    assert plan["sources"]["c4"]["realised_tokens"] == plan["sources"]["c4"]["available_tokens"]  # one epoch
    books = plan["sources"]["books"]
    assert books["whole_epochs"] == 2 and manifest["totals"]["by_source"]["books"]["kept"] >= 2 * books["documents"]
