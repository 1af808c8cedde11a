"""Shard writing and validation throughput against bare pyarrow on the same documents.

    python bench/shard_io.py [--docs 200000] [--chars 2000]

Reports MB/s of text for: our ShardWriter (row groups, atomic rename, receipts excluded) vs one
`pyarrow.parquet.write_table` call with the same schema and codec; and our part check (checksum +
row-by-row id/meta checks) vs `pyarrow.parquet.read_table`. The ratios are our overhead.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.documents import DOCUMENT_SCHEMA, Document, make_doc_id
from tasks.shards import PartReceipt, ShardWriter
from tasks.storage import resolve, sha256_of
from tasks.validate import check_part


def make_documents(count: int, chars: int, seed: int = 0) -> list[Document]:
    rng = random.Random(seed)
    words = [("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))) for _ in range(5000)]
    docs = []
    for n in range(count):
        text_words, length = [], 0
        while length < chars:
            word = rng.choice(words)
            text_words.append(word)
            length += len(word) + 1
        docs.append(Document(make_doc_id("bench", str(n)), "bench", " ".join(text_words), {"url": f"https://e.x/{n}"}))
    return docs


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--chars", type=int, default=2000)
    args = parser.parse_args()
    docs = make_documents(args.docs, args.chars)
    text_mb = sum(len(d.text) for d in docs) / 1e6

    with tempfile.TemporaryDirectory() as tmp:
        ours = resolve(Path(tmp) / "stage" / "bench" / "part-00000.parquet")

        def write_ours():
            with ShardWriter(ours) as writer:
                for doc in docs:
                    writer.write(doc)

        def write_bare():
            table = pa.Table.from_pydict(
                {
                    "id": [d.id for d in docs],
                    "source": [d.source for d in docs],
                    "text": [d.text for d in docs],
                    "meta": [d.meta_json() for d in docs],
                },
                schema=DOCUMENT_SCHEMA,
            )
            pq.write_table(table, Path(tmp) / "bare.parquet", compression="zstd", row_group_size=2048)

        t_bare = timed(write_bare)
        t_ours = timed(write_ours)
        receipt = PartReceipt(
            "bench", 0, ours.uri, None, docs_in=len(docs), kept=len(docs), rows=len(docs),
            bytes=ours.size(), sha256=sha256_of(ours),
        )
        t_read = timed(lambda: pq.read_table(ours.path))
        t_check = timed(lambda: check_part(str(Path(tmp) / "stage"), receipt.__dict__))

    print(f"documents: {len(docs)}, text: {text_mb:.0f} MB")
    print(f"write  bare pyarrow: {text_mb / t_bare:8.1f} MB/s   ShardWriter: {text_mb / t_ours:8.1f} MB/s   ratio ours/bare: {t_bare / t_ours:.2f}")
    print(f"read   bare pyarrow: {text_mb / t_read:8.1f} MB/s   check_part:  {text_mb / t_check:8.1f} MB/s   ratio ours/bare: {t_read / t_check:.2f}")


if __name__ == "__main__":
    main()
