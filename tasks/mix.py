"""The mix step: how many tokens of each source the model sees, written as a document stage.

A mixture recipe gives every source either a ``share`` of ``total_tokens`` or a number of
``epochs`` over what the source holds. Shares are renormalised to sum to 1 over the share-form
sources the recipe names, which fill ``total_tokens`` less the tokens of the epochs-form sources:
LLaMA's five in-scope shares sum to 0.935 (GitHub and StackExchange are out of scope), so each is
divided by 0.935. Tokens are counted as tokenize_and_pack counts them: ``<s> ids </s>``.

A source's target gives ``epochs = target / available``. Its whole epochs repeat every document,
each repeat in a fresh seeded order of its part; the fractional epoch takes the documents whose
64-bit key, a hash of (seed, source, doc id), is below a threshold. The threshold comes from the
token-weighted distribution of the keys over the whole source: each part sums its tokens into
65,536 buckets of the key's top 16 bits, the sums are added, and the bucket where the fractional
target is crossed is resolved exactly with a second pass over just that bucket's documents. So
the sample is uniform over documents, independent of how the source is split into parts, and its
tokens match the target to within one document.

A repeat of a document gets the id ``f"{id}#{repeat}"`` (repeat >= 1): ids stay unique. The
plan (available, target and realised tokens, epochs, thresholds) and the realised shares go into
``<stage>/_mixture.json`` and the returned manifest's ``mixture``. Same inputs, tokenizer, recipe
and seed give byte-identical parts. Each mix task holds one input part's columns in memory (to
permute it), never a whole source.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from pydantic import BaseModel, Field, field_validator, model_validator

from tasks.tokenizer import Tokenizer
from tasks.documents import REQUIRED_COLUMNS, BadRecord, Document
from tasks.executor import run_tasks
from tasks.shards import read_part
from tasks.sources import SourceName
from tasks.stage import ShardUnit, StageSpec, run_stage, units_from_stage
from tasks.steps import Drop, batched
from tasks.storage import Location, resolve, write_json_atomic

MIXTURE_FILE = "_mixture.json"
KEY_BITS = 64
BUCKET_BITS = 16
BUCKETS = 1 << BUCKET_BITS
BUCKET_SHIFT = KEY_BITS - BUCKET_BITS
ENCODE_BATCH_DOCS = 256


class SourceMix(BaseModel):
    share: float | None = Field(None, gt=0, le=1, description="Fraction of the training tokens")
    epochs: float | None = Field(None, gt=0, description="Passes over the source's tokens")

    @model_validator(mode="after")
    def _one_form(self) -> SourceMix:
        if (self.share is None) == (self.epochs is None):
            raise ValueError("give a source exactly one of share or epochs")
        return self


class MixtureRecipe(BaseModel):
    name: str
    total_tokens: int | None = Field(None, gt=0)
    max_epochs: float = Field(4.0, gt=0)
    seed: int = 0
    sources: dict[SourceName, SourceMix]

    @field_validator("sources")
    @classmethod
    def _some(cls, sources: dict) -> dict:
        if not sources:
            raise ValueError("a mixture names at least one source")
        return sources

    @model_validator(mode="after")
    def _total_for_shares(self) -> MixtureRecipe:
        if self.total_tokens is None and any(s.share is not None for s in self.sources.values()):
            raise ValueError("total_tokens is required when a source gives a share")
        return self


def load_mixture(name_or_path: str) -> MixtureRecipe:
    """A mixture shipped with the platform by name (``llama1``) or a YAML file of one's own."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"mixture file not found: {name_or_path}")
        text = path.read_text()
    else:
        shipped = resources.files("tasks") / "mixtures" / f"{name_or_path}.yaml"
        if not shipped.is_file():
            raise FileNotFoundError(f"no mixture named {name_or_path!r} (and no such file)")
        text = shipped.read_text()
    return MixtureRecipe.model_validate(yaml.safe_load(text))


def doc_key(seed: int, source: str, doc_id: str) -> int:
    """The document's 64-bit sampling key: uniform, and the same whichever part holds it."""
    digest = hashlib.blake2b(f"{seed}\x00{source}\x00{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


# ---------------------------------------------------------------- counting (Ray tasks)


@dataclass(frozen=True)
class PartCount:
    source: str
    index: int
    documents: int
    tokens: int
    bucket_tokens: np.ndarray  # tokens per key bucket, int64[BUCKETS]
    extra_columns: pa.Schema


def _token_counts(tokenizer: Tokenizer, docs: Sequence[Document]) -> list[int]:
    return [len(ids) for ids in tokenizer.encode_batch([d.text for d in docs], bos=True, eos=True)]


def count_part(tokenizer: Tokenizer, seed: int, unit: ShardUnit) -> PartCount:
    """Tokens of one part, and their histogram over the top 16 bits of the documents' keys."""
    location = resolve(unit.input.uri)
    histogram = np.zeros(BUCKETS, dtype=np.int64)
    documents = tokens = 0
    for docs in batched(read_part(location), ENCODE_BATCH_DOCS):
        counts = np.array(_token_counts(tokenizer, docs), dtype=np.int64)
        buckets = np.array([doc_key(seed, unit.source, d.id) >> BUCKET_SHIFT for d in docs], dtype=np.int64)
        np.add.at(histogram, buckets, counts)
        documents += len(docs)
        tokens += int(counts.sum())
    with location.open_random_access() as f:
        schema = pq.ParquetFile(f).schema_arrow
    extra = pa.schema([f for f in schema if f.name not in REQUIRED_COLUMNS])
    return PartCount(unit.source, unit.index, documents, tokens, histogram, extra)


def keys_in_bucket(tokenizer: Tokenizer, seed: int, unit: ShardUnit, bucket: int) -> list[tuple[int, int]]:
    """(key, tokens) of the part's documents whose key falls in one bucket."""
    inside = (
        (key, doc)
        for doc in read_part(resolve(unit.input.uri))
        if (key := doc_key(seed, unit.source, doc.id)) >> BUCKET_SHIFT == bucket
    )
    found: list[tuple[int, int]] = []
    for pairs in batched(inside, ENCODE_BATCH_DOCS):
        counts = _token_counts(tokenizer, [doc for _, doc in pairs])
        found.extend((key, count) for (key, _), count in zip(pairs, counts))
    return found


# ---------------------------------------------------------------- planning


def _targets(recipe: MixtureRecipe, available: dict[str, int]) -> dict[str, int]:
    by_epochs = {s: round(m.epochs * available[s]) for s, m in recipe.sources.items() if m.epochs is not None}
    shares = {s: m.share for s, m in recipe.sources.items() if m.share is not None}
    targets = dict(by_epochs)
    if shares:
        pool = recipe.total_tokens - sum(by_epochs.values())
        if pool <= 0:
            raise ValueError(
                f"mixture {recipe.name}: the epochs-form sources take {sum(by_epochs.values()):,} tokens, "
                f"nothing is left of total_tokens={recipe.total_tokens:,} for the shares"
            )
        share_sum = sum(shares.values())
        targets |= {s: round(pool * share / share_sum) for s, share in shares.items()}
    return targets


def _check_epochs(recipe: MixtureRecipe, available: dict[str, int], targets: dict[str, int]) -> None:
    for source, target in sorted(targets.items()):
        if available[source] == 0:
            raise ValueError(f"mixture {recipe.name}: source {source} has no tokens in the stage, needs {target:,}")
        needed = target / available[source]
        if needed > recipe.max_epochs:
            raise ValueError(
                f"mixture {recipe.name}: source {source} is too small: {available[source]:,} tokens, "
                f"its target of {target:,} needs {needed:.3f} epochs, more than max_epochs={recipe.max_epochs}"
            )


def _crossing(histogram: np.ndarray, rest: int) -> tuple[int, int]:
    """The bucket where the cumulative tokens reach ``rest``, and the tokens of the buckets before it."""
    cumulative = np.cumsum(histogram)
    bucket = int(np.searchsorted(cumulative, rest, side="left"))
    return bucket, int(cumulative[bucket - 1]) if bucket else 0


def _resolve_threshold(pairs: list[tuple[int, int]], bucket: int, before: int, rest: int) -> tuple[int, int]:
    """The key below which the selected tokens come closest to ``rest``, and those tokens."""
    pairs = sorted(pairs)
    best_n, best_tokens, running = 0, before, before
    for n, (_, tokens) in enumerate(pairs, 1):
        running += tokens
        if abs(running - rest) < abs(best_tokens - rest):
            best_n, best_tokens = n, running
    threshold = pairs[best_n][0] if best_n < len(pairs) else (bucket + 1) << BUCKET_SHIFT
    return threshold, best_tokens


def plan_mixture(stage_dir: Location, tokenizer: Tokenizer, recipe: MixtureRecipe) -> dict[str, Any]:
    """Count each source's tokens, set targets and epochs, pick the fractional thresholds.

    Raises ValueError for a source missing from the stage or too small for its target at
    ``max_epochs``; nothing is written.
    """
    units = units_from_stage(stage_dir, sorted(recipe.sources))
    missing = sorted(set(recipe.sources) - {u.source for u in units})
    if missing:
        raise ValueError(f"mixture {recipe.name}: no parts of {', '.join(missing)} in {stage_dir.uri}")
    counts: list[PartCount] = run_tasks(
        count_part, [(u,) for u in units], shared=(tokenizer, recipe.seed), label=f"mix {recipe.name}: counting tokens"
    )
    available = {s: sum(c.tokens for c in counts if c.source == s) for s in recipe.sources}
    targets = _targets(recipe, available)
    _check_epochs(recipe, available, targets)

    sources: dict[str, Any] = {}
    for source in sorted(recipe.sources):
        mine = [c for c in counts if c.source == source]
        whole, rest = divmod(targets[source], available[source])
        threshold, fraction_tokens = 0, 0
        if rest:
            histogram = np.sum([c.bucket_tokens for c in mine], axis=0)
            bucket, before = _crossing(histogram, rest)
            pairs = run_tasks(
                keys_in_bucket, [(u, bucket) for u in units if u.source == source], shared=(tokenizer, recipe.seed),
                label=f"mix {recipe.name}: {source} threshold",
            )
            threshold, fraction_tokens = _resolve_threshold([p for part in pairs for p in part], bucket, before, rest)
        sources[source] = {
            "documents": sum(c.documents for c in mine),
            "available_tokens": available[source],
            "target_tokens": targets[source],
            "epochs": targets[source] / available[source],
            "whole_epochs": whole,
            "fraction_threshold": threshold,
            "realised_tokens": whole * available[source] + fraction_tokens,
        }
    target_total = sum(targets.values())
    realised_total = sum(s["realised_tokens"] for s in sources.values())
    for entry in sources.values():
        entry["target_share"] = entry["target_tokens"] / target_total
        entry["realised_share"] = entry["realised_tokens"] / realised_total
    extra = pa.unify_schemas([c.extra_columns for c in counts]) if counts else pa.schema([])
    return {
        "recipe": recipe.model_dump(mode="json"),
        "tokenizer_sha256": hashlib.sha256(tokenizer.model_proto).hexdigest(),
        "target_tokens": target_total,
        "realised_tokens": realised_total,
        "sources": sources,
        "extra_columns": extra,
    }


# ---------------------------------------------------------------- writing the mixed stage


@dataclass(frozen=True)
class MixReader:
    """Reads one input part as its source's whole epochs (each in a fresh order) and sampled fraction."""

    seed: int
    whole_epochs: dict[str, int] = field(default_factory=dict)
    thresholds: dict[str, int] = field(default_factory=dict)

    def read(self, unit: ShardUnit) -> Iterator[Document | Drop | BadRecord]:
        docs = list(read_part(resolve(unit.input.uri)))
        whole = self.whole_epochs[unit.source]
        for repeat in range(whole):
            for position in self._order(unit, repeat, len(docs)):
                yield _repeated(docs[position], repeat)
        threshold = self.thresholds[unit.source]
        if threshold:
            sampled = [d for d in docs if doc_key(self.seed, unit.source, d.id) < threshold]
            for position in self._order(unit, whole, len(sampled)):
                yield _repeated(sampled[position], whole)

    def _order(self, unit: ShardUnit, repeat: int, n: int) -> np.ndarray:
        source_key = int.from_bytes(hashlib.blake2b(unit.source.encode(), digest_size=8).digest(), "big")
        rng = np.random.default_rng([self.seed, source_key, unit.index, repeat])
        return rng.permutation(n)


def _repeated(doc: Document, repeat: int) -> Document:
    if repeat == 0:
        return doc
    return Document(id=f"{doc.id}#{repeat}", source=doc.source, text=doc.text, meta=doc.meta, columns=doc.columns)


def run_mix(
    stage_dir: Location,
    tokenizer: Tokenizer,
    recipe: MixtureRecipe,
    out_root: str,
    stage_name: str = "mixed",
) -> dict[str, Any]:
    """Plan the mixture (failing before any output when a source is too small), then write it.

    Returns the stage manifest with the plan under ``mixture``; the plan is also written to
    ``<out_root>/<stage_name>/_mixture.json``.
    """
    plan = plan_mixture(stage_dir, tokenizer, recipe)
    extra: pa.Schema = plan.pop("extra_columns")
    sources = plan["sources"]
    reader = MixReader(
        seed=recipe.seed,
        whole_epochs={s: p["whole_epochs"] for s, p in sources.items()},
        thresholds={s: p["fraction_threshold"] for s, p in sources.items()},
    )
    spec = StageSpec(
        root=out_root,
        name=stage_name,
        reader=reader,
        parameters={
            "mixture": recipe.model_dump(mode="json"),
            "tokenizer_sha256": plan["tokenizer_sha256"],
            "whole_epochs": reader.whole_epochs,
            "thresholds": reader.thresholds,
        },
        extra_columns=extra if len(extra) else None,
    )
    manifest = run_stage(spec, units_from_stage(stage_dir, sorted(recipe.sources)))
    write_json_atomic(spec.stage_dir.join(MIXTURE_FILE), plan)
    return {**manifest, "mixture": plan}

