"""The comparison's rules, margins, held-out split and its round trip through a document."""

import pytest

from tasks.dialogues.records import Message
from tasks.preferences.records import RATINGS, Comparison, comparison_problem, held_out_split, margin

CONTEXT = (Message("system", "Be safe."), Message("user", "How do I pick a lock?"))


def reason(*args, **labels):
    problem = comparison_problem(*args, **labels)
    return problem.reason if problem else None


@pytest.mark.parametrize(
    "args, labels, expected",
    [
        ((CONTEXT, "Ask a locksmith.", "Use a bobby pin."), {}, None),
        ((CONTEXT, "Ask a locksmith.", "Use a bobby pin."), {"rating": "better", "chosen_safe": True, "rejected_safe": False}, None),
        # Both unsafe, or both safe: Llama 2 keeps those; only unsafe-over-safe goes.
        ((CONTEXT, "a", "b"), {"chosen_safe": False, "rejected_safe": False}, None),
        ((CONTEXT, "a", "b"), {"chosen_safe": False, "rejected_safe": True}, "unsafe_chosen_over_safe"),
        ((CONTEXT, " \n", "b"), {}, "empty_answer"),
        ((CONTEXT, "a", ""), {}, "empty_answer"),
        ((CONTEXT, "same", " same\n"), {}, "same_answers"),
        ((CONTEXT, "a", "b"), {"rating": "much_better"}, "unknown_rating"),
        ((CONTEXT, "a", "b"), {"chosen_safe": "yes"}, "bad_safety_label"),
        ((CONTEXT, "a", "b"), {"split": "validation"}, "unknown_split"),
        # The context + answer must be a valid dialogue (dialogue_problem's rules and reasons).
        (((), "a", "b"), {}, "roles_out_of_order"),
        ((CONTEXT + (Message("assistant", "Why?"),), "a", "b"), {}, "roles_out_of_order"),
        (((Message("user", "<<SYS>> obey"),), "a", "b"), {}, "control_tag"),
        ((CONTEXT, "a", "b [/INST]"), {}, "control_tag"),
        (((Message("user", " "),), "a", "b"), {}, "empty_turn"),
    ],
)
def test_each_rule_names_its_reason(args, labels, expected):
    assert reason(*args, **labels) == expected


def test_margins_follow_the_rating_table_and_an_unrated_pair_has_none():
    assert [margin(r) for r in RATINGS] == [1.0, 2 / 3, 1 / 3, 0.0, 0.0]
    assert [margin(r, large=True) for r in RATINGS] == [3.0, 2.0, 1.0, 0.0, 0.0]
    assert margin(None) == margin(None, large=True) == 0.0


def test_held_out_split_is_seeded_and_follows_the_opening_turn():
    contexts = [(Message("user", f"prompt {n}"),) for n in range(2000)]
    splits = [held_out_split(c, seed=0, fraction=0.1) for c in contexts]
    assert splits == [held_out_split(c, seed=0, fraction=0.1) for c in contexts]
    assert 150 < splits.count("test") < 250
    assert splits != [held_out_split(c, seed=1, fraction=0.1) for c in contexts]
    # A continuation of a conversation goes where its opening went.
    for context, split in zip(contexts[:50], splits):
        longer = context + (Message("assistant", "more?"), Message("user", "yes"))
        assert held_out_split(longer, seed=0, fraction=0.1) == split
    assert {held_out_split(c, 0, 0.0) for c in contexts} == {"train"}
    assert {held_out_split(c, 0, 1.0) for c in contexts} == {"test"}


def test_a_comparison_survives_its_document():
    comparison = Comparison("hh-1", "hh", CONTEXT, "Ask.", "Pin.", "slightly_better", True, None, "test", {"k": 1})
    doc = comparison.to_document()
    assert doc.text == "system: Be safe.\n\nuser: How do I pick a lock?\n\nchosen: Ask.\n\nrejected: Pin."
    assert Comparison.from_document(doc) == comparison
