"""Composable document steps.

A step receives documents in batches and returns, for each, the (possibly changed) document or a
:class:`Drop` carrying a reason. The base class owns batching, counting and timing; a subclass only
says what is specific to it by overriding :meth:`Step.apply` (one document) or
:meth:`Step.apply_batch` (when the work vectorises, e.g. a model scoring many texts at once).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from tasks.documents import Document


@dataclass(slots=True, frozen=True)
class Drop:
    reason: str


@dataclass
class StepStats:
    seen: int = 0
    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {
            "seen": self.seen,
            "kept": self.kept,
            "dropped": dict(sorted(self.dropped.items())),
            "seconds": round(self.seconds, 6),
        }


class Step:
    """Base class of every document step. ``name`` prefixes the drop reasons it counts."""

    name: str = "step"

    def __init__(self) -> None:
        self.stats = StepStats()

    def apply(self, doc: Document) -> Document | Drop:
        raise NotImplementedError(f"{type(self).__name__} must implement apply or apply_batch")

    def apply_batch(self, docs: Sequence[Document]) -> list[Document | Drop]:
        return [self.apply(doc) for doc in docs]

    def drop(self, reason: str) -> Drop:
        return Drop(f"{self.name}:{reason}")

    def run(self, docs: Sequence[Document]) -> list[Document | Drop]:
        started = time.perf_counter()
        results = self.apply_batch(docs)
        if len(results) != len(docs):
            raise RuntimeError(f"step {self.name} returned {len(results)} results for {len(docs)} documents")
        self.stats.seconds += time.perf_counter() - started
        self.stats.seen += len(docs)
        for result in results:
            if isinstance(result, Drop):
                self.stats.dropped[result.reason] += 1
            else:
                self.stats.kept += 1
        return results


def batched(items: Iterable, size: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class MinLength(Step):
    """Drops documents whose stripped text is shorter than ``min_chars`` characters."""

    name = "min_length"

    def __init__(self, min_chars: int) -> None:
        super().__init__()
        if min_chars < 0:
            raise ValueError(f"min_chars must be >= 0, got {min_chars}")
        self.min_chars = min_chars

    def apply(self, doc: Document) -> Document | Drop:
        if len(doc.text.strip()) < self.min_chars:
            return self.drop("too_short")
        return doc
