"""bench/sft.py without TRL: its training template marks exactly our loss mask, and its example
check counts packed rows example by example."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from tasks.chat_format import encode_dialogue
from tasks.synthetic.instructions import make_instructions, tokenizer_texts
from tasks.tokenizer import export_hf, train_tokenizer
from tests.bench.conftest import load_bench


@pytest.fixture(scope="module")
def bench():
    return load_bench("sft")


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    tokenizer = train_tokenizer(tokenizer_texts(600), tmp_path_factory.mktemp("spm"), vocab_size=600)
    return tokenizer, export_hf(tokenizer, tmp_path_factory.mktemp("hf"))


def test_generation_markers_cover_exactly_our_loss_mask(bench, tokenizers):
    tokenizer, folder = tokenizers
    hf = AutoTokenizer.from_pretrained(folder, split_special_tokens=False)
    hf.chat_template = bench.training_template()
    for dialogue in make_instructions(200, seed=4, system_share=0.3, multi_turn_share=0.3):
        example = encode_dialogue(tokenizer, dialogue["messages"])
        out = hf.apply_chat_template(dialogue["messages"], tokenize=True, return_dict=True,
                                     return_assistant_tokens_mask=True)
        assert out["input_ids"] == example.ids
        assert [bool(m) for m in out["assistant_masks"]] == example.loss_mask


def test_packed_rows_are_split_into_their_examples(bench, tokenizers):
    tokenizer, _ = tokenizers
    examples = [encode_dialogue(tokenizer, d["messages"]) for d in make_instructions(3, seed=1)]
    ids = [i for e in examples for i in e.ids]
    labels = [i if m else -100 for e in examples for i, m in zip(e.ids, e.loss_mask)]
    packed = [{"input_ids": ids, "labels": labels, "seq_lengths": [len(e.ids) for e in examples]}]
    assert bench.trl_examples(packed) == bench.our_examples({"examples": examples}, row_tokens=1000)
    padded = [{"input_ids": e.ids, "labels": [i if m else -100 for i, m in zip(e.ids, e.loss_mask)]}
              for e in examples]
    assert bench.trl_examples(padded) == bench.our_examples({"examples": examples}, row_tokens=1000)
    assert bench.trl_examples(padded[:2]) != bench.our_examples({"examples": examples}, row_tokens=1000)
