"""bench/reward.py without TRL: the pairs it hands TRL are our rows' sides, the held-out
comparisons chat-formatted by transformers are our rows pair for pair, and its two scorers (ours on
packed rows, transformers' sequence classifier on padded sides) give the same rewards."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from modeling.configs import ModelConfig
from modeling.reward import RewardModel, margin_table, save_reward_hf
from tasks.chat_format import encode_dialogue
from tasks.reward_tokens import pack_pairs, rating_code
from tasks.synthetic.comparisons import make_comparisons
from tasks.synthetic.instructions import tokenizer_texts
from tasks.tokenizer import export_hf, train_tokenizer
from tasks.token_reader import PackedRow
from tests.bench.conftest import load_bench

ROW_TOKENS = 64  # leaves some synthetic comparisons out as too long, and fits two of others


@pytest.fixture(scope="module")
def bench():
    return load_bench("reward")


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    tokenizer = train_tokenizer(tokenizer_texts(600), tmp_path_factory.mktemp("spm"), vocab_size=600)
    hf = AutoTokenizer.from_pretrained(export_hf(tokenizer, tmp_path_factory.mktemp("hf")), split_special_tokens=False)
    hf.pad_token = hf.unk_token
    records = make_comparisons(90, seed=3)
    pairs = [(r["context"], r["chosen"], r["rejected"], r["rating"]) for r in records]
    part = pack_pairs(pairs, tokenizer, ROW_TOKENS, np.dtype(np.uint16))
    rows = [PackedRow(tokens, np.array(starts, np.int32), None, np.array(codes, np.int32))
            for tokens, starts, codes in zip(part.rows, part.doc_starts.to_pylist(), part.labels.to_pylist())]
    return tokenizer, hf, records, part, rows


def test_pairs_for_trl_are_our_rows_sides_with_our_margins(bench, packed):
    tokenizer, _, records, part, rows = packed
    assert part.dropped.get("too_long", 0) > 0 and len(rows) > 20
    assert part.counts["pairs_packed"] > len(rows)  # some rows hold two pairs
    encoded = [tuple(tuple(encode_dialogue(tokenizer, [*r["context"], {"role": "assistant", "content": a}]).ids)
                     for a in (r["chosen"], r["rejected"])) + (rating_code(r["rating"]),) for r in records]
    kept = [pair for pair in encoded if len(pair[0]) + len(pair[1]) <= ROW_TOKENS]
    ours = bench.stage_pairs(rows, ROW_TOKENS)
    assert Counter(ours) == Counter(kept) and len(ours) == part.counts["pairs_packed"]
    margins = margin_table("large")
    for chosen, rejected, code in ours:
        example = bench.trl_example((chosen, rejected, code), margins)
        assert example == {"chosen_ids": list(chosen), "rejected_ids": list(rejected),
                           "margin": float(margins[code])}


def test_chat_formatted_comparisons_are_our_rows(bench, packed):
    _, hf, records, _, rows = packed
    ours = Counter(bench.stage_pairs(rows, ROW_TOKENS))
    assert Counter(bench.chat_pairs(hf, records, ROW_TOKENS)) == ours
    assert Counter(bench.chat_pairs(hf, records[1:], ROW_TOKENS)) != ours


def test_both_scorers_give_the_same_rewards(bench, packed, tmp_path):
    tokenizer, hf, _, _, rows = packed
    shape = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=tokenizer.vocab_size,
                        multiple_of=32, max_seq_len=ROW_TOKENS)
    torch.manual_seed(0)
    model = RewardModel(shape, score_seed=1)
    theirs = AutoModelForSequenceClassification.from_pretrained(save_reward_hf(model, tmp_path / "hf"))
    ours = bench.our_rewards(model, rows, chunk=16)
    via_hf = bench.hf_rewards(theirs, bench.stage_pairs(rows, ROW_TOKENS), hf.pad_token_id, chunk=24)
    assert ours.shape == (len(bench.stage_pairs(rows, ROW_TOKENS)), 2)
    assert torch.allclose(ours, via_hf, atol=1e-5)
