"""Tokenize-and-pack and the training reader, against what bounds them.

    python bench/tokens.py [--vocab 8000] [--parts 4] [--seq-len 256] [--batch 8] [--steps 10]

Text: the Project Gutenberg books of ../shared/corpora, paragraphs as documents, written as
`--parts` document parts. A tokenizer is trained on them first (LLaMA's settings).
1. tokenize_and_pack on a local Ray with one CPU (so tokens/s per core, Ray, packing, shuffle
   and Parquet included) vs bare SentencePiece encoding of the same texts on one thread.
2. TokenReader rows/s on one rank vs a training step (forward, backward, AdamW) of the `debug`
   model on batches of `--batch` rows of `--seq-len` + 1 tokens: the reader must be >= 20x faster.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import sentencepiece as spm
import torch

from modeling.configs import model_config
from modeling.llama import Llama
from tasks.tokenizer import train_tokenizer
from tasks.documents import Document
from tasks.shards import ShardWriter
from tasks.stage import InputFile, ShardUnit
from tasks.storage import resolve
from tasks.tokens import PackJob, pack_part, tokenize_and_pack
from tasks.token_reader import TokenReader, document_ids

from corpora import book_paragraphs  # bench/corpora.py; the benchmarks run as python bench/<name>.py


def write_parts(texts: list[str], folder: Path, parts: int) -> list[ShardUnit]:
    units = []
    for index in range(parts):
        path = resolve(str(folder / f"part-{index:05d}.parquet"))
        with ShardWriter(path) as writer:
            for n, text in enumerate(texts[index::parts]):
                writer.write(Document(f"b{index}-{n}", "books", text))
        units.append(ShardUnit("books", index, InputFile.describe(path.uri)))
    return units


def train_step_seconds(vocab_size: int, batch: int, row_tokens: int, reader: TokenReader, steps: int) -> float:
    config = dataclasses.replace(model_config("debug"), vocab_size=vocab_size)
    model = Llama(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batches = reader.batches(batch)
    times = []
    for _ in range(steps + 2):  # the first two warm up
        data = next(batches)
        rows = torch.from_numpy(data.tokens.astype("int64"))
        doc_ids = torch.from_numpy(np.stack([document_ids(s, row_tokens) for s in data.doc_starts]))
        started = time.perf_counter()
        loss = model(rows[:, :-1], rows[:, 1:], doc_ids=doc_ids[:, :-1]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times[2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--parts", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()

    texts = book_paragraphs()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        tokenizer = train_tokenizer(texts, scratch / "spm", vocab_size=args.vocab, hard_vocab_limit=False)
        bare = spm.SentencePieceProcessor(model_proto=tokenizer.model_proto)
        started = time.process_time()
        bare_tokens = sum(len(ids) for ids in bare.encode(texts, add_bos=True, add_eos=True, num_threads=1))
        bare_rate = bare_tokens / (time.process_time() - started)

        units = write_parts(texts, scratch / "docs", args.parts)
        # The packing phase alone, in this process: read part, encode, pack, key-sort, write.
        job = PackJob(str(scratch / "alone"), tokenizer, args.seq_len, 0, "bench")
        started = time.process_time()
        packed_tokens = sum(pack_part(job, unit)["tokens"] for unit in units)
        alone_rate = packed_tokens / (time.process_time() - started)
        ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
        started = time.perf_counter()
        manifest = tokenize_and_pack(units, tokenizer, str(scratch / "out"), seq_len=args.seq_len, seed=0,
                                     rows_per_shard=512)
        pack_seconds = time.perf_counter() - started
        ray.shutdown()
        pack_rate = manifest["sources"]["books"]["tokens"] / pack_seconds
        print(f"{len(texts)} paragraphs, {bare_tokens} tokens, vocab {tokenizer.vocab_size}")
        print(f"bare SentencePiece encode:    {bare_rate:12,.0f} tokens/s per core (CPU time)")
        print(f"pack_part alone, in process:  {alone_rate:12,.0f} tokens/s per core (CPU time) "
              f"= {alone_rate / bare_rate:.2f}x bare")
        print(f"tokenize_and_pack, 1 core:    {pack_rate:12,.0f} tokens/s (wall, {pack_seconds:.2f} s, "
              f"{len(manifest['shards'])} shards) = {pack_rate / bare_rate:.2f}x bare")

        stage_dir = str(scratch / "out" / "tokens")
        reader = TokenReader(stage_dir, 0, 1, seed=0)
        rows = 2 * reader.rows_per_epoch  # two epochs: the epoch turn is included
        started = time.perf_counter()
        for _ in itertools.islice(reader.batches(args.batch), rows // args.batch):
            pass
        read_rate = (rows // args.batch) * args.batch * manifest["row_tokens"] / (time.perf_counter() - started)
        step = train_step_seconds(tokenizer.vocab_size, args.batch, manifest["row_tokens"],
                                  TokenReader(stage_dir, 0, 1, seed=1), args.steps)
        train_rate = args.batch * args.seq_len / step
        print(f"TokenReader, 1 rank:          {read_rate:12,.0f} tokens/s")
        print(f"debug model train step:       {train_rate:12,.0f} tokens/s ({step * 1000:.1f} ms per "
              f"{args.batch}x{args.seq_len}, {torch.get_num_threads()} torch threads)")
        print(f"reader / training:            {read_rate / train_rate:12.1f}x (must be >= 20x)")


if __name__ == "__main__":
    main()
