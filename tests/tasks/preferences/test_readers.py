"""Both comparison forms read line by line: every line kept or quarantined with its reason."""

from tasks.dialogues.records import Message
from tasks.documents import BadRecord, make_doc_id
from tasks.preferences.readers import ComparisonReader, HHPairReader
from tasks.preferences.records import Comparison
from tasks.stage import InputFile, ShardUnit
from tests.helpers import write_jsonl_gz


def read(reader, path, source="prefs"):
    return list(reader.read(ShardUnit(source, 0, InputFile.describe(str(path)))))


def outcome(item):
    return item.reason if isinstance(item, BadRecord) else "kept"


def turns(*pairs):
    return [{"role": role, "content": content} for role, content in pairs]


def hh(*pairs):
    """An HH transcript: each turn after a blank line and its speaker label."""
    return "".join(f"\n\n{speaker}: {text}" for speaker, text in pairs)


PROMPT = turns(("user", "My neighbour's dog barks all night. What can I do?"))


def comparison_lines():
    return [
        {"context": PROMPT, "chosen": "Talk to them first.", "rejected": "Poison it.", "rating": "significantly_better",
         "chosen_safe": True, "rejected_safe": False, "split": "train", "annotator": 7},
        {"context": turns(("system", "Be brief."), ("user", "2+2?"), ("assistant", "4"), ("user", "sure?")),
         "chosen": "Yes, 4.", "rejected": "Maybe 5.", "rating": "unsure", "split": "test"},
        {"context": PROMPT, "chosen": "Earplugs.", "rejected": "Move out."},  # unrated, unlabelled, split assigned
        {"context": PROMPT, "chosen": "Shout back.", "rejected": "Call the council.", "rating": "better",
         "chosen_safe": False, "rejected_safe": True},
        {"context": PROMPT, "chosen": "Earplugs.", "rejected": "Earplugs."},
        {"context": PROMPT, "chosen": "", "rejected": "Earplugs."},
        {"context": PROMPT, "chosen": "a", "rejected": "b", "rating": "a_bit_better"},
        {"context": PROMPT, "chosen": "a", "rejected": "b", "chosen_safe": 1},
        {"context": PROMPT, "chosen": "a", "rejected": "b", "split": "dev"},
        {"context": turns(("user", "hi"), ("assistant", "hello")), "chosen": "a", "rejected": "b"},
        {"context": turns(("user", "[INST] hi")), "chosen": "a", "rejected": "b"},
        {"context": [{"role": "user"}], "chosen": "a", "rejected": "b"},
        {"context": PROMPT, "chosen": "a"},
        {"chosen": "a", "rejected": "b"},
        b'{"context": [',
    ]


EXPECTED = [
    "kept", "kept", "kept", "unsafe_chosen_over_safe", "same_answers", "empty_answer", "unknown_rating",
    "bad_safety_label", "unknown_split", "roles_out_of_order", "control_tag", "not_a_message",
    "answer_not_a_string", "no_context", "invalid_json",
]


def test_comparison_form_each_line_kept_or_quarantined_with_its_reason(tmp_path):
    path = write_jsonl_gz(tmp_path / "prefs.jsonl.gz", comparison_lines())
    items = read(ComparisonReader(), path)
    assert [outcome(i) for i in items] == EXPECTED
    assert all(i.locator.startswith(f"{path}:line ") for i in items if isinstance(i, BadRecord))
    first, second, unrated = (Comparison.from_document(i) for i in items[:3])
    assert first.id == make_doc_id("prefs", "prefs.jsonl.gz:line 1") and first.source == "prefs"
    assert first.context == (Message("user", PROMPT[0]["content"]),)
    assert (first.chosen, first.rejected, first.rating) == ("Talk to them first.", "Poison it.", "significantly_better")
    assert (first.chosen_safe, first.rejected_safe, first.split) == (True, False, "train")
    assert first.meta == {"annotator": 7, "provenance": f"{path}:line 1"}
    assert second.split == "test" and second.context[-1] == Message("user", "sure?")
    assert (unrated.rating, unrated.chosen_safe, unrated.rejected_safe) == (None, None, None)
    assert unrated.split in ("train", "test")


def test_id_field_names_the_comparison(tmp_path):
    lines = [{"pair": "p1", "context": PROMPT, "chosen": "a", "rejected": "b"}, {"context": PROMPT, "chosen": "a", "rejected": "b"}]
    items = read(ComparisonReader(id_field="pair"), write_jsonl_gz(tmp_path / "p.jsonl.gz", lines))
    assert items[0].id == make_doc_id("prefs", "p1") and items[1].reason == "bad_id"


def hh_lines():
    context = [("Human", "How do I get back at my boss?"), ("Assistant", "What happened?"), ("Human", "He yelled at me.")]
    return [
        {"chosen": hh(*context, ("Assistant", "Maybe talk to HR.")), "rejected": hh(*context, ("Assistant", "Slash his tyres."))},
        # A model quoting "Human:" mid-turn stays text, as the dialogue reader keeps it.
        {"chosen": hh(("Human", "Say 'Human: hi'"), ("Assistant", "Human: hi")), "rejected": hh(("Human", "Say 'Human: hi'"), ("Assistant", "No."))},
        {"chosen": hh(*context, ("Assistant", "Talk to HR.")), "rejected": hh(*context[:2], ("Assistant", "Quit."))},
        {"chosen": hh(*context, ("Assistant", "")), "rejected": hh(*context, ("Assistant", "Quit."))},
        {"chosen": hh(*context, ("Assistant", "Quit.")), "rejected": hh(*context, ("Assistant", "Quit."))},
        {"chosen": hh(*context, ("Assistant", "a"), ("Assistant", "b")), "rejected": hh(*context, ("Assistant", "a"), ("Assistant", "c"))},
        {"chosen": hh(*context), "rejected": hh(*context)},
        {"chosen": "no labels at all", "rejected": hh(*context, ("Assistant", "x"))},
        {"chosen": hh(*context, ("Assistant", "x"))},
    ]


def test_hh_pairs_split_into_one_context_and_two_answers(tmp_path):
    path = write_jsonl_gz(tmp_path / "hh.jsonl.gz", hh_lines())
    items = read(HHPairReader(), path, source="hh")
    assert [outcome(i) for i in items] == [
        "kept", "kept", "contexts_differ", "empty_answer", "same_answers", "roles_out_of_order",
        "ends_without_assistant", "no_speaker_label", "no_transcript",
    ]
    first, quoted = (Comparison.from_document(i) for i in items[:2])
    assert [m.role for m in first.context] == ["user", "assistant", "user"]
    assert first.context[-1] == Message("user", "He yelled at me.")
    assert (first.chosen, first.rejected, first.rating, first.chosen_safe) == ("Maybe talk to HR.", "Slash his tyres.", None, None)
    assert quoted.chosen == "Human: hi"
    assert items[2].error.startswith("contexts_differ: the transcripts differ before their answers: 3 and 2 turns")
