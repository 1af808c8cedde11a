import socket

import ray

from tasks.ray_runtime import _gcs_answers, ensure_ray


def test_probe_tells_a_live_cluster_from_a_dead_address(ray_local):
    assert _gcs_answers(ray.get_runtime_context().gcs_address)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"  # bound, not listening: nothing answers
        assert not _gcs_answers(dead)
    assert not _gcs_answers("not-an-address")


def test_connecting_twice_reuses_the_session(ray_local, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    assert ensure_ray() == "already connected"
