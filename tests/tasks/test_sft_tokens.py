"""Fine-tuning rows from a dialogue stage: whole examples, loss on answers only, every dialogue
accounted for, the same rows on a rerun."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from tasks.chat_format import encode_dialogue, encode_prompt
from tasks.dialogues.ingest import ingest_dialogues
from tasks.dialogues.readers import MessagesReader
from tasks.sft_tokens import DialoguePacker, pack_dialogues
from tasks.stage import units_from_stage
from tasks.storage import resolve
from tasks.synthetic.instructions import make_conversations, make_instructions, tokenizer_texts, write_jsonl
from tasks.tokenizer import train_tokenizer
from tasks.tokens import RowBuilder
from tasks.token_reader import TokenReader, document_ids

SEQ_LEN = 63


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return train_tokenizer(tokenizer_texts(600), tmp_path_factory.mktemp("spm"), vocab_size=600)


def long_dialogue(answer_words: int, prompt_words: int = 4) -> dict:
    return {"messages": [{"role": "user", "content": " ".join(["kiwi"] * prompt_words)},
                         {"role": "assistant", "content": " ".join(["plum"] * answer_words)}]}


@pytest.fixture(scope="module")
def dialogue_stage(tmp_path_factory, ray_local):
    folder = tmp_path_factory.mktemp("dialogues")
    dialogues = make_instructions(60, seed=3, system_share=0.3, multi_turn_share=0.3)
    # One whose answer starts beyond a row (dropped), one cut inside its answer (kept, truncated).
    extra = [long_dialogue(10, prompt_words=80), long_dialogue(80)]
    write_jsonl(folder / "a.jsonl", dialogues[:30])
    write_jsonl(folder / "b.jsonl", dialogues[30:] + extra)
    manifest = ingest_dialogues("instructions", [str(folder / "a.jsonl"), str(folder / "b.jsonl")],
                                str(folder / "out"), MessagesReader())
    return manifest, dialogues + extra


def test_examples_are_packed_whole_with_loss_on_answers_only(tokenizer, dialogue_stage, tmp_path):
    stage, dialogues = dialogue_stage
    manifest = pack_dialogues(stage["stage_dir"], tokenizer, str(tmp_path), seq_len=SEQ_LEN, seed=5,
                              rows_per_shard=4)
    counts = manifest["sources"]["instructions"]
    assert counts["dialogues"] == len(dialogues) == 62
    assert counts["examples"] + sum(counts["dropped"].values()) == counts["dialogues"]
    assert counts["dropped"] == {"answer_truncated": 1} and counts["truncated"] == 1
    assert manifest["loss_mask"] is True and manifest["rows"] == counts["rows"]
    assert counts["padding_tokens"] == counts["rows"] * (SEQ_LEN + 1) - counts["tokens"]

    reader = TokenReader(manifest["stage_dir"], 0, 1, seed=0)
    rows = [next(iter_rows) for iter_rows in [iter(reader)] for _ in range(manifest["rows"])]
    answers = []
    for row in rows:
        ids = document_ids(row.doc_starts, SEQ_LEN + 1)
        starts = list(row.doc_starts)
        for n, start in enumerate(starts):
            end = starts[n + 1] if n + 1 < len(starts) else SEQ_LEN + 1
            example = row.tokens[start:end].tolist()
            assert (ids[start:end] == ids[start]).all()
            mask = row.loss_mask[start:end]
            if example[0] == tokenizer.bos_id:
                assert not mask[0]  # the BOS that opens an example is never a target
                # Runs of loss tokens are the answers, each ending in EOS (or cut at the row's end).
                runs, current = [], []
                for token, trained in zip(example, mask):
                    if trained:
                        current.append(token)
                    elif current:
                        runs.append(current)
                        current = []
                if current:
                    runs.append(current)
                answers += [tokenizer.decode(r) for r in runs if r[-1] == tokenizer.eos_id]
            else:  # padding: EOS ids, no loss
                assert set(example) == {tokenizer.eos_id} and not mask.any() and n == len(starts) - 1
    # Meta's pairs are "[INST] {user} [/INST] {answer} " + EOS: the answer's trailing space is its.
    expected = sorted(m["content"] + " " for d in dialogues[:60] for m in d["messages"] if m["role"] == "assistant")
    assert sorted(answers) == expected


def test_a_rerun_gives_byte_identical_shards_and_a_finished_stage_is_reused(tokenizer, dialogue_stage, tmp_path):
    stage, _ = dialogue_stage
    first = pack_dialogues(stage["stage_dir"], tokenizer, str(tmp_path / "one"), seq_len=SEQ_LEN, seed=5)
    second = pack_dialogues(stage["stage_dir"], tokenizer, str(tmp_path / "two"), seq_len=SEQ_LEN, seed=5)
    assert [s["sha256"] for s in first["shards"]] == [s["sha256"] for s in second["shards"]]
    assert pack_dialogues(stage["stage_dir"], tokenizer, str(tmp_path / "one"), seq_len=SEQ_LEN, seed=5) == first
    table = pq.read_table(first["shards"][0]["path"])
    assert table.schema.field("loss_mask").type.list_size == SEQ_LEN + 1
    assert json.loads(json.dumps(first))["packer"] == "dialogues"


def test_the_row_builder_packs_best_fit_decreasing_never_splitting_an_example():
    builder = RowBuilder(8, pad_id=2)
    for length in (3, 4, 2, 8, 1, 5):
        builder.add(list(range(10, 10 + length)), [True] * length)
    tokens, masks, starts, items = builder.finish(np.dtype(np.uint16))
    # 8 alone; 5 then 3 fill a row; 4, 2 and 1 share the last, with one token of padding.
    assert tokens.tolist() == [[10, 11, 12, 13, 14, 15, 16, 17], [10, 11, 12, 13, 14, 10, 11, 12],
                               [10, 11, 12, 13, 10, 11, 10, 2]]
    assert starts == [[0], [0, 5], [0, 4, 6, 7]]
    assert items == [[3], [5, 0], [1, 2, 4]]
    assert masks.sum(axis=1).tolist() == [8, 8, 7]
    with pytest.raises(ValueError, match="an item of 9 tokens does not fit a row of 8"):
        builder.add(list(range(9)), [True] * 9)


def test_best_fit_decreasing_fills_rows_as_densely_as_the_lengths_allow():
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 120, 400).tolist()
    builder = RowBuilder(257, pad_id=2)
    for length in lengths:
        builder.add([5] * length, [True] * length)
    tokens = builder.finish(np.dtype(np.uint16)).tokens
    lower_bound = -(-sum(lengths) // 257)
    assert len(tokens) <= lower_bound + 1  # within a row of the fewest possible
    assert (tokens == 5).sum() == sum(lengths)  # every example whole, once


def test_the_chat_format_ids_are_what_gets_packed(tokenizer):
    dialogue = make_instructions(1, seed=9, multi_turn_share=1.0)[0]
    example = encode_dialogue(tokenizer, dialogue["messages"])
    builder = RowBuilder(len(example.ids), pad_id=tokenizer.eos_id)
    builder.add(example.ids, example.loss_mask)
    tokens, masks, _, _ = builder.finish(np.dtype(np.uint16))
    assert tokens[0].tolist() == example.ids and masks[0].tolist() == example.loss_mask


def test_a_dialogue_whose_meta_says_last_answer_trains_only_that_answer(tokenizer, tmp_path, ray_local):
    ordinary = make_conversations(12, seed=4, min_turns=2, max_turns=4)
    last_only = [{**d, "id": d["id"] + "-gatt", "train_on": "last_answer"} for d in ordinary]
    write_jsonl(tmp_path / "mixed.jsonl", ordinary + last_only)
    stage = ingest_dialogues("mixed", [str(tmp_path / "mixed.jsonl")], str(tmp_path / "out"), MessagesReader())
    [unit] = units_from_stage(resolve(stage["stage_dir"]))
    packed = DialoguePacker().pack(unit, tokenizer, 256, np.dtype(np.int64))
    assert packed.counts["examples"] == 24 and packed.counts["last_answer_only"] == 12 and not packed.dropped

    def example(ids, mask):
        return tuple(ids), tuple(bool(m) for m in mask)

    got = []
    for tokens, mask, starts in zip(packed.rows, packed.loss_mask, packed.doc_starts.to_pylist()):
        for start, end in zip(starts, starts[1:] + [len(tokens)]):
            if tokens[start] == tokenizer.bos_id:
                got.append(example(tokens[start:end].tolist(), mask[start:end]))
    # The ordinary ones exactly as before; the others on the same ids, the loss on the last answer alone.
    expected = []
    for d in ordinary:
        every = encode_dialogue(tokenizer, d["messages"])
        expected.append(example(every.ids, every.loss_mask))
        prompt = len(encode_prompt(tokenizer, d["messages"][:-1]))
        expected.append(example(every.ids, [False] * prompt + [True] * (len(every.ids) - prompt)))
    assert sorted(got) == sorted(expected)
    assert packed.counts["answer_tokens"] == sum(sum(mask) for _, mask in expected)
