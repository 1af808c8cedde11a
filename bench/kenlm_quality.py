"""CCNet quality scoring throughput per core (CPU time): documents/s and MB/s, and where the time goes.

    python bench/kenlm_quality.py [--vocab 8000] [--doc-chars 3000] [--repeat 3]

Trains an English model (SentencePiece + 5-gram KenLM) on the real English text of the sample
corpora (the Wikipedia sample and the English Gutenberg books), then scores documents cut from the
same books (``doc-chars`` each, on paragraph boundaries) with :class:`PerplexityScorer` in this one
process, and times the parts of the work separately:
- normalisation alone (tasks.curate.normalize, per line);
- SentencePiece encoding of the normalised lines;
- KenLM scoring of the already tokenised lines (the floor: kenlm's own query cost).
A model trained on a few MB is small and stays in cache; CCNet's real models (65,536 pieces,
Wikipedia of a language) are GBs and their queries miss cache more: expect the KenLM part to grow.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from tasks.curate.normalize import normalize
from tasks.curate.quality import PerplexityScorer, train_quality_model
from tasks.documents import Document
from tasks.sources.wikipedia import WikipediaReader
from tasks.stage import InputFile, ShardUnit

CORPORA = Path(__file__).resolve().parents[1] / ".." / "shared" / "corpora"
DUTCH_BOOK = "pg16215.txt"  # the one Dutch e-book of the sample


def english_texts() -> list[str]:
    dump = CORPORA / "wikipedia" / "enwiki-table-markup.xml.bz2"
    unit = ShardUnit("wikipedia", 0, InputFile.describe(str(dump)))
    wikipedia = [d.text for d in WikipediaReader().read(unit) if isinstance(d, Document)]
    books = [p.read_text(encoding="utf-8", errors="replace") for p in sorted((CORPORA / "books").glob("pg*.txt"))
             if p.name != DUTCH_BOOK]
    return wikipedia + books


def documents_from(texts: list[str], doc_chars: int) -> list[Document]:
    docs: list[Document] = []
    for text in texts:
        paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
        current: list[str] = []
        size = 0
        for paragraph in paragraphs:
            current.append(paragraph)
            size += len(paragraph)
            if size >= doc_chars:
                docs.append(Document(f"b-{len(docs)}", "bench", "\n".join(current), {"language": "en"}))
                current, size = [], 0
    return docs


def best_of(repeat: int, work) -> float:
    """Least CPU time of this process over ``repeat`` runs: per-core cost, whatever else runs."""
    times = []
    for _ in range(repeat):
        started = time.process_time()
        work()
        times.append(time.process_time() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--doc-chars", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not CORPORA.is_dir():
        sys.exit(f"sample corpora not found at {CORPORA}")

    texts = english_texts()
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        model = train_quality_model(texts, folder, "en", vocab_size=args.vocab)
        trained = time.perf_counter() - started
        size_mb = Path(model.kenlm).stat().st_size / 1e6
        print(f"training: {sum(map(len, texts)) / 1e6:.1f} M chars, vocab {args.vocab}, {trained:.1f} s; "
              f"binary model {size_mb:.1f} MB")

        docs = documents_from(texts, args.doc_chars)
        megabytes = sum(len(d.text.encode()) for d in docs) / 1e6
        scorer = PerplexityScorer({"en": model})
        scorer.run(docs[:1])  # load the models outside the timing
        sp, lm = scorer._loaded["en"]

        lines = [line for d in docs for line in d.text.splitlines()]
        normalized = [n for n in map(normalize, lines) if n]
        tokenized = [" ".join(p) for p in sp.encode(normalized, out_type=str)]

        full = best_of(args.repeat, lambda: scorer.run(docs))
        parts = {
            "normalise": best_of(args.repeat, lambda: [normalize(line) for line in lines]),
            "sentencepiece": best_of(args.repeat, lambda: sp.encode(normalized, out_type=str)),
            "kenlm": best_of(args.repeat, lambda: [lm.score(t, bos=True, eos=True) for t in tokenized]),
        }
    print(f"documents: {len(docs)} of ~{args.doc_chars} chars ({megabytes:.1f} MB, {len(lines)} lines)")
    print(f"PerplexityScorer, 1 core: {len(docs) / full:,.0f} docs/s, {megabytes / full:.2f} MB/s")
    for name, seconds in parts.items():
        print(f"  {name:>13}: {seconds / full:5.1%} of the time ({megabytes / seconds:.2f} MB/s alone)")


if __name__ == "__main__":
    main()
