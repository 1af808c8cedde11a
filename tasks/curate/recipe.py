"""Curation recipes: which steps each source goes through, with their parameters (YAML).

A source's documents go through the stages in this order, each a folder under the output root:
``line_dedup`` (CCNet's exact line dedup, where configured) -> ``filtered`` (the source's
document filters: language, heuristics; KenLM perplexity where it filters by quality) ->
``quality`` (head/middle/tail buckets) -> ``sentence_dedup`` (C4's three-sentence spans, where
configured) -> ``minhash`` (near-duplicates across the sources that join it) or ``book_dedup`` ->
``curated`` (PII scrubbing; the stage later steps read).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, field_validator, model_validator

from tasks.curate.heuristics import C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter
from tasks.curate.language import LanguageFilter
from tasks.curate.pii import PIIScrubber
from tasks.sources import SourceName
from tasks.steps import Step

FILTERS: dict[str, type[Step]] = {
    "language": LanguageFilter,
    "c4_quality": C4QualityFilter,
    "gopher_quality": GopherQualityFilter,
    "gopher_repetition": GopherRepetitionFilter,
}


class FilterSpec(BaseModel):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _constructs(self) -> FilterSpec:
        if self.name not in FILTERS:
            raise ValueError(f"unknown filter {self.name!r}; known: {', '.join(sorted(FILTERS))}")
        try:
            build_step(self)  # bad parameters fail here, before any work
        except TypeError as exc:
            raise ValueError(f"filter {self.name}: {exc}") from exc
        return self


class LineDedupOptions(BaseModel):
    min_chars: int = Field(300, ge=0, description="Documents shorter than this after dedup are dropped")


class SentenceDedupOptions(BaseModel):
    """C4's span dedup (tasks/curate/sentence_dedup.py); minimums as datatrove's SentDedupConfig."""

    n_sentences: int = Field(3, ge=1, description="Sentences per span")
    min_sentences: int = Field(3, ge=0, description="A document dedup shortened is dropped under this many sentences,")
    min_words: int = Field(50, ge=0, description="... or under this many words")
    language: str = Field("en", description="Sentence splitting rules (sentencex language code)")


class MinHashOptions(BaseModel):
    threshold: float = Field(0.8, gt=0, lt=1)
    num_perm: int = Field(128, ge=16)
    ngram: int = Field(5, ge=1)
    seed: int = 1
    # Hash partitions of the connected-components rounds: more partitions, less memory per task.
    cluster_partitions: int = Field(4, ge=1)


class PIIOptions(BaseModel):
    phone_regions: list[str] = Field(default_factory=lambda: ["US"])
    ip_scope: str = "all"
    max_hits: int | None = 5


class QualityOptions(BaseModel):
    """CCNet's KenLM quality filter: perplexity under the language's model, then buckets."""

    languages: list[str] = Field(default_factory=lambda: ["en"], min_length=1)
    # "corpus": per-language p30/p60 of this corpus's perplexities (CCNet); else fixed cutoffs.
    cutoffs: Literal["corpus"] | dict[str, dict[str, float]] = "corpus"
    keep: list[Literal["head", "middle", "tail"]] = Field(default_factory=lambda: ["head", "middle"], min_length=1)


class SourceRecipe(BaseModel):
    line_dedup: LineDedupOptions | None = None
    filters: list[FilterSpec] = Field(default_factory=list)
    quality: QualityOptions | None = None
    sentence_dedup: SentenceDedupOptions | None = None
    near_dedup: bool = Field(False, description="Join the MinHash near-duplicate group")
    book_dedup: bool = False
    pii: PIIOptions | None = Field(default_factory=PIIOptions)


class CurateRecipe(BaseModel):
    name: str
    sources: dict[SourceName, SourceRecipe]
    minhash: MinHashOptions = Field(default_factory=MinHashOptions)

    @field_validator("sources")
    @classmethod
    def _some(cls, sources: dict) -> dict:
        if not sources:
            raise ValueError("a recipe names at least one source")
        return sources


def load_recipe(name_or_path: str) -> CurateRecipe:
    """A recipe shipped with the platform by name (``llama1``) or a YAML file of one's own."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"recipe file not found: {name_or_path}")
        text = path.read_text()
    else:
        shipped = resources.files("tasks.curate") / "recipes" / f"{name_or_path}.yaml"
        if not shipped.is_file():
            raise FileNotFoundError(f"no recipe named {name_or_path!r} (and no such file)")
        text = shipped.read_text()
    return CurateRecipe.model_validate(yaml.safe_load(text))


def build_step(spec: FilterSpec) -> Step:
    return FILTERS[spec.name](**spec.params)


def build_steps(specs: tuple[FilterSpec, ...]) -> list[Step]:
    """Fresh step objects for one Ray task (a stage's ``steps`` factory)."""
    return [build_step(spec) for spec in specs]


def build_filtered_steps(specs: tuple[FilterSpec, ...], quality: QualityOptions | None, models_dir: str | None) -> list[Step]:
    """The source's filters, then, where it has a quality filter, the perplexity scorer."""
    steps = build_steps(specs)
    if quality is not None:
        from tasks.curate.quality import PerplexityScorer

        steps.append(PerplexityScorer({language: models_dir for language in quality.languages}))
    return steps


def build_bucket_filter(cutoffs: dict[str, dict[str, float]], keep: tuple[str, ...]) -> list[Step]:
    from tasks.curate.quality import QualityBucketFilter

    return [QualityBucketFilter(cutoffs, keep=keep)]


def build_pii(options: PIIOptions) -> list[Step]:
    return [PIIScrubber(phone_regions=tuple(options.phone_regions), ip_scope=options.ip_scope, max_hits=options.max_hits)]
