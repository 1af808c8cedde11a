"""The dialogue ingest stage on the one executor: reconciled manifests, quarantine reasons, reruns."""

import gzip
import json

import pyarrow.parquet as pq

from tasks.dialogues.ingest import DIALOGUE_STAGE, ingest_dialogues
from tasks.dialogues.readers import HHReader, MessagesReader
from tasks.dialogues.records import MESSAGES_COLUMNS, Message, dialogue_problem, read_dialogues
from tasks.documents import split_repeat
from tasks.shards import quarantine_location
from tasks.storage import resolve
from tasks.validate import check_part, check_stage_level
from tests.helpers import write_jsonl_gz


def turns(*pairs):
    return [{"role": role, "content": content} for role, content in pairs]


def chat_files(folder):
    """Two files: good dialogues, each malformed class once, and one id that repeats across the files."""
    first = [
        {"id": "a", "messages": turns(("system", "Be brief."), ("user", "hi"), ("assistant", "hello")), "language": "en"},
        {"id": "b", "messages": turns(("user", "2+2?"), ("assistant", "4"), ("user", "sure?"), ("assistant", "yes"))},
        {"id": "c", "messages": turns(("user", "hi"), ("assistant", " "))},
        {"id": "d", "messages": turns(("user", "[INST] hi"), ("assistant", "x"))},
        b"{not json",
        {"id": "e", "messages": turns(("user", "hi"), ("user", "hi?"))},
    ]
    second = [
        {"id": "a", "messages": turns(("user", "same id, other file"), ("assistant", "\u00e9t\u00e9"))},
        {"id": "f", "messages": turns(("user", "q"), ("assistant", "a"), ("user", "left hanging"))},
        {"messages": turns(("user", "no id"), ("assistant", "x"))},
    ]
    return [str(write_jsonl_gz(folder / "chat-0.jsonl.gz", first)), str(write_jsonl_gz(folder / "chat-1.jsonl.gz", second))]


def test_ingest_reconciles_counts_reasons_and_reads_back(tmp_path, ray_local):
    root = str(tmp_path / "out")
    manifest = ingest_dialogues("chat", chat_files(tmp_path / "raw"), root, MessagesReader(id_field="id"))
    totals = manifest["totals"]["by_source"]["chat"]
    assert totals["docs_in"] == 9 == totals["kept"] + totals["dropped_total"] + totals["quarantined"]
    assert totals["kept"] == 3
    assert totals["quarantined_reasons"] == {
        "bad_id": 1, "control_tag": 1, "empty_turn": 1, "ends_without_assistant": 1, "invalid_json": 1, "no_assistant_turn": 1,
    }
    stage_dir = resolve(root).join(DIALOGUE_STAGE)
    assert check_stage_level(stage_dir, manifest) == []
    assert all(check_part(stage_dir.uri, part).problems == [] for part in manifest["parts"])

    first, second = manifest["parts"]
    assert pq.read_schema(first["path"]).field("messages").type == MESSAGES_COLUMNS.field("messages").type
    dialogues = list(read_dialogues(first["path"])) + list(read_dialogues(second["path"]))
    assert [d.messages[-1] for d in dialogues] == [Message("assistant", "hello"), Message("assistant", "yes"), Message("assistant", "\u00e9t\u00e9")]
    assert all(dialogue_problem(d.messages) is None for d in dialogues)
    assert dialogues[0].meta["language"] == "en" and dialogues[0].source == "chat"
    # The id "a" of the second file repeats the first's: the stage renames it, messages column and all.
    assert split_repeat(dialogues[2].id) == (dialogues[0].id, 2)
    assert manifest["runs"]["chat"]["ids_disambiguated"] == 1

    quarantined = [json.loads(l) for l in open(quarantine_location(stage_dir, "chat", 0).path)]
    assert [(q["locator"].rsplit(":", 1)[1], q["reason"]) for q in quarantined] == [
        ("line 3", "empty_turn"), ("line 4", "control_tag"), ("line 5", "invalid_json"), ("line 6", "no_assistant_turn"),
    ]
    assert quarantined[1]["error"] == "control_tag: message 0 (user) holds the chat-format tag [INST]"


def test_same_inputs_give_byte_identical_parts_and_a_rerun_does_no_work(tmp_path, ray_local):
    inputs = chat_files(tmp_path / "raw")
    one = ingest_dialogues("chat", inputs, str(tmp_path / "one"), MessagesReader(id_field="id"))
    two = ingest_dialogues("chat", inputs, str(tmp_path / "two"), MessagesReader(id_field="id"))
    assert [p["sha256"] for p in one["parts"]] == [p["sha256"] for p in two["parts"]]
    for a, b in zip(one["parts"], two["parts"]):
        assert open(a["path"], "rb").read() == open(b["path"], "rb").read()
    again = ingest_dialogues("chat", inputs, str(tmp_path / "one"), MessagesReader(id_field="id"))
    assert again == one  # the finished stage is reused whole
    other = ingest_dialogues("chat", inputs, str(tmp_path / "one"), MessagesReader())
    assert other["runs"]["chat"]["fingerprint"] != one["runs"]["chat"]["fingerprint"]
    assert other["totals"]["quarantined_reasons"].get("bad_id") is None


def test_real_hh_chosen_and_rejected_as_two_sources_of_one_stage(tmp_path, ray_local, hh_harmless):
    root = str(tmp_path / "out")
    ingest_dialogues("hh-chosen", [str(hh_harmless)], root, HHReader(field="chosen"))
    manifest = ingest_dialogues("hh-rejected", [str(hh_harmless)], root, HHReader(field="rejected"))
    by_source = manifest["totals"]["by_source"]
    for source in ("hh-chosen", "hh-rejected"):
        totals = by_source[source]
        assert totals["docs_in"] == 2312 == totals["kept"] + totals["dropped_total"] + totals["quarantined"]
        assert sum(totals["quarantined_reasons"].values()) == totals["quarantined"]
    assert by_source["hh-chosen"]["kept"] == 2300 and by_source["hh-rejected"]["kept"] == 2307
    stage_dir = resolve(root).join(DIALOGUE_STAGE)
    assert check_stage_level(stage_dir, manifest) == []
    chosen = {d.meta["provenance"]: d for d in read_dialogues(manifest["parts"][0]["path"])}
    rejected = {d.meta["provenance"]: d for d in read_dialogues(manifest["parts"][1]["path"])}
    with gzip.open(hh_harmless, "rt") as f:
        first = json.loads(f.readline())
    pair = chosen[f"{hh_harmless}:line 1"], rejected[f"{hh_harmless}:line 1"]
    assert [m.content for m in pair[0].messages][0] == first["chosen"].split("\n\nAssistant:")[0].removeprefix("\n\nHuman:").strip()
    assert pair[0].messages[:-1] == pair[1].messages[:-1] and pair[0].messages[-1] != pair[1].messages[-1]
