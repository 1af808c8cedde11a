"""MinHash dedup: throughput (documents/s end to end) and quality of ours and datatrove's, and the
clustering stage's peak memory.

Run by hand: ``.venv/bin/python bench/minhash.py [--families 3000 --unrelated 5000 --sites 500]``.
With ``--datatrove DIR`` (a throwaway ``pip install --target DIR datatrove``, never the shared
venv; ``DATATROVE_DIR`` in the environment does the same) it also runs datatrove's four MinHash
stages on the same files with the same shingles (word 5-grams), bands and rows, each stage in a
subprocess with DIR on PYTHONPATH. datatrove's English word tokenizer needs NLTK data that
cannot be downloaded here, so its signature stage gets a whitespace tokenizer: the synthetic
text is words and one final period.

Three measurements:

1. End to end on one corpus (:mod:`tasks.synthetic.near_duplicates`): families of an original
   and nine variants at 0-3% word edits, unrelated documents, and site pages that share their
   site's boilerplate (word 5-gram Jaccard about 0.47-0.72: near misses, distinct documents).
   Seconds and documents/s of ours and of datatrove's pipeline, their ratio, and for each the
   quality against how the corpus was made (:func:`~tasks.synthetic.near_duplicates.score`:
   every variant of a family is a duplicate of its original, nothing else is a duplicate of
   anything): precision and recall over dropped documents and over pairs, and the share of each
   edit rate's variants put with their original. Ours comes from its audit file (dropped id ->
   kept id), datatrove's from its ``.remove`` and ``.clusters`` files.
2. The clustering stage's memory on that corpus's verified pairs, for each ``--partitions``:
   the largest clustering task's peak RSS. Ours runs as Ray tasks in reused worker processes,
   so each task resets its process's peak (``/proc/self/clear_refs``) and reports the peak and
   its RSS at the start; "growth" is the difference, the memory the task itself added.
   datatrove's cluster stage (one process, by design) is measured the same way.
3. With ``--graph-pairs N``: the clustering stage alone on a synthetic duplicate graph of N
   pairs, written both as our verified files and as datatrove's ``.dups`` files, so the
   difference is not lost in the processes' base memory.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Families of near-copies: three exact copies and six edited ones. An edit rewrites up to five
# word 5-grams, so the Jaccard to the original is about 0.91 at 1% edits, 0.84 at 2% and 0.76 at
# 3% (0.73-0.81): the last mostly sit under the 0.8 threshold, and the bands (9 x 13) find a pair
# at 0.76 a fifth of the time. By how they were made all nine are duplicates: a family of ten
# gives nine to drop.
DUPLICATE_EDIT_RATES = (0.0, 0.0, 0.0, 0.01, 0.01, 0.01, 0.02, 0.02, 0.03)
NEAR_COPY_EDIT_RATE = max(DUPLICATE_EDIT_RATES)

DATATROVE_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
        MinhashDedupFilter, MinhashDedupSignature)
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.utils.hashing import HashConfig
    from datatrove.utils.word_tokenizers import WordTokenizer

    class Whitespace(WordTokenizer):
        def __init__(self):
            super().__init__("en")
        def word_tokenize(self, text):
            return text.split()
        def sent_tokenize(self, text):
            return [text]
        def span_tokenize(self, text):
            raise NotImplementedError

    def status(field):
        with open("/proc/self/status") as lines:
            return next(int(l.split()[1]) * 1024 for l in lines if l.startswith(field + ":"))

    stage, raw, work, tasks, bands, rows = sys.argv[1:3] + [sys.argv[3]] + [int(a) for a in sys.argv[4:7]]
    config = MinhashConfig(n_grams=5, num_buckets=bands, hashes_per_bucket=rows, seed=1,
                           hash_config=HashConfig(precision=64, hash_fc="sha1"))
    read = lambda: JsonlReader(raw, glob_pattern="*/*.jsonl.gz", id_key="url")
    executors = {
        "signatures": lambda: LocalPipelineExecutor([read(), MinhashDedupSignature(f"{work}/sigs", config=config, language=Whitespace())],
                                                    tasks=tasks, workers=2, logging_dir=f"{work}/logs/1"),
        "buckets": lambda: LocalPipelineExecutor([MinhashDedupBuckets(f"{work}/sigs", f"{work}/buckets", config=config)],
                                                 tasks=bands, workers=2, logging_dir=f"{work}/logs/2"),
        "cluster": lambda: LocalPipelineExecutor([MinhashDedupCluster(f"{work}/buckets", f"{work}/remove", config=config, save_cluster_id=True)],
                                                 tasks=1, logging_dir=f"{work}/logs/3"),
        "filter": lambda: LocalPipelineExecutor([read(), MinhashDedupFilter(f"{work}/remove")],
                                                tasks=tasks, workers=2, logging_dir=f"{work}/logs/4"),
    }
    executor = executors[stage]()
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    start_rss = status("VmRSS")
    started = time.perf_counter()
    executor.run()
    print("RESULT", json.dumps({"seconds": time.perf_counter() - started, "start_rss": start_rss, "peak_rss": status("VmHWM")}))
    """
)

MIB = 1 << 20


def run_datatrove(folder: str, stage: str, raw: Path, work: Path, tasks: int, bands: int, rows: int) -> dict:
    env = {**os.environ, "PYTHONPATH": folder}
    arguments = [stage, str(raw), str(work), str(tasks), str(bands), str(rows)]
    run = subprocess.run([sys.executable, "-c", DATATROVE_SCRIPT, *arguments], env=env, capture_output=True, text=True)
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT")]
    if run.returncode or not lines:
        raise RuntimeError(f"datatrove {stage} failed:\n{(run.stderr or run.stdout)[-3000:]}")
    return json.loads(lines[0].split(" ", 1)[1])


def datatrove_kept_for(raw: Path, remove: Path) -> dict[str, str]:
    """Dropped key -> kept key from datatrove's own outputs: ``NNNNNN.remove`` (rows dropped) and
    ``NNNNNN.clusters`` (row, cluster id) of each reader rank. With one task per file its reader
    gives rank r the r-th of the sorted input paths, and a row is a line of that file."""
    paths = sorted(raw.glob("*/*.jsonl.gz"), key=lambda p: str(p.relative_to(raw)))
    keys = []
    for path in paths:
        with gzip.open(path, "rt") as lines:
            keys.append([json.loads(line)["url"] for line in lines])
    cluster_of, dropped = {}, set()
    for rank, rank_keys in enumerate(keys):
        removed, clusters = remove / f"{rank:06d}.remove", remove / f"{rank:06d}.clusters"
        if removed.exists():
            dropped |= {rank_keys[row] for row in np.frombuffer(removed.read_bytes(), dtype="<u4")}
        if clusters.exists():
            rows = np.frombuffer(clusters.read_bytes(), dtype="<u4").reshape(-1, 2)
            cluster_of.update({rank_keys[row]: int(cluster) for row, cluster in rows})
    kept_in = {cluster: key for key, cluster in cluster_of.items() if key not in dropped}
    if len(kept_in) != len(set(cluster_of.values())) or not dropped <= cluster_of.keys():
        raise RuntimeError("datatrove's outputs do not give one kept document per cluster")
    return {key: kept_in[cluster_of[key]] for key in sorted(dropped)}


def ours_kept_for(corpus, root: Path) -> dict[str, str]:
    """Dropped key -> kept key from our audit file (document ids back to the corpus's keys)."""
    import pyarrow.parquet as pq

    from tasks.curate.minhash import audit_location
    from tasks.documents import make_doc_id

    key_of = {make_doc_id(d.source, d.key): d.key for d in corpus.documents}
    audit = pq.read_table(audit_location(str(root), "minhash").path, columns=["dropped_id", "kept_id"]).to_pydict()
    return {key_of[d]: key_of[k] for d, k in zip(audit["dropped_id"], audit["kept_id"])}


def memory_figures(report: dict) -> dict:
    return {"peak_rss_mib": round(report["peak_rss"] / MIB, 1), "growth_mib": round((report["peak_rss"] - report["start_rss"]) / MIB, 1)}


def largest_task(memory: list[dict]) -> dict:
    """The clustering task with the highest peak, and the highest growth of any task."""
    peak = max(memory, key=lambda m: m["peak_rss"])
    growth = max(memory, key=lambda m: m["peak_rss"] - m["start_rss"])
    return {
        "largest_task_peak_rss_mib": round(peak["peak_rss"] / MIB, 1),
        "largest_task_growth_mib": round((growth["peak_rss"] - growth["start_rss"]) / MIB, 1),
        "largest_growth_phase": growth["phase"],
        "tasks": len(memory),
    }


def partition_sweep(root: Path, sources: tuple[str, ...], verified: list, partitions: list[int]) -> dict:
    from tasks.curate.minhash import Layout, cluster

    sweep = {}
    for count in partitions:
        layout = Layout(str(root), f"sweep-p{count}", sources, 128)
        started = time.perf_counter()
        stats, memory = cluster(layout, verified, count)
        sweep[count] = {"seconds": round(time.perf_counter() - started, 2), "rounds": stats["rounds"], **largest_task(memory)}
    return sweep


def duplicate_graph(pairs: int, parts: int, seed: int = 0) -> list[tuple[int, int, int, int]]:
    """(part, row, part, row) pairs: clusters of 2-40 documents spread over parts, each a random
    tree plus one extra link in two, as MinHash's band collisions give."""
    rng = random.Random(seed)
    rows = [0] * parts
    edges: list[tuple[int, int, int, int]] = []
    while len(edges) < pairs:
        members = []
        for _ in range(rng.randint(2, 40)):
            part = rng.randrange(parts)
            members.append((part, rows[part]))
            rows[part] += 1
        links = [(members[rng.randrange(i)], members[i]) for i in range(1, len(members))]
        links += [tuple(rng.sample(members, 2)) for _ in range(len(members) // 2)]
        edges.extend((*min(x, y), *max(x, y)) for x, y in links if x != y)
    return edges[:pairs]


def write_graph(edges: list[tuple[int, int, int, int]], folder: Path, bands: int) -> list:
    """Our verified files (one per part of the smaller position) and datatrove's .dups files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tasks.curate.minhash import ROW_BITS, VERIFIED_SCHEMA, pack
    from tasks.storage import resolve

    array = np.array(edges, dtype=np.int64)
    a, b = pack(0, 0, array[:, 1]) | (array[:, 0] << ROW_BITS), pack(0, 0, array[:, 3]) | (array[:, 2] << ROW_BITS)
    (folder / "verified").mkdir(parents=True)
    verified = []
    for part in np.unique(array[:, 0]):
        chosen = array[:, 0] == part
        path = folder / "verified" / f"{part:05d}.parquet"
        table = pa.table({"a": a[chosen], "b": b[chosen], "similarity": np.ones(int(chosen.sum()), np.float32)}, schema=VERIFIED_SCHEMA)
        pq.write_table(table, path)
        verified.append(resolve(str(path)))
    (folder / "buckets").mkdir()
    for band, chunk in enumerate(np.array_split(array, bands)):
        with open(folder / "buckets" / f"{band:05d}_00.dups", "wb") as out:
            out.write(b"".join(struct.pack("<4I", *map(int, row)) for row in chunk))
    return verified


def main() -> None:
    from tasks.curate.minhash import MinHashConfig, run_dedup

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", type=int, default=3000)
    parser.add_argument("--unrelated", type=int, default=5000)
    parser.add_argument("--sites", type=int, default=500, help="sites of ten pages that share their boilerplate")
    parser.add_argument("--parts", type=int, default=8, help="input parts per source (two sources)")
    parser.add_argument("--seed", type=int, default=0, help="of the synthetic corpus")
    parser.add_argument("--partitions", default="1,4,16", help="cluster_partitions values to compare")
    parser.add_argument("--graph-pairs", type=int, default=0, help="also cluster a synthetic graph of this many pairs")
    parser.add_argument("--datatrove", default=os.environ.get("DATATROVE_DIR"), help="folder datatrove was pip-installed into with --target")
    parser.add_argument("--verify-false-rejection", type=float, default=MinHashConfig.verify_false_rejection,
                        help="ours' verification (0.5: drop every pair estimated under the threshold, the rule before)")
    args = parser.parse_args()
    partitions = [int(p) for p in args.partitions.split(",")]

    import pyarrow.parquet as pq

    from tasks.ray_runtime import ensure_ray
    from tasks.sources.jsonl import JsonlReader
    from tasks.stage import InputFile, ShardUnit, StageSpec, run_stage
    from tasks.storage import resolve
    from tasks.synthetic.near_duplicates import generate, score

    corpus = generate(
        seed=args.seed, families=args.families, unrelated=args.unrelated, sites=args.sites, parts=args.parts, edit_rates=DUPLICATE_EDIT_RATES
    )
    config = MinHashConfig(verify_false_rejection=args.verify_false_rejection)
    bands, rows = config.bands_rows
    result: dict = {
        "cores": os.cpu_count(),
        "bands_rows": [bands, rows],
        "cluster_partitions": config.cluster_partitions,
        "verified_pairs_min_agreeing": f"{config.min_agreeing}/{config.num_perm}",
    }
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        files = corpus.write_jsonl(folder / "raw")
        units = [ShardUnit(s, i, InputFile.describe(str(p))) for s, paths in files.items() for i, p in enumerate(paths)]
        ensure_ray()
        run_stage(StageSpec(str(folder / "out"), "ingest", JsonlReader()), units)
        started = time.perf_counter()
        manifest = run_dedup(resolve(str(folder / "out" / "ingest")), str(folder / "out"), "minhash", config)
        seconds = time.perf_counter() - started
        docs = len(corpus.documents)
        verified = [resolve(str(p)) for p in sorted((folder / "out" / "minhash-verified").rglob("*.parquet"))]
        result["corpus"] = {
            "documents": docs,
            "dropped": manifest["totals"]["dropped_total"],
            "verified_pairs": sum(pq.read_metadata(v.path).num_rows for v in verified),
        }
        result["ours"] = {
            "seconds": round(seconds, 2),
            "documents_per_second": round(docs / seconds, 1),
            "quality": score(corpus, ours_kept_for(corpus, folder / "out"), NEAR_COPY_EDIT_RATE).as_dict(),
        }
        result["ours_cluster_by_partitions"] = partition_sweep(folder / "out", tuple(sorted(files)), verified, partitions)

        if args.datatrove:
            stages = {}
            for stage in ("signatures", "buckets", "cluster", "filter"):
                stages[stage] = run_datatrove(args.datatrove, stage, folder / "raw", folder / "dt", len(units), bands, rows)
            dt_seconds = sum(s["seconds"] for s in stages.values())
            removed = sum(p.stat().st_size // 4 for p in (folder / "dt" / "remove").glob("*.remove"))
            result["datatrove"] = {
                "seconds": round(dt_seconds, 2),
                "documents_per_second": round(docs / dt_seconds, 1),
                "dropped": removed,
                "quality": score(corpus, datatrove_kept_for(folder / "raw", folder / "dt" / "remove"), NEAR_COPY_EDIT_RATE).as_dict(),
                "cluster_stage": memory_figures(stages["cluster"]),
            }
            result["ours_over_datatrove_documents_per_second"] = round(dt_seconds / seconds, 2)

        if args.graph_pairs:
            graph_folder = folder / "graph"
            edges = duplicate_graph(args.graph_pairs, parts=64)
            graph_verified = write_graph(edges, graph_folder, bands)
            graph = {"pairs": len(edges), "ours_by_partitions": partition_sweep(graph_folder, ("graph",), graph_verified, partitions)}
            if args.datatrove:
                dt = run_datatrove(args.datatrove, "cluster", folder / "raw", graph_folder, 1, bands, rows)
                graph["datatrove_cluster"] = {"seconds": round(dt["seconds"], 2), **memory_figures(dt)}
            result["graph"] = graph
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
