import functools
import hashlib
import http.server
import threading

import pytest

from tasks.storage import atomic_output, remove_temporaries, resolve, sha256_of, write_json_atomic


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


def test_http_inputs_stream_from_a_server(tmp_path):
    (tmp_path / "listing.txt").write_bytes(b"a\nb\n" * 1000)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        location = resolve(f"http://127.0.0.1:{server.server_address[1]}/listing.txt")
        assert location.size() == 4000
        with location.open_input() as f:
            assert f.read() == b"a\nb\n" * 1000
        assert sha256_of(location) == hashlib.sha256(b"a\nb\n" * 1000).hexdigest()
    finally:
        server.shutdown()
