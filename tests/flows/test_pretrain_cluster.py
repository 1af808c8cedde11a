"""Pretraining on a Ray cluster of two nodes on this machine (a head and a worker node, each with
its own ports, temp dir and one CPU), submitted by the flow as a Ray job: the two training workers
land on different nodes and train together."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import ray.util

from flows.pretrain import pretrain
from tasks.ports import free_ports
from tests.flows.test_pretrain import losses, run_config, token_stage  # noqa: F401 (fixture)

RAY = Path(sys.executable).with_name("ray")
START_SECONDS = 180


def _session_members(session: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == session:  # field 6 of stat: the session id
                members.append(int(entry.name))
    return members


def _stop_sessions(sessions: list[int]) -> None:
    """Everything `ray start` started runs in its session: stop exactly those processes."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        for pid in (p for s in sessions for p in _session_members(s)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(_session_members(s) for s in sessions):
            time.sleep(0.5)


def _alive_nodes(dashboard: str) -> list[dict]:
    try:
        response = httpx.get(f"{dashboard}/api/v0/nodes", params={"detail": "1"}, timeout=10)
        return [n for n in response.json()["data"]["result"]["result"] if n["state"] == "ALIVE"]
    except (httpx.HTTPError, ValueError, KeyError):
        return []


def _job_agents_ready(dashboard: str) -> bool:
    try:
        return httpx.get(f"{dashboard}/api/jobs/", timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def two_node_cluster():
    # Ray's unix sockets live under the temp dir, and their paths may not exceed 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="ll-ray-"))
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1",  # more than one node on one host
           "RAY_AUTH_MODE": "disabled", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0", "RAY_DEDUP_LOGS": "0"}
    env.pop("RAY_ADDRESS", None)
    # Ray's default ports (10001, 52365, metrics) would collide with any other Ray here.
    (gcs, dashboard_port, autoscaler_metrics, dashboard_metrics, client, head_agent, head_metrics, worker_agent,
     worker_metrics) = free_ports(9)
    head_env = {**env, "AUTOSCALER_METRIC_PORT": str(autoscaler_metrics),
                "DASHBOARD_METRIC_PORT": str(dashboard_metrics)}
    common = ["--block", "--disable-usage-stats", "--num-cpus", "1"]
    processes = []
    log_files = []

    def start(name: str, arguments: list[str], process_env: dict) -> None:
        log = (root / f"{name}.log").open("wb")
        log_files.append(log)
        processes.append(subprocess.Popen([str(RAY), "start", *common, *arguments, "--temp-dir", str(root / name)],
                                          env=process_env, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True))

    dashboard = f"http://127.0.0.1:{dashboard_port}"
    try:
        start("head", ["--head", "--port", str(gcs), "--dashboard-host", "127.0.0.1", "--dashboard-port",
                       str(dashboard_port), "--ray-client-server-port", str(client),
                       "--dashboard-agent-listen-port", str(head_agent), "--metrics-export-port",
                       str(head_metrics)], head_env)
        deadline = time.monotonic() + START_SECONDS
        while not _alive_nodes(dashboard):
            assert time.monotonic() < deadline, (root / "head.log").read_text()[-2000:]
            time.sleep(1)
        start("worker", ["--address", f"{ray.util.get_node_ip_address()}:{gcs}", "--dashboard-agent-listen-port",
                         str(worker_agent), "--metrics-export-port", str(worker_metrics)], env)
        while len(_alive_nodes(dashboard)) < 2 or not _job_agents_ready(dashboard):
            assert time.monotonic() < deadline, (root / "worker.log").read_text()[-2000:]
            time.sleep(1)
        yield dashboard
    finally:
        _stop_sessions([p.pid for p in processes])
        for log in log_files:
            log.close()
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_on_two_nodes_train_together_as_a_ray_job(two_node_cluster, token_stage, tmp_path,  # noqa: F811
                                                              prefect_api):
    config = run_config(token_stage, str(tmp_path), run_name="two-nodes", steps=6,
                        scaling={"num_workers": 2, "cpus_per_worker": 1}, ray_jobs_address=two_node_cluster)
    state = pretrain(config, return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["steps"] == 6 and summary["checkpoints"] == ["step-00000004", "step-00000006"]

    workers = [json.loads(f.read_text().splitlines()[-1]) for f in sorted((config.run_dir / "workers").iterdir())]
    nodes = {n["node_id"] for n in _alive_nodes(two_node_cluster)}
    assert [w["rank"] for w in workers] == [0, 1]
    assert workers[0]["node_id"] != workers[1]["node_id"] and {w["node_id"] for w in workers} == nodes
    curve = losses(config.run_dir)
    assert len(curve) == 6 and all(loss == loss for loss, _ in curve.values())

    jobs = httpx.get(f"{two_node_cluster}/api/jobs/", timeout=10).json()
    assert [(j["status"], j["metadata"].get("run_name")) for j in jobs] == [("SUCCEEDED", "two-nodes")]
