"""CCNet's normalisation: case, accents, digits of every script, punctuation table, control chars."""

from __future__ import annotations

from tasks.curate.normalize import UNICODE_PUNCTUATION, normalize, normalize_for_dedup, strip_accents


def test_lowercases_strips_accents_and_zeroes_digits():
    assert normalize("  Ça coûte 12,50 € à Zürich  ") == "ca coute 00,00 € a zurich"


def test_digits_of_every_script_become_zero():
    # Full-width, Arabic-Indic and Devanagari digits are Unicode decimal digits too.
    assert normalize("０２３ ٣٤ ५६ 789") == "000 00 00 000"


def test_unicode_punctuation_maps_to_ascii():
    assert normalize("“Quoted” — it’s… 【x】（y）：z？！") == "\"quoted\"  -  it's... [x](y):z?!"
    for mark, ascii_form in UNICODE_PUNCTUATION.items():
        # CCNet maps full-width "１" to a quote, but digits become 0 first, as in CCNet.
        assert normalize(f"a{mark}b") == ("a0b" if mark == "１" else f"a{ascii_form}b")


def test_control_characters_are_removed_not_spaced():
    assert normalize("tab\there\x00 and\x85nel\x7f") == "tabhere andnel"
    assert normalize("one\ntwo") == "onetwo"  # a caller normalises line by line


def test_empty_and_blank_lines_stay_empty():
    assert normalize("") == "" and normalize(" \t ") == ""


def test_strip_accents_keeps_letters_without_marks():
    assert strip_accents("naïve façade Ångström ß") == "naive facade Angstrom ß"


def test_dedup_form_removes_mapped_punctuation_but_keeps_accents():
    assert normalize_for_dedup("Été 2020 — «Menu»！") == "été 0000  menu"
    assert normalize_for_dedup("Home | About") == "home | about"  # ASCII punctuation is not in the table
