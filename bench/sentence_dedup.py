"""Sentence-span dedup throughput against datatrove's SentenceDedup, and per-worker memory (run by hand).

    python bench/sentence_dedup.py [--parts 4] [--docs-per-part 1000] [--scales 1 10] [--cpus 2]
                                   [--datatrove DIR]

A generated C4-like corpus: pages of lines of one to four original sentences, plus shared
three-sentence footers (newsletter, cookies) drawn from a small pool in varied case, passages
syndicated from a pool into several pages, and some pages repeating their own opening. Scale k has
k times the parts, each of the same size, and k times the hash partitions (as the default,
partitions by input bytes, would give at real sizes), so a worker's memory should stay flat while
time grows linearly.

Reports, per scale: documents/s per core of the whole three-pass run on Ray (``--cpus`` workers),
the one-process time of each pass, and the largest peak of traced memory one job of each pass
reached (tracemalloc: Python objects and numpy buffers; Arrow's own buffers are not traced). For
ratios on the same documents:

- at the first scale, with ``--datatrove DIR`` (a throwaway ``pip install --target DIR
  datatrove``, never the shared venv): datatrove's three SentenceDedup stages (signature, find,
  filter) with LocalPipelineExecutor, ``--cpus`` workers, one task per part, n=3, its default
  minimums and 64-bit SHA-1 span hashes (ours too; its default xxhash does not come with it). Its
  English tokenizer needs NLTK punkt data that cannot be downloaded here, so it gets a tokenizer
  that splits as ours does (each line by sentencex): the comparison is of the dedup machinery, not
  of the splitters.
- at every scale: a bare single-process loop that splits, normalises and hashes every span into one
  Python set, and removes nothing (a lower bound of the work, no files, no partitions).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from measure import peak_mb, timed  # noqa: E402 (bench/measure.py)
from tasks.curate.dedup_files import find_duplicates  # noqa: E402
from tasks.curate.line_dedup import normalise_line  # noqa: E402
from tasks.curate.sentence_dedup import (  # noqa: E402
    document_sentences,
    hash_part,
    plan_sentence_dedup,
    run_sentence_dedup,
    span_hashes,
)
from tasks.sources.jsonl import JsonlReader  # noqa: E402
from tasks.stage import InputFile, ShardUnit, StageSpec, run_shard, run_stage  # noqa: E402
from tasks.storage import resolve  # noqa: E402

N_SENTENCES, MIN_SENTENCES, MIN_WORDS = 3, 3, 50

DATATROVE_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.sentence_dedup import (SentDedupConfig, SentenceDedupFilter,
        SentenceDedupSignature, SentenceFindDedups)
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig
    from datatrove.utils.word_tokenizers import WordTokenizer

    class LineSentences(WordTokenizer):
        def __init__(self):
            super().__init__("en")
        def word_tokenize(self, text):
            return text.split()
        def span_tokenize(self, text):
            import sentencex  # here: datatrove's worker processes get the class, not this module

            spans, offset = [], 0
            for line in text.split("\\n"):
                position = offset
                if line.strip():
                    for piece in sentencex.segment("en", line):
                        if piece.strip():
                            spans.append((position, position + len(piece)))
                        position += len(piece)
                offset += len(line) + 1
            return spans
        def sent_tokenize(self, text):
            return [text[a:b] for a, b in self.span_tokenize(text)]

    raw, work, tasks, workers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    config = SentDedupConfig(n_sentences=3, min_num_sentences=3, min_doc_words=50,
                             hash_config=HashConfig(precision=64, hash_fc="sha1"))
    tokenizer = LineSentences()
    read = lambda: JsonlReader(raw, glob_pattern="*.jsonl.gz", id_key="url")
    started = time.perf_counter()
    LocalPipelineExecutor([read(), SentenceDedupSignature(f"{work}/sigs", config=config, language=tokenizer)],
                          tasks=tasks, workers=workers, logging_dir=f"{work}/logs/1").run()
    LocalPipelineExecutor([SentenceFindDedups(f"{work}/sigs", f"{work}/dups", config=config)],
                          tasks=1, logging_dir=f"{work}/logs/2").run()
    LocalPipelineExecutor([read(), SentenceDedupFilter(f"{work}/dups", config=config, language=tokenizer),
                           JsonlWriter(f"{work}/out")],
                          tasks=tasks, workers=workers, logging_dir=f"{work}/logs/3").run()
    print("SECONDS", time.perf_counter() - started)
    """
)


class Corpus:
    """Deterministic C4-like pages with overlaps, by (part, row)."""

    def __init__(self, seed: int = 7) -> None:
        rng = random.Random(seed)
        self.vocabulary = tuple(
            "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 10))) for _ in range(20_000)
        )
        self.footers = [[self._sentence(rng) for _ in range(3)] for _ in range(40)]
        self.syndicated = [[self._sentence(rng) for _ in range(rng.randint(3, 6))] for _ in range(400)]

    def _sentence(self, rng: random.Random) -> str:
        return " ".join(rng.choices(self.vocabulary, k=rng.randint(6, 20))).capitalize() + rng.choice(".?!")

    def page(self, part: int, row: int) -> str:
        rng = random.Random(f"{part}-{row}")
        sentences = [self._sentence(rng) for _ in range(rng.randint(5, 25))]
        if rng.random() < 0.25:
            at = rng.randrange(len(sentences))
            sentences[at:at] = rng.choice(self.syndicated)
        if rng.random() < 0.1:
            sentences += sentences[:3]
        lines = []
        while sentences:
            take = rng.randint(1, 4)
            lines.append(" ".join(sentences[:take]))
            sentences = sentences[take:]
        for _ in range(rng.randint(0, 2)):
            footer = " ".join(rng.choice(self.footers))
            lines.append(footer.upper() if rng.random() < 0.3 else footer)
        return "\n".join(lines)

    def write_jsonl(self, folder: Path, parts: int, docs_per_part: int) -> list[Path]:
        folder.mkdir(parents=True)
        paths = []
        for part in range(parts):
            path = folder / f"part-{part:05d}.jsonl.gz"
            with gzip.open(path, "wt", encoding="utf-8") as out:
                for row in range(docs_per_part):
                    record = {"url": f"https://example.org/{part}/{row}", "text": self.page(part, row)}
                    out.write(json.dumps(record) + "\n")
            paths.append(path)
        return paths


def bare_loop_seconds(paths: list[Path]) -> float:
    """Split, normalise and hash every span of every page into one set, in this process."""
    seen: set[int] = set()
    started = time.perf_counter()
    for path in paths:
        with gzip.open(path, "rt", encoding="utf-8") as lines:
            for raw in lines:
                _, sentences = document_sentences(json.loads(raw)["text"])
                seen.update(span_hashes([s for line in sentences for s in line], N_SENTENCES))
    return time.perf_counter() - started


def datatrove_seconds(datatrove: str, raw: Path, work: Path, parts: int, cpus: int) -> float | str:
    env = {**os.environ, "PYTHONPATH": datatrove}
    run = subprocess.run([sys.executable, "-c", DATATROVE_SCRIPT, str(raw), str(work), str(parts), str(cpus)],
                         env=env, capture_output=True, text=True)
    found = [line for line in run.stdout.splitlines() if line.startswith("SECONDS")]
    if run.returncode or not found:
        return "error: " + (run.stderr or run.stdout)[-2000:]
    return float(found[0].split()[1])


def bench_scale(tmp: Path, scale: int, args, corpus: Corpus) -> dict:
    root = tmp / f"x{scale}"
    parts = args.parts * scale
    raw = corpus.write_jsonl(root / "raw", parts, args.docs_per_part)
    units = [ShardUnit("c4", i, InputFile.describe(str(p))) for i, p in enumerate(raw)]
    run_stage(StageSpec(str(root), "ingest", JsonlReader()), units)
    stage_input = resolve(str(root)).join("ingest")
    partitions = args.partitions * scale
    options = {"n_sentences": N_SENTENCES, "min_sentences": MIN_SENTENCES, "min_words": MIN_WORDS,
               "partitions": partitions}

    started = time.perf_counter()
    manifest = run_sentence_dedup(stage_input, str(root), **options)
    wall = time.perf_counter() - started

    normalise_line("warm the normalisation table up")
    passes = {}
    for name in ("timed", "traced"):
        plan = plan_sentence_dedup(stage_input, str(root), stage_name=f"sentence_dedup_{name}", **options)
        measure = timed if name == "timed" else peak_mb
        passes[name] = {
            "hash": measure(hash_part, plan.hash_jobs),
            "duplicates": measure(find_duplicates, plan.partition_jobs),
            "rewrite": measure(lambda unit, spec=plan.spec: run_shard(spec, unit), plan.units),
        }
    docs = manifest["totals"]["docs_in"]
    counts = manifest["sentence_dedup"]
    result = {
        "scale": scale,
        "parts": parts,
        "partitions": partitions,
        "docs": docs,
        "docs_kept": manifest["totals"]["kept"],
        "docs_dropped": manifest["totals"]["dropped"],
        "sentences_removed_share": round(counts["sentences_removed"] / counts["sentences_in"], 3),
        "ray_wall_s": round(wall, 2),
        "docs_per_s_per_core": round(docs / wall / args.cpus),
        "one_core_docs_per_s": round(docs / sum(passes["timed"].values())),
        "one_core_pass_s": {k: round(v, 2) for k, v in passes["timed"].items()},
        "peak_mb_per_job": {k: round(v, 1) for k, v in passes["traced"].items()},
    }
    bare = bare_loop_seconds(raw)
    result["bare_loop_docs_per_s_one_core"] = round(docs / bare)
    result["ours_one_core_over_bare_loop"] = round(bare / sum(passes["timed"].values()), 2)
    if scale == args.scales[0] and args.datatrove:
            seconds = datatrove_seconds(args.datatrove, root / "raw", root / "datatrove", parts, args.cpus)
            if isinstance(seconds, str):
                result["datatrove_error"] = seconds
            else:
                result["datatrove_wall_s"] = round(seconds, 2)
                result["datatrove_docs_per_s_per_core"] = round(docs / seconds / args.cpus)
                result["ours_over_datatrove"] = round(seconds / wall, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", type=int, default=4, help="parts at scale 1")
    parser.add_argument("--docs-per-part", type=int, default=1000)
    parser.add_argument("--partitions", type=int, default=2, help="hash partitions at scale 1")
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--datatrove", help="folder datatrove was pip-installed into with --target")
    args = parser.parse_args()

    import ray

    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    corpus = Corpus()
    with tempfile.TemporaryDirectory() as tmp:
        for scale in args.scales:
            print(json.dumps(bench_scale(Path(tmp), scale, args, corpus)), flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
