"""When a part of the stack is ready: health probes of the Prefect server, the Ray head and the worker,
and probes that fail at once when the process behind them has exited."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import httpx

from infra.stack.state import POOL, RAY, SERVER, WORKER, WORKER_NAME, Settings, StackError, State, StateDir


def _http_ok(url: str, headers: dict[str, str] | None = None) -> httpx.Response | None:
    try:
        response = httpx.get(url, headers=headers, timeout=3)
    except httpx.HTTPError:
        return None
    return response if response.status_code == 200 else None


def _server_healthy(settings: Settings) -> bool:
    return _http_ok(f"{settings.api_url}/health") is not None


def _ray_healthy(settings: Settings, token_path: Path) -> bool:
    """The dashboard answers with the token and the GCS reports the head node alive."""
    try:
        headers = {"Authorization": f"Bearer {token_path.read_text().strip()}"}
    except OSError:
        return False
    response = _http_ok(f"{settings.dashboard_url}/api/v0/nodes", headers)
    if response is None:
        return False
    nodes = response.json().get("data", {}).get("result", {}).get("result", [])
    return any(node.get("state") == "ALIVE" for node in nodes)


def _worker_healthy(settings: Settings, since: float) -> bool:
    try:
        response = httpx.post(f"{settings.api_url}/work_pools/{POOL}/workers/filter", json={}, timeout=3)
    except httpx.HTTPError:
        return False
    if response.status_code != 200:
        return False
    for worker in response.json():
        heartbeat = worker.get("last_heartbeat_time")
        if (
            worker.get("name") == WORKER_NAME
            and worker.get("status") == "ONLINE"
            and heartbeat
            and datetime.fromisoformat(heartbeat).timestamp() >= since - 1
        ):
            return True
    return False


def health_checks(paths: StateDir, state: State) -> dict[str, Callable[[], bool]]:
    checks = {
        SERVER: lambda: _server_healthy(state.settings),
        RAY: lambda: _ray_healthy(state.settings, paths.ray_token),
    }
    if WORKER in state.processes:
        checks[WORKER] = lambda: _worker_healthy(state.settings, state.processes[WORKER].started_at)
    return checks


def ready_unless_exited(
    check: Callable[[], bool], name: str, process: subprocess.Popen | None
) -> Callable[[], bool]:
    def probe() -> bool:
        if check():
            return True
        if process is not None and process.poll() is not None:
            raise StackError(f"{name} exited with code {process.returncode}", name)
        return False

    return probe


def exits_cleanly(name: str, process: subprocess.Popen) -> Callable[[], bool]:
    def probe() -> bool:
        code = process.poll()
        if code not in (None, 0):
            raise StackError(f"{name} failed with exit code {code}", name)
        return code == 0

    return probe
