"""Reports of a curation run: the perplexity distribution of a scored stage, as a PNG and a Prefect artifact.

The histogram streams the ``perplexity`` and ``meta`` columns of the stage's parts twice: once for
the range of the values, once for the counts in fixed log-spaced bins, so memory is that of the
bins, not of the corpus. Each language gets its own panel, its documents stacked by bucket (head,
middle, tail). A document's bucket is ``meta["bucket"]`` where the quality stage set it, else the one
its perplexity falls in under the given cutoffs (the ``filtered`` stage, before any bucket was
dropped, with the cutoffs the ``quality`` stage used, shows all three), else ``all`` (unbucketed).
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from uuid import UUID

import numpy as np
import pyarrow.parquet as pq

from tasks.curate.quality import BUCKET, HEAD, MIDDLE, PERPLEXITY, TAIL, UNSCORED, bucket_of
from tasks.stage import units_from_stage
from tasks.storage import Location, atomic_output, resolve

BUCKET_COLOURS = {HEAD: "#2a9d8f", MIDDLE: "#e9c46a", TAIL: "#e76f51", UNSCORED: "#8d99ae"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class PerplexityHistogram:
    """Counts per (language, bucket) in shared log-spaced bins; ``unscored`` counts None perplexities."""

    edges: np.ndarray
    counts: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    unscored: dict[str, int] = field(default_factory=dict)

    def languages(self) -> list[str]:
        return sorted({language for language, _ in self.counts})

    def documents(self) -> dict[tuple[str, str], int]:
        return {key: int(values.sum()) for key, values in sorted(self.counts.items())}


def _scored_batches(stage_dir: Location, sources: Sequence[str] | None) -> Iterator[tuple[list, list]]:
    for unit in units_from_stage(stage_dir, sources):
        with resolve(unit.input.uri).open_random_access() as f:
            parquet = pq.ParquetFile(f)
            if PERPLEXITY not in parquet.schema_arrow.names:
                raise ValueError(f"{unit.input.uri}: no {PERPLEXITY} column: not a scored stage")
            for batch in parquet.iter_batches(columns=[PERPLEXITY, "meta"]):
                yield batch.column(0).to_pylist(), [json.loads(m) for m in batch.column(1).to_pylist()]


def _usable(value: float | None) -> bool:
    return value is not None and not math.isnan(value) and value > 0


def perplexity_histogram(
    stage_dir: Location,
    sources: Sequence[str] | None = None,
    cutoffs: Mapping[str, Mapping[str, float]] | None = None,
    bins: int = 40,
) -> PerplexityHistogram:
    """Two streaming passes over a scored stage: the value range, then the counts per bin."""
    low, high = math.inf, -math.inf
    for values, _ in _scored_batches(stage_dir, sources):
        found = [v for v in values if _usable(v)]
        if found:
            low, high = min(low, min(found)), max(high, max(found))
    if low == math.inf:
        low, high = 1.0, 10.0  # nothing scored: empty panels on a nominal axis
    if high <= low:
        low, high = low / 1.5, high * 1.5
    histogram = PerplexityHistogram(edges=np.geomspace(low, high, bins + 1))
    for values, metas in _scored_batches(stage_dir, sources):
        grouped: dict[tuple[str, str], list[float]] = {}
        for value, meta in zip(values, metas):
            language = meta.get("language") or "?"
            if not _usable(value):
                histogram.unscored[language] = histogram.unscored.get(language, 0) + 1
                continue
            bucket = meta.get(BUCKET) or bucket_of(value, (cutoffs or {}).get(language))
            grouped.setdefault((language, bucket), []).append(value)
        for key, found in grouped.items():
            counts, _ = np.histogram(found, bins=histogram.edges)
            histogram.counts[key] = histogram.counts.get(key, np.zeros(bins, dtype=np.int64)) + counts
    return histogram


def render_png(histogram: PerplexityHistogram, cutoffs: Mapping[str, Mapping[str, float]] | None = None) -> bytes:
    import matplotlib

    matplotlib.use("Agg")  # no display on workers and in CI
    from matplotlib.figure import Figure

    languages = histogram.languages() or ["(none scored)"]
    figure = Figure(figsize=(8, 2.2 * len(languages) + 0.6), dpi=100, layout="constrained")
    axes = figure.subplots(len(languages), 1, squeeze=False, sharex=True)[:, 0]
    widths = np.diff(histogram.edges)
    for axis, language in zip(axes, languages):
        bottom = np.zeros(len(widths))
        for bucket in (HEAD, MIDDLE, TAIL, UNSCORED):
            counts = histogram.counts.get((language, bucket))
            if counts is None:
                continue
            axis.bar(histogram.edges[:-1], counts, width=widths, bottom=bottom, align="edge",
                     color=BUCKET_COLOURS[bucket], label=f"{bucket} ({int(counts.sum())})")
            bottom += counts
        for name, value in ((cutoffs or {}).get(language) or {}).items():
            axis.axvline(value, color="black", linestyle="--", linewidth=0.8)
            axis.annotate(name, (value, 1), xycoords=("data", "axes fraction"), ha="left", va="top", fontsize=8)
        axis.set_xscale("log")
        axis.set_ylabel("documents")
        axis.set_title(f"{language}: perplexity per bucket", fontsize=10)
        if axis.has_data():
            axis.legend(fontsize=8, loc="upper right")
    axes[-1].set_xlabel("perplexity (log scale)")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def perplexity_histogram_png(
    stage_dir: Location,
    out_path: str | os.PathLike[str] | None = None,
    sources: Sequence[str] | None = None,
    cutoffs: Mapping[str, Mapping[str, float]] | None = None,
) -> bytes:
    """The PNG of a scored stage's perplexity distribution per language and bucket; also written
    (atomically) to ``out_path`` where given."""
    png = render_png(perplexity_histogram(stage_dir, sources, cutoffs), cutoffs)
    if out_path is not None:
        with atomic_output(resolve(out_path)) as stream:
            stream.write(png)
    return png


def perplexity_markdown(png: bytes, histogram: PerplexityHistogram, title: str) -> str:
    """Markdown with the PNG inline as a data URI (the Prefect UI renders markdown images, data
    URIs included, so the report needs no image host) and the counts behind it."""
    lines = [f"# {title}", "", f"![perplexity histogram](data:image/png;base64,{base64.b64encode(png).decode()})", "",
             "| language | bucket | documents |", "| --- | --- | ---: |"]
    lines += [f"| {language} | {bucket} | {n} |" for (language, bucket), n in histogram.documents().items()]
    lines += [f"| {language} | no perplexity | {n} |" for language, n in sorted(histogram.unscored.items())]
    return "\n".join(lines)


def publish_perplexity_histogram(
    stage_dir: Location,
    sources: Sequence[str] | None = None,
    cutoffs: Mapping[str, Mapping[str, float]] | None = None,
    key: str = "curate-perplexity",
) -> UUID:
    """A Prefect markdown artifact of the histogram (call inside a flow or task run)."""
    from prefect.artifacts import create_markdown_artifact

    histogram = perplexity_histogram(stage_dir, sources, cutoffs)
    png = render_png(histogram, cutoffs)
    title = f"Perplexity of {stage_dir.uri}" + (f" ({', '.join(sources)})" if sources else "")
    return create_markdown_artifact(
        key=key, markdown=perplexity_markdown(png, histogram, title),
        description="KenLM perplexity per language and quality bucket",
    )
