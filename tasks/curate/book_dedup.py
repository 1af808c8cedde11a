"""Book-level dedup: of books with more than ~90% content overlap (editions of one text), keep one.

The same MinHash stages as document dedup (:mod:`tasks.curate.minhash`) at a high threshold:
whole books shingle as a stream (a bounded batch of shingles hashed at a time) and candidates come
from LSH bands, so there is no pairwise comparison of books. Overlap is the Jaccard similarity of
the shingle sets, verified on the signatures. RedPajama used SimHash over character 6-grams
(Hamming distance <= 5); we use MinHash, which RECIPE.md accepts, over word 5-grams by default:
5x fewer hashes than character 6-grams on a book, and one changed word costs 5 shingles instead
of about 11, so scattered typo fixes between editions weigh less. ``shingle="chars", ngram=6``
gives RedPajama's shingles.
"""

from __future__ import annotations

from tasks.curate.minhash import MinHashConfig, run_dedup
from tasks.storage import Location

DROP_REASON = "book_dedup:duplicate_edition"


def book_dedup_config(threshold: float = 0.9, num_perm: int = 256, ngram: int = 5, shingle: str = "words", seed: int = 1) -> MinHashConfig:
    # 256 permutations: at 0.9 datasketch picks 9 bands x 28 rows, a sharp cut near the threshold.
    return MinHashConfig(threshold=threshold, num_perm=num_perm, ngram=ngram, shingle=shingle, seed=seed, drop_reason=DROP_REASON)


def run_book_dedup(
    input_stage: Location,
    root: str,
    stage_name: str = "book_dedup",
    sources: list[str] | None = None,
    config: MinHashConfig | None = None,
) -> dict:
    """Drop duplicate editions among the books of a finished stage; returns the filter stage manifest."""
    return run_dedup(input_stage, root, stage_name, config or book_dedup_config(), sources)
