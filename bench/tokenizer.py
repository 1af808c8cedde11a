"""Encoding speed per core: our Tokenizer.encode_batch, bare SentencePiece, Hugging Face tokenizers.

    python bench/tokenizer.py [--model tokenizer.model] [--vocab 8000] [--batch 1000] [--repeats 5]

Text: the Project Gutenberg books of ../shared/corpora (paragraphs as texts). Without --model,
a tokenizer is trained on them first (LLaMA's settings, `--vocab` pieces). The Hugging Face fast
tokenizer is the one `export_hf` writes. Everything runs on one thread (RAYON_NUM_THREADS=1 for
the Rust library), so the rates are per core; the median of `--repeats` passes over the whole
text, by wall clock and by process CPU time (steadier on a shared machine). Needs transformers.
"""

from __future__ import annotations

import os

os.environ["RAYON_NUM_THREADS"] = "1"  # before tokenizers starts its thread pool
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import sentencepiece as spm
from tokenizers import Tokenizer as RustTokenizer

from tasks.tokenizer import MODEL_FILE, Tokenizer, export_hf, train_tokenizer

from corpora import book_paragraphs  # bench/corpora.py; the benchmarks run as python bench/<name>.py


def batches(texts: list[str], size: int) -> list[list[str]]:
    return [texts[i : i + size] for i in range(0, len(texts), size)]


def timed_passes(encode_all, repeats: int) -> tuple[float, float, int]:
    """Median wall and CPU seconds of one pass, and the tokens of a pass."""
    walls, cpus, n_tokens = [], [], 0
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        n_tokens = encode_all()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus), n_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a tokenizer.model (default: train one on the books)")
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--batch", type=int, default=1000, help="texts per encode_batch call")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    texts = book_paragraphs()
    with tempfile.TemporaryDirectory() as scratch:
        if args.model:
            ours = Tokenizer.load(args.model)
        else:
            started = time.perf_counter()
            ours = train_tokenizer(texts, scratch, vocab_size=args.vocab, hard_vocab_limit=False)
            print(f"trained {ours.vocab_size} pieces on {len(texts)} paragraphs in {time.perf_counter() - started:.1f} s")
        hf_folder = export_hf(ours, Path(scratch) / "hf")
        bare = spm.SentencePieceProcessor(model_file=str(hf_folder / MODEL_FILE))
        rust = RustTokenizer.from_file(str(hf_folder / "tokenizer.json"))

        chunks = batches(texts, args.batch)
        contenders = {
            "ours encode_batch": lambda: sum(len(ids) for c in chunks for ids in ours.encode_batch(c)),
            "bare sentencepiece": lambda: sum(
                len(ids) for c in chunks for ids in bare.encode(c, add_bos=True, num_threads=1)
            ),
            "hf tokenizers": lambda: sum(len(e.ids) for c in chunks for e in rust.encode_batch_fast(c)),
        }
        n_bytes = sum(len(t.encode()) for t in texts)
        print(f"{len(texts)} texts, {n_bytes / 1e6:.1f} MB, batches of {args.batch}, one thread")
        results = {name: timed_passes(fn, args.repeats) for name, fn in contenders.items()}
        reference_cpu = results["bare sentencepiece"][1]
        for name, (wall, cpu, n_tokens) in results.items():
            print(
                f"{name:<19} {n_tokens:>9} tokens  wall {n_tokens / wall:>10.0f} tok/s  "
                f"cpu {n_tokens / cpu:>10.0f} tok/s  cpu time vs bare sentencepiece {cpu / reference_cpu:.2f}x"
            )


if __name__ == "__main__":
    main()
