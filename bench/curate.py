"""The whole curate flow on the demo's synthetic corpus at 1x and 10x (run by hand).

    python bench/curate.py [--scales 1 10] [--cpus 2]

Scale k writes the demo's inputs (tasks/synthetic/<source>.write_inputs) with k seeds, so k times
the documents in k times the files (and parts), ingests them (`ingest` flow), trains the English
quality model on the scale's Wikipedia text (`train-quality-model`) and times the `curate` flow
alone, on a fresh local Ray with ``--cpus`` workers and a temporary Prefect API.

Reports, per scale: curate wall time, its throughput in MB of ingested text per second per core,
and the largest resident memory any one Ray worker process reached during curate (sampled from
/proc every 50 ms), next to the driver's own peak. Time should grow about linearly with scale and
a worker's peak stay flat; the clustering step of MinHash and the driver's manifests are the parts
that grow with the corpus.
"""

from __future__ import annotations

import argparse
import importlib
import os
import resource
import tempfile
import threading
import time
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")


class WorkerMemory:
    """Samples the resident memory of every Ray worker process (``ray::`` titles) while it runs."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    if not Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::"):
                        continue
                    rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
                except (OSError, IndexError, ValueError):
                    continue
                self.peak = max(self.peak, rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> WorkerMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def prepare(root: Path, scale: int) -> tuple[str, str, int]:
    """Ingest k seeds of every source's demo inputs and train the quality model; return the
    ingest stage, the model folder and the ingested text size in bytes."""
    from flows.ingest import IngestConfig, ingest
    from flows.quality import TrainQualityConfig, train_quality_model
    from tasks.sources import available_sources
    from tasks.storage import resolve

    for source in available_sources():
        generator = importlib.import_module(f"tasks.synthetic.{source}")
        inputs = [p for seed in range(scale) for p in generator.write_inputs(str(root / "raw" / source / f"s{seed}"), seed)]
        ingest(IngestConfig(source=source, inputs=inputs, output=str(root)))
    models = root / "quality_models"
    train_quality_model(TrainQualityConfig(input=str(root / "ingest"), output=str(models), languages=["en"], vocab_size=300))
    totals = resolve(str(root)).join("ingest", "_manifest.json").read_json()["totals"]
    return str(root / "ingest"), str(models), totals["text_chars"]


def measure(scale: int, cpus: int) -> dict[str, float]:
    from flows.curate import CurateConfig, curate

    with tempfile.TemporaryDirectory(prefix=f"bench-curate-{scale}x-") as folder:
        root = Path(folder)
        ingested, models, text_chars = prepare(root, scale)
        with WorkerMemory() as workers:
            started = time.perf_counter()
            rows = curate(CurateConfig(input=ingested, output=str(root), quality_models=models))
            wall = time.perf_counter() - started
    docs_in = sum(r["docs_in"] for r in rows if r["stage"] == "filtered")
    curated = sum(r["kept"] for r in rows if r["stage"] == "curated")
    return {
        "scale": scale, "documents": docs_in, "curated": curated, "text_mb": text_chars / 1e6, "wall_s": wall,
        "mb_per_s_per_core": text_chars / 1e6 / wall / cpus, "worker_peak_mb": workers.peak / 1e6,
        "driver_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args()

    import ray
    from prefect.testing.utilities import prefect_test_harness

    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    with prefect_test_harness(server_startup_timeout=120):
        results = [measure(scale, args.cpus) for scale in args.scales]
    print(f"{'scale':>5} {'docs':>7} {'curated':>7} {'text MB':>8} {'wall s':>7} {'MB/s/core':>9} "
          f"{'worker peak MB':>14} {'driver peak MB':>14}")
    for r in results:
        print(f"{r['scale']:>5} {r['documents']:>7} {r['curated']:>7} {r['text_mb']:>8.2f} {r['wall_s']:>7.1f} "
              f"{r['mb_per_s_per_core']:>9.3f} {r['worker_peak_mb']:>14.0f} {r['driver_peak_mb']:>14.0f}")
    base = results[0]
    for r in results[1:]:
        print(f"{r['scale']}x vs {base['scale']}x: text x{r['text_mb'] / base['text_mb']:.1f}, "
              f"wall x{r['wall_s'] / base['wall_s']:.1f}, worker peak x{r['worker_peak_mb'] / base['worker_peak_mb']:.2f}")


if __name__ == "__main__":
    main()
