"""The stage executor: fingerprints, the one `_SUCCESS` format, resumable and run-once stages, Ray tasks."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from tasks.executor import (
    WHOLE_STAGE,
    Marker,
    fingerprint,
    finished_receipt,
    folder_digest,
    is_complete,
    mark,
    output_files,
    read_marker,
    run_marked,
    run_on_actors,
    run_once,
    run_tasks,
    unmark,
)
from tasks.storage import TEMP_PREFIX, resolve, write_json_atomic


def test_fingerprint_is_the_sha256_of_canonical_json():
    expected = hashlib.sha256(b'{"a": [1, "x"], "b": {"c": null}}').hexdigest()
    assert fingerprint({"b": {"c": None}, "a": [1, "x"]}) == expected
    assert fingerprint({"a": (1, "x"), "b": {"c": None}}) == expected  # a tuple is a JSON list
    assert fingerprint({"a": [1, "y"], "b": {"c": None}}) != expected


def test_a_receipt_counts_only_for_its_fingerprint(tmp_path):
    receipt = resolve(str(tmp_path / "part-00000.json"))
    assert finished_receipt(receipt, "abc") is None
    write_json_atomic(receipt, {"fingerprint": "abc", "rows": 3})
    assert finished_receipt(receipt, "abc") == {"fingerprint": "abc", "rows": 3}
    assert finished_receipt(receipt, "other") is None


def test_the_marker_holds_each_scope_and_its_fingerprint_in_one_format(tmp_path):
    stage = resolve(str(tmp_path / "stage"))
    mark(stage, {"c4": "f1"})
    mark(stage, {"books": "f2"})  # another run, another source: the first stays marked
    assert json.loads((tmp_path / "stage" / "_SUCCESS").read_text()) == {
        "fingerprints": {"books": "f2", "c4": "f1"},
        "summary": {},
    }
    assert is_complete(stage, {"c4": "f1", "books": "f2"})
    assert not is_complete(stage, {"c4": "f1", "books": "changed"})
    assert not is_complete(stage, {"wikipedia": "f3"})

    unmark(stage, ["c4"])
    assert read_marker(stage) == Marker({"books": "f2"})
    unmark(stage, ["books"])  # nothing finished is left: no marker, so `_SUCCESS` never lies
    assert not (tmp_path / "stage" / "_SUCCESS").exists()


def test_markers_of_older_formats_hold_no_scope_and_a_broken_one_is_named(tmp_path):
    stage = resolve(str(tmp_path))
    (tmp_path / "_SUCCESS").write_text(json.dumps({"fingerprint": "f1"}))  # the old token-stage marker
    assert read_marker(stage) == Marker() and not is_complete(stage, {WHOLE_STAGE: "f1"})
    unmark(stage, [WHOLE_STAGE])  # as a run does before rewriting: no marker of any format stays
    assert not (tmp_path / "_SUCCESS").exists()
    (tmp_path / "_SUCCESS").write_text('{"fingerprints": ')
    with pytest.raises(ValueError, match=r"_SUCCESS: completion marker is not JSON"):
        read_marker(stage)


def test_run_marked_skips_a_finished_stage_and_redoes_a_stale_one(tmp_path):
    stage = resolve(str(tmp_path / "stage"))
    runs: list[str] = []

    def work(label: str):
        def write() -> str:
            assert not is_complete(stage, {"c4": label})  # the scope is unmarked while it is rewritten
            runs.append(label)
            return f"made by {label}"

        return write

    assert run_marked(stage, {"c4": "f1"}, work("f1"), reuse=lambda: "reused") == "made by f1"
    assert run_marked(stage, {"c4": "f1"}, work("f1"), reuse=lambda: "reused") == "reused"
    assert runs == ["f1"]

    leftover = tmp_path / "stage" / "c4" / f"{TEMP_PREFIX}part-00000.parquet.dead"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half a part")
    assert run_marked(stage, {"c4": "f2"}, work("f2"), reuse=lambda: "reused") == "made by f2"
    assert runs == ["f1", "f2"] and not leftover.exists()  # the killed writer's remains went first
    assert read_marker(stage).fingerprints == {"c4": "f2"}


def test_a_run_that_dies_leaves_its_scopes_unmarked_and_the_others_marked(tmp_path):
    stage = resolve(str(tmp_path))
    mark(stage, {"c4": "old", "books": "b"})

    def dies():
        raise RuntimeError("killed half-way")

    with pytest.raises(RuntimeError, match="killed half-way"):
        run_marked(stage, {"c4": "new"}, dies, reuse=lambda: None)
    assert read_marker(stage).fingerprints == {"books": "b"}


def test_run_once_wipes_a_stale_folder_and_records_the_digest_of_its_outputs(tmp_path):
    folder = resolve(str(tmp_path / "pairs"))

    def writes(files: dict[str, bytes]):
        def work() -> dict[str, int]:
            for name, data in files.items():
                (tmp_path / "pairs" / name).parent.mkdir(parents=True, exist_ok=True)
                (tmp_path / "pairs" / name).write_bytes(data)
            return {"files": len(files)}

        return work

    first = run_once(folder, "f1", writes({"b/p-1.parquet": b"one", "a.parquet": b"two", "_scratch/x": b"bookkeeping"}))
    listing = "a.parquet " + hashlib.sha256(b"two").hexdigest() + "\nb/p-1.parquet " + hashlib.sha256(b"one").hexdigest()
    assert first == {"digest": hashlib.sha256(listing.encode()).hexdigest(), "stats": {"files": 3}}
    assert [f.name for f in output_files(folder)] == ["a.parquet", "p-1.parquet"]  # `_` paths are not outputs
    assert read_marker(folder) == Marker({WHOLE_STAGE: "f1"}, first)

    def must_not_run():
        raise AssertionError("a finished stage ran again")

    assert run_once(folder, "f1", must_not_run) == first

    redone = run_once(folder, "f2", writes({"a.parquet": b"two"}))
    assert not (tmp_path / "pairs" / "b").exists()  # nothing of the stale run survives
    assert redone["digest"] == folder_digest(folder) != first["digest"]


# ------------------------------------------------------------------------- Ray tasks


def flaky_store(attempts_dir: str, factor: int, job: int) -> int:
    """Raises OSError on its first try, as a store that did not answer; then works."""
    tried = Path(attempts_dir) / f"{job}.tried"
    if not tried.exists():
        tried.touch()
        raise OSError(f"job {job}: the store did not answer")
    return job * factor


def dies_once(attempts_dir: str, job: int) -> int:
    """Kills its worker process on its first try, as a node that went away."""
    tried = Path(attempts_dir) / f"{job}.tried"
    if not tried.exists():
        tried.touch()
        os._exit(1)
    return job


def buggy(attempts_file: str) -> None:
    """A bug, not a transient error: every try is counted and raises."""
    with open(attempts_file, "a") as attempts:
        attempts.write("try\n")
    raise ValueError("a bug in the stage")


def waits_for(folder: str, job: int, wait_for: int | None) -> int:
    """Finishes only after job ``wait_for`` has: the jobs finish in another order than given."""
    if wait_for is not None:
        deadline = time.monotonic() + 300
        while not (Path(folder) / f"{wait_for}.done").exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {wait_for} never finished")
            time.sleep(0.01)
    (Path(folder) / f"{job}.done").touch()
    return job


def test_a_task_that_raises_oserror_is_retried_and_succeeds(tmp_path, ray_local):
    results = run_tasks(flaky_store, [(0,), (1,), (2,)], shared=(str(tmp_path), 10))
    assert results == [0, 10, 20]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.tried", "1.tried", "2.tried"]


def test_a_task_whose_worker_died_is_retried(tmp_path, ray_local):
    assert run_tasks(dies_once, [(0,), (1,)], shared=(str(tmp_path),)) == [0, 1]


def test_a_task_that_raises_anything_else_fails_the_run_at_once(tmp_path, ray_local):
    attempts = tmp_path / "attempts"
    with pytest.raises(ValueError, match="a bug in the stage"):
        run_tasks(buggy, [(str(attempts),)])
    assert attempts.read_text() == "try\n"


def test_results_come_in_job_order_whatever_order_jobs_finish_in(tmp_path, ray_local):
    finished: list[int] = []
    results = run_tasks(waits_for, [(0, 1), (1, None)], shared=(str(tmp_path),), on_result=finished.append)
    assert finished == [1, 0]  # job 0 waited for job 1
    assert results == [0, 1]


class Scaler:
    """An actor's state made once (each construction leaves a file); its calls fail as stores and nodes do."""

    def __init__(self, attempts_dir: str, factor: int):
        self.attempts, self.factor = Path(attempts_dir), factor
        (self.attempts / f"made-{factor}-{os.getpid()}").touch()

    def scale(self, job: int, failure: str | None) -> int:
        tried = self.attempts / f"{self.factor}-{job}.tried"
        if failure and not tried.exists():
            tried.touch()
            if failure == "dies":
                os._exit(1)
            raise OSError(f"job {job}: the store did not answer")
        return job * self.factor


def test_actors_serve_their_pools_calls_in_call_order_and_retry_as_tasks_do(tmp_path, ray_local):
    calls = [("tens", (0, None)), ("hundreds", (1, None)), ("tens", (2, "oserror")), ("tens", (3, None)),
             ("hundreds", (4, "dies")), ("tens", (5, None))]
    finished: list[int] = []
    # Two pools of two actors on two CPUs: the actors of a drained pool make room for the others.
    results = run_on_actors(Scaler, {"tens": (str(tmp_path), 10), "hundreds": (str(tmp_path), 100)}, calls,
                            method="scale", actors_per_pool=2, on_result=finished.append)
    assert results == [0, 100, 20, 30, 400, 50] and sorted(finished) == sorted(results)
    made = [p.name for p in tmp_path.iterdir() if p.name.startswith("made-")]
    assert len([m for m in made if m.startswith("made-10-")]) == 2  # each actor loaded once for 4 calls
    assert len([m for m in made if m.startswith("made-100-")]) == 3  # two, and the one that died made again
    with pytest.raises(ValueError, match="pools that are not given"):
        run_on_actors(Scaler, {"tens": (str(tmp_path), 10)}, [("ones", (1, None))], method="scale")
