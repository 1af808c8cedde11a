"""Ingest throughput for every source in one run.

    python bench/ingest.py

C4 is measured here: our reader against a bare gzip + json.loads loop over the same file (the
overhead we add). The other sources have their own scripts, run in turn (each compares against
its bare parser or extractor and reports peak RSS for a 10x input):
bench/ingest_commoncrawl.py, bench/ingest_wikipedia.py, bench/ingest_books_arxiv.py.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tasks.sources.c4 import C4Reader
from tasks.stage import InputFile, ShardUnit
from tasks.synthetic.c4 import write_inputs

HERE = Path(__file__).resolve().parent


def best_of(repeats: int, fn) -> float:
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        timings.append(time.perf_counter() - started)
    return min(timings)


def bench_c4(docs: int = 20_000) -> None:
    with tempfile.TemporaryDirectory() as folder:
        (path,) = write_inputs(folder, seed=0, files=1, docs_per_file=docs)
        unit = ShardUnit("c4", 0, InputFile.describe(path))
        size_mb = Path(path).stat().st_size / 1e6
        reader = C4Reader()

        def ours():
            for _ in reader.read(unit):
                pass

        def bare():
            with gzip.open(path, "rb") as f:
                for line in f:
                    try:
                        json.loads(line)
                    except ValueError:
                        pass

        t_ours, t_bare = best_of(3, ours), best_of(3, bare)
    print(f"c4: {size_mb:.1f} MB gzip, {docs} records: ours {size_mb / t_ours:.1f} MB/s ({docs / t_ours:,.0f} docs/s), "
          f"bare gzip+json {size_mb / t_bare:.1f} MB/s; time ours/bare {t_ours / t_bare:.2f}x")


def main() -> None:
    bench_c4()
    for script in ("ingest_commoncrawl.py", "ingest_wikipedia.py", "ingest_books_arxiv.py"):
        print(f"\n== {script}", flush=True)
        subprocess.run([sys.executable, str(HERE / script)], check=True)


if __name__ == "__main__":
    main()
