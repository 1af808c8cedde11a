"""The real local stack through the installed `llamaline` command: up, a deployment run, status, down.

The stack gets a temporary state dir and free ports, so it never meets a user's stack on the
default ports; this test never imports Ray, so a local Ray of the test session does not matter.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tasks.ports import LOOPBACK, free_ports, port_open

BIN = Path(sys.executable).parent


def _clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without anything that would point at another stack or database."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("LLAMALINE_", "PREFECT_", "RAY_"))}
    return {**env, **extra}


def _run(*argv: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=env or _clean_env(), capture_output=True, text=True, timeout=timeout)


def _recorded(state_dir: Path) -> dict[str, dict]:
    return json.loads((state_dir / "stack.json").read_text())["processes"]


def _processes_in_groups(groups: set[int]) -> list[int]:
    """Live (non-zombie) processes whose process group is one of ``groups``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if fields[0] not in ("Z", "X") and int(fields[2]) in groups:
            found.append(int(stat.parent.name))
    return found


def _api(api_url: str, path: str, body: dict) -> list[dict]:
    response = httpx.post(f"{api_url}{path}", json=body, timeout=10)
    response.raise_for_status()
    return response.json()


def _jobs(dashboard_port: int, auth: dict[str, str]) -> list[dict]:
    """The submitted pretraining jobs (flows that use Ray directly show up as driver jobs too)."""
    jobs = httpx.get(f"http://{LOOPBACK}:{dashboard_port}/api/jobs/", headers=auth, timeout=10).json()
    return [j for j in jobs if (j.get("submission_id") or "").startswith("llamaline-pretrain-")]


def _wait_for_running_job(dashboard_port: int, auth: dict[str, str], run_name: str, timeout: float = 180) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for job in _jobs(dashboard_port, auth):
            if job["metadata"].get("run_name") == run_name and job["status"] == "RUNNING":
                return job["submission_id"]
        time.sleep(2)
    raise AssertionError(f"no running Ray job for {run_name}: {_jobs(dashboard_port, auth)}")


def _job_status_becomes(dashboard_port: int, auth: dict[str, str], job_id: str, status: str, timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if {j["submission_id"]: j["status"] for j in _jobs(dashboard_port, auth)}.get(job_id) == status:
            return True
        time.sleep(2)
    return False


@pytest.mark.stack
def test_up_run_a_deployment_status_down(tmp_path):
    llamaline = str(BIN / "llamaline")
    state_dir = tmp_path / "state"
    prefect_port, ray_port, dashboard_port = free_ports(3)
    options = ["--state-dir", str(state_dir)]
    api_url = f"http://{LOOPBACK}:{prefect_port}/api"
    started: dict[str, dict] = {}
    try:
        up = _run(
            llamaline, "up", *options, "--prefect-port", str(prefect_port), "--ray-port", str(ray_port),
            "--dashboard-port", str(dashboard_port),
        )
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"export RAY_ADDRESS={LOOPBACK}:{ray_port}" in up.stdout
        assert httpx.get(f"{api_url}/health", timeout=10).status_code == 200
        dashboard = f"http://{LOOPBACK}:{dashboard_port}/api/version"
        token = (state_dir / "ray_auth_token").read_text().strip()
        assert httpx.get(dashboard, headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code == 200
        assert httpx.get(dashboard, timeout=10).status_code == 401  # token auth is on
        started = _recorded(state_dir)

        prefect = str(BIN / "prefect")
        # The data side and pretraining (the in-process demo test runs the rest, fine-tuning to RLHF).
        run = _run(prefect, "deployment", "run", "demo/default", "--params", json.dumps({"config": {"through": "pretrain"}}),
                   "--watch", env=_clean_env(PREFECT_API_URL=api_url), timeout=900)
        assert run.returncode == 0, run.stdout + run.stderr
        [flow_run] = _api(api_url, "/flow_runs/filter", {"flows": {"name": {"any_": ["demo"]}}})
        assert flow_run["state_type"] == "COMPLETED", flow_run["state"]
        # The demo's subflows (ingest per source, shards) publish the artifacts and do the Ray work.
        subflow_runs = _api(api_url, "/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [flow_run["id"]]}}})
        run_ids = [flow_run["id"]] + [r["id"] for r in subflow_runs]
        artifacts = _api(api_url, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": run_ids}}})
        assert {"ingest-c4", "shards-ingest", "shards-ingest-summary"} <= {a["key"] for a in artifacts}
        logs = _api(api_url, "/logs/filter", {"logs": {"flow_run_id": {"any_": run_ids}}})
        assert any(f"cluster at {LOOPBACK}:{ray_port}" in log["message"] for log in logs), "the run did not use the stack's Ray"

        # The demo's pretraining ran as a Ray job on the stack's cluster (token auth included).
        assert any("submitted Ray job llamaline-pretrain-" in log["message"] for log in logs)
        auth = {"Authorization": f"Bearer {token}"}
        assert [(j["status"], j["metadata"]["run_name"]) for j in _jobs(dashboard_port, auth)] == [("SUCCEEDED", "demo")]

        # pretrain/debug on the worker; pretrain/llama2-7b refused up front: no GPUs here.
        debug = _run(prefect, "deployment", "run", "pretrain/debug", "--params",
                     json.dumps({"overrides": {"steps": 8, "checkpoint": {"interval_steps": 4}}}), "--watch",
                     env=_clean_env(PREFECT_API_URL=api_url))
        assert debug.returncode == 0, debug.stdout + debug.stderr
        assert (state_dir / "data" / "runs" / "debug" / "hf" / "model.safetensors").exists()
        seven_b = _run(prefect, "deployment", "run", "pretrain/llama2-7b", "--watch",
                       env=_clean_env(PREFECT_API_URL=api_url), timeout=120)
        assert seven_b.returncode != 0
        [refused] = _api(api_url, "/flow_runs/filter", {"flow_runs": {"state": {"type": {"any_": ["FAILED"]}}}})
        refusal = _api(api_url, "/logs/filter", {"logs": {"flow_run_id": {"any_": [refused["id"]]}}})
        assert any("llama2-7b on 8 GPU workers needs 8 GPUs; the Ray cluster has 0" in log["message"]
                   for log in refusal)

        # Cancelling a pretraining run stops its Ray job: nothing is left running.
        started_run = _run(prefect, "deployment", "run", "pretrain/debug", "--params",
                           json.dumps({"overrides": {"run_name": "cancelled", "steps": 100000}}),
                           env=_clean_env(PREFECT_API_URL=api_url))
        assert started_run.returncode == 0, started_run.stdout + started_run.stderr
        cancelled = _wait_for_running_job(dashboard_port, auth, "cancelled")
        [long_run] = _api(api_url, "/flow_runs/filter", {"flow_runs": {"state": {"type": {"any_": ["RUNNING"]}}}})
        cancel = _run(prefect, "flow-run", "cancel", long_run["id"], env=_clean_env(PREFECT_API_URL=api_url))
        assert cancel.returncode == 0, cancel.stdout + cancel.stderr
        assert _job_status_becomes(dashboard_port, auth, cancelled, "STOPPED")

        # An ingest deployment against a path given at run time (the demo's raw C4 files).
        raw_c4 = state_dir / "data" / "demo" / "raw" / "c4"
        params = json.dumps({"config": {"source": "c4", "inputs": [str(raw_c4)], "output": str(tmp_path / "ingested")}})
        ingest = _run(prefect, "deployment", "run", "ingest/c4", "--params", params, "--watch",
                      env=_clean_env(PREFECT_API_URL=api_url))
        assert ingest.returncode == 0, ingest.stdout + ingest.stderr
        assert (tmp_path / "ingested" / "ingest" / "_manifest.json").exists()

        # The CLI finds the running stack by itself: its flow run lands on the same server.
        stage = state_dir / "data" / "demo" / "ingest"
        shards_runs = {"flows": {"name": {"any_": ["shards"]}}}
        before = len(_api(api_url, "/flow_runs/filter", shards_runs))
        check = _run(llamaline, "shards", str(stage), env=_clean_env(LLAMALINE_STATE_DIR=str(state_dir)))
        assert check.returncode == 0, check.stdout + check.stderr
        assert f"using the running stack: Prefect {api_url}" in check.stdout
        after = len(_api(api_url, "/flow_runs/filter", shards_runs))
        assert after == before + 1, "the CLI's shards run did not reach the stack's Prefect server"

        again = _run(llamaline, "up", *options)
        assert again.returncode == 0, again.stdout + again.stderr
        assert {name: record["pid"] for name, record in _recorded(state_dir).items()} == {
            name: record["pid"] for name, record in started.items()
        }
        status = _run(llamaline, "status", *options)
        assert status.returncode == 0, status.stdout + status.stderr
    finally:
        down = _run(llamaline, "down", *options)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not _processes_in_groups({record["pgid"] for record in started.values()})
    ports = [port for record in started.values() for port in record["ports"]]
    assert ports and not [port for port in ports if port_open(port)]
    assert _run(llamaline, "status", *options).returncode == 3
