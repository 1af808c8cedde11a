"""Ghost Attention's constraints: each checker on answers that follow it and ones that do not,
stable ids, and seeded drawing."""

from __future__ import annotations

import random

import pytest

from tasks.dialogues.constraints import KINDS, all_constraints, constraint_by_id, draw_constraint
from tasks.dialogues.records import CONTROL_TAGS


def check(constraint_id: str, follows: list[str], breaks: list[str]) -> None:
    constraint = constraint_by_id(constraint_id)
    assert [answer for answer in follows if not constraint.follows(answer)] == []
    assert [answer for answer in breaks if constraint.follows(answer)] == []


def test_capital_letters():
    check("form:capitals", ["KIWI PLUM", "YES!", "IT IS 42.", "  OK  ", "ÉTÉ"],
          ["", "   ", "42", "!!", "Kiwi PLUM", "KIWi", "été"])


def test_the_opening_word_is_case_sensitive_after_outer_whitespace():
    check("form:prefix", ["Answer: 4", "  Answer:kiwi", "Answer:"],
          ["", "answer: 4", "ANSWER: 4", "The Answer: 4", "Answer 4", "Answer :4"])


def test_at_most_n_words_counts_runs_of_letters_digits_and_apostrophes():
    check("form:max_words:3", ["kiwi", "kiwi plum fig", "it's 4 o'clock", "kiwi, plum... fig!", "  4  "],
          ["", "   ", "!!! ...", "kiwi plum fig pear", "a b c d"])
    check("form:max_words:1", ["yes", "YES!", "don't"], ["yes no", "", "-"])


def test_a_closing_exclamation_mark_after_some_text():
    check("form:exclamation", ["Kiwi!", "kiwi!!", "4! ", "Done !"], ["", "!", "!!!", " ! ", "Kiwi.", "Kiwi!?", "!Kiwi"])


def test_personas_and_hobbies_need_their_word_whole_in_any_case():
    check("persona:pirate", ["Arr, four.", "ARR!", "it is 4, arr"], ["", "carry on", "arrr", "Ahoy", "barr"])
    check("persona:shakespeare", ["Thou art right.", "so sayest THOU"], ["though", "", "thy answer"])
    check("hobby:tennis", ["Four, like a tennis score.", "TENNIS!", "tennis"], ["", "tenniscourt", "chess", "tenis"])


def test_languages_are_fasttexts_top_language_on_enough_letters():
    check("language:fr", ["La réponse est quatre.", "Je pense que oui, merci beaucoup."],
          ["", "The answer is four.", "Die Antwort ist vier.", "oui", "4 + 4 = 8", "Bonjour"])
    check("language:es", ["Es la respuesta correcta.", "Me gusta mucho la fruta."], ["La réponse est quatre.", "sí"])
    check("language:de", ["Die Antwort ist vier.", "Ich mag Obst sehr gern."], ["The answer is four.", "ja"])


def test_every_constraint_has_a_stable_id_a_known_kind_and_a_clean_text():
    by_kind = all_constraints()
    assert sorted(by_kind) == sorted(KINDS)
    constraints = [c for cs in by_kind.values() for c in cs]
    assert len({c.id for c in constraints}) == len(constraints) > 20
    for constraint in constraints:
        assert constraint.id.split(":")[0] == constraint.kind
        assert constraint_by_id(constraint.id) == constraint
        assert constraint.text.strip() == constraint.text and not any(tag in constraint.text for tag in CONTROL_TAGS)
    assert constraint_by_id("form:max_words:5").text == "Answer in at most 5 words."
    with pytest.raises(ValueError, match="no constraint 'form:nothing'"):
        constraint_by_id("form:nothing")


def test_drawing_is_seeded_and_reaches_every_kind():
    first = [draw_constraint(random.Random(f"s:{n}")).id for n in range(200)]
    assert first == [draw_constraint(random.Random(f"s:{n}")).id for n in range(200)]
    assert {i.split(":")[0] for i in first} == set(KINDS)
    rng = random.Random(0)
    assert {draw_constraint(rng, kinds=["form"]).kind for _ in range(50)} == {"form"}
    with pytest.raises(ValueError, match="unknown or no constraint kinds"):
        draw_constraint(rng, kinds=["mood"])
