"""Tokenize-and-pack: exact packing, a seeded global shuffle, byte-identical reruns, exact resume."""

import itertools
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.tokenizer import train_tokenizer
from tasks.documents import Document
from tasks.executor import WHOLE_STAGE, Marker, read_marker
from tasks.shards import ShardWriter
from tasks.stage import InputFile, ShardUnit
from tasks.storage import resolve
from tasks.tokens import pack_stream, token_type, tokenize_and_pack
from tasks.token_reader import ReaderPosition, TokenReader, document_ids

SEQ_LEN = 31
WORDS = "the quick brown fox jumps over a lazy dog near river and mountain in old city".split()


def texts(rng: random.Random, count: int) -> list[str]:
    out = []
    for _ in range(count):
        lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 25))) + f" {rng.randint(0, 9999)}."
                 for _ in range(rng.randint(1, 3))]
        out.append("\n".join(lines))
    return out


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return train_tokenizer(texts(random.Random(0), 400), tmp_path_factory.mktemp("spm"), vocab_size=300)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two sources of two document parts each (one part holds an empty document); texts by part."""
    folder = tmp_path_factory.mktemp("docs")
    rng = random.Random(1)
    units, by_part = [], {}
    for source in ("web", "books"):
        for index in range(2):
            docs = texts(rng, 30 + 7 * index)
            if index == 1:
                docs[4] = ""
            path = resolve(str(folder / source / f"part-{index:05d}.parquet"))
            with ShardWriter(path) as writer:
                for n, text in enumerate(docs):
                    writer.write(Document(f"{source}-{index}-{n}", source, text))
            units.append(ShardUnit(source, index, InputFile.describe(path.uri)))
            by_part[(source, index)] = docs
    return units, by_part


@pytest.fixture(scope="module")
def stage(tmp_path_factory, corpus, tokenizer, ray_local):
    root = tmp_path_factory.mktemp("out")
    manifest = tokenize_and_pack(corpus[0], tokenizer, str(root), seq_len=SEQ_LEN, seed=7, rows_per_shard=9)
    return root / "tokens", manifest


def shard_rows(stage_dir):
    tables = [pq.read_table(p) for p in sorted(stage_dir.glob("shard-*.parquet"))]
    return pa.concat_tables(tables).to_pylist()


def test_rows_are_the_documents_packed_in_order_with_their_boundaries(stage, corpus, tokenizer):
    stage_dir, manifest = stage
    rows = shard_rows(stage_dir)
    row_tokens = SEQ_LEN + 1
    assert pq.read_schema(next(stage_dir.glob("shard-*.parquet"))).field("tokens").type == pa.list_(pa.uint16(), row_tokens)
    for (source, part), docs in corpus[1].items():
        encoded = [tokenizer.encode(text, bos=True, eos=True) for text in docs]
        stream = [t for ids in encoded for t in ids]
        mine = sorted((r for r in rows if (r["source"], r["part"]) == (source, part)), key=lambda r: r["row_in_part"])
        assert [r["row_in_part"] for r in mine] == list(range(len(stream) // row_tokens))
        assert [t for r in mine for t in r["tokens"]] == stream[: len(mine) * row_tokens]
        starts = np.cumsum([0] + [len(ids) for ids in encoded[:-1]])
        for r in mine:
            base = r["row_in_part"] * row_tokens
            assert r["doc_starts"] == [int(s - base) for s in starts if base <= s < base + row_tokens]
            assert all(r["tokens"][s] == tokenizer.bos_id for s in r["doc_starts"])
        counted = next(i for i in manifest["inputs"] if (i["source"], i["part"]) == (source, part))
        assert counted["documents"] == len(docs) and counted["tokens"] == len(stream)
        assert counted["tokens_dropped"] == len(stream) - len(mine) * row_tokens < row_tokens
    for source, totals in manifest["sources"].items():
        assert totals["rows"] == sum(1 for r in rows if r["source"] == source)
        assert totals["tokens_packed"] == totals["rows"] * row_tokens
    assert manifest["rows"] == len(rows) and manifest["vocab_size"] == tokenizer.vocab_size
    assert manifest["token_type"] == "uint16" and manifest["seq_len"] == SEQ_LEN and manifest["seed"] == 7


def test_the_shuffle_is_a_permutation_spread_over_shards(stage):
    stage_dir, manifest = stage
    rows = shard_rows(stage_dir)
    origins = [(r["source"], r["part"], r["row_in_part"]) for r in rows]
    expected = {(i["source"], i["part"], n) for i in manifest["inputs"] for n in range(i["rows"])}
    assert len(origins) == len(set(origins)) and set(origins) == expected
    assert origins != sorted(origins)
    assert len(manifest["shards"]) == -(-len(rows) // 9) > 1
    assert [s["rows"] for s in manifest["shards"]] == [pq.read_metadata(s["path"]).num_rows for s in manifest["shards"]]
    assert (stage_dir / "_SUCCESS").exists() and not (stage_dir / "_packed").exists()
    assert read_marker(resolve(str(stage_dir))) == Marker({WHOLE_STAGE: manifest["fingerprint"]})


def test_reruns_are_byte_identical_and_a_finished_stage_is_skipped(stage, corpus, tokenizer, tmp_path):
    stage_dir, manifest = stage
    again = tokenize_and_pack(corpus[0], tokenizer, str(tmp_path), seq_len=SEQ_LEN, seed=7, rows_per_shard=9)
    assert [s["sha256"] for s in again["shards"]] == [s["sha256"] for s in manifest["shards"]]
    for ours, theirs in zip(manifest["shards"], again["shards"]):
        assert open(ours["path"], "rb").read() == open(theirs["path"], "rb").read()

    first_shard = tmp_path / "tokens" / "shard-00000.parquet"
    written_at = first_shard.stat().st_mtime_ns
    assert tokenize_and_pack(corpus[0], tokenizer, str(tmp_path), seq_len=SEQ_LEN, seed=7, rows_per_shard=9) == again
    assert first_shard.stat().st_mtime_ns == written_at

    # An interrupted run (one shard and the marker gone) is finished with the same bytes.
    (tmp_path / "tokens" / "_SUCCESS").unlink()
    (tmp_path / "tokens" / "_receipts" / "shard-00001.json").unlink()
    (tmp_path / "tokens" / "shard-00001.parquet").unlink()
    redone = tokenize_and_pack(corpus[0], tokenizer, str(tmp_path), seq_len=SEQ_LEN, seed=7, rows_per_shard=9)
    assert [s["sha256"] for s in redone["shards"]] == [s["sha256"] for s in manifest["shards"]]

    other = tokenize_and_pack(corpus[0], tokenizer, str(tmp_path / "b"), seq_len=SEQ_LEN, seed=8, rows_per_shard=9)
    assert [s["sha256"] for s in other["shards"]] != [s["sha256"] for s in manifest["shards"]]


def test_token_type_is_uint16_while_the_vocabulary_fits():
    assert token_type(32000) == pa.uint16() and token_type(65536) == pa.uint16()
    assert token_type(65537) == pa.int32() and token_type(128256) == pa.int32()
    rows, starts, documents, tokens = pack_stream(iter([[1, 70000, 2], [1, 5, 6, 2]]), 3, np.dtype(np.int32))
    assert rows.tolist() == [[1, 70000, 2], [1, 5, 6]] and starts.tolist() == [0, 3]
    assert (documents, tokens) == (2, 7)


def test_document_ids_separate_the_documents_of_a_row():
    assert document_ids(np.array([0, 3, 5]), 7).tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert document_ids(np.array([4]), 6).tolist() == [0, 0, 0, 0, 1, 1]
    assert document_ids(np.array([], dtype=np.int32), 3).tolist() == [0, 0, 0]


def row_id(row) -> bytes:
    return row[0].tobytes()


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_ranks_share_every_epoch_without_overlap_and_resume_exactly(stage, world_size):
    stage_dir, manifest = stage
    every_row = {np.asarray(r["tokens"], np.uint16).tobytes() for r in shard_rows(stage_dir)}
    assert len(every_row) == manifest["rows"]  # rows are told apart by their tokens below
    readers = [TokenReader(str(stage_dir), rank, world_size, seed=3) for rank in range(world_size)]
    per_rank = manifest["rows"] // world_size
    assert all(r.rows_per_epoch == per_rank for r in readers)
    epochs = [[[row_id(row) for row in itertools.islice(r, per_rank)] for r in readers] for _ in range(2)]
    for epoch in epochs:
        seen = [x for rank in epoch for x in rank]
        assert len(seen) == len(set(seen)) == per_rank * world_size and set(seen) <= every_row
    if world_size == 1:
        assert set(epochs[0][0]) == set(epochs[1][0]) == every_row and epochs[0][0] != epochs[1][0]
    assert readers[0].state().epoch == 2 and readers[0].state().offset == 0

    rank = world_size - 1
    straight = [row_id(row) for row in itertools.islice(TokenReader(str(stage_dir), rank, world_size, seed=3), 4 * per_rank)]
    for stop in (1, per_rank // 2, per_rank - 1, per_rank, per_rank + 5):
        first = TokenReader(str(stage_dir), rank, world_size, seed=3)
        head = [row_id(row) for row in itertools.islice(first, stop)]
        saved = ReaderPosition.from_dict(first.state().as_dict())
        resumed = TokenReader(str(stage_dir), rank, world_size, seed=3, start=saved)
        assert head + [row_id(row) for row in itertools.islice(resumed, 2 * per_rank)] == straight[: stop + 2 * per_rank]


def test_batches_and_positions_for_another_rank_are_refused(stage):
    stage_dir, _ = stage
    reader = TokenReader(str(stage_dir), 0, 2, seed=3)
    batch = next(reader.batches(4))
    assert batch.tokens.shape == (4, SEQ_LEN + 1) and batch.tokens.dtype == np.uint16 and len(batch.doc_starts) == 4
    assert reader.state().offset == 4
    with pytest.raises(ValueError, match="another rank"):
        TokenReader(str(stage_dir), 1, 2, seed=3, start=reader.state())
    with pytest.raises(ValueError, match="rank 2 is not in"):
        TokenReader(str(stage_dir), 2, 2, seed=3)
    with pytest.raises(FileNotFoundError, match="not a finished token stage"):
        TokenReader(str(stage_dir / "missing"), 0, 1, seed=3)
