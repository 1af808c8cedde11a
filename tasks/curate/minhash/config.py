"""What a MinHash dedup run computes: threshold, permutations, shingles, verification, bands x rows."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from datasketch.lsh import _optimal_param


SCHEME = "affine64"


@dataclass(frozen=True)
class MinHashConfig:
    threshold: float = 0.8
    num_perm: int = 128
    ngram: int = 5
    shingle: str = "words"  # "words": word n-grams; "chars": character n-grams
    seed: int = 1
    hash_partitions: int = 1  # per band: more partitions, less memory per pairs task
    # Partitions of the clustering's edge files: a clustering task holds about 1/this of the
    # verified pairs (see the module docstring). How the work is split, not what it computes.
    cluster_partitions: int = 4
    verify: bool = True  # drop candidate pairs whose estimated Jaccard is clearly under the threshold
    # Verification is a one-sided binomial test on a candidate pair's equal hash values: it drops
    # the pair when a similarity at the threshold gives so few with at most this probability (see
    # min_agreeing). The estimate's error at 128 permutations is about 0.035: dropping every pair
    # estimated under the threshold (0.5, the rule before) throws away a quarter of the banded
    # pairs at exactly the threshold and one in eight at 0.82; 0.01 drops almost no pair at or
    # above it and still 95% of the bands' chance collisions at 0.6 (threshold 0.8, 128 permutations).
    verify_false_rejection: float = 0.01
    # Weight of missed pairs in the band search (false positives weigh 1 - this). 0.5 gives the
    # RedPajama table, whose LSH finds a pair at exactly the threshold only ~40% of the time;
    # with verification on, a higher weight buys recall near the threshold at no precision cost.
    false_negative_weight: float = 0.5
    drop_reason: str = "minhash:duplicate"

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if self.shingle not in ("words", "chars"):
            raise ValueError(f"shingle must be 'words' or 'chars', got {self.shingle!r}")
        if not 0.0 < self.false_negative_weight < 1.0:
            raise ValueError(f"false_negative_weight must be in (0, 1), got {self.false_negative_weight}")
        if not 0.0 < self.verify_false_rejection < 1.0:
            raise ValueError(f"verify_false_rejection must be in (0, 1), got {self.verify_false_rejection}")
        if self.ngram < 1 or self.num_perm < 2 or self.hash_partitions < 1 or self.cluster_partitions < 1:
            raise ValueError(f"ngram >= 1, num_perm >= 2, hash_partitions >= 1, cluster_partitions >= 1 needed: {self}")

    @property
    def bands_rows(self) -> tuple[int, int]:
        return _optimal_param(self.threshold, self.num_perm, 1.0 - self.false_negative_weight, self.false_negative_weight)

    @property
    def min_agreeing(self) -> int:
        """The fewest equal hash values (of ``num_perm``) a verified pair has: the largest k with
        P(Binomial(num_perm, threshold) < k) <= ``verify_false_rejection``."""
        n, p = self.num_perm, self.threshold
        below = 0.0
        for k in range(n + 1):
            log_mass = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * math.log(p) + (n - k) * math.log1p(-p)
            below += math.exp(log_mass)
            if below > self.verify_false_rejection:
                return k
        return n

    def describe(self) -> dict[str, Any]:
        """The parameters the results depend on (the clustering's partition count is not one)."""
        bands, rows = self.bands_rows
        parameters = {k: v for k, v in asdict(self).items() if k != "cluster_partitions"}
        return {**parameters, "bands": bands, "rows": rows, "scheme": SCHEME}


