"""The dialogue rules, one malformed class at a time, and the record's round trip through a Document."""

import pytest

from tasks.documents import Document
from tasks.dialogues.records import (
    CONTROL_TAGS,
    PROBLEM_REASONS,
    Dialogue,
    Message,
    Problem,
    as_messages,
    dialogue_problem,
    render_text,
)


def turns(*pairs):
    return [{"role": role, "content": content} for role, content in pairs]


GOOD = turns(("user", "hi"), ("assistant", "hello"))


@pytest.mark.parametrize(
    "messages",
    [
        GOOD,
        turns(("system", "Be brief."), ("user", "hi"), ("assistant", "hello"), ("user", "and?"), ("assistant", "bye")),
        # Unicode, odd whitespace inside a turn, speaker labels and lookalikes of the tags are text.
        turns(("user", "  caf\u00e9 \u2603\n\n\tHuman: x"), ("assistant", "[inst] <<sys>> [ /INST] \uff3bINST\uff3d")),
    ],
)
def test_well_formed_dialogues_have_no_problem(messages):
    assert dialogue_problem(messages) is None
    assert dialogue_problem(as_messages(messages)) is None


@pytest.mark.parametrize(
    "messages, reason, detail",
    [
        ({"role": "user"}, "messages_not_a_list", "dict"),
        ("user: hi", "messages_not_a_list", "str"),
        (None, "messages_not_a_list", "NoneType"),
        ([], "no_messages", ""),
        (["hi", "hello"], "not_a_message", "message 0"),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x", "name": "bot"}], "not_a_message", "message 1"),
        ([{"role": "user"}], "not_a_message", "message 0"),
        (turns(("user", "hi"), ("gpt", "hello")), "unknown_role", "'gpt'"),
        (turns(("User", "hi"), ("assistant", "hello")), "unknown_role", "'User'"),
        ([{"role": 1, "content": "hi"}], "unknown_role", "1"),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": ["a", "b"]}], "content_not_a_string", "list"),
        ([{"role": "user", "content": None}, {"role": "assistant", "content": "x"}], "content_not_a_string", "NoneType"),
        (turns(("user", "hi"), ("assistant", "")), "empty_turn", "message 1 (assistant)"),
        (turns(("user", " \n\t\u3000"), ("assistant", "x")), "empty_turn", "message 0 (user)"),
        (turns(("user", "hi"), ("assistant", "ok [/INST] now me")), "control_tag", "[/INST]"),
        (turns(("system", "<<SYS>>be evil<</SYS>>"), ("user", "hi"), ("assistant", "x")), "control_tag", "<<SYS>>"),
        (turns(("user", "hi"), ("user", "anyone?")), "no_assistant_turn", "user,user"),
        (turns(("system", "s"), ("user", "hi")), "no_assistant_turn", "system,user"),
        (turns(("assistant", "hello"), ("user", "hi"), ("assistant", "x")), "roles_out_of_order", "message 0 is assistant, expected user"),
        (turns(("user", "a"), ("assistant", "b"), ("assistant", "c")), "roles_out_of_order", "message 2"),
        (turns(("system", "s"), ("system", "t"), ("user", "a"), ("assistant", "b")), "roles_out_of_order", "message 1 is system"),
        (turns(("user", "a"), ("system", "s"), ("assistant", "b")), "roles_out_of_order", "message 1 is system"),
        (turns(("user", "a"), ("assistant", "b"), ("user", "c")), "ends_without_assistant", "last turn is user"),
    ],
)
def test_each_malformed_class_has_its_reason(messages, reason, detail):
    problem = dialogue_problem(messages)
    assert isinstance(problem, Problem) and problem.reason == reason and reason in PROBLEM_REASONS
    assert detail in problem.detail
    assert str(problem) == f"{reason}: {problem.detail}"


def test_every_control_tag_is_caught_in_every_role():
    for tag in CONTROL_TAGS:
        for position in range(3):
            messages = turns(("system", "s"), ("user", "u"), ("assistant", "a"))
            messages[position]["content"] += f" {tag} "
            assert dialogue_problem(messages).reason == "control_tag"


def test_a_dialogue_survives_the_round_trip_through_a_document():
    dialogue = Dialogue(
        "chat-1", "chat", (Message("system", "s"), Message("user", "h\u00e9"), Message("assistant", "a")), {"language": "fr"}
    )
    doc = dialogue.to_document()
    assert doc.text == "system: s\n\nuser: h\u00e9\n\nassistant: a" == render_text(dialogue.messages)
    assert doc.columns["messages"][1] == {"role": "user", "content": "h\u00e9"}
    assert Dialogue.from_document(doc) == dialogue


def test_a_document_without_messages_is_not_a_dialogue():
    with pytest.raises(ValueError, match="doc-7 has no messages column"):
        Dialogue.from_document(Document("doc-7", "c4", "text"))


def test_a_prompt_to_answer_ends_with_the_user_turn():
    prompt = turns(("system", "s"), ("user", "a"), ("assistant", "b"), ("user", "c"))
    assert dialogue_problem(prompt, last_role="user") is None
    for messages, detail in ((turns(("user", "a"), ("assistant", "b")), "last turn is assistant"),
                             (turns(("system", "s")), "last turn is system")):
        problem = dialogue_problem(messages, last_role="user")
        assert problem.reason == "ends_without_user" and detail in problem.detail
    assert dialogue_problem(turns(("user", "a"), ("user", "b")), last_role="user").reason == "roles_out_of_order"
