"""MinHash dedup: parameters, signatures, clustering, and the staged pipeline on a known corpus."""

import itertools
import math
import random
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.curate.minhash import (
    ROW_BITS,
    VERIFIED_SCHEMA,
    MinHashConfig,
    Signer,
    Layout,
    audit_location,
    cluster,
    jaccard,
    large_star,
    normalise,
    pack,
    run_dedup,
    run_minhash_dedup,
    shingle_set,
    shingles,
    small_star,
)
from tasks.documents import make_doc_id
from tasks.shards import read_part
from tasks.sources.jsonl import JsonlReader
from tasks.stage import InputFile, ShardUnit, StageSpec, run_stage, units_from_stage
from tasks.storage import resolve
from tasks.synthetic.near_duplicates import NearDuplicateCorpus, SyntheticDoc, edit, generate, score

STAGES = ("signatures", "pairs", "verified", "clusters", "audit")


def test_bands_and_rows_reproduce_the_redpajama_table():
    assert MinHashConfig(threshold=0.7).bands_rows == (14, 9)
    assert MinHashConfig(threshold=0.8).bands_rows == (9, 13)
    assert MinHashConfig(threshold=0.9).bands_rows == (5, 25)


def test_normalisation_folds_case_accents_digits_and_punctuation():
    assert normalise("Café, 2019: «Naïve» fin_de_siècle!") == ["cafe", "0000", "naive", "fin", "de", "siecle"]
    assert list(shingles("One two three", 5)) == [b"one two three"]
    assert list(shingles("... !!", 5)) == []
    assert list(shingles("ab cd", 3, "chars")) == [b"ab ", b"b c", b" cd"]


def test_signers_with_one_seed_agree_and_estimate_jaccard():
    words = generate(seed=3, families=1, unrelated=0).documents[0].text.split()
    variant = " ".join(edit(words, 0.05, random.Random(1), ["zz"]))
    first, second = Signer(MinHashConfig()), Signer(MinHashConfig())
    assert np.array_equal(first.sign(" ".join(words)), second.sign(" ".join(words)))
    assert not np.array_equal(first.sign(" ".join(words)), Signer(MinHashConfig(seed=2)).sign(" ".join(words)))
    estimate = float((first.sign(" ".join(words)) == second.sign(variant)).mean())
    truth = jaccard(shingle_set(" ".join(words), 5), shingle_set(variant, 5))
    assert abs(estimate - truth) < 0.15
    assert first.sign("!!!") is None


def edges(larger: np.ndarray, smaller: np.ndarray) -> set[tuple[int, int]]:
    return set(zip(larger.tolist(), smaller.tolist()))


def test_large_star_links_larger_neighbours_to_the_smallest_and_small_star_the_smaller_ones():
    # The path 1 - 2 - 3 - 4, both directions, as large-star reads it.
    node, neighbour = np.array([1, 2, 2, 3, 3, 4]), np.array([2, 1, 3, 2, 4, 3])
    assert edges(*large_star(node, neighbour)) == {(2, 1), (3, 1), (4, 2)}
    # Small-star reads each edge once at its larger end: 4's smaller neighbours 2 and 3 join 2.
    assert edges(*small_star(np.array([4, 4, 3]), np.array([2, 3, 1]))) == {(3, 2), (4, 2), (3, 1)}


def union_find_representatives(pairs: list[tuple[int, int]]) -> dict[int, int]:
    """The reference: every node but a cluster's smallest -> that smallest, by plain union-find."""
    parent: dict[int, int] = {}

    def root(x: int) -> int:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = root(a), root(b)
        parent[max(ra, rb)] = min(ra, rb)
    return {x: root(x) for x in parent if root(x) != x}


SOURCES_OF_GRAPH = ("a", "b")


def positions(count: int, rng: random.Random) -> list[int]:
    """``count`` distinct positions over two sources and three parts each, in random order."""
    where = rng.sample([(s, p, r) for s in range(2) for p in range(3) for r in range(count)], count)
    return [int(pack(s, p, np.array([r]))[0]) for s, p, r in where]


def graph(kind: str, seed: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    if kind == "sorted chain":  # min-label propagation would need one round per link
        nodes = sorted(positions(600, rng))
        return list(zip(nodes, nodes[1:]))
    if kind == "shuffled chain":
        nodes = positions(600, rng)
        return list(zip(nodes, nodes[1:]))
    if kind == "star":  # the centre is not the smallest position
        nodes = positions(800, rng)
        return [(nodes[0], leaf) for leaf in nodes[1:]]
    if kind == "many small components":
        nodes = positions(2000, rng)
        return [(rng.choice(nodes[i : i + 5]), rng.choice(nodes[i : i + 5])) for i in range(0, 2000, 5) for _ in range(3)]
    assert kind == "one giant component"
    nodes = positions(600, rng)
    return [(nodes[i], rng.choice(nodes[:i])) for i in range(1, 600)] + [tuple(rng.sample(nodes, 2)) for _ in range(600)]


def write_verified(pairs: list[tuple[int, int]], folder: Path) -> list:
    """As the verify stage writes them: a < b, one file per part of a."""
    by_part: dict[int, set[tuple[int, int]]] = {}
    for x, y in pairs:
        if x != y:
            by_part.setdefault(min(x, y) >> ROW_BITS, set()).add((min(x, y), max(x, y)))
    files = []
    for part_key, part_pairs in sorted(by_part.items()):
        a, b = map(list, zip(*sorted(part_pairs)))
        path = folder / f"{part_key}.parquet"
        pq.write_table(pa.table({"a": a, "b": b, "similarity": [1.0] * len(a)}, schema=VERIFIED_SCHEMA), path)
        files.append(resolve(str(path)))
    return files


def clusters_written(root: Path) -> tuple[dict[int, int], dict[str, bytes]]:
    files = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.parquet"))}
    rows = [r for p in sorted(root.rglob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    return {r["position"]: r["representative"] for r in rows}, files


@pytest.mark.parametrize("kind", ["sorted chain", "shuffled chain", "star", "many small components", "one giant component"])
def test_distributed_components_equal_union_find_for_any_partition_count(kind, tmp_path, ray_local):
    pairs = graph(kind, seed=len(kind))
    verified = write_verified(pairs, tmp_path)
    expected = union_find_representatives(pairs)
    written = {}
    for partitions in (1, 3):
        root = tmp_path / f"p{partitions}"
        stats, memory = cluster(Layout(str(root), "minhash", SOURCES_OF_GRAPH, 128), verified, partitions)
        representatives, written[partitions] = clusters_written(root / "minhash-clusters")
        assert representatives == expected
        assert stats["duplicates"] == len(expected) and stats["clusters"] == len(set(expected.values()))
        assert not (root / "minhash-clusters" / "_components").exists(), "the rounds' edge files are removed"
        assert {m["phase"] for m in memory} >= {"scatter", "large-star", "labels", "write"}
        assert all(m["peak_rss"] > 0 for m in memory)
    assert written[1] == written[3], "cluster files do not depend on the partition count"
    assert len(written[1]) > 1, "the clusters span several parts"


def ingest(corpus, folder: Path) -> Path:
    files = corpus.write_jsonl(folder / "raw")
    units = [ShardUnit(source, i, InputFile.describe(str(p))) for source, paths in files.items() for i, p in enumerate(paths)]
    run_stage(StageSpec(str(folder / "out"), "ingest", JsonlReader()), units)
    return folder / "out"


def outcome(corpus, root: Path, stage_name: str = "minhash"):
    """Kept and dropped natural keys, and the audit rows keyed by natural key."""
    key_of = {make_doc_id(d.source, d.key): d.key for d in corpus.documents}
    kept = {key_of[d.id] for u in units_from_stage(resolve(str(root / stage_name))) for d in read_part(resolve(u.input.uri))}
    audit = pq.read_table(audit_location(str(root), stage_name).path).to_pylist()
    for row in audit:
        row["dropped"], row["kept"] = key_of[row["dropped_id"]], key_of[row["kept_id"]]
    return kept, audit


def quality(corpus, audit, max_edit_rate):
    return score(corpus, {r["dropped"]: r["kept"] for r in audit}, max_edit_rate)


def doc(key: str, family: int = -1, edit_rate: float | None = None) -> SyntheticDoc:
    return SyntheticDoc(key, "c4", 0, "text", family, edit_rate)


def test_quality_counts_documents_and_pairs_against_how_the_corpus_was_made():
    # Family 0: an original, two copies within the bound and one edited past it; family 1: an
    # original and one copy; two unrelated documents.
    corpus = NearDuplicateCorpus(
        [doc("o0", 0), doc("a", 0, 0.0), doc("b", 0, 0.02), doc("far", 0, 0.3), doc("o1", 1), doc("c", 1, 0.01), doc("u"), doc("v")]
    )
    # Right: a and b for o0. Wrong: far (past the bound), c for o0 (another family), v for u.
    found = score(corpus, {"a": "o0", "b": "o0", "far": "o0", "c": "o0", "v": "u"}, max_edit_rate=0.02)
    assert (found.dropped, found.removable, found.correct) == (5, 3, 2)
    assert (found.precision, found.recall) == (2 / 5, 2 / 3)
    # Run clusters {o0, a, b, far, c}, {u, v}: 10 + 1 predicted pairs; true clusters {o0, a, b},
    # {o1, c}: 3 + 1 true pairs, 3 of them predicted.
    assert (found.pair_precision, found.pair_recall) == (3 / 11, 3 / 4)
    assert found.joined_by_edit_rate == {0.0: 1.0, 0.01: 0.0, 0.02: 1.0}
    assert score(corpus, {}, 0.02).recall == 0.0 and score(corpus, {}, 0.02).precision == 1.0
    with pytest.raises(ValueError, match="dropped too"):
        score(corpus, {"a": "o0", "o0": "b"}, 0.02)
    with pytest.raises(ValueError, match="not a document"):
        score(corpus, {"a": "nowhere"}, 0.02)


@pytest.mark.parametrize("threshold, num_perm", [(0.8, 128), (0.55, 256), (0.9, 256), (0.7, 64)])
def test_verification_rejects_a_pair_at_the_threshold_with_the_stated_probability(threshold, num_perm):
    config = MinHashConfig(threshold=threshold, num_perm=num_perm)
    mass = lambda k: math.comb(num_perm, k) * threshold**k * (1 - threshold) ** (num_perm - k)
    rejected = sum(mass(k) for k in range(config.min_agreeing))
    assert rejected <= config.verify_false_rejection < rejected + mass(config.min_agreeing)
    # 0.5 is about the median, the rule "estimate at or above the threshold".
    median = MinHashConfig(threshold=threshold, num_perm=num_perm, verify_false_rejection=0.5).min_agreeing
    assert abs(median - threshold * num_perm) <= 1


@pytest.fixture(scope="module")
def corpus():
    return generate(seed=7)


@pytest.fixture(scope="module")
def default_run(corpus, tmp_path_factory, ray_local):
    root = ingest(corpus, tmp_path_factory.mktemp("default"))
    manifest = run_minhash_dedup(resolve(str(root / "ingest")), str(root))
    return root, manifest


def test_default_threshold_finds_duplicates_with_high_precision_and_recall(corpus, default_run):
    root, manifest = default_run
    kept, audit = outcome(corpus, root)
    # At 0.8 only the exact copies are duplicates: 5% edits leave a Jaccard of about 0.6-0.7.
    found = quality(corpus, audit, max_edit_rate=0.0)
    assert found.precision >= 0.95 and found.recall >= 0.90
    exact = [d for d in corpus.documents if d.edit_rate == 0.0]
    originals = {d.family: d.key for d in corpus.documents if d.family >= 0 and d.edit_rate is None}
    assert {tuple(sorted((d.key, originals[d.family]))) for d in exact} <= {tuple(sorted((r["dropped"], r["kept"]))) for r in audit}
    totals = manifest["totals"]
    assert totals["docs_in"] == len(corpus.documents) == totals["kept"] + totals["dropped_total"]
    assert totals["dropped"] == {"minhash:duplicate": len(audit)} and len(kept) == totals["kept"]


def test_unrelated_documents_share_no_shingle(corpus):
    sets = [shingle_set(d.text, 5) for d in corpus.documents if d.family == -1 or d.edit_rate is None]
    assert all(not (x & y) for x, y in itertools.combinations(sets, 2))


def test_site_pages_are_near_misses_that_share_only_their_sites_boilerplate():
    corpus = generate(seed=2, families=0, unrelated=0, sites=4, pages_per_site=6)
    pages = [(d.site, shingle_set(d.text, 5)) for d in corpus.documents]
    for (site_a, a), (site_b, b) in itertools.combinations(pages, 2):
        similarity = jaccard(a, b)
        assert 0.4 < similarity < 0.8 if site_a == site_b else similarity == 0.0


def test_audit_names_the_kept_document_each_dropped_one_duplicates(corpus, default_run):
    root, _ = default_run
    kept, audit = outcome(corpus, root)
    dropped = {r["dropped"] for r in audit}
    text = {d.key: d.text for d in corpus.documents}
    assert len(dropped) == len(audit) and not dropped & kept
    for row in audit:
        assert row["kept"] in kept
        # The representative is the smallest (source, part, row) of its cluster.
        assert (row["kept_source"], row["kept_part"], row["kept_row"]) < (row["dropped_source"], row["dropped_part"], row["dropped_row"])
        truth = jaccard(shingle_set(text[row["dropped"]], 5), shingle_set(text[row["kept"]], 5))
        assert row["similarity"] * 128 >= MinHashConfig().min_agreeing and abs(row["similarity"] - truth) < 0.1
    assert any(r["dropped_source"] != r["kept_source"] for r in audit), "duplicates across sources are found"


def test_a_lower_threshold_catches_edited_copies(corpus, tmp_path, ray_local):
    # 5% edits leave a true Jaccard of about 0.6-0.7 on word 5-grams, 10% edits about 0.4-0.47:
    # 256 permutations keep the estimate's error (about 0.03) small against that gap; weighting
    # missed pairs in the band search finds pairs just above the threshold, verification keeps
    # the extra candidates well below it out.
    root = ingest(corpus, tmp_path)
    config = MinHashConfig(threshold=0.55, num_perm=256, hash_partitions=2, false_negative_weight=0.9)
    run_dedup(resolve(str(root / "ingest")), str(root), "minhash", config)
    _, audit = outcome(corpus, root)
    text = {d.key: d.text for d in corpus.documents}
    original = {d.family: d.key for d in corpus.documents if d.family >= 0 and d.edit_rate is None}
    edited = [jaccard(shingle_set(d.text, 5), shingle_set(text[original[d.family]], 5)) for d in corpus.documents if d.edit_rate == 0.05]
    assert min(edited) >= 0.55 and max(edited) < 0.8, "the corpus has edited copies above this threshold, under 0.8"
    found = quality(corpus, audit, max_edit_rate=0.05)
    assert found.precision >= 0.95 and found.recall >= 0.90


# Three exact copies and six edited ones: Jaccard to the original about 0.91 at 1% edits, 0.84 at
# 2%, 0.76 at 3%, so the bands (9 x 13) find part of the last two and miss the rest.
BENCH_EDIT_RATES = (0.0, 0.0, 0.0, 0.01, 0.01, 0.01, 0.02, 0.02, 0.03)


def test_verification_keeps_what_the_bands_found_in_families_and_drops_colliding_site_pages(tmp_path, ray_local):
    # Without verification every band collision is a duplicate, as in datatrove: the recall the
    # bands allow, and the site pages whose shared boilerplate (Jaccard 0.47-0.72) collided dropped.
    # Verification must keep the first and remove the second. Dropping every pair estimated under
    # the threshold lost 3.7 points of recall here, most of the variants at 2-3% the bands found.
    corpus = generate(seed=1, families=60, unrelated=100, sites=20, edit_rates=BENCH_EDIT_RATES)
    root = ingest(corpus, tmp_path)
    found = {}
    for verify in (True, False):
        run_dedup(resolve(str(root / "ingest")), str(root), f"verify-{verify}", MinHashConfig(verify=verify))
        found[verify] = quality(corpus, outcome(corpus, root, f"verify-{verify}")[1], max_edit_rate=max(BENCH_EDIT_RATES))
    assert found[False].precision < 0.99, "site pages collide in the bands"
    assert found[True].precision > found[False].precision
    assert found[True].recall >= found[False].recall - 0.01


def stage_files(root: Path) -> dict[str, bytes]:
    """Every dedup output (intermediate stages and filtered parts), without run records (times, paths)."""
    files = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if path.is_file() and relative.parts[0] != "ingest" and path.name != "_manifest.json" and "_receipts" not in relative.parts:
            files[str(relative)] = path.read_bytes()
    return files


def test_reruns_are_deterministic_and_a_deleted_marker_redoes_only_its_stage(corpus, default_run, tmp_path):
    first_root, _ = default_run
    ingested = resolve(str(first_root / "ingest"))
    second_root = tmp_path / "again"
    # Another partition count for the clustering: the same bytes, and not a parameter of the stages.
    run_dedup(ingested, str(second_root), "minhash", MinHashConfig(cluster_partitions=3))
    first, second = stage_files(first_root), stage_files(second_root)
    assert first.keys() == second.keys() and first == second
    assert (first_root / "minhash-audit" / "audit.parquet").read_bytes() == (second_root / "minhash-audit" / "audit.parquet").read_bytes()

    mtimes = lambda: {p: p.stat().st_mtime_ns for p in second_root.rglob("*") if p.is_file()}
    before = mtimes()
    run_minhash_dedup(ingested, str(second_root))
    assert mtimes() == before, "a finished run is skipped whole"

    (second_root / "minhash-pairs" / "_SUCCESS").unlink()
    run_minhash_dedup(ingested, str(second_root))
    after = mtimes()
    redone = {p.relative_to(second_root).parts[0] for p in after if before.get(p) != after[p]}
    assert redone == {"minhash-pairs"}
    assert stage_files(second_root) == first


def test_a_stale_stage_is_wiped_before_it_is_redone(corpus, default_run, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(default_run[0], root)
    leftover = root / "minhash-clusters" / "c4" / "part-00099.parquet"
    leftover.write_bytes(b"half-written by a killed run")
    round_file = root / "minhash-clusters" / "_components" / "round-000" / "large-star" / "t00000.parquet"
    round_file.parent.mkdir(parents=True)
    round_file.write_bytes(b"a round a killed worker left behind")
    (root / "minhash-clusters" / "_SUCCESS").unlink()
    run_minhash_dedup(resolve(str(root / "ingest")), str(root))
    assert not leftover.exists() and not round_file.parent.exists()
    assert stage_files(root) == stage_files(default_run[0])
