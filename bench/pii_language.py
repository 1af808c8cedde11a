"""Documents per second per core of PII scrubbing and language ID, on a synthetic corpus.

    python bench/pii_language.py [--docs 2000] [--chars 2000] [--repeats 3]

Web-like documents: about --chars characters of prose each; one in three carries one to four
snippets of the labelled PII set (a positive or a hard negative). Also reported: the labelled set
itself (short texts dense with numbers, the detector's worst case). One process, one core; best of
--repeats runs. The language filter keeps English (CommonCrawl settings).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tasks.curate.language import LanguageFilter  # noqa: E402
from tasks.curate.pii import PIIScrubber  # noqa: E402
from tasks.documents import Document  # noqa: E402
from tasks.synthetic.c4 import WORDS  # noqa: E402
from tasks.synthetic.pii import NATIONAL_PHONE_REGIONS, labelled_text, labelled_texts  # noqa: E402


def web_corpus(docs: int, chars: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for _ in range(docs):
        sentences, length = [], 0
        while length < chars:
            sentence = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 20))).capitalize() + "."
            sentences.append(sentence)
            length += len(sentence) + 1
        if rng.random() < 1 / 3:
            sentences.insert(rng.randrange(len(sentences)), labelled_text(rng).text)
        texts.append(" ".join(sentences))
    return texts


def docs_per_second(step_factory, texts: list[str], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        step = step_factory()
        docs = [Document(id=str(n), source="bench", text=t) for n, t in enumerate(texts)]
        started = time.perf_counter()
        for at in range(0, len(docs), 256):
            step.run(docs[at : at + 256])
        best = min(best, time.perf_counter() - started)
    return len(texts) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--chars", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    web = web_corpus(args.docs, args.chars)
    dense = [t.text for t in labelled_texts(seed=0, count=args.docs)]
    LanguageFilter().run([Document(id="warm", source="bench", text="warm up the model")])
    us_only = lambda: PIIScrubber(max_hits=None)  # noqa: E731
    four_regions = lambda: PIIScrubber(phone_regions=NATIONAL_PHONE_REGIONS, max_hits=None)  # noqa: E731
    rows = [
        ("PII, web-like, phone region US", us_only, web),
        (f"PII, web-like, phone regions {'+'.join(NATIONAL_PHONE_REGIONS)}", four_regions, web),
        (f"PII, labelled set (dense), regions {'+'.join(NATIONAL_PHONE_REGIONS)}", four_regions, dense),
        ("language ID (lid.176.ftz), web-like", LanguageFilter, web),
    ]
    for label, factory, texts in rows:
        rate = docs_per_second(factory, texts, args.repeats)
        mean_chars = sum(map(len, texts)) / len(texts)
        print(f"{label:<58} {rate:>9,.0f} docs/s  {rate * mean_chars / 1e6:6.2f} MB/s  ({mean_chars:,.0f} chars/doc)")


if __name__ == "__main__":
    main()
