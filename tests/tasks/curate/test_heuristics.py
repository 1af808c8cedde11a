"""C4 and Gopher rules: each fires on its example, stays quiet on its near miss, and says why."""

from __future__ import annotations

import pytest

from tasks.curate.heuristics import (
    C4QualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
    duplicate_ngram_char_fraction,
    top_ngram_char_fraction,
    words_of,
)
from tasks.documents import Document
from tasks.steps import Drop

SYLLABLES = ("ba", "ce", "di", "fo", "gu", "ha", "je", "ki", "lo", "mu")


def word(n: int) -> str:
    """A distinct six-letter word per n < 1000: no accidental repeats, every word the same length."""
    return "".join(SYLLABLES[int(d)] for d in f"{n:03d}")


def filler(count: int, start: int = 0) -> list[str]:
    return [word(n) for n in range(start, start + count)]


def run(step, text: str):
    (result,) = step.run([Document("d", "s", text)])
    return result


def reason(step, text: str) -> str | None:
    result = run(step, text)
    return result.reason if isinstance(result, Drop) else None


SENTENCES = [
    "The river runs past the old mill.",
    "Children swim there in the summer.",
    "Fishermen sit on the bank at dawn!",
    "Have you ever seen the water so clear?",
    "She said the bridge was built in 1820.",
]


def c4_doc(*extra: str) -> str:
    return "\n".join([*SENTENCES, *extra])


# ------------------------------------------------------------------------------------------ C4


def test_c4_keeps_a_clean_page_unchanged():
    result = run(C4QualityFilter(), c4_doc())
    assert isinstance(result, Document) and result.text == c4_doc()


@pytest.mark.parametrize(
    "line, rule",
    [
        ("Home About Contact", "no_terminal_punctuation"),
        ("And then it went on and on...", "no_terminal_punctuation"),
        ("Click here.", "too_few_words"),
        ("A " + "x" * 1001 + " word.", "too_long_word"),
        ("Please enable JavaScript to see the comments.", "javascript"),
        ("Read our Privacy Policy before you go.", "policy"),
        ("This site uses cookies for analytics.", "policy"),
    ],
)
def test_c4_removes_a_bad_line_and_keeps_the_rest(line, rule):
    step = C4QualityFilter()
    result = run(step, c4_doc(line))
    assert isinstance(result, Document) and result.text == c4_doc()
    assert step.stats.as_dict()["lines_removed"] == {rule: 1}


def test_c4_near_misses_of_line_rules_are_kept():
    kept = ["It ended there.", "A " + "x" * 1000 + " word.", "He quoted 'java script' once.", "The terms are fair."]
    assert run(C4QualityFilter(), c4_doc(*kept)).text == c4_doc(*kept)


def test_c4_strips_citation_markers():
    result = run(C4QualityFilter(), c4_doc("The mill closed in 1901.[3]", "It reopened later[citation needed].", "Trade grew fast.[edit]"))
    assert result.text == c4_doc("The mill closed in 1901.", "It reopened later.", "Trade grew fast.")


def test_c4_drops_documents_for_lorem_ipsum_and_curly_brackets():
    assert reason(C4QualityFilter(), c4_doc("Lorem ipsum dolor sit amet.")) == "c4_quality:lorem_ipsum"
    assert reason(C4QualityFilter(), c4_doc("Set the value to {x} first.")) == "c4_quality:curly_bracket"
    # As in C4, only lines that survived the line rules can drop the document.
    assert reason(C4QualityFilter(), c4_doc("var x = {", "lorem ipsum")) is None
    assert reason(C4QualityFilter(drop_curly_bracket=False), c4_doc("Set the value to {x} first.")) is None


def test_c4_needs_five_sentences():
    assert reason(C4QualityFilter(), "\n".join(SENTENCES[:4])) == "c4_quality:too_few_sentences"
    assert reason(C4QualityFilter(), "\n".join(SENTENCES[:4]) + "\nIt is deep. It is cold.") is None
    # Lines removed by the line rules do not count.
    assert reason(C4QualityFilter(), "\n".join(SENTENCES[:4]) + "\nMenu") == "c4_quality:too_few_sentences"


def test_c4_bad_words_are_matched_as_whole_words_and_phrases():
    step = C4QualityFilter(bad_words={"Grue", "dark magic"})
    assert reason(step, c4_doc("A grue lives in the cave.")) == "c4_quality:bad_words"
    assert reason(step, c4_doc("They spoke of dark  magic there.")) is None  # phrase must match exactly
    assert reason(step, c4_doc("They spoke of Dark Magic there.")) == "c4_quality:bad_words"
    assert reason(step, c4_doc("The gruesome tale was told.")) is None
    assert reason(C4QualityFilter(), c4_doc("A grue lives in the cave.")) is None


# ------------------------------------------------------------------------------ Gopher quality


def prose(lines: int = 8, start: int = 0) -> list[str]:
    """Lines of ten words (six-letter fillers plus 'the' and 'with'), ending in full stops."""
    return [" ".join(["The", *filler(7, start + 7 * i), "with", word(900 + i) + "."]) for i in range(lines)]


def quality(text: str, **kwargs) -> str | None:
    return reason(GopherQualityFilter(**kwargs), text)


def test_gopher_quality_keeps_ordinary_prose():
    assert quality("\n".join(prose())) is None


def test_gopher_word_count_bounds():
    assert quality(" ".join(["the", "with", *filler(47)]) + " ... #") == "gopher_quality:too_few_words"
    assert quality(" ".join(["the", "with", *filler(48)])) is None
    many = " ".join(["the with", *(["river"] * 99_998)])
    assert quality(many) is None
    assert quality(many + " river") == "gopher_quality:too_many_words"


def test_gopher_mean_word_length_bounds():
    short = " ".join(["the", "to", *(["at"] * 58)])
    assert quality(short) == "gopher_quality:mean_word_length_low"
    assert quality(" ".join(["the", "with", *(["abcdefghijk"] * 58)])) == "gopher_quality:mean_word_length_high"
    assert quality(" ".join(["the", "with", *(["abcdefghij"] * 58)])) is None


def test_gopher_hash_and_ellipsis_to_word_ratios():
    base = prose()  # 80 words
    assert quality("\n".join(base) + " #" * 9) == "gopher_quality:hash_ratio"
    assert quality("\n".join(base) + " #" * 8) is None
    assert quality("\n".join(base) + " …" * 9) == "gopher_quality:ellipsis_ratio"
    assert quality("\n".join(base) + " ..." * 8) is None


def test_gopher_bullet_and_ellipsis_lines():
    lines = prose(10)
    assert quality("\n".join("- " + line for line in lines)) == "gopher_quality:bullet_lines"
    assert quality("\n".join(["• " + line for line in lines[:9]] + lines[9:])) is None
    ended = [line[:-1] + "..." for line in lines[:4]] + lines[4:]
    assert quality("\n".join(ended)) == "gopher_quality:ellipsis_lines"
    three_of_ten = [line[:-1] + "…" for line in lines[:3]] + lines[3:]
    assert quality("\n".join(three_of_ten)) is None


def test_gopher_alphabetic_words():
    base = "\n".join(prose())  # 80 tokens
    assert quality(base + " 12" * 21) == "gopher_quality:alpha_words"  # 80/101 < 0.8
    assert quality(base + " 12" * 20) is None  # 80/100


def test_gopher_stop_words():
    text = " ".join(filler(60))
    assert quality("the " + text) == "gopher_quality:stop_words"
    assert quality("the " + text + " with") is None
    assert quality("the " + text, min_stop_words=1) is None


# --------------------------------------------------------------------------- Gopher repetition


def repetition(text: str, **kwargs) -> str | None:
    return reason(GopherRepetitionFilter(**kwargs), text)


def lines_of(count: int, words_each: int = 3) -> list[str]:
    return [" ".join(filler(words_each, start=words_each * i)) for i in range(count)]


def test_repetition_keeps_text_without_repeats():
    assert repetition("\n".join(prose())) is None


@pytest.mark.parametrize("separator, unit", [("\n", "line"), ("\n\n", "paragraph")])
def test_duplicate_lines_and_paragraphs(separator, unit):
    unique = lines_of(6)
    # 4 of 10 repeat an earlier one: count fraction 0.4 > 0.3
    assert repetition(separator.join(unique + [unique[0]] * 4)) == f"gopher_repetition:dup_{unit}_fraction"
    # 3 of 10 (0.3, allowed), but they hold 3 * 20 of 200 characters: 0.3 > 0.2
    assert repetition(separator.join(lines_of(7) + [unique[1]] * 3)) == f"gopher_repetition:dup_{unit}_char_fraction"
    # 2 of 10 short ones: under both limits
    short = "go on"
    assert repetition(separator.join(lines_of(7, words_each=5) + [short] * 3)) is None


def in_filler(phrase: list[str], times: int, fillers: int) -> list[str]:
    """``phrase`` ``times`` times, each copy between its own filler words."""
    words, pool = [], iter(filler(fillers, start=500))
    gap = fillers // times
    for _ in range(times):
        words += [next(pool) for _ in range(gap)] + phrase
    return words + list(pool)


@pytest.mark.parametrize(
    "n, times, fillers, expected_share, dropped",
    [
        (2, 8, 60, 16 / 76, True),
        (2, 7, 60, 14 / 74, False),
        (3, 5, 60, 15 / 75, True),
        (3, 4, 60, 12 / 72, False),
        (4, 4, 80, 16 / 96, True),
        (4, 3, 80, 12 / 92, False),
    ],
)
def test_top_ngram_character_share(n, times, fillers, expected_share, dropped):
    words = in_filler(filler(n, start=100), times, fillers)
    assert top_ngram_char_fraction(words, n) == pytest.approx(expected_share)
    assert repetition(" ".join(words)) == (f"gopher_repetition:top_{n}_gram" if dropped else None)


def test_top_ngram_counts_overlapping_words_once_and_ignores_singletons():
    assert top_ngram_char_fraction(["aa", "aa", "aa", "bb"], 2) == pytest.approx(6 / 8)
    assert top_ngram_char_fraction(["aa", "bb", "cc"], 2) == 0.0


@pytest.mark.parametrize("fillers, dropped", [(50, True), (60, False)])
def test_duplicated_five_gram_share(fillers, dropped):
    words = in_filler(filler(5, start=100), 2, fillers)
    assert duplicate_ngram_char_fraction(words, 5) == pytest.approx(10 / (fillers + 10))
    assert repetition(" ".join(words)) == ("gopher_repetition:dup_5_gram" if dropped else None)


def test_duplicated_ngram_share_counts_first_copies_and_overlaps_once():
    # "a b c a b c a": the 3-grams "a b c", "b c a" repeat; they cover every word once.
    assert duplicate_ngram_char_fraction(["a", "b", "c", "a", "b", "c", "a"], 3) == 1.0
    assert duplicate_ngram_char_fraction(list("abcdefg"), 3) == 0.0


def test_duplicated_ten_gram_limit_is_configurable():
    words = in_filler(filler(10, start=100), 2, 160)  # 20 / 180 = 0.111
    only_ten = {10: 0.10}
    assert repetition(" ".join(words), max_duplicate_ngram_char_fraction=only_ten) == "gopher_repetition:dup_10_gram"
    assert repetition(" ".join(words), max_duplicate_ngram_char_fraction={10: 0.12}) is None


def test_words_drop_edge_punctuation_and_symbol_tokens():
    assert words_of("Hello, world! -- it's (fine) #") == ["Hello", "world", "it's", "fine"]
