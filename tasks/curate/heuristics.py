"""Rule-based quality filters: C4's line cleaning and Gopher's quality and repetition rules.

Each is a :class:`tasks.steps.Step` whose thresholds are constructor parameters (defaults: the
numbers in RECIPE.md) and whose drops say which rule fired, e.g. ``gopher_repetition:top_2_gram``.
Texts are split into words on whitespace, with punctuation stripped from a word's ends; papers
and datatrove use language tokenisers (NLTK/spaCy), which we do not ship: counts differ only at
the margins (contractions, "e.g."), and no model or data is downloaded at run time.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from tasks.documents import Document
from tasks.steps import Drop, Step, StepStats

PUNCTUATION = string.punctuation + "«»“”‘’„‚‹›…–—·•"


def words_of(text: str) -> list[str]:
    """Whitespace tokens with punctuation stripped from their ends; pure-symbol tokens dropped."""
    stripped = (token.strip(PUNCTUATION) for token in text.split())
    return [word for word in stripped if word]


# ------------------------------------------------------------------------------------------ C4

C4_END_PUNCTUATION = (".", "?", "!", '"', "'")
C4_ELLIPSIS = "..."
C4_CITATION = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]", re.IGNORECASE)
C4_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
# A sentence ends at . ! or ? (with closing quotes or brackets) followed by whitespace, or at the
# end of the line. C4 used NLTK's Punkt, which also knows abbreviations; this simple splitter
# counts "Dr. Smith" as two sentences, which errs on the side of keeping a document.
SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(?=\s|$)")


@dataclass
class LineStats(StepStats):
    """Step counts plus the lines a line-level filter removed, by rule."""

    lines_removed: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {**super().as_dict(), "lines_removed": dict(sorted(self.lines_removed.items()))}


class C4QualityFilter(Step):
    """C4's ``clean_page`` (Raffel et al. 2020), with datatrove's C4QualityFilter options.

    Line by line, in C4's order: drop a line with a word over ``max_word_length`` characters;
    strip citation markers; drop a line without terminal punctuation (or ending in "..."); drop a
    line of fewer than ``min_words_per_line`` words; drop the document on "lorem ipsum"; drop a
    line with "javascript"; drop the document on "{"; drop a line with policy boilerplate. As in
    C4, the two document-level checks only look at lines that survived the earlier line rules.
    Then drop the document when fewer than ``min_sentences`` sentences remain, or when it holds a
    word (or phrase) of ``bad_words`` (C4's list is not ours to ship: pass it in). The text kept
    is the surviving lines joined by newlines.
    """

    name = "c4_quality"

    def __init__(
        self,
        min_sentences: int = 5,
        min_words_per_line: int = 3,
        max_word_length: int = 1000,
        remove_citations: bool = True,
        require_terminal_punctuation: bool = True,
        drop_lorem_ipsum: bool = True,
        drop_javascript_lines: bool = True,
        drop_curly_bracket: bool = True,
        drop_policy_lines: bool = True,
        bad_words: Iterable[str] = (),
    ) -> None:
        super().__init__()
        self.min_sentences = min_sentences
        self.min_words_per_line = min_words_per_line
        self.max_word_length = max_word_length
        self.remove_citations = remove_citations
        self.require_terminal_punctuation = require_terminal_punctuation
        self.drop_lorem_ipsum = drop_lorem_ipsum
        self.drop_javascript_lines = drop_javascript_lines
        self.drop_curly_bracket = drop_curly_bracket
        self.drop_policy_lines = drop_policy_lines
        self.bad_words = _word_pattern(bad_words)
        self.stats = LineStats()

    def apply(self, doc: Document) -> Document | Drop:
        kept: list[str] = []
        sentences = 0
        removed = self.stats.lines_removed
        for raw in doc.text.splitlines():
            line = raw.strip()
            if any(len(word) > self.max_word_length for word in line.split()):
                removed["too_long_word"] += 1
                continue
            if self.remove_citations:
                line = C4_CITATION.sub("", line)
            if self.require_terminal_punctuation and (
                not line.endswith(C4_END_PUNCTUATION) or line.endswith(C4_ELLIPSIS)
            ):
                removed["no_terminal_punctuation"] += 1
                continue
            if len(line.split()) < self.min_words_per_line:
                removed["too_few_words"] += 1
                continue
            lowered = line.lower()
            if self.drop_lorem_ipsum and "lorem ipsum" in lowered:
                return self.drop("lorem_ipsum")
            if self.drop_javascript_lines and "javascript" in lowered:
                removed["javascript"] += 1
                continue
            if self.drop_curly_bracket and "{" in line:
                return self.drop("curly_bracket")
            if self.drop_policy_lines and any(phrase in lowered for phrase in C4_POLICY):
                removed["policy"] += 1
                continue
            sentences += len(SENTENCE_END.findall(line)) or 1
            kept.append(line)
        if sentences < self.min_sentences:
            return self.drop("too_few_sentences")
        text = "\n".join(kept)
        if self.bad_words is not None and self.bad_words.search(text.lower()):
            return self.drop("bad_words")
        doc.text = text
        return doc


def _word_pattern(words: Iterable[str]) -> re.Pattern[str] | None:
    """One regex for a list of words and phrases, matched whole (not inside longer words)."""
    terms = sorted({w.strip().lower() for w in words if w.strip()}, key=lambda w: (-len(w), w))
    if not terms:
        return None
    return re.compile(r"(?<!\w)(?:" + "|".join(re.escape(t) for t in terms) + r")(?!\w)")


# ----------------------------------------------------------------------------------- Gopher

GOPHER_STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
BULLETS = ("•", "-", "*", "‣", "◦", "▪", "●", "·", "–")


class GopherQualityFilter(Step):
    """Gopher's quality rules (Rae et al. 2021, appendix A.1.1).

    Word counts and lengths use words without their edge punctuation (symbol-only tokens are not
    words); the alphabetic rule counts every whitespace token, so a page of numbers and symbols
    fails it. The stop-word rule counts occurrences (as datatrove): "the ... the" is two.
    """

    name = "gopher_quality"

    def __init__(
        self,
        min_words: int = 50,
        max_words: int = 100_000,
        min_mean_word_length: float = 3,
        max_mean_word_length: float = 10,
        max_symbol_word_ratio: float = 0.1,
        max_bullet_lines_ratio: float = 0.9,
        max_ellipsis_lines_ratio: float = 0.3,
        min_alpha_words_ratio: float = 0.8,
        min_stop_words: int = 2,
        stop_words: Iterable[str] = GOPHER_STOP_WORDS,
        bullets: Sequence[str] = BULLETS,
    ) -> None:
        super().__init__()
        self.min_words = min_words
        self.max_words = max_words
        self.min_mean_word_length = min_mean_word_length
        self.max_mean_word_length = max_mean_word_length
        self.max_symbol_word_ratio = max_symbol_word_ratio
        self.max_bullet_lines_ratio = max_bullet_lines_ratio
        self.max_ellipsis_lines_ratio = max_ellipsis_lines_ratio
        self.min_alpha_words_ratio = min_alpha_words_ratio
        self.min_stop_words = min_stop_words
        self.stop_words = frozenset(w.lower() for w in stop_words)
        self.bullets = tuple(bullets)

    def apply(self, doc: Document) -> Document | Drop:
        reason = self.check(doc.text)
        return self.drop(reason) if reason else doc

    def check(self, text: str) -> str | None:
        """The first rule the text breaks, or None."""
        words = words_of(text)
        n_words = len(words)
        if n_words < self.min_words:
            return "too_few_words"
        if n_words > self.max_words:
            return "too_many_words"
        mean_length = sum(len(w) for w in words) / n_words
        if mean_length < self.min_mean_word_length:
            return "mean_word_length_low"
        if mean_length > self.max_mean_word_length:
            return "mean_word_length_high"
        if text.count("#") / n_words > self.max_symbol_word_ratio:
            return "hash_ratio"
        if (text.count("...") + text.count("…")) / n_words > self.max_symbol_word_ratio:
            return "ellipsis_ratio"
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if lines:
            bullets = sum(line.startswith(self.bullets) for line in lines)
            if bullets / len(lines) > self.max_bullet_lines_ratio:
                return "bullet_lines"
            ellipses = sum(line.endswith(("...", "…")) for line in lines)
            if ellipses / len(lines) > self.max_ellipsis_lines_ratio:
                return "ellipsis_lines"
        tokens = text.split()
        if sum(any(c.isalpha() for c in t) for t in tokens) / len(tokens) < self.min_alpha_words_ratio:
            return "alpha_words"
        if sum(w.lower() in self.stop_words for w in words) < self.min_stop_words:
            return "stop_words"
        return None


# ------------------------------------------------------------------------ Gopher repetition

PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
DEFAULT_TOP_NGRAMS = {2: 0.20, 3: 0.18, 4: 0.16}
DEFAULT_DUPLICATE_NGRAMS = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}


def duplicate_elements(elements: Sequence[str]) -> tuple[int, int]:
    """How many elements repeat an earlier one, and their characters (first copies not counted)."""
    seen: set[str] = set()
    count = chars = 0
    for element in elements:
        if element in seen:
            count += 1
            chars += len(element)
        else:
            seen.add(element)
    return count, chars


def _ngrams(words: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def _covered_chars(words: Sequence[str], starts: Iterable[int], n: int) -> int:
    """Characters of the words covered by n-grams starting at ``starts``, each word counted once."""
    covered = bytearray(len(words))
    for start in starts:
        covered[start : start + n] = b"\x01" * n
    return sum(len(w) for w, hit in zip(words, covered) if hit)


def top_ngram_char_fraction(words: Sequence[str], n: int) -> float:
    """Share of word characters inside occurrences of the most frequent n-gram.

    Gopher: "the fraction of characters contained within the most frequently-occurring n-gram".
    Characters are those of the words (whitespace excluded), and overlapping occurrences ("a a a"
    for the 2-gram "a a") count each word once, so the share never exceeds 1. datatrove instead
    multiplies the n-gram's length by its count over len(text), which double-counts overlaps.
    Ties go to the n-gram seen first, so the result does not depend on hash order.
    """
    grams = _ngrams(words, n)
    total = sum(len(w) for w in words)
    if not grams or not total:
        return 0.0
    counts = Counter(grams)
    top = max(counts, key=counts.__getitem__)  # max() keeps the first of equal counts
    if counts[top] < 2:
        return 0.0
    return _covered_chars(words, (i for i, g in enumerate(grams) if g == top), n) / total


def duplicate_ngram_char_fraction(words: Sequence[str], n: int) -> float:
    """Share of word characters inside n-grams that occur more than once.

    Gopher: "the fraction of characters contained within all duplicate n-grams", "taking care not
    to count characters that occur in overlapping n-grams more than once". Every occurrence of a
    repeated n-gram counts (the first too, as the paper's wording and Dolma do); datatrove skips
    ahead n words after a repeat and does not count first copies, which reads lower.
    """
    grams = _ngrams(words, n)
    total = sum(len(w) for w in words)
    if not grams or not total:
        return 0.0
    counts = Counter(grams)
    starts = (i for i, g in enumerate(grams) if counts[g] > 1)
    return _covered_chars(words, starts, n) / total


class GopherRepetitionFilter(Step):
    """Gopher's repetition rules (Rae et al. 2021, table A1).

    Line and paragraph fractions count copies after the first; their character shares are over
    the characters of all (non-blank) lines or paragraphs. N-gram shares are over word characters:
    see :func:`top_ngram_char_fraction` and :func:`duplicate_ngram_char_fraction`. A top n-gram
    that occurs once is no repetition and scores 0.
    """

    name = "gopher_repetition"

    def __init__(
        self,
        max_duplicate_line_fraction: float = 0.30,
        max_duplicate_paragraph_fraction: float = 0.30,
        max_duplicate_line_char_fraction: float = 0.20,
        max_duplicate_paragraph_char_fraction: float = 0.20,
        max_top_ngram_char_fraction: dict[int, float] | None = None,
        max_duplicate_ngram_char_fraction: dict[int, float] | None = None,
    ) -> None:
        super().__init__()
        self.max_duplicate_line_fraction = max_duplicate_line_fraction
        self.max_duplicate_paragraph_fraction = max_duplicate_paragraph_fraction
        self.max_duplicate_line_char_fraction = max_duplicate_line_char_fraction
        self.max_duplicate_paragraph_char_fraction = max_duplicate_paragraph_char_fraction
        self.top_ngrams = dict(sorted((max_top_ngram_char_fraction or DEFAULT_TOP_NGRAMS).items()))
        self.duplicate_ngrams = dict(sorted((max_duplicate_ngram_char_fraction or DEFAULT_DUPLICATE_NGRAMS).items()))

    def apply(self, doc: Document) -> Document | Drop:
        reason = self.check(doc.text)
        return self.drop(reason) if reason else doc

    def check(self, text: str) -> str | None:
        """The first rule the text breaks, or None."""
        for unit, elements, max_fraction, max_chars in (
            ("paragraph", _paragraphs(text), self.max_duplicate_paragraph_fraction,
             self.max_duplicate_paragraph_char_fraction),
            ("line", _lines(text), self.max_duplicate_line_fraction, self.max_duplicate_line_char_fraction),
        ):
            if not elements:
                continue
            count, chars = duplicate_elements(elements)
            if count / len(elements) > max_fraction:
                return f"dup_{unit}_fraction"
            if chars / sum(len(e) for e in elements) > max_chars:
                return f"dup_{unit}_char_fraction"
        words = words_of(text)
        for n, limit in self.top_ngrams.items():
            if top_ngram_char_fraction(words, n) > limit:
                return f"top_{n}_gram"
        for n, limit in self.duplicate_ngrams.items():
            if duplicate_ngram_char_fraction(words, n) > limit:
                return f"dup_{n}_gram"
        return None


def _paragraphs(text: str) -> list[str]:
    return [p.strip() for p in PARAGRAPH_BREAK.split(text) if p.strip()]


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]
