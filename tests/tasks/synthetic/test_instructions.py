"""The instruction set: deterministic, answers right by recomputation, held-out prompts unseen, valid messages."""

import json
import re
from collections import Counter

import pytest

from tasks.dialogues.prompts import read_prompts
from tasks.synthetic.instructions import (
    CHAT_TAGS,
    TASKS,
    check_answer,
    exact_match_rate,
    final_answer,
    make_instructions,
    split_heldout,
    tokenizer_texts,
    user_prompts,
    write_jsonl,
    write_prompts,
)
from tasks.tokenizer import train_tokenizer


def _recompute(prompt: str) -> tuple[str, str]:
    """(task, answer) worked out from the prompt text alone, without the generators."""
    if match := re.fullmatch(r"What is (\d+) \+ (\d+)\?", prompt):
        return "add", str(int(match[1]) + int(match[2]))
    if match := re.fullmatch(r"Say (\w+) in capitals", prompt):
        return "capitals", match[1].upper()
    command, _, rest = prompt.partition(": ")
    words = rest.split(" ")
    answers = {
        "Repeat": ("repeat", rest),
        "Reverse": ("reverse", " ".join(words[::-1])),
        "How many words": ("count", str(len(words))),
        "First word": ("first", words[0]),
        "Last word": ("last", words[-1]),
    }
    return answers[command]


def test_same_seed_gives_byte_identical_jsonl_and_another_seed_differs(tmp_path):
    first = write_jsonl(tmp_path / "a.jsonl", make_instructions(300, seed=3)).read_bytes()
    again = write_jsonl(tmp_path / "b.jsonl", make_instructions(300, seed=3)).read_bytes()
    other = write_jsonl(tmp_path / "c.jsonl", make_instructions(300, seed=4)).read_bytes()
    assert first == again and first != other
    lines = first.decode().splitlines()
    assert len(lines) == 300
    assert json.loads(lines[0])["messages"] == make_instructions(1, seed=3)[0]["messages"]
    assert all(list(json.loads(line)) == ["id", "messages", "task"] for line in lines)


def test_every_answer_matches_an_independent_recomputation_and_the_task_label():
    dialogues = make_instructions(2000, seed=7, system_share=0.3, multi_turn_share=0.5)
    seen = Counter()
    for dialogue in dialogues:
        messages = [m for m in dialogue["messages"] if m["role"] != "system"]
        for user, assistant in zip(messages[::2], messages[1::2]):
            task, answer = _recompute(user["content"])
            assert assistant["content"] == answer, user
            seen[task] += 1
        assert dialogue["task"] == _recompute(user_prompts(dialogue)[-1])[0]
    assert set(seen) == set(TASKS)
    assert len({d["id"] for d in dialogues}) == len(dialogues)


def test_messages_alternate_after_an_optional_system_turn_and_hold_no_chat_tags():
    for dialogue in make_instructions(1000, seed=2, system_share=0.5, multi_turn_share=0.5):
        roles = [m["role"] for m in dialogue["messages"]]
        body = roles[1:] if roles[0] == "system" else roles
        assert body in (["user", "assistant"], ["user", "assistant"] * 2), roles
        for message in dialogue["messages"]:
            assert message["content"].strip() == message["content"] != ""
            assert not any(tag in message["content"] for tag in CHAT_TAGS)


def test_task_mix_and_dialogue_shapes_come_in_the_shares_asked():
    dialogues = make_instructions(4000, seed=5, tasks={"add": 3, "reverse": 1}, system_share=0.3, multi_turn_share=0.1)
    tasks = Counter(d["task"] for d in dialogues)
    assert set(tasks) == {"add", "reverse"}
    assert abs(tasks["add"] / len(dialogues) - 0.75) < 0.03
    with_system = sum(d["messages"][0]["role"] == "system" for d in dialogues)
    two_rounds = sum(len(user_prompts(d)) == 2 for d in dialogues)
    assert abs(with_system / len(dialogues) - 0.3) < 0.03
    assert abs(two_rounds / len(dialogues) - 0.1) < 0.02
    plain = make_instructions(500, seed=5, tasks=["first"], system_share=0.0, multi_turn_share=0.0)
    assert all(d["task"] == "first" and len(d["messages"]) == 2 for d in plain)


def test_dialogue_i_does_not_depend_on_how_many_are_drawn():
    assert make_instructions(50, seed=1) == make_instructions(200, seed=1)[:50]


@pytest.mark.parametrize("bad", [{"tasks": ["divide"]}, {"tasks": {"add": 0}}, {"system_share": 1.5}])
def test_bad_arguments_are_refused(bad):
    with pytest.raises(ValueError):
        make_instructions(10, seed=0, **bad)


def test_no_heldout_prompt_occurs_in_the_training_dialogues():
    dialogues = make_instructions(3000, seed=9, multi_turn_share=0.3)
    train, heldout = split_heldout(dialogues, share=0.1, seed=9)
    train_prompts = {prompt for d in train for prompt in user_prompts(d)}
    assert not {user_prompts(d)[-1] for d in heldout} & train_prompts
    assert 0.06 < len(heldout) / len(dialogues) < 0.14
    assert len(train) + len(heldout) > 0.8 * len(dialogues)
    # Every task is held out, and the split is a function of the seed.
    assert {d["task"] for d in heldout} == set(TASKS)
    assert split_heldout(dialogues, share=0.1, seed=9) == (train, heldout)
    assert split_heldout(dialogues, share=0.1, seed=10)[1] != heldout


def test_answers_are_checked_exactly_after_strip():
    dialogues = make_instructions(4, seed=0, tasks=["reverse"])
    answers = [final_answer(d) for d in dialogues]
    assert check_answer(dialogues[0], f"  {answers[0]}\n")
    assert not check_answer(dialogues[0], answers[0].upper())
    assert not check_answer(dialogues[0], answers[0] + " kiwi")
    generations = [answers[0], answers[1], "", answers[3][::-1]]
    assert exact_match_rate(dialogues, generations) == 0.5
    with pytest.raises(ValueError):
        exact_match_rate(dialogues, generations[:3])


def test_a_small_tokenizer_trained_on_the_texts_fits_a_long_dialogue_in_128_tokens(tmp_path):
    texts = tokenizer_texts(n=600, seed=0)
    assert all(tag in "\n".join(texts) for tag in CHAT_TAGS)
    tokenizer = train_tokenizer(texts, tmp_path, vocab_size=600, hard_vocab_limit=False)
    longest = max(texts[4:], key=len)
    assert tokenizer.decode(tokenizer.encode(longest)) == longest
    assert len(tokenizer.encode(longest, eos=True)) <= 128
    # The vocabulary is covered: no answer falls back to byte pieces.
    byte_pieces = [t for d in make_instructions(200, seed=1) for t in tokenizer.encode(final_answer(d), bos=False)
                   if tokenizer.piece(t).startswith("<0x")]
    assert byte_pieces == []


def test_a_prompt_set_of_the_dialogues_ends_each_with_the_user_turn_to_answer(tmp_path):
    path = write_prompts(tmp_path / "prompts.jsonl", n=20, seed=3)
    prompts, problems = read_prompts(path)
    dialogues = make_instructions(20, seed=3)
    assert not problems and len(prompts) == 20
    assert [p.as_dicts() for p in prompts] == [d["messages"][:-1] for d in dialogues]
    assert [json.loads(line)["answer"] for line in path.read_text().splitlines()] == list(map(final_answer, dialogues))
    assert [p.reference for p in prompts] == list(map(final_answer, dialogues))  # read as each prompt's right answer
