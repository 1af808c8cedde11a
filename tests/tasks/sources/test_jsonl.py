from tasks.documents import BadRecord, Document
from tasks.sources.jsonl import JsonlReader
from tasks.stage import InputFile, ShardUnit
from tests.helpers import doc_line, write_jsonl_gz


def _read(path):
    unit = ShardUnit("c4", 0, InputFile.describe(str(path)))
    return list(JsonlReader().read(unit))


def test_good_and_bad_lines_each_end_in_one_place(tmp_path):
    path = write_jsonl_gz(
        tmp_path / "in.jsonl.gz",
        [doc_line(1), b'{"url": "u2", "text": ', b"[1, 2]", {"url": "u4"}, b'{"url": "u5", "text": "caf\xe9"}', doc_line(6)],
    )
    items = _read(path)
    assert len(items) == 6
    docs = [i for i in items if isinstance(i, Document)]
    bad = [i for i in items if isinstance(i, BadRecord)]
    assert [d.meta["url"] for d in docs] == ["https://example.com/1", "https://example.com/6"]
    assert docs[0].meta["provenance"].endswith("in.jsonl.gz:line 1")
    assert "text" not in docs[0].meta
    assert [b.locator.rsplit(":", 1)[1] for b in bad] == ["line 2", "line 3", "line 4", "line 5"]
    assert bad[0].error.startswith("invalid JSON")
    assert "expected a JSON object" in bad[1].error
    assert "'text' missing" in bad[2].error
    assert bad[3].error.startswith("not UTF-8") and "caf" in bad[3].raw


def test_truncated_gzip_quarantines_the_unreadable_rest(tmp_path):
    path = write_jsonl_gz(tmp_path / "in.jsonl.gz", [doc_line(n, words=400) for n in range(200)])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    items = _read(path)
    assert isinstance(items[-1], BadRecord) and "unreadable input" in items[-1].error
    assert all(isinstance(i, Document) for i in items[:-1]) and len(items) > 1
