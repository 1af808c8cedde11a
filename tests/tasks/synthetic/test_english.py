import random
import re

import pytest

from tasks.language import detect_language
from tasks.synthetic.english import coined_name, encyclopedic_paragraph, spam_paragraph, web_paragraph

STYLES = {
    "encyclopedic": lambda rng: encyclopedic_paragraph(rng, "Kalomi Nupera"),
    "web": web_paragraph,
    "spam": spam_paragraph,
}


@pytest.mark.parametrize("style", STYLES)
def test_every_style_reads_as_english_to_language_id(style):
    rng = random.Random(11)
    for _ in range(20):
        text = STYLES[style](rng)
        language, score = detect_language(text)
        assert (language, score >= 0.5) == ("en", True), text


@pytest.mark.parametrize("style", STYLES)
def test_paragraphs_are_filled_deterministic_and_rarely_repeat(style):
    first = [STYLES[style](random.Random(f"{style}:{n}")) for n in range(40)]
    again = [STYLES[style](random.Random(f"{style}:{n}")) for n in range(40)]
    assert first == again
    assert len(set(first)) == len(first)
    # Nothing of a template is left, and nothing a wikitext or HTML reader would take for markup.
    assert not [p for p in first if any(mark in p for mark in ("{", "}", "[", "<", "''", "=="))]


def test_encyclopedic_text_is_about_its_subject_and_uses_an_before_vowels():
    rng = random.Random(5)
    paragraphs = [encyclopedic_paragraph(rng, "Kalomi Nupera", sentences=20) for _ in range(20)]
    assert all("Kalomi Nupera" in p for p in paragraphs)
    text = " ".join(paragraphs)
    assert re.search(r"\ban [aeiou]", text) and not re.search(r"\ba [aeiou]", text)


def test_coined_names_are_capitalised_syllable_words():
    names = {coined_name(random.Random(n)) for n in range(50)}
    assert len(names) > 40
    assert all(name.isalpha() and name[0].isupper() and name[1:].islower() for name in names)
