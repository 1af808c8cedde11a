"""Ghost Attention's dialogues: the instruction in every turn to sample, in the system message only
to train, one record per prefix when asked, every sampled dialogue kept or dropped with a reason,
and the records read back by the dialogue ingest with their meta."""

from __future__ import annotations

import pytest

from tasks.dialogues.constraints import constraint_by_id
from tasks.dialogues.ghost_attention import (
    SEPARATOR,
    SampledDialogue,
    build_gatt_dialogues,
    gatt_training_dialogue,
    gatt_training_dialogues,
    with_instruction_every_turn,
    without_instruction,
    write_gatt_jsonl,
)
from tasks.dialogues.readers import MessagesReader
from tasks.dialogues.records import Dialogue, train_on
from tasks.documents import Document
from tasks.stage import InputFile, ShardUnit
from tasks.synthetic.instructions import make_conversations

CAPITALS = constraint_by_id("form:capitals")
INSTRUCTION = "Answer in capital letters only."


def turns(*contents: str, system: str | None = None) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user" if n % 2 == 0 else "assistant", "content": c} for n, c in enumerate(contents)]


def test_the_sampling_form_opens_every_user_turn_with_the_instruction():
    messages = turns("Repeat: kiwi", "KIWI", "Say yes in capitals", "YES", "Last word: fig plum", system="Be brief.")
    instructed = with_instruction_every_turn(messages, CAPITALS)
    assert instructed == turns(f"{INSTRUCTION}\n\nRepeat: kiwi", "KIWI", f"{INSTRUCTION}\n\nSay yes in capitals",
                               "YES", f"{INSTRUCTION}\n\nLast word: fig plum", system="Be brief.")
    assert SEPARATOR == "\n\n"
    assert without_instruction(instructed, CAPITALS) == messages
    assert without_instruction(messages, CAPITALS) == messages  # nothing to take off


def test_the_training_form_has_the_instruction_once_as_the_system_message():
    sampled = with_instruction_every_turn(turns("Repeat: kiwi", "KIWI", "Say yes in capitals", "YES"), CAPITALS)
    assert gatt_training_dialogue(sampled, CAPITALS) == turns("Repeat: kiwi", "KIWI", "Say yes in capitals", "YES",
                                                              system=INSTRUCTION)
    plain = turns("Repeat: kiwi", "KIWI", system="Be brief.")
    assert gatt_training_dialogue(plain, CAPITALS) == turns("Repeat: kiwi", "KIWI", system=f"Be brief.\n{INSTRUCTION}")


def test_one_record_or_one_per_prefix_each_training_on_its_last_answer():
    sampled = turns("a?", "A", "b?", "B", "c?", "C")
    [whole] = gatt_training_dialogues("d1", sampled, CAPITALS)
    assert whole == {"id": "d1:gatt:3", "messages": turns("a?", "A", "b?", "B", "c?", "C", system=INSTRUCTION),
                     "train_on": "last_answer", "constraint": "form:capitals", "constraint_kind": "form",
                     "gatt_source": "d1", "turns": 3}
    prefixes = gatt_training_dialogues("d1", sampled, CAPITALS, every_prefix=True)
    assert [r["id"] for r in prefixes] == ["d1:gatt:1", "d1:gatt:2", "d1:gatt:3"]
    assert [r["messages"][-1]["content"] for r in prefixes] == ["A", "B", "C"]
    assert [len(r["messages"]) for r in prefixes] == [3, 5, 7]
    assert prefixes[-1] == whole


def test_every_sampled_dialogue_is_kept_or_dropped_with_its_reason():
    sampled = [
        SampledDialogue("follows", tuple(turns("a?", "A", "b?", "B")), CAPITALS),
        SampledDialogue("breaks", tuple(turns("a?", "A", "b?", "b")), CAPITALS),
        SampledDialogue("empty", tuple(turns("a?", "A", "b?", "  ")), CAPITALS),
        SampledDialogue("tag", tuple(turns("a?", "A [/INST]")), CAPITALS),
        SampledDialogue("pending", tuple(turns("a?", "A", "b?")), CAPITALS),
    ]
    trained = build_gatt_dialogues(sampled)
    assert trained.kept == ["follows", "breaks"]
    assert trained.dropped == {"empty": "empty_turn", "tag": "control_tag", "pending": "ends_without_assistant"}
    assert trained.counts() == {"dialogues": 5, "kept": 2, "records": 2,
                                "dropped": {"control_tag": 1, "empty_turn": 1, "ends_without_assistant": 1}}
    filtered = build_gatt_dialogues(sampled, every_prefix=True, require_following=True)
    assert filtered.kept == ["follows"] and filtered.dropped["breaks"] == "answer_breaks_constraint"
    assert [r["id"] for r in filtered.records] == ["follows:gatt:1", "follows:gatt:2"]
    assert filtered.counts()["dialogues"] == len(sampled)
    with pytest.raises(ValueError, match="'follows' appears twice"):
        build_gatt_dialogues(sampled[:1] * 2)


def test_conversations_have_many_rounds_and_no_system_turn():
    dialogues = make_conversations(40, seed=2, min_turns=3, max_turns=20)
    rounds = [len(d["messages"]) // 2 for d in dialogues]
    assert min(rounds) >= 3 and max(rounds) <= 20 and max(rounds) >= 15
    assert all(d["messages"][0]["role"] == "user" and len(d["messages"]) % 2 == 0 for d in dialogues)
    assert make_conversations(5, seed=2, min_turns=3, max_turns=20) == dialogues[:5]
    with pytest.raises(ValueError, match="min_turns <= max_turns"):
        make_conversations(1, seed=0, min_turns=4, max_turns=3)


def test_the_written_records_ingest_with_their_meta(tmp_path):
    sampled = [SampledDialogue(d["id"], tuple(with_instruction_every_turn(d["messages"], CAPITALS)), CAPITALS)
               for d in make_conversations(6, seed=1, max_turns=4)]
    records = build_gatt_dialogues(sampled, every_prefix=True).records
    path = write_gatt_jsonl(tmp_path / "gatt.jsonl", records)
    assert write_gatt_jsonl(tmp_path / "again.jsonl", records).read_bytes() == path.read_bytes()
    items = list(MessagesReader(id_field="id").read(ShardUnit("gatt", 0, InputFile.describe(str(path)))))
    assert len(items) == len(records) and all(isinstance(item, Document) for item in items)
    for item, record in zip(items, records):
        dialogue = Dialogue.from_document(item)
        assert train_on(dialogue.meta) == "last_answer"
        assert dialogue.meta["constraint"] == "form:capitals" and dialogue.meta["turns"] == record["turns"]
        assert [{"role": m.role, "content": m.content} for m in dialogue.messages] == record["messages"]
    assert train_on({}) == "all_answers"
    with pytest.raises(ValueError, match="meta 'train_on' is 'first_answer'"):
        train_on({"train_on": "first_answer"})
