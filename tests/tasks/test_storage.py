import pytest

from tasks.storage import atomic_output, remove_temporaries, resolve, write_json_atomic


def test_atomic_output_publishes_only_on_success(tmp_path):
    target = resolve(tmp_path / "out" / "file.bin")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as stream:
            stream.write(b"half")
            raise RuntimeError("writer died")
    assert not target.exists()
    assert list((tmp_path / "out").iterdir()) == []  # the temporary was cleaned up too
    with atomic_output(target) as stream:
        stream.write(b"whole")
    assert target.read_bytes() == b"whole"


def test_listing_hides_bookkeeping_files(tmp_path):
    folder = resolve(tmp_path)
    for name in ("part-00001.parquet", "part-00000.parquet", "_manifest.json", "_tmp.part-00002.parquet.abc"):
        (tmp_path / name).write_bytes(b"x")
    assert [loc.name for loc in folder.list_files(".parquet")] == ["part-00000.parquet", "part-00001.parquet"]
    assert remove_temporaries(folder) == 1
    assert not (tmp_path / "_tmp.part-00002.parquet.abc").exists()


def test_unsupported_uri_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot open 'nosuch://bucket/x'"):
        resolve("nosuch://bucket/x")


def test_json_round_trip(tmp_path):
    target = resolve(tmp_path / "m.json")
    write_json_atomic(target, {"b": [1, 2], "a": "é"})
    assert target.read_json() == {"a": "é", "b": [1, 2]}
