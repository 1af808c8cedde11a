"""The whole curate flow on the demo's synthetic corpus at 1x, 3x and 10x (run by hand).

    python bench/curate.py [--scales 1 3 10] [--cpus 2]

One set is every source's synthetic inputs (tasks/synthetic/<source>.write_inputs) for one seed,
sized by :data:`SET_SIZE` to about 4 MB of ingested text (Common Crawl about half of it, as its
share of LLaMA's mixture is the largest) so that the fixed cost of each stage's Prefect task and
Ray scheduling does not dominate. Scale k writes k sets (seeds 0..k-1): k times the documents in k
times the files (and parts). It ingests them (`ingest` flow), trains the English quality model on
the scale's Wikipedia text (`train-quality-model`) and times the `curate` flow alone, on one local
Ray with ``--cpus`` workers and a temporary Prefect API.

Reports, per scale: curate wall time, its throughput in MB of ingested text per second per core,
and the largest resident memory any one of this run's Ray worker processes reached during curate
(sampled from /proc every 50 ms, with the last task that worker ran; workers are reused across
scales, so it includes what a worker still held before), next to the driver's peak
during curate; then each scale's growth over the first, and the throughput on the text each scale
adds to the one before (the fixed cost of a run cancels out). Time should grow about linearly with
scale and a worker's peak stay flat; the clustering step of MinHash and the driver's manifests are
the parts that grow with the corpus.
"""

from __future__ import annotations

import argparse
import importlib
import os
import tempfile
import threading
import time
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")
# Keyword arguments of each source's write_inputs for one set (one seed): about 4 MB of text.
SET_SIZE = {
    "commoncrawl": {"english_pages": 2000},  # about 2 MB
    "c4": {"files": 2, "docs_per_file": 700},  # about 1.3 MB
    "wikipedia": {"copies": 40},  # 200 articles, about 0.55 MB
}


class WorkerMemory:
    """Samples the resident memory of this driver and of every Ray worker process it started (a
    ``ray::`` title and this process among its ancestors: the machine may run other Ray clusters)
    while it runs; Ray's own agents are left out. A worker keeps memory after its task, idle:
    its peak goes to the last task it was seen running."""

    AGENTS = ("DashboardAgent", "RuntimeEnvAgent")

    def __init__(self, interval: float = 0.05) -> None:
        self.interval, self.driver_peak, self.peaks, self._stop = interval, 0, {}, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._ours: dict[str, bool] = {}
        self._last_task: dict[str, str] = {}

    @property
    def peak(self) -> tuple[str, int]:
        """The largest worker's last task (``ray::<task>``) and its resident bytes."""
        return max(self.peaks.items(), key=lambda item: item[1], default=("-", 0))

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.driver_peak = max(self.driver_peak, _rss("self"))
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
                except OSError:
                    continue
                if title.startswith("ray::") and title[5:] not in self.AGENTS and self._started_here(pid):
                    task = self._last_task[pid] = title if title != "ray::IDLE" else self._last_task.get(pid, title)
                    self.peaks[task] = max(self.peaks.get(task, 0), _rss(pid))
            self._stop.wait(self.interval)

    def _started_here(self, pid: str) -> bool:
        if pid not in self._ours:
            ancestor, me = int(pid), os.getpid()
            try:
                while ancestor > 1 and ancestor != me:
                    ancestor = int(Path(f"/proc/{ancestor}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):  # it ended meanwhile
                return False
            self._ours[pid] = ancestor == me
        return self._ours[pid]

    def __enter__(self) -> WorkerMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _rss(pid: str) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):  # the process ended meanwhile
        return 0


def prepare(root: Path, scale: int) -> tuple[str, str, dict]:
    """Ingest ``scale`` sets of every source's inputs and train the quality model; return the
    ingest stage, the model folder and the ingest manifest's totals."""
    from flows.ingest import IngestConfig, ingest
    from flows.quality import TrainQualityConfig, train_quality_model
    from tasks.sources import available_sources
    from tasks.storage import resolve

    for source in available_sources():
        generator = importlib.import_module(f"tasks.synthetic.{source}")
        size = SET_SIZE.get(source, {})
        inputs = [
            path
            for seed in range(scale)
            for path in generator.write_inputs(str(root / "raw" / source / f"s{seed}"), seed, **size)
        ]
        ingest(IngestConfig(source=source, inputs=inputs, output=str(root)))
    models = root / "quality_models"
    train_quality_model(TrainQualityConfig(input=str(root / "ingest"), output=str(models), languages=["en"], vocab_size=300))
    totals = resolve(str(root)).join("ingest", "_manifest.json").read_json()["totals"]
    return str(root / "ingest"), str(models), totals


def measure(scale: int, cpus: int) -> dict[str, float]:
    from flows.curate import CurateConfig, curate

    with tempfile.TemporaryDirectory(prefix=f"bench-curate-{scale}x-") as folder:
        root = Path(folder)
        ingested, models, totals = prepare(root, scale)
        with WorkerMemory() as workers:
            started = time.perf_counter()
            rows = curate(CurateConfig(input=ingested, output=str(root), quality_models=models))
            wall = time.perf_counter() - started
    text_chars = totals["text_chars"]
    curated = sum(r["kept"] for r in rows if r["stage"] == "curated")
    return {
        "scale": scale, "documents": totals["kept"], "curated": curated, "text_mb": text_chars / 1e6, "wall_s": wall,
        "mb_per_s_per_core": text_chars / 1e6 / wall / cpus, "worker_peak_title": workers.peak[0],
        "worker_peak_mb": workers.peak[1] / 1e6, "driver_peak_mb": workers.driver_peak / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 3, 10])
    parser.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args()

    import ray
    from prefect.testing.utilities import prefect_test_harness

    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    results = []
    with prefect_test_harness(server_startup_timeout=120):
        for scale in args.scales:  # each row as soon as it is measured: the large scales take minutes
            results.append(measure(scale, args.cpus))
            print(f"{HEADER}\n{_row(results[-1])}", flush=True)
    print("\n".join([HEADER, *map(_row, results)]))
    base = results[0]
    for before, r in zip(results, results[1:]):
        marginal = (r["text_mb"] - before["text_mb"]) / (r["wall_s"] - before["wall_s"]) / args.cpus
        print(f"{r['scale']}x vs {base['scale']}x: text x{r['text_mb'] / base['text_mb']:.1f}, "
              f"wall x{r['wall_s'] / base['wall_s']:.2f}, "
              f"worker peak x{r['worker_peak_mb'] / base['worker_peak_mb']:.2f}, "
              f"driver peak x{r['driver_peak_mb'] / base['driver_peak_mb']:.2f}; "
              f"{before['scale']}x -> {r['scale']}x: {marginal:.3f} MB/s/core for the added text")


HEADER = (f"{'scale':>5} {'docs':>7} {'curated':>7} {'text MB':>8} {'wall s':>7} {'MB/s/core':>9} "
          f"{'worker peak MB':>14} {'driver peak MB':>14}  largest worker")


def _row(r: dict) -> str:
    return (f"{r['scale']:>5} {r['documents']:>7} {r['curated']:>7} {r['text_mb']:>8.2f} {r['wall_s']:>7.1f} "
            f"{r['mb_per_s_per_core']:>9.3f} {r['worker_peak_mb']:>14.0f} {r['driver_peak_mb']:>14.0f}  "
            f"{r['worker_peak_title']}")

if __name__ == "__main__":
    main()
