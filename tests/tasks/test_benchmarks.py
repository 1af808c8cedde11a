"""Benchmark task files: records checked with file and line, the refuse/skip policy, seeded
few-shot prompts, answer matching, and the synthetic tasks' known answers."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from tasks.benchmarks import (
    BadInput, cut_at_stop, exact_match, load_task, parse_number, write_task,
)
from tasks.synthetic.benchmarks import COLOURS, corpus_documents, write_synthetic_tasks


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return write_synthetic_tasks(tmp_path_factory.mktemp("tasks"), n=32)


def test_the_synthetic_tasks_have_their_known_answers(synthetic):
    colours, homes, doubles = synthetic["colours"], synthetic["homes"], synthetic["doubles"]
    assert Counter(r.answer for r in colours.test) == {i: 16 for i in range(len(COLOURS))}
    assert colours.test[0].choices == COLOURS
    assert not {r.question for r in colours.test} & {r.question for r in colours.train}
    assert not {r.question for r in homes.test} & {r.question for r in homes.train}
    assert sorted(int(r.answer) for r in doubles.test) == [2 * a for a in range(10)]
    documents = corpus_documents(synthetic, 50, per_document=3, seed=4)
    assert documents == corpus_documents(synthetic, 50, per_document=3, seed=4)
    assert all(d.count("Question:") == 3 for d in documents)
    assert not any(r.question in d for r in (*colours.test, *homes.test) for d in documents)


def records_file(tmp_path, lines: list[str]):
    (tmp_path / "task.json").write_text(json.dumps({"kind": "multiple_choice"}))
    (tmp_path / "test.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


GOOD = json.dumps({"question": "q", "choices": ["a", "b"], "answer": 1})


@pytest.mark.parametrize("bad, message", [
    ('{"question": "q", "choices": ["a", "b"], "answer": 2', "not JSON"),
    (json.dumps({"question": "q", "choices": ["a", "b"], "answer": 2}), "out of range"),
    (json.dumps({"question": "q", "choices": ["a", "b"], "answer": -1}), "out of range"),
    (json.dumps({"choices": ["a", "b"], "answer": 0}), "missing field 'question'"),
    (json.dumps({"question": "q", "choices": ["a"], "answer": 0}), "at least two"),
    (json.dumps(["q"]), "JSON object"),
])
def test_a_bad_record_is_refused_or_skipped_with_its_file_and_line(tmp_path, bad, message):
    folder = records_file(tmp_path, [GOOD, "", bad, GOOD])
    with pytest.raises(BadInput, match=rf"test\.jsonl:3: .*{message}"):
        load_task(folder)
    task = load_task(folder, policy="skip")
    assert len(task.test) == 2 and [r.where.rsplit(":", 1)[1] for r in task.test] == ["1", "4"]
    assert len(task.problems) == 1 and str(task.problems[0]).startswith(f"{folder / 'test.jsonl'}:3: ")


def test_a_file_without_a_usable_record_and_an_unknown_kind_are_refused(tmp_path):
    folder = records_file(tmp_path, ["{}"])
    with pytest.raises(BadInput, match="no usable records"):
        load_task(folder, policy="skip")
    (tmp_path / "task.json").write_text(json.dumps({"kind": "essay"}))
    with pytest.raises(BadInput, match=r"task\.json:1: kind"):
        load_task(folder)


def test_few_shot_examples_are_seeded_per_record_and_never_the_question_itself(tmp_path):
    train = [{"question": f"t{i}", "answers": [f"a{i}"]} for i in range(20)]
    test = [{"question": f"t{i}", "answers": ["x"]} for i in range(5)]
    task = load_task(write_task(tmp_path / "full", "t", "qa", test, train))
    prompts = [task.prompt(i, shots=19, seed=3) for i in range(5)]
    assert prompts == [task.prompt(i, shots=19, seed=3) for i in range(5)]
    assert task.prompt(0, shots=3, seed=3) != task.prompt(0, shots=3, seed=4)
    for i, prompt in enumerate(prompts):
        # Nineteen of the twenty train records: all but the one asking the test question.
        assert prompt.count("Question:") == 20 and f"Question: t{i}\nAnswer: a{i}" not in prompt
        assert prompt.endswith(f"Question: t{i}\nAnswer:")
    # Record 2's examples do not depend on the records after it.
    shorter = load_task(write_task(tmp_path / "short", "t", "qa", test[:3], train))
    assert shorter.prompt(2, shots=5, seed=3) == task.prompt(2, shots=5, seed=3)
    with pytest.raises(ValueError, match="pool has 19"):
        task.prompt(0, shots=20)


def test_answers_match_after_normalising_numbers_are_the_last_ones():
    assert exact_match("  The  Avon. ", ["avon", "the avon"]) and not exact_match("Avon river", ["Avon"])
    assert parse_number("so 3 and then 1,024.5 apples") == 1024.5 and parse_number("none") is None
    assert parse_number("-7") == -7
    assert cut_at_stop("12\n\nQuestion: next", ["Question:", "\n\n"]) == "12"
    assert cut_at_stop("no stop here", ["\n"]) == "no stop here"
