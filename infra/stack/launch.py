"""Starting each part of the stack: its environment, its command line, its log, its record.

Also the environment a user's shell (and every flow run of the worker) needs to reach the stack.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

from infra.stack.processes import read_proc
from infra.stack.state import POOL, RAY, SERVER, WORKER, WORKER_NAME, Launched, Settings, StackError, State, StateDir
from tasks.ports import LOOPBACK, free_ports

PROJECT_DIR = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the venv's bin; not resolved, a venv's python is a symlink
# Ray puts unix sockets under its temp dir, e.g. ".../session_<date>_<pid>/sockets/dash_TaskEventsHead"
# (about 71 bytes below it), and refuses socket paths longer than 107 bytes.
RAY_SOCKET_SUFFIX = 80
UNIX_SOCKET_PATH_MAX = 107


def _launch(
    name: str, argv: list[str], env: dict[str, str], paths: StateDir, ports: list[int]
) -> tuple[Launched, subprocess.Popen]:
    with paths.log(name).open("ab") as log:
        log.write(f"\n=== {datetime.now().isoformat(timespec='seconds')} {' '.join(argv)}\n".encode())
        log.flush()
        process = subprocess.Popen(
            argv, cwd=PROJECT_DIR, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    info = read_proc(process.pid)
    record = Launched(
        pid=process.pid, pgid=process.pid, start_ticks=info.start_ticks if info else -1,
        started_at=time.time(), ports=ports,
    )
    return record, process


def _ray_client_env(paths: StateDir) -> dict[str, str]:
    """What every Ray client of the stack needs: the token, and the loopback node address."""
    return {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(paths.ray_token),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }


def user_env(paths: StateDir, settings: Settings) -> dict[str, str]:
    """What a shell exports to use the stack (the worker's flow runs get the same)."""
    return {
        "PREFECT_API_URL": settings.api_url,
        "RAY_ADDRESS": settings.ray_address,
        # Ray's own variable for the Jobs API (`ray job submit`); the pretrain flow submits there.
        "RAY_API_SERVER_ADDRESS": settings.dashboard_url,
        **_ray_client_env(paths),
        "LLAMALINE_DATA": settings.data_dir,
    }


def _child_env(paths: StateDir, settings: Settings, **extra: str) -> dict[str, str]:
    # Inherited settings that would point a part elsewhere: another profile (PREFECT_HOME is ours),
    # a Cloud key, an explicit Ray token (it would win over our token file).
    dropped = {"PREFECT_PROFILE", "PREFECT_API_KEY", "RAY_AUTH_TOKEN", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"}
    env = {key: value for key, value in os.environ.items() if key not in dropped}
    env.update(PREFECT_HOME=str(paths.prefect_home), LLAMALINE_PROJECT_DIR=str(PROJECT_DIR))
    env.update(user_env(paths, settings))
    env.update(extra)
    return env


def _database_url(paths: StateDir, settings: Settings) -> str:
    return settings.database_url or f"sqlite+aiosqlite:///{paths.prefect_home / 'prefect.db'}"


def _write_token(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))


def _ray_tmpdir(ray_temp_dir: str) -> str:
    tmpdir = Path(ray_temp_dir) / "tmp"  # below the short alias: it holds unix sockets too
    tmpdir.mkdir(exist_ok=True)
    return str(tmpdir)


def _ray_temp_dir(paths: StateDir) -> str:
    """Ray's temp dir; a deep state dir gets a short alias in /tmp to keep Ray's socket paths legal."""
    real = paths.ray_temp.resolve()
    real.mkdir(parents=True, exist_ok=True)
    if len(str(real)) + RAY_SOCKET_SUFFIX <= UNIX_SOCKET_PATH_MAX:
        return str(real)
    alias = Path(tempfile.gettempdir()) / f"llamaline-ray-{hashlib.sha1(str(real).encode()).hexdigest()[:12]}"
    if alias.is_symlink() and alias.resolve() != real:
        alias.unlink()
    if not alias.is_symlink():
        alias.symlink_to(real, target_is_directory=True)
    return str(alias)


def _start_server(paths: StateDir, state: State) -> tuple[Launched, subprocess.Popen]:
    settings = state.settings
    env = _child_env(
        paths, settings,
        PREFECT_SERVER_DATABASE_CONNECTION_URL=_database_url(paths, settings),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    argv = [str(BIN / "prefect"), "server", "start", "--host", LOOPBACK, "--port", str(settings.prefect_port)]
    return _launch(SERVER, argv, env, paths, [settings.prefect_port])


def _start_ray(paths: StateDir, state: State) -> tuple[Launched, subprocess.Popen]:
    settings = state.settings
    state.ray_temp_dir = _ray_temp_dir(paths)
    _write_token(paths.ray_token)
    # Ray's defaults for these (10001, 52365, 44217, 44227) would collide with any other Ray here.
    client_port, agent_port, autoscaler_metrics, dashboard_metrics = free_ports(4)
    env = _child_env(
        paths, settings,
        # Without it SIGTERM makes `ray start` wait 30 s to drain the node first (for Ray Serve).
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
        # The dashboard's multiprocessing forkserver leaves a pymp-* socket dir in TMPDIR when killed.
        TMPDIR=_ray_tmpdir(state.ray_temp_dir),
        AUTOSCALER_METRIC_PORT=str(autoscaler_metrics),
        DASHBOARD_METRIC_PORT=str(dashboard_metrics),
    )
    argv = [
        str(BIN / "ray"), "start", "--head", "--block", "--disable-usage-stats",
        "--port", str(settings.ray_port),
        "--dashboard-host", LOOPBACK, "--dashboard-port", str(settings.dashboard_port),
        "--ray-client-server-port", str(client_port), "--dashboard-agent-listen-port", str(agent_port),
        "--temp-dir", state.ray_temp_dir,
    ]
    ports = [settings.ray_port, settings.dashboard_port, client_port, agent_port, autoscaler_metrics, dashboard_metrics]
    return _launch(RAY, argv, env, paths, ports)


def _start_worker(paths: StateDir, state: State) -> tuple[Launched, subprocess.Popen]:
    env = _child_env(paths, state.settings, PREFECT_WORKER_QUERY_SECONDS="2", PREFECT_RUNNER_POLL_FREQUENCY="2")
    argv = [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "process", "--name", WORKER_NAME]
    return _launch(WORKER, argv, env, paths, [])


STARTERS = {SERVER: _start_server, RAY: _start_ray, WORKER: _start_worker}


def run_prefect(paths: StateDir, settings: Settings, name: str, *args: str) -> subprocess.Popen:
    """A `prefect` command against the stack's server, logged to ``<state>/logs/<name>.log``."""
    with paths.log(name).open("ab") as log:
        log.write(f"\n=== {datetime.now().isoformat(timespec='seconds')} prefect {' '.join(args)}\n".encode())
        log.flush()
        return subprocess.Popen(
            [str(BIN / "prefect"), *args], cwd=PROJECT_DIR, env=_child_env(paths, settings),
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )


def ensure_pool(paths: StateDir, settings: Settings, timeout: float) -> None:
    try:
        response = httpx.get(f"{settings.api_url}/work_pools/{POOL}", timeout=30)
    except httpx.HTTPError as error:
        raise StackError(f"reading work pool {POOL} failed: {error}", SERVER) from error
    if response.status_code == 200:
        return
    create = run_prefect(paths, settings, "work-pool", "work-pool", "create", POOL, "--type", "process")
    try:
        code = create.wait(timeout)
    except subprocess.TimeoutExpired:
        create.kill()
        code = None
    if code != 0:
        raise StackError(f"creating work pool {POOL} failed", "work-pool")
