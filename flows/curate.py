"""`curate`: ingested documents -> the curated corpus, per source, as a recipe says (LLaMA 1 by default).

Stages under the output root, in order: line_dedup -> filtered (with perplexity scoring where the
recipe filters by quality) -> quality (buckets) -> sentence_dedup -> minhash / book_dedup ->
curated (see tasks/curate/recipe.py). Every stage is a shard stage of its own (manifest, receipts,
quarantine, completion marker), so a rerun skips what is done.
"""

from __future__ import annotations

import functools
from collections import Counter
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import BaseModel, Field, model_validator

from tasks.curate.quality import PERPLEXITY_SCHEMA
from tasks.curate.recipe import (
    CurateRecipe,
    SentenceDedupOptions,
    build_bucket_filter,
    build_filtered_steps,
    build_pii,
    load_recipe,
)
from tasks.curate.report import publish_perplexity_histogram
from tasks.ray_runtime import ensure_ray
from tasks.settings import default_data_root
from tasks.shards import MANIFEST
from tasks.stage import PartReader, StageSpec, run_stage, units_from_stage
from tasks.storage import Location, resolve


class CurateConfig(BaseModel):
    input: str = Field(default_factory=lambda: f"{default_data_root()}/ingest", description="The ingest stage folder")
    output: str = Field(default_factory=default_data_root, description="Data root for the curation stages")
    recipe: str = Field("llama1", description="A shipped recipe's name or a recipe YAML file")
    quality_models: str | None = Field(
        None, description="Folder of KenLM quality models (<lang>.sp.model, <lang>.arpa.bin): train-quality-model's output"
    )

    @model_validator(mode="after")
    def _recipe_loads(self) -> CurateConfig:
        try:
            recipe = load_recipe(self.recipe)  # a bad recipe fails before any work
        except FileNotFoundError as exc:
            raise ValueError(str(exc)) from exc
        if self.quality_models:
            from tasks.curate.quality import QualityModel

            for source in recipe.sources.values():
                for language in source.quality.languages if source.quality else []:
                    QualityModel.in_folder(self.quality_models, language)  # missing files fail now
        return self


@task(retries=2, retry_delay_seconds=5)
def ingested_sources(stage_dir: str, recipe: CurateRecipe) -> list[str]:
    manifest = resolve(stage_dir).join(MANIFEST)
    if not manifest.exists():
        raise FileNotFoundError(f"{manifest.uri}: no manifest: run ingest first")
    present = manifest.read_json()["runs"]
    sources = [s for s in recipe.sources if s in present]
    if not sources:
        raise ValueError(f"{stage_dir} holds {sorted(present)}, none of which recipe {recipe.name} curates")
    return sources


@task
def line_dedup(input_stage: str, root: str, sources: list[str], min_chars: int) -> dict[str, Any]:
    from tasks.curate.line_dedup import run_line_dedup

    ensure_ray()
    return run_line_dedup(resolve(input_stage), root, min_chars=min_chars, sources=sources)


@task
def sentence_dedup(input_stage: str, root: str, source: str, options: SentenceDedupOptions) -> dict[str, Any]:
    from tasks.curate.sentence_dedup import run_sentence_dedup

    ensure_ray()
    return run_sentence_dedup(resolve(input_stage), root, sources=[source], **options.model_dump())


@task
def per_source_stage(
    stage: str, root: str, source: str, input_stage: str, steps: Any, parameters: dict, extra_columns: Any = None
) -> dict[str, Any]:
    ensure_ray()
    spec = StageSpec(root=root, name=stage, reader=PartReader(), steps=steps, parameters=parameters,
                     extra_columns=extra_columns)
    return run_stage(spec, units_from_stage(resolve(input_stage), [source]))


@task
def corpus_cutoffs(scored_stage: str, source: str) -> dict[str, dict[str, float]]:
    from tasks.curate.quality import perplexity_cutoffs

    return perplexity_cutoffs(resolve(scored_stage), [source])


@task
def near_dedup(input_stages: dict[str, str], root: str, recipe: CurateRecipe) -> dict[str, Any]:
    from tasks.curate.minhash import run_minhash_dedup

    ensure_ray()
    options = recipe.minhash
    return run_minhash_dedup(
        {source: resolve(stage) for source, stage in input_stages.items()}, root, threshold=options.threshold,
        num_perm=options.num_perm, ngram=options.ngram, seed=options.seed,
        cluster_partitions=options.cluster_partitions,
    )


@task
def book_dedup(input_stage: str, root: str, sources: list[str]) -> dict[str, Any]:
    from tasks.curate.book_dedup import run_book_dedup

    ensure_ray()
    return run_book_dedup(resolve(input_stage), root, sources=sources)


@task
def publish_report(
    root: str, stages: list[str], sources: list[str], cutoffs: dict[str, dict[str, dict[str, float]]]
) -> list[dict[str, Any]]:
    """Counts per stage, source and drop reason, the curated corpus's languages, and per scored
    source the perplexity histogram by bucket (of `filtered`, before the tail is dropped)."""
    rows, reasons = [], Counter()
    base = resolve(root)
    for stage in stages:
        totals = base.join(stage, MANIFEST).read_json()["totals"]["by_source"]
        for source in sources:
            if source in totals:
                t = totals[source]
                rows.append({"stage": stage, "source": source, "docs_in": t["docs_in"], "kept": t["kept"],
                             "dropped": t["dropped_total"], "quarantined": t["quarantined"]})
                reasons.update({(stage, source, r): n for r, n in t["dropped"].items()})
    create_table_artifact(key="curate-stages", table=rows, description=f"Curation of {root}: documents per stage")
    create_table_artifact(
        key="curate-drops",
        table=[{"stage": st, "source": so, "reason": r, "documents": n} for (st, so, r), n in sorted(reasons.items())],
        description="Drops per stage, source and reason",
    )
    languages = _language_counts(base.join("curated"))
    lines = ["# Curated corpus", "", "| source | language | documents |", "| --- | --- | ---: |"]
    lines += [f"| {s} | {lang} | {n} |" for (s, lang), n in sorted(languages.items())]
    create_markdown_artifact(key="curate-languages", markdown="\n".join(lines))
    for source, source_cutoffs in cutoffs.items():
        publish_perplexity_histogram(base.join("filtered"), [source], source_cutoffs, key=f"curate-perplexity-{source}")
    return rows


def _language_counts(stage_dir: Location) -> Counter:
    import json

    import pyarrow.parquet as pq

    counts: Counter = Counter()
    for part in stage_dir.join(MANIFEST).read_json()["parts"]:
        with resolve(part["path"]).open_random_access() as f:
            for batch in pq.ParquetFile(f).iter_batches(columns=["meta"]):
                for meta in batch.column(0).to_pylist():
                    counts[(part["source"], json.loads(meta).get("language", "?"))] += 1
    return counts


@flow(name="curate", log_prints=True)
def curate(config: CurateConfig = CurateConfig()) -> list[dict[str, Any]]:
    logger = get_run_logger()
    recipe = load_recipe(config.recipe)
    sources = ingested_sources(config.input, recipe)
    needs_models = [s for s in sources if recipe.sources[s].quality]
    if needs_models and not config.quality_models:
        raise ValueError(f"recipe {recipe.name} filters {needs_models} by quality: give quality_models (train-quality-model)")
    root = config.output
    last = {source: config.input for source in sources}
    stages = []

    dedup_lines = [s for s in sources if recipe.sources[s].line_dedup]
    if dedup_lines:
        min_chars = {recipe.sources[s].line_dedup.min_chars for s in dedup_lines}
        if len(min_chars) != 1:
            raise ValueError(f"sources sharing line dedup need one min_chars, got {sorted(min_chars)}")
        line_dedup(config.input, root, dedup_lines, min_chars.pop())
        last.update({s: resolve(root).join("line_dedup").uri for s in dedup_lines})
        stages.append("line_dedup")

    for source in sources:
        filters, quality = recipe.sources[source].filters, recipe.sources[source].quality
        per_source_stage(
            "filtered", root, source, last[source],
            functools.partial(build_filtered_steps, tuple(filters), quality, config.quality_models),
            {"filters": [f.model_dump() for f in filters], "quality": quality.model_dump() if quality else None},
            extra_columns=PERPLEXITY_SCHEMA if quality else None,
        )
        last[source] = resolve(root).join("filtered").uri
    stages.append("filtered")

    scored = [s for s in sources if recipe.sources[s].quality]
    cutoffs_by_source: dict[str, dict[str, dict[str, float]]] = {}
    for source in scored:
        quality = recipe.sources[source].quality
        cutoffs = corpus_cutoffs(last[source], source) if quality.cutoffs == "corpus" else quality.cutoffs
        cutoffs_by_source[source] = cutoffs
        logger.info("%s perplexity cutoffs: %s", source, cutoffs)
        per_source_stage(
            "quality", root, source, last[source],
            functools.partial(build_bucket_filter, cutoffs, tuple(quality.keep)),
            {"cutoffs": cutoffs, "keep": quality.keep},
            extra_columns=PERPLEXITY_SCHEMA,
        )
        last[source] = resolve(root).join("quality").uri
    if scored:
        stages.append("quality")

    # One run per source: each source is its own global order, with its own options.
    dedup_spans = [s for s in sources if recipe.sources[s].sentence_dedup]
    for source in dedup_spans:
        sentence_dedup(last[source], root, source, recipe.sources[source].sentence_dedup)
        last[source] = resolve(root).join("sentence_dedup").uri
    if dedup_spans:
        stages.append("sentence_dedup")

    near = [s for s in sources if recipe.sources[s].near_dedup]
    if near:
        manifest = near_dedup({s: last[s] for s in near}, root, recipe)
        last.update({s: manifest["stage_dir"] for s in near})
        stages.append(resolve(manifest["stage_dir"]).name)
    books = [s for s in sources if recipe.sources[s].book_dedup]
    if books:
        manifest = book_dedup(last[books[0]], root, books)
        last.update({s: manifest["stage_dir"] for s in books})
        stages.append(resolve(manifest["stage_dir"]).name)

    for source in sources:
        pii = recipe.sources[source].pii
        steps = functools.partial(build_pii, pii) if pii else list
        per_source_stage("curated", root, source, last[source], steps, {"pii": pii.model_dump() if pii else None})
    stages.append("curated")
    rows = publish_report(root, stages, sources, cutoffs_by_source)
    final = {r["source"]: r["kept"] for r in rows if r["stage"] == "curated"}
    logger.info("curated documents per source: %s", final)
    return rows
