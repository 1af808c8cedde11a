"""Line dedup throughput and per-worker memory at 1x and 10x corpus size (run by hand).

    python bench/line_dedup.py [--parts 4] [--docs-per-part 2000] [--scales 1 10] [--cpus 2]

A synthetic corpus: documents of body lines unique to them plus boilerplate (menus, cookie
banners, footers, in varied case and digits) drawn from a small pool, and some repeated lines
inside a document. Scale k has k times the parts, each of the same size, and k times the hash
partitions (as the default, partitions by input bytes, would give at real sizes), so a worker's
memory should stay flat while time grows linearly.

Reports, per scale: documents/s per core for the whole three-pass run on Ray (``--cpus`` workers),
the one-process time of each pass, and the largest peak of traced memory one job of each pass
reached (tracemalloc: Python objects and numpy buffers; Arrow's own buffers are not traced).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

from measure import peak_mb, timed  # bench/measure.py
from tasks.curate.dedup_files import find_duplicates
from tasks.curate.line_dedup import hash_part, normalise_line, plan_line_dedup, run_line_dedup
from tasks.documents import Document, make_doc_id
from tasks.stage import ShardUnit, StageSpec, run_shard, run_stage
from tasks.storage import resolve

BOILERPLATE = [
    "Home | News | Sport | Weather | Contact",
    "We use cookies to give you the best experience on our website.",
    "Copyright 2019 Example Media Ltd. All rights reserved.",
    "Subscribe to our newsletter",
    "Share this article on Facebook Twitter Email",
    "Privacy Policy | Terms of Use | Accessibility",
]
VOCABULARY_SEED = 7


@dataclass(frozen=True)
class SyntheticReader:
    docs_per_part: int
    vocabulary: tuple[str, ...]

    def read(self, unit: ShardUnit) -> Iterator[Document]:
        rng = random.Random(unit.index)
        for row in range(self.docs_per_part):
            lines = [rng.choice(BOILERPLATE) for _ in range(rng.randint(1, 4))]
            body = [" ".join(rng.choices(self.vocabulary, k=rng.randint(6, 16))) + "." for _ in range(rng.randint(8, 20))]
            if rng.random() < 0.2:
                body.append(body[0])
            variant = rng.choice(BOILERPLATE)
            lines += body + [variant.upper() if rng.random() < 0.5 else variant.replace("2019", "2024")]
            yield Document(make_doc_id("bench", f"{unit.index}-{row}"), "bench", "\n".join(lines), {})


def vocabulary(size: int = 20_000) -> tuple[str, ...]:
    rng = random.Random(VOCABULARY_SEED)
    return tuple("".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 10))) for _ in range(size))


def bench_scale(tmp: str, scale: int, args, words: tuple[str, ...]) -> dict:
    root = f"{tmp}/x{scale}"
    parts = args.parts * scale
    ingest = StageSpec(root=root, name="ingest", reader=SyntheticReader(args.docs_per_part, words))
    run_stage(ingest, [ShardUnit("bench", i) for i in range(parts)])
    stage_input = resolve(root).join("ingest")
    partitions = args.partitions_per_part_group * scale

    started = time.perf_counter()
    manifest = run_line_dedup(stage_input, root, min_chars=300, partitions=partitions)
    wall = time.perf_counter() - started

    normalise_line("warm the normalisation table up")
    passes = {}
    for name in ("timed", "traced"):
        plan = plan_line_dedup(stage_input, root, stage_name=f"line_dedup_{name}", min_chars=300, partitions=partitions)
        measure = timed if name == "timed" else peak_mb
        passes[name] = {
            "hash": measure(hash_part, plan.hash_jobs),
            "duplicates": measure(find_duplicates, plan.partition_jobs),
            "rewrite": measure(lambda unit, spec=plan.spec: run_shard(spec, unit), plan.units),
        }
    docs = manifest["totals"]["docs_in"]
    lines = manifest["line_dedup"]
    return {
        "scale": scale,
        "parts": parts,
        "partitions": partitions,
        "docs": docs,
        "docs_kept": manifest["totals"]["kept"],
        "lines_removed_share": round((lines["removed_seen_before"] + lines["removed_repeated"]) / lines["lines_in"], 3),
        "ray_wall_s": round(wall, 2),
        "docs_per_s_per_core": round(docs / wall / args.cpus),
        "one_core_docs_per_s": round(docs / sum(passes["timed"].values())),
        "one_core_pass_s": {k: round(v, 2) for k, v in passes["timed"].items()},
        "peak_mb_per_job": {k: round(v, 1) for k, v in passes["traced"].items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", type=int, default=4, help="parts at scale 1")
    parser.add_argument("--docs-per-part", type=int, default=2000)
    parser.add_argument("--partitions-per-part-group", type=int, default=2, help="hash partitions at scale 1")
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args()

    import ray

    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    words = vocabulary()
    with tempfile.TemporaryDirectory() as tmp:
        for scale in args.scales:
            print(bench_scale(tmp, scale, args, words), flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
