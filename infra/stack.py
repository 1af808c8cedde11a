"""`llamaline up / status / down`: the local stack, a Prefect server, a Ray head and a Prefect worker.

Each part runs in a session of its own, logs to ``<state>/logs`` and is recorded in
``<state>/stack.json`` (pid, process group, start time, ports), so that ``down`` stops exactly the
processes ``up`` started (never ``ray stop``, never by name) and a re-run ``up`` finds them again.

Everything listens on 127.0.0.1 only. Ray binds loopback only when its node address is 127.0.0.1,
which Ray allows on Linux with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``; every Ray client (the
worker, its flow runs, a user's shell) needs the same variable, and the token: Ray runs with
``RAY_AUTH_MODE=token`` and a token generated into the state dir.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console
from rich.table import Table

console = Console()

PROJECT_DIR = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the venv's bin; not resolved, a venv's python is a symlink
POOL = "llamaline-local"
WORKER_NAME = "llamaline-local-worker"
LOOPBACK = "127.0.0.1"
SERVER, RAY, WORKER = "prefect-server", "ray-head", "prefect-worker"
COMPONENTS = (SERVER, RAY, WORKER)
STOP_GRACE_SECONDS = 15.0
# Ray puts unix sockets under its temp dir, e.g. ".../session_<date>_<pid>/sockets/dash_TaskEventsHead"
# (about 71 bytes below it), and refuses socket paths longer than 107 bytes.
RAY_SOCKET_SUFFIX = 80
UNIX_SOCKET_PATH_MAX = 107


class StackError(Exception):
    """A part of the stack failed; ``component`` names whose log tail to show."""

    def __init__(self, message: str, component: str | None = None) -> None:
        super().__init__(message)
        self.component = component


# --- state -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StateDir:
    root: Path

    @property
    def state_file(self) -> Path:
        return self.root / "stack.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def prefect_home(self) -> Path:
        return self.root / "prefect"

    @property
    def ray_temp(self) -> Path:
        return self.root / "ray"

    @property
    def ray_token(self) -> Path:
        return self.root / "ray_auth_token"

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"


@dataclass
class Settings:
    prefect_port: int
    ray_port: int
    dashboard_port: int
    data_dir: str
    database_url: str | None  # None: SQLite in the state dir

    @property
    def api_url(self) -> str:
        return f"http://{LOOPBACK}:{self.prefect_port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://{LOOPBACK}:{self.prefect_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{LOOPBACK}:{self.dashboard_port}"

    @property
    def ray_address(self) -> str:
        return f"{LOOPBACK}:{self.ray_port}"


@dataclass
class Launched:
    pid: int
    pgid: int
    start_ticks: int  # with the boot id, tells our process from a later one that reuses the pid
    started_at: float
    ports: list[int]


@dataclass
class State:
    boot_id: str
    settings: Settings
    ray_temp_dir: str = ""  # set when the Ray head starts: the state dir's ray/ or its short alias
    processes: dict[str, Launched] = field(default_factory=dict)


def _boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def _load_state(paths: StateDir) -> State | None:
    if not paths.state_file.exists():
        return None
    raw = json.loads(paths.state_file.read_text())
    return State(
        boot_id=raw["boot_id"],
        settings=Settings(**raw["settings"]),
        ray_temp_dir=raw["ray_temp_dir"],
        processes={name: Launched(**record) for name, record in raw["processes"].items()},
    )


def _save_state(paths: StateDir, state: State) -> None:
    # 0600: the database URL may carry a password.
    tmp = paths.state_file.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(state), f, indent=2)
    tmp.replace(paths.state_file)


# --- processes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcInfo:
    ppid: int
    pgid: int
    start_ticks: int


def _read_proc(pid: int) -> ProcInfo | None:
    """The process, or None when it is gone or a zombie (it holds nothing any more)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # the command name may contain spaces and ')'
    if fields[0] in ("Z", "X"):
        return None
    return ProcInfo(ppid=int(fields[1]), pgid=int(fields[2]), start_ticks=int(fields[19]))


def _process_table() -> dict[int, ProcInfo]:
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (info := _read_proc(int(entry.name))):
            table[int(entry.name)] = info
    return table


def _is_ours(record: Launched, table: dict[int, ProcInfo]) -> bool:
    info = table.get(record.pid)
    return info is not None and info.start_ticks == record.start_ticks


def _our_groups(records: Iterable[Launched], table: dict[int, ProcInfo]) -> set[int]:
    """Process groups holding anything we started.

    A recorded group outlives its leader (Ray's gcs_server can outlive `ray start`), and Prefect
    starts every flow run in a session of its own, so descendants' groups count too.
    """
    children: dict[int, list[int]] = {}
    for pid, info in table.items():
        children.setdefault(info.ppid, []).append(pid)
    groups, roots = set(), []
    for record in records:
        if _is_ours(record, table):
            roots.append(record.pid)
            groups.add(record.pgid)
        elif record.pid not in table and _orphans_of(record, table):
            groups.add(record.pgid)
    while roots:
        pid = roots.pop()
        groups.add(table[pid].pgid)
        roots.extend(children.get(pid, []))
    return groups


def _orphans_of(record: Launched, table: dict[int, ProcInfo]) -> list[int]:
    return [
        pid for pid, info in table.items() if info.pgid == record.pgid and info.start_ticks >= record.start_ticks
    ]


def _members(groups: set[int], table: dict[int, ProcInfo]) -> list[int]:
    return [pid for pid, info in table.items() if info.pgid in groups]


def _signal_groups(groups: set[int], sig: signal.Signals) -> None:
    for group in groups:
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            pass


def _stop(records: list[Launched], grace: float) -> list[int]:
    """SIGTERM every group of ours, SIGKILL what is left after ``grace`` seconds; return survivors."""
    groups = _our_groups(records, _process_table())
    _signal_groups(groups, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        table = _process_table()
        groups |= _our_groups(records, table)  # children spawned while shutting down
        if not _members(groups, table):
            return []
        time.sleep(0.2)
    _signal_groups(groups, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while (survivors := _members(groups, _process_table())) and time.monotonic() < deadline:
        time.sleep(0.2)
    return survivors


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
    info = _read_proc(process.pid)
    record = Launched(
        pid=process.pid, pgid=process.pid, start_ticks=info.start_ticks if info else -1,
        started_at=time.time(), ports=ports,
    )
    return record, process


# --- ports and health -----------------------------------------------------------------------------


def _port_in_use(port: int) -> bool:
    # SO_REUSEADDR as the servers set it: a TIME_WAIT left by our own last run is no conflict.
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return True
    return False


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((LOOPBACK, port)) == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


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


def _health_checks(paths: StateDir, state: State) -> dict[str, Callable[[], bool]]:
    checks = {
        SERVER: lambda: _server_healthy(state.settings),
        RAY: lambda: _ray_healthy(state.settings, paths.ray_token),
    }
    if WORKER in state.processes:
        checks[WORKER] = lambda: _worker_healthy(state.settings, state.processes[WORKER].started_at)
    return checks


def _wait_until(probes: dict[str, Callable[[], bool]], timeout: float, started: float) -> None:
    """Poll until every probe holds; a probe raises StackError when its process died."""
    pending = dict(probes)
    deadline = time.monotonic() + timeout
    with console.status("") as spinner:
        while pending:
            for name, probe in list(pending.items()):
                if probe():
                    del pending[name]
                    console.print(f"[green]✓[/green] {name} ready ({time.monotonic() - started:.1f} s)")
            if pending and time.monotonic() > deadline:
                name = next(iter(pending))
                raise StackError(f"{name} not ready after {timeout:.0f} s", name)
            spinner.update(f"waiting for {', '.join(pending)}")
            time.sleep(0.5)


def _ready_unless_exited(
    check: Callable[[], bool], name: str, process: subprocess.Popen | None
) -> Callable[[], bool]:
    def probe() -> bool:
        if check():
            return True
        if process is not None and process.poll() is not None:
            raise StackError(f"{name} exited with code {process.returncode}", name)
        return False

    return probe


def _exits_cleanly(name: str, process: subprocess.Popen) -> Callable[[], bool]:
    def probe() -> bool:
        code = process.poll()
        if code not in (None, 0):
            raise StackError(f"{name} failed with exit code {code}", name)
        return code == 0

    return probe


# --- environments and commands --------------------------------------------------------------------


def _ray_client_env(paths: StateDir) -> dict[str, str]:
    """What every Ray client of the stack needs: the token, and the loopback node address."""
    return {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(paths.ray_token),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }


def _user_env(paths: StateDir, settings: Settings) -> dict[str, str]:
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
    env.update(_user_env(paths, settings))
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
    client_port, agent_port, autoscaler_metrics, dashboard_metrics = (_free_port() for _ in range(4))
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


def _run_prefect(paths: StateDir, settings: Settings, name: str, *args: str) -> subprocess.Popen:
    with paths.log(name).open("ab") as log:
        log.write(f"\n=== {datetime.now().isoformat(timespec='seconds')} prefect {' '.join(args)}\n".encode())
        log.flush()
        return subprocess.Popen(
            [str(BIN / "prefect"), *args], cwd=PROJECT_DIR, env=_child_env(paths, settings),
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )


def _ensure_pool(paths: StateDir, settings: Settings, timeout: float) -> None:
    try:
        response = httpx.get(f"{settings.api_url}/work_pools/{POOL}", timeout=30)
    except httpx.HTTPError as error:
        raise StackError(f"reading work pool {POOL} failed: {error}", SERVER) from error
    if response.status_code == 200:
        return
    create = _run_prefect(paths, settings, "work-pool", "work-pool", "create", POOL, "--type", "process")
    try:
        code = create.wait(timeout)
    except subprocess.TimeoutExpired:
        create.kill()
        code = None
    if code != 0:
        raise StackError(f"creating work pool {POOL} failed", "work-pool")


# --- settings ---------------------------------------------------------------------------------------


def _resolve_settings(paths: StateDir, given: dict, recorded: State | None) -> Settings:
    """Options given now, else what the running stack was started with, else the defaults."""
    defaults = Settings(
        prefect_port=4200, ray_port=6379, dashboard_port=8265,
        data_dir=str((paths.root / "data").resolve()), database_url=None,
    )
    base = recorded.settings if recorded else defaults
    asked = {key: value for key, value in given.items() if value is not None}
    if recorded:
        differing = {key: value for key, value in asked.items() if getattr(base, key) != value}
        if differing:
            running = ", ".join(f"{key}={getattr(base, key)}" for key in differing)
            raise StackError(f"the stack in {paths.root} runs with {running}; run `llamaline down` first to change it")
    return replace(base, **asked)


def _live(paths: StateDir) -> State | None:
    """The recorded state when any recorded process still runs (on this boot)."""
    state = _load_state(paths)
    if state is None or state.boot_id != _boot_id():
        return None
    table = _process_table()
    state.processes = {name: record for name, record in state.processes.items() if _is_ours(record, table)}
    return state if state.processes else None


def running_stack_env(state_dir: Path) -> dict[str, str] | None:
    """The environment that points a client at the stack running from ``state_dir``, if it runs."""
    paths = StateDir(state_dir.resolve())
    state = _live(paths)
    if state is None or set(state.processes) != set(COMPONENTS):
        return None
    return _user_env(paths, state.settings)


# --- output ---------------------------------------------------------------------------------------


def _urls(settings: Settings) -> dict[str, str]:
    return {SERVER: settings.ui_url, RAY: settings.dashboard_url, WORKER: f"pool {POOL}"}


def _status_table(paths: StateDir, state: State) -> tuple[Table, bool]:
    processes = _process_table()
    checks = _health_checks(paths, state)
    table = Table(title=f"llamaline stack ({paths.root})")
    for column in ("component", "pid", "alive", "healthy", "url"):
        table.add_column(column)
    all_up = True
    for name in COMPONENTS:
        record = state.processes.get(name)
        alive = record is not None and _is_ours(record, processes)
        healthy = alive and name in checks and checks[name]()
        all_up &= healthy
        table.add_row(
            name, str(record.pid) if record else "-", _mark(alive), _mark(healthy), _urls(state.settings)[name],
        )
    return table, all_up


def _mark(flag: bool) -> str:
    return "[green]yes[/green]" if flag else "[red]no[/red]"


def _print_usage(paths: StateDir, settings: Settings) -> None:
    console.print(f"Prefect UI      {settings.ui_url}")
    console.print(f"Prefect API     {settings.api_url}")
    console.print(f"Ray dashboard   {settings.dashboard_url}")
    console.print(f"RAY_ADDRESS     {settings.ray_address}")
    console.print(f"data            {settings.data_dir}")
    console.print(f"logs            {paths.logs}")
    console.print("\nTo use the stack from a shell:")
    for key, value in _user_env(paths, settings).items():
        console.print(f"export {key}={shlex.quote(value)}", markup=False, highlight=False, soft_wrap=True)


def _print_log_tail(paths: StateDir, name: str, lines: int = 30) -> None:
    log = paths.log(name)
    if log.exists():
        console.print(f"[bold]last lines of {log}:[/bold]")
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        console.print("\n".join(tail), markup=False, highlight=False, soft_wrap=True)


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code=1)


# --- commands ---------------------------------------------------------------------------------------

StateDirOption = Annotated[
    Path, typer.Option(envvar="LLAMALINE_STATE_DIR", help="Where the stack keeps its state, logs, database and data")
]


def up(
    state_dir: StateDirOption = Path(".llamaline"),
    prefect_port: Annotated[int | None, typer.Option(help="Prefect server/UI port (default: 4200)")] = None,
    ray_port: Annotated[int | None, typer.Option(help="Ray GCS port (RAY_ADDRESS) (default: 6379)")] = None,
    dashboard_port: Annotated[int | None, typer.Option(help="Ray dashboard port (default: 8265)")] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="LLAMALINE_DATA for flow runs (default: <state-dir>/data)")
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            envvar="LLAMALINE_DATABASE_URL",
            help="Prefect database, e.g. postgresql+asyncpg://user:pw@host/db (default: SQLite in the state dir)",
        ),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds each step may take to become ready")] = 180.0,
) -> None:
    """Start the local stack (Prefect server, Ray head, Prefect worker) and register the deployments.

    Parts already running from this state dir are kept; only missing ones are started.

    Exit code 0: the stack is up; 1: a part failed (what this run started is stopped again).
    """
    started = time.monotonic()
    paths = StateDir(state_dir.resolve())
    paths.logs.mkdir(parents=True, exist_ok=True)
    if not (PROJECT_DIR / "prefect.yaml").exists():
        raise _fail(f"no prefect.yaml in {PROJECT_DIR}")
    recorded = _live(paths)
    given = dict(
        prefect_port=prefect_port, ray_port=ray_port, dashboard_port=dashboard_port,
        data_dir=str(data_dir.resolve()) if data_dir else None, database_url=database_url,
    )
    try:
        settings = _resolve_settings(paths, given, recorded)
    except StackError as error:
        raise _fail(str(error)) from None
    missing = [name for name in COMPONENTS if not recorded or name not in recorded.processes]
    _refuse_taken_ports(settings, missing)
    state = recorded or State(boot_id=_boot_id(), settings=settings)
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    ours: dict[str, subprocess.Popen] = {}
    try:
        _bring_up(paths, state, missing, ours, timeout, started)
    except (StackError, KeyboardInterrupt) as error:
        console.print(f"[red]error:[/red] {str(error) or 'interrupted'}")
        if isinstance(error, StackError) and error.component:
            _print_log_tail(paths, error.component)
        _stop_started(paths, state, ours)
        raise typer.Exit(code=1) from None
    table, _ = _status_table(paths, state)
    console.print(table)
    _print_usage(paths, settings)
    console.print(f"\nstack up in {time.monotonic() - started:.1f} s")


def _refuse_taken_ports(settings: Settings, missing: list[str]) -> None:
    wanted = {SERVER: [settings.prefect_port], RAY: [settings.ray_port, settings.dashboard_port], WORKER: []}
    taken = [port for name in missing for port in wanted[name] if _port_in_use(port)]
    if taken:
        raise _fail(
            f"port(s) {', '.join(map(str, taken))} on {LOOPBACK} already in use by a process this stack did not "
            "start; stop it or choose other ports (--prefect-port, --ray-port, --dashboard-port)"
        )


def _bring_up(
    paths: StateDir, state: State, missing: list[str], ours: dict[str, subprocess.Popen], timeout: float,
    started: float,
) -> None:
    starters = {SERVER: _start_server, RAY: _start_ray, WORKER: _start_worker}

    def start(name: str) -> None:
        console.print(f"starting {name} (log: {paths.log(name)})")
        state.processes[name], ours[name] = starters[name](paths, state)
        _save_state(paths, state)  # at once, so that `down` finds it even if `up` is interrupted

    for name in (SERVER, RAY):
        if name in missing:
            start(name)
    checks = _health_checks(paths, state)
    _wait_until({SERVER: _ready_unless_exited(checks[SERVER], SERVER, ours.get(SERVER))}, timeout, started)
    if not missing:
        _wait_until({name: checks[name] for name in (RAY, WORKER)}, timeout, started)
        console.print("already up")
        return
    _ensure_pool(paths, state.settings, timeout)
    if WORKER in missing:
        start(WORKER)
    checks = _health_checks(paths, state)
    # Registering every time something (re)started keeps the deployments in step with prefect.yaml.
    deploy = _run_prefect(paths, state.settings, "deploy", "--no-prompt", "deploy", "--all")
    try:
        _wait_until(
            {
                RAY: _ready_unless_exited(checks[RAY], RAY, ours.get(RAY)),
                WORKER: _ready_unless_exited(checks[WORKER], WORKER, ours.get(WORKER)),
                "deploy": _exits_cleanly("deploy", deploy),
            },
            timeout,
            started,
        )
    finally:
        if deploy.poll() is None:
            deploy.kill()


def _stop_started(paths: StateDir, state: State, ours: dict[str, subprocess.Popen]) -> None:
    if not ours:
        return
    console.print(f"stopping what this run started: {', '.join(ours)}")
    _stop([state.processes.pop(name) for name in ours], STOP_GRACE_SECONDS)
    if state.processes:
        _save_state(paths, state)
    else:
        _forget(paths, state)


def status(state_dir: StateDirOption = Path(".llamaline")) -> None:
    """Show each part of the recorded stack: pid, alive, healthy, URL.

    Exit code 0: every part is up and healthy; 1: some part is down or unhealthy; 3: nothing recorded.
    """
    paths = StateDir(state_dir.resolve())
    state = _load_state(paths)
    if state is None:
        console.print(f"no stack recorded in {paths.root}: nothing running")
        raise typer.Exit(code=3)
    if state.boot_id != _boot_id():
        state.processes = {}
    table, all_up = _status_table(paths, state)
    console.print(table)
    if all_up:
        _print_usage(paths, state.settings)
    raise typer.Exit(code=0 if all_up else 1)


def down(
    state_dir: StateDirOption = Path(".llamaline"),
    grace: Annotated[float, typer.Option(help="Seconds between SIGTERM and SIGKILL")] = STOP_GRACE_SECONDS,
) -> None:
    """Stop exactly the processes `up` started (SIGTERM, then SIGKILL after --grace seconds).

    Keeps logs, database and data; removes the state file.

    Exit code 0: nothing of the stack runs; 1: a process survived or a port stayed open.
    """
    started = time.monotonic()
    paths = StateDir(state_dir.resolve())
    state = _load_state(paths)
    if state is None:
        console.print(f"no stack recorded in {paths.root}: nothing to stop")
        return
    records = state.processes if state.boot_id == _boot_id() else {}
    table = _process_table()
    running = [f"{name} (pid {record.pid})" for name, record in records.items() if _is_ours(record, table)]
    survivors = _stop(list(records.values()), grace)
    open_ports = [port for record in records.values() for port in record.ports if _port_open(port)]
    if survivors or open_ports:
        raise _fail(f"still running: pids {survivors}; ports open: {open_ports}; state kept in {paths.state_file}")
    _forget(paths, state)
    console.print(
        f"stopped {', '.join(running) or 'nothing (no recorded process was running)'} in "
        f"{time.monotonic() - started:.1f} s; no process of ours left, ports closed",
        soft_wrap=True,
    )


def _forget(paths: StateDir, state: State) -> None:
    paths.state_file.unlink(missing_ok=True)
    paths.ray_token.unlink(missing_ok=True)
    if state.ray_temp_dir and Path(state.ray_temp_dir).is_symlink():
        Path(state.ray_temp_dir).unlink()
