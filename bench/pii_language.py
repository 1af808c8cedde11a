"""Documents per second per core of PII scrubbing and language ID, and PII quality on log and mail lines.

    python bench/pii_language.py [--docs 2000] [--chars 2000] [--repeats 3] [--log-lines 80000]

Web-like documents: about --chars characters of prose each; one in three carries one to four
snippets of the labelled PII set (a positive or a hard negative). Also reported: the labelled set
itself (short texts dense with numbers, the detector's worst case), and log and mail files
(tasks/synthetic/logs.py, 100 lines a document). One process, one core; best of --repeats runs.
The language filter keeps English (CommonCrawl settings).

Quality, on --log-lines labelled log and mail lines (about 60% without PII) and on the labelled
web set: exact-span true/false positives and misses per kind, phone recall apart for numbers
written with a + or separators and for bare digit runs, and the lines without PII that detection
would change (the bar: at most 1 in 10,000). The peer is libphonenumber's PhoneNumberMatcher run
over the whole text at its default VALID leniency for each region, as Presidio's PhoneRecognizer
runs it: its phone quality and speed on the same log files beside ours.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import phonenumbers

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tasks.curate.language import LanguageFilter  # noqa: E402
from tasks.curate.pii import KINDS, PIIDetector, PIIScrubber  # noqa: E402
from tasks.documents import Document  # noqa: E402
from tasks.synthetic.c4 import WORDS  # noqa: E402
from tasks.synthetic.logs import changed_clean_lines, log_lines  # noqa: E402
from tasks.synthetic.pii import NATIONAL_PHONE_REGIONS, labelled_text, labelled_texts, score_spans  # noqa: E402

LINES_PER_LOG_FILE = 100
QUALITY_KINDS = ("EMAIL_ADDRESS", "PHONE_NUMBER", "IP_ADDRESS")


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


def stock_phone_spans(text: str, regions=NATIONAL_PHONE_REGIONS) -> set[tuple[int, int, str]]:
    """The peer: libphonenumber's own matcher over the whole text, each region in turn."""
    return {(m.start, m.end, "PHONE_NUMBER") for region in regions for m in phonenumbers.PhoneNumberMatcher(text, region)}


def files_per_second(find, files: list[str], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for text in files:
            find(text)
        best = min(best, time.perf_counter() - started)
    return len(files) / best


def report_quality(title: str, texts, predict, kinds=QUALITY_KINDS) -> None:
    found = {t.text: set(predict(t.text)) for t in texts}  # equal texts get equal spans
    scores = score_spans(texts, found.__getitem__)
    print(f"\n{title}")
    print(f"  {'kind':<15} {'TP':>7} {'FP':>6} {'FN':>6}  precision  recall")
    for kind in kinds:
        s = scores[kind]
        print(f"  {kind:<15} {s.true_positives:>7} {s.false_positives:>6} {s.false_negatives:>6}  {s.precision:9.5f}  {s.recall:.5f}")
    if "PHONE_NUMBER" in kinds:
        for label, bare in (("+ or separators", False), ("bare digits", True)):
            phones = [(t, s) for t in texts for s in t.spans if s.kind == "PHONE_NUMBER" and t.text[s.start : s.end].isdigit() == bare]
            hits = sum((s.start, s.end, s.kind) in found[t.text] for t, s in phones)
            if phones:
                print(f"    phones written with {label:<16} recall {hits:,}/{len(phones):,} = {hits / len(phones):.5f}")
    changed, clean = changed_clean_lines(texts, found.__getitem__)
    if clean:
        print(f"  lines without PII changed: {changed:,} / {clean:,} = {changed / clean * 10_000:.2f} per 10,000")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--chars", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--log-lines", type=int, default=80_000)
    args = parser.parse_args()

    web = web_corpus(args.docs, args.chars)
    dense = [t.text for t in labelled_texts(seed=0, count=args.docs)]
    logs = log_lines(seed=0, count=args.log_lines)
    log_files = ["\n".join(t.text for t in logs[at : at + LINES_PER_LOG_FILE]) for at in range(0, len(logs), LINES_PER_LOG_FILE)]
    LanguageFilter().run([Document(id="warm", source="bench", text="warm up the model")])
    us_only = lambda: PIIScrubber(max_hits=None)  # noqa: E731
    four_regions = lambda: PIIScrubber(phone_regions=NATIONAL_PHONE_REGIONS, max_hits=None)  # noqa: E731
    regions = "+".join(NATIONAL_PHONE_REGIONS)
    rows = [
        ("PII, web-like, phone region US", us_only, web),
        (f"PII, web-like, phone regions {regions}", four_regions, web),
        (f"PII, labelled set (dense), regions {regions}", four_regions, dense),
        (f"PII, log and mail files, regions {regions}", four_regions, log_files),
        ("language ID (lid.176.ftz), web-like", LanguageFilter, web),
    ]
    for label, factory, texts in rows:
        rate = docs_per_second(factory, texts, args.repeats)
        mean_chars = sum(map(len, texts)) / len(texts)
        print(f"{label:<58} {rate:>9,.1f} docs/s  {rate * mean_chars / 1e6:6.2f} MB/s  ({mean_chars:,.0f} chars/doc)")

    detector = PIIDetector(phone_regions=NATIONAL_PHONE_REGIONS)
    ours = files_per_second(detector.find, log_files, args.repeats)
    peer = files_per_second(stock_phone_spans, log_files, args.repeats)
    print(f"phones alone on log files: ours (all kinds) {ours:,.1f} files/s, libphonenumber's matcher {peer:,.1f} files/s: {ours / peer:.2f}x")

    def ours_spans(text: str) -> list[tuple[int, int, str]]:
        return [(s.start, s.end, s.kind) for s in detector.find(text)]

    clean = sum(not t.spans for t in logs)
    report_quality(f"ours on {len(logs):,} log and mail lines (seed 0, {clean:,} without PII), regions {regions}", logs, ours_spans)
    report_quality("peer (libphonenumber's matcher, VALID) on the same lines, phones only", logs, stock_phone_spans, ("PHONE_NUMBER",))
    web_set = labelled_texts(seed=1, count=args.docs)
    report_quality(f"ours on the labelled web set ({len(web_set):,} texts, seed 1)", web_set, ours_spans, KINDS)


if __name__ == "__main__":
    main()
