"""MinHash near-duplicate removal across documents and sources, as separate rerunnable stages.

The algorithm is datatrove's and RedPajama's: shingle each document (word n-grams after
normalisation, or character n-grams), compute a MinHash signature, cut it into ``bands`` bands
of ``rows`` values, treat two documents as candidates when any band is equal, link candidates
into clusters with connected components, and keep one document per cluster.

Signatures are :class:`datasketch.MinHash` with the ``affine64`` scheme (64-bit hash values,
like datatrove) built from one seed, so every worker draws the same permutations. Bands x rows
come from datasketch's own optimal-parameter search (``datasketch.lsh._optimal_param``, by
default equal weights on false positives and false negatives), which gives RedPajama's table: 128 permutations
at threshold 0.7 -> 14 x 9, 0.8 -> 9 x 13, 0.9 -> 5 x 25.

Stages, each a folder beside the final one and each skipped when its ``_SUCCESS`` marker holds
the same fingerprint (parameters plus the digest of the stage before it)::

    <root>/<name>-signatures/signatures/<source>/part-NNNNN.parquet  position, id, empty, signature
    <root>/<name>-signatures/buckets/<source>/part-NNNNN.parquet     band, partition, band_hash, position
    <root>/<name>-pairs/b<band>-p<partition>.parquet                 candidate pairs a < b of one band
    <root>/<name>-verified/<source>/part-NNNNN.parquet               pairs (a in that part) that pass
                                                                     verification, estimated Jaccard
    <root>/<name>-clusters/_components/round-RRR/<operation>/tNNNNN.parquet
                                                                     edges of the connected-components
                                                                     rounds, by destination partition
                                                                     (removed once the stage is done)
    <root>/<name>-clusters/<source>/part-NNNNN.parquet               dropped position -> representative
    <root>/<name>-audit/audit.parquet                                dropped id -> kept id, similarity
    <root>/<name>/...                                                the filtered documents (run_stage)

A *position* packs (source index, part, row) into one int64 whose order is that of the tuple, and
the source index follows the sorted source names: the smallest position of a cluster is the
smallest (source, part, row), the deterministic representative. A stage whose marker is missing
or stale is wiped and redone whole: no half-written intermediate file of an earlier run survives.

Clustering is distributed connected components (alternating large-star / small-star, see
:func:`cluster`): no process holds all verified pairs. Its result does not depend on the
partition count: the same input gives byte-identical cluster files for any ``cluster_partitions``.

Memory: a signature task holds one part's signatures; a pairs task one band partition's hashes
(raise ``hash_partitions`` to shrink it); a verify or audit task one part's signatures plus one
other part's at a time; a clustering task one of ``cluster_partitions`` hash partitions of the
edges (about 2 x pairs / partitions edges), except that all edges of one node meet in one task:
in the last rounds a cluster's edges gather at its representative, so the largest cluster's size
is a floor no partition count lowers.

Modules, in the order a run uses them: :mod:`.config` (what a run computes), :mod:`.layout`
(folders and positions), :mod:`.signatures` (a, b), :mod:`.candidates` (c), :mod:`.components`
(d, with :mod:`.memory` for its per-task peaks), :mod:`.audit`, and :mod:`.stage` (the run).
"""

from tasks.curate.minhash.audit import audit_location
from tasks.curate.minhash.candidates import VERIFIED_SCHEMA
from tasks.curate.minhash.components import cluster, large_star, small_star
from tasks.curate.minhash.config import MinHashConfig
from tasks.curate.minhash.layout import ROW_BITS, Layout, pack, unpack
from tasks.curate.minhash.signatures import Signer, jaccard, normalise, shingle_set, shingles
from tasks.curate.minhash.stage import ClusterDuplicateDropper, run_dedup, run_minhash_dedup

__all__ = [
    "ROW_BITS", "VERIFIED_SCHEMA", "ClusterDuplicateDropper", "Layout", "MinHashConfig", "Signer", "audit_location",
    "cluster", "jaccard", "large_star", "normalise", "pack", "run_dedup", "run_minhash_dedup", "shingle_set",
    "shingles", "small_star", "unpack",
]
