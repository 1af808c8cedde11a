"""A corpus of near-duplicate documents with known ground truth, for MinHash dedup.

Each *family* is one original document and variants of it at controlled edit rates: a rate r
edits round(r * words) random word positions, each edit a substitution, an insertion or a
deletion. Unrelated documents are drawn independently from a large vocabulary of invented words,
so two documents of different families share no word n-gram (in practice: the odds of a shared
5-gram are negligible). Family members are spread over two sources and several parts, so
duplicates cross sources and parts as CommonCrawl and C4 copies do.

The truth is computed from the shingles, not from the edit rate: :func:`true_pairs` gives the
pairs of documents whose Jaccard similarity of shingle sets is at or above a threshold.

Deterministic for a seed: the same call writes byte-identical files.
"""

from __future__ import annotations

import gzip
import itertools
import json
import random
from dataclasses import dataclass
from pathlib import Path

from tasks.curate.minhash import jaccard, shingle_set

EDIT_RATES = (0.0, 0.05, 0.10, 0.30, 0.60)
SOURCES = ("c4", "commoncrawl")
SYLLABLES = "ba be bi bo bu da de di do du ka ke ki ko ku la le li lo lu ma me mi mo mu na ne ni no nu ra re ri ro ru sa se si so su ta te ti to tu va ve vi vo vu".split()


@dataclass(frozen=True)
class SyntheticDoc:
    key: str  # natural key (the url field): the document id derives from it
    source: str
    part: int
    text: str
    family: int  # documents of one family derive from one original; -1 for unrelated ones
    edit_rate: float | None  # None for an original or unrelated document


@dataclass(frozen=True)
class NearDuplicateCorpus:
    documents: list[SyntheticDoc]

    def write_jsonl(self, folder: Path) -> dict[str, list[Path]]:
        """One gzip JSON-lines file per (source, part), in part order: source -> files."""
        files: dict[str, list[Path]] = {}
        for (source, part), docs in itertools.groupby(
            sorted(self.documents, key=lambda d: (d.source, d.part)), key=lambda d: (d.source, d.part)
        ):
            path = folder / source / f"part-{part:03d}.jsonl.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            body = "".join(json.dumps({"url": d.key, "text": d.text}) + "\n" for d in docs).encode()
            # mtime=0: the gzip header then carries no timestamp, so reruns write identical bytes.
            with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as out:
                out.write(body)
            files.setdefault(source, []).append(path)
        return files


def _vocabulary(rng: random.Random, size: int) -> list[str]:
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))))
    return sorted(words)


def edit(words: list[str], rate: float, rng: random.Random, vocabulary: list[str]) -> list[str]:
    """Apply round(rate * len) edits at distinct random positions: substitute, insert or delete."""
    edited = list(words)
    positions = sorted(rng.sample(range(len(words)), round(rate * len(words))), reverse=True)
    for position in positions:  # from the end, so earlier positions keep their meaning
        kind = rng.choice(("substitute", "insert", "delete"))
        if kind == "substitute":
            edited[position] = rng.choice(vocabulary)
        elif kind == "insert":
            edited.insert(position, rng.choice(vocabulary))
        else:
            del edited[position]
    return edited


def generate(
    seed: int = 0,
    families: int = 20,
    unrelated: int = 40,
    words: tuple[int, int] = (150, 400),
    edit_rates: tuple[float, ...] = EDIT_RATES,
    parts: int = 2,
    vocabulary_size: int = 20000,
) -> NearDuplicateCorpus:
    rng = random.Random(seed)
    vocabulary = _vocabulary(rng, vocabulary_size)
    documents: list[SyntheticDoc] = []

    def add(text_words: list[str], family: int, rate: float | None) -> None:
        number = len(documents)
        source, part = rng.choice(SOURCES), rng.randrange(parts)
        key = f"https://example.org/{source}/{number}"
        documents.append(SyntheticDoc(key, source, part, " ".join(text_words) + ".", family, rate))

    for family in range(families):
        original = [rng.choice(vocabulary) for _ in range(rng.randint(*words))]
        add(original, family, None)
        for rate in edit_rates:
            add(edit(original, rate, rng, vocabulary), family, rate)
    for _ in range(unrelated):
        add([rng.choice(vocabulary) for _ in range(rng.randint(*words))], -1, None)
    return NearDuplicateCorpus(documents)


def true_pairs(corpus: NearDuplicateCorpus, threshold: float, ngram: int, unit: str = "words") -> dict[tuple[str, str], float]:
    """(key, key) -> exact Jaccard of the shingle sets, for every pair at or above the threshold.

    Pairs are compared within families only: across families the documents share no shingle by
    construction (tests check that on the corpus they use).
    """
    shingled = {d.key: shingle_set(d.text, ngram, unit) for d in corpus.documents}
    by_family: dict[int, list[SyntheticDoc]] = {}
    for doc in corpus.documents:
        if doc.family >= 0:
            by_family.setdefault(doc.family, []).append(doc)
    truth: dict[tuple[str, str], float] = {}
    for members in by_family.values():
        for left, right in itertools.combinations(members, 2):
            similarity = jaccard(shingled[left.key], shingled[right.key])
            if similarity >= threshold:
                truth[tuple(sorted((left.key, right.key)))] = similarity
    return truth
