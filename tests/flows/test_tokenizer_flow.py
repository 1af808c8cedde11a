"""train-tokenizer on the demo's curated corpus, then loading it back (Prefect harness)."""

from flows.tokenizer import TrainTokenizerConfig, train_tokenizer_flow
from modeling.tokenizer import Tokenizer


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
