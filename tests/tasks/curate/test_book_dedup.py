"""Book-level dedup: a near-identical edition is dropped, an abridged one and other books stay."""

import random
import string

import pyarrow.parquet as pq

from tasks.curate.book_dedup import DROP_REASON, run_book_dedup
from tasks.curate.minhash import audit_location, jaccard, shingle_set
from tasks.documents import make_doc_id
from tasks.sources.jsonl import JsonlReader
from tasks.stage import InputFile, ShardUnit, StageSpec, run_stage
from tasks.storage import resolve
from tests.helpers import write_jsonl_gz


def book(rng: random.Random, words: int) -> list[str]:
    return ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 9))) for _ in range(words)]


def test_a_second_edition_is_dropped_and_an_abridged_one_kept(tmp_path, ray_local):
    rng = random.Random(5)
    original = book(rng, 6000)
    edition = ["new", "preface", "by", "the", "editor"] * 8 + list(original)
    for position in (500, 2500, 4500):  # typo fixes
        edition[position] = "fixed"
    abridged = original[:4000]
    books = {"pg-1": original, "pg-2": book(rng, 5000), "pg-3": edition, "pg-4": abridged}
    texts = {key: " ".join(words) for key, words in books.items()}
    overlap = lambda a, b: jaccard(shingle_set(texts[a], 5), shingle_set(texts[b], 5))
    assert overlap("pg-1", "pg-3") > 0.95 and overlap("pg-1", "pg-4") < 0.8

    path = write_jsonl_gz(tmp_path / "raw" / "books.jsonl.gz", [{"url": k, "text": t} for k, t in texts.items()])
    run_stage(StageSpec(str(tmp_path), "ingest", JsonlReader()), [ShardUnit("books", 0, InputFile.describe(str(path)))])
    manifest = run_book_dedup(resolve(str(tmp_path / "ingest")), str(tmp_path))
    assert manifest["totals"]["dropped"] == {DROP_REASON: 1} and manifest["totals"]["kept"] == 3
    (row,) = pq.read_table(audit_location(str(tmp_path), "book_dedup").path).to_pylist()
    assert (row["dropped_id"], row["kept_id"]) == (make_doc_id("books", "pg-3"), make_doc_id("books", "pg-1"))
    assert row["similarity"] > 0.9
