"""MinHash dedup throughput (documents/s end to end) and the clustering stage's peak memory.

Run by hand: ``.venv/bin/python bench/minhash.py [--families 400 --unrelated 2000 --parts 4]``.
With ``--datatrove DIR`` (a throwaway ``pip install --target DIR datatrove``, never the shared
venv) it also runs datatrove's four MinHash stages on the same files with the same shingles
(word 5-grams), permutations and bands, in a subprocess with DIR on PYTHONPATH, for a ratio.
datatrove's English word tokenizer needs NLTK data that cannot be downloaded here, so its
signature stage gets a whitespace tokenizer: the synthetic text is words and one final period.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DATATROVE_SCRIPT = textwrap.dedent(
    """
    import sys, time
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

    raw, work, tasks, bands, rows = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    config = MinhashConfig(n_grams=5, num_buckets=bands, hashes_per_bucket=rows, seed=1,
                           hash_config=HashConfig(precision=64, hash_fc="sha1"))
    read = lambda: JsonlReader(raw, glob_pattern="*/*.jsonl.gz", id_key="url")
    started = time.perf_counter()
    LocalPipelineExecutor([read(), MinhashDedupSignature(f"{work}/sigs", config=config, language=Whitespace())],
                          tasks=tasks, workers=2, logging_dir=f"{work}/logs/1").run()
    LocalPipelineExecutor([MinhashDedupBuckets(f"{work}/sigs", f"{work}/buckets", config=config)],
                          tasks=bands, workers=2, logging_dir=f"{work}/logs/2").run()
    LocalPipelineExecutor([MinhashDedupCluster(f"{work}/buckets", f"{work}/remove", config=config)],
                          tasks=1, logging_dir=f"{work}/logs/3").run()
    LocalPipelineExecutor([read(), MinhashDedupFilter(f"{work}/remove")],
                          tasks=tasks, workers=2, logging_dir=f"{work}/logs/4").run()
    print("SECONDS", time.perf_counter() - started)
    """
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", type=int, default=400)
    parser.add_argument("--unrelated", type=int, default=2000)
    parser.add_argument("--parts", type=int, default=4)
    parser.add_argument("--datatrove", help="folder datatrove was pip-installed into with --target")
    args = parser.parse_args()

    import pyarrow.parquet as pq

    from infra.ray_env import ensure_ray
    from tasks.curate.minhash import MinHashConfig, _Layout, cluster, run_dedup
    from tasks.sources.jsonl import JsonlReader
    from tasks.stage import InputFile, ShardUnit, StageSpec, run_stage
    from tasks.storage import resolve
    from tasks.synthetic.near_duplicates import generate

    corpus = generate(seed=0, families=args.families, unrelated=args.unrelated, parts=args.parts)
    config = MinHashConfig()
    bands, rows = config.bands_rows
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
        result = {
            "documents": docs,
            "dropped": manifest["totals"]["dropped_total"],
            "seconds": round(seconds, 2),
            "documents_per_second": round(docs / seconds, 1),
            "bands_rows": [bands, rows],
        }
        # Clustering alone, in this process, to see its peak memory (numpy reports to tracemalloc).
        layout = _Layout(str(folder / "out"), "memory-probe", tuple(sorted(files)), config.num_perm)
        verified = sorted(str(p) for p in (folder / "out" / "minhash-verified").rglob("*.parquet"))
        pairs = sum(pq.read_metadata(p).num_rows for p in verified)
        cluster(layout, verified)  # once untraced: lazy imports are not the clustering's memory
        tracemalloc.start()
        cluster(layout, verified)
        result["cluster_pairs"] = pairs
        result["cluster_peak_mib"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 2)
        tracemalloc.stop()

        if args.datatrove:
            env = {**os.environ, "PYTHONPATH": args.datatrove}
            run = subprocess.run(
                [sys.executable, "-c", DATATROVE_SCRIPT, str(folder / "raw"), str(folder / "dt"), str(len(units)), str(bands), str(rows)],
                env=env, capture_output=True, text=True,
            )
            lines = [line for line in run.stdout.splitlines() if line.startswith("SECONDS")]
            if run.returncode or not lines:
                result["datatrove_error"] = (run.stderr or run.stdout)[-2000:]
            else:
                dt_seconds = float(lines[0].split()[1])
                result["datatrove_seconds"] = round(dt_seconds, 2)
                result["datatrove_documents_per_second"] = round(docs / dt_seconds, 1)
                result["ours_over_datatrove"] = round(dt_seconds / seconds, 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
