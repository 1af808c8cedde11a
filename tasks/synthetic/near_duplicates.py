"""A corpus of near-duplicate documents with known ground truth, for MinHash dedup.

Each *family* is one original document and variants of it at controlled edit rates: a rate r
edits round(r * words) random word positions, each edit a substitution, an insertion or a
deletion. Unrelated documents are drawn independently from a large vocabulary of invented words,
so two documents of different families share no word n-gram (in practice: the odds of a shared
5-gram are negligible). *Site pages* are the near misses: pages of one site share its boilerplate
(navigation before the body, footer after it) around a body of their own, so two of them share
most of their n-grams and are still distinct documents. Family members and pages are spread over
two sources and several parts, so duplicates cross sources and parts as CommonCrawl and C4 copies do.

The truth is how the corpus was made, not what any shingling makes of it: a *near-copy* is a
variant derived from an original at an edit rate at or under a bound the caller states, and the
original with its near-copies is one true cluster; every other document (unrelated, or edited past
the bound) is a cluster of its own. :func:`score` compares a dedup run's clusters with that truth.

Deterministic for a seed: the same call writes byte-identical files.
"""

from __future__ import annotations

import gzip
import itertools
import json
import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from math import comb
from pathlib import Path

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
    site: int = -1  # pages of one site share its boilerplate; -1 for documents of no site


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
    sites: int = 0,
    pages_per_site: int = 10,
    boilerplate_words: tuple[int, int] = (150, 250),
    body_words: tuple[int, int] = (40, 80),
) -> NearDuplicateCorpus:
    rng = random.Random(seed)
    vocabulary = _vocabulary(rng, vocabulary_size)
    documents: list[SyntheticDoc] = []

    def add(text_words: list[str], family: int, rate: float | None, site: int = -1) -> None:
        number = len(documents)
        source, part = rng.choice(SOURCES), rng.randrange(parts)
        key = f"https://example.org/{source}/{number}"
        documents.append(SyntheticDoc(key, source, part, " ".join(text_words) + ".", family, rate, site))

    for family in range(families):
        original = [rng.choice(vocabulary) for _ in range(rng.randint(*words))]
        add(original, family, None)
        for rate in edit_rates:
            add(edit(original, rate, rng, vocabulary), family, rate)
    for _ in range(unrelated):
        add([rng.choice(vocabulary) for _ in range(rng.randint(*words))], -1, None)
    for site in range(sites):
        boilerplate = [rng.choice(vocabulary) for _ in range(rng.randint(*boilerplate_words))]
        header = rng.randrange(len(boilerplate) + 1)
        for _ in range(pages_per_site):
            body = [rng.choice(vocabulary) for _ in range(rng.randint(*body_words))]
            add(boilerplate[:header] + body + boilerplate[header:], -1, None, site)
    return NearDuplicateCorpus(documents)


def true_clusters(corpus: NearDuplicateCorpus, max_edit_rate: float) -> dict[str, int]:
    """Key -> family of every original and of every variant edited at or under ``max_edit_rate``."""
    return {
        d.key: d.family
        for d in corpus.documents
        if d.family >= 0 and (d.edit_rate is None or d.edit_rate <= max_edit_rate)
    }


@dataclass(frozen=True)
class DedupQuality:
    """A dedup run against the true clusters.

    Documents: a dropped document is *correct* when the kept document it was dropped for is in its
    true cluster; ``precision`` = correct / dropped, ``recall`` = correct / removable, where
    removable = the sum over true clusters of (size - 1), what a perfect dedup drops. Pairs: two
    documents in one cluster of the run form a predicted pair, two in one true cluster a true pair;
    ``pair_precision`` and ``pair_recall`` are the usual ratios of the two sets. ``joined_by_edit_rate``:
    for each edit rate up to the bound, the share of its variants the run put with their original.
    """

    dropped: int
    removable: int
    correct: int
    precision: float
    recall: float
    pair_precision: float
    pair_recall: float
    joined_by_edit_rate: dict[float, float]

    def as_dict(self) -> dict:
        rounded = {k: round(v, 4) if isinstance(v, float) else v for k, v in self.__dict__.items()}
        rounded["joined_by_edit_rate"] = {str(r): round(v, 4) for r, v in self.joined_by_edit_rate.items()}
        return rounded


def score(corpus: NearDuplicateCorpus, kept_for: Mapping[str, str], max_edit_rate: float) -> DedupQuality:
    """``kept_for``: each dropped document's key -> the key of the kept document it duplicates;
    ``max_edit_rate``: the most edited variant that still counts as a duplicate of its original."""
    keys = {d.key for d in corpus.documents}
    for dropped, kept in kept_for.items():
        if dropped not in keys or kept not in keys:
            raise ValueError(f"dropped {dropped!r} -> kept {kept!r}: not a document of the corpus")
        if kept in kept_for:
            raise ValueError(f"{dropped!r} was dropped for {kept!r}, which was dropped too")
    family = true_clusters(corpus, max_edit_rate)
    sizes = Counter(family.values())
    removable = sum(size - 1 for size in sizes.values())
    correct = sum(1 for dropped, kept in kept_for.items() if dropped in family and family.get(kept) == family[dropped])

    run_cluster = {key: kept_for.get(key, key) for key in keys}
    true_cluster = {key: family.get(key, key) for key in keys}
    pairs = lambda counts: sum(comb(n, 2) for n in counts.values())
    predicted, true = pairs(Counter(run_cluster.values())), pairs(Counter(true_cluster.values()))
    both = pairs(Counter((run_cluster[k], true_cluster[k]) for k in keys))

    original = {d.family: d.key for d in corpus.documents if d.family >= 0 and d.edit_rate is None}
    variants: dict[float, list[bool]] = {}
    for d in corpus.documents:
        if d.edit_rate is not None and d.key in family:
            variants.setdefault(d.edit_rate, []).append(run_cluster[d.key] == run_cluster[original[d.family]])
    ratio = lambda part, whole: part / whole if whole else 1.0
    return DedupQuality(
        dropped=len(kept_for),
        removable=removable,
        correct=correct,
        precision=ratio(correct, len(kept_for)),
        recall=ratio(correct, removable),
        pair_precision=ratio(both, predicted),
        pair_recall=ratio(both, true),
        joined_by_edit_rate={rate: sum(v) / len(v) for rate, v in sorted(variants.items())},
    )
