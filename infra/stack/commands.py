"""The commands `llamaline up`, `status` and `down`, and the environment of a running stack for the
CLI's other commands."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from infra.stack.health import exits_cleanly, health_checks, ready_unless_exited
from infra.stack.launch import PROJECT_DIR, STARTERS, ensure_pool, run_prefect, user_env
from infra.stack.processes import STOP_GRACE_SECONDS, is_ours, live, process_table, stop
from infra.stack.report import console, fail, print_log_tail, print_usage, status_table
from infra.stack.state import (
    COMPONENTS,
    RAY,
    SERVER,
    WORKER,
    Settings,
    StackError,
    State,
    StateDir,
    boot_id,
    forget,
    load_state,
    save_state,
)
from tasks.ports import LOOPBACK, port_in_use, port_open

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
        raise fail(f"no prefect.yaml in {PROJECT_DIR}")
    recorded = live(paths)
    given = dict(
        prefect_port=prefect_port, ray_port=ray_port, dashboard_port=dashboard_port,
        data_dir=str(data_dir.resolve()) if data_dir else None, database_url=database_url,
    )
    try:
        settings = _resolve_settings(paths, given, recorded)
    except StackError as error:
        raise fail(str(error)) from None
    missing = [name for name in COMPONENTS if not recorded or name not in recorded.processes]
    _refuse_taken_ports(settings, missing)
    state = recorded or State(boot_id=boot_id(), settings=settings)
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    ours: dict[str, subprocess.Popen] = {}
    try:
        _bring_up(paths, state, missing, ours, timeout, started)
    except (StackError, KeyboardInterrupt) as error:
        console.print(f"[red]error:[/red] {str(error) or 'interrupted'}")
        if isinstance(error, StackError) and error.component:
            print_log_tail(paths, error.component)
        _stop_started(paths, state, ours)
        raise typer.Exit(code=1) from None
    table, _ = status_table(paths, state)
    console.print(table)
    print_usage(paths, settings)
    console.print(f"\nstack up in {time.monotonic() - started:.1f} s")


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


def _refuse_taken_ports(settings: Settings, missing: list[str]) -> None:
    wanted = {SERVER: [settings.prefect_port], RAY: [settings.ray_port, settings.dashboard_port], WORKER: []}
    taken = [port for name in missing for port in wanted[name] if port_in_use(port)]
    if taken:
        raise fail(
            f"port(s) {', '.join(map(str, taken))} on {LOOPBACK} already in use by a process this stack did not "
            "start; stop it or choose other ports (--prefect-port, --ray-port, --dashboard-port)"
        )


def _bring_up(
    paths: StateDir, state: State, missing: list[str], ours: dict[str, subprocess.Popen], timeout: float,
    started: float,
) -> None:
    def start(name: str) -> None:
        console.print(f"starting {name} (log: {paths.log(name)})")
        state.processes[name], ours[name] = STARTERS[name](paths, state)
        save_state(paths, state)  # at once, so that `down` finds it even if `up` is interrupted

    for name in (SERVER, RAY):
        if name in missing:
            start(name)
    checks = health_checks(paths, state)
    _wait_until({SERVER: ready_unless_exited(checks[SERVER], SERVER, ours.get(SERVER))}, timeout, started)
    if not missing:
        _wait_until({name: checks[name] for name in (RAY, WORKER)}, timeout, started)
        console.print("already up")
        return
    ensure_pool(paths, state.settings, timeout)
    if WORKER in missing:
        start(WORKER)
    checks = health_checks(paths, state)
    # Registering every time something (re)started keeps the deployments in step with prefect.yaml.
    deploy = run_prefect(paths, state.settings, "deploy", "--no-prompt", "deploy", "--all")
    try:
        _wait_until(
            {
                RAY: ready_unless_exited(checks[RAY], RAY, ours.get(RAY)),
                WORKER: ready_unless_exited(checks[WORKER], WORKER, ours.get(WORKER)),
                "deploy": exits_cleanly("deploy", deploy),
            },
            timeout,
            started,
        )
    finally:
        if deploy.poll() is None:
            deploy.kill()


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


def _stop_started(paths: StateDir, state: State, ours: dict[str, subprocess.Popen]) -> None:
    if not ours:
        return
    console.print(f"stopping what this run started: {', '.join(ours)}")
    stop([state.processes.pop(name) for name in ours], STOP_GRACE_SECONDS)
    if state.processes:
        save_state(paths, state)
    else:
        forget(paths, state)


def status(state_dir: StateDirOption = Path(".llamaline")) -> None:
    """Show each part of the recorded stack: pid, alive, healthy, URL.

    Exit code 0: every part is up and healthy; 1: some part is down or unhealthy; 3: nothing recorded.
    """
    paths = StateDir(state_dir.resolve())
    state = load_state(paths)
    if state is None:
        console.print(f"no stack recorded in {paths.root}: nothing running")
        raise typer.Exit(code=3)
    if state.boot_id != boot_id():
        state.processes = {}
    table, all_up = status_table(paths, state)
    console.print(table)
    if all_up:
        print_usage(paths, state.settings)
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
    state = load_state(paths)
    if state is None:
        console.print(f"no stack recorded in {paths.root}: nothing to stop")
        return
    records = state.processes if state.boot_id == boot_id() else {}
    table = process_table()
    running = [f"{name} (pid {record.pid})" for name, record in records.items() if is_ours(record, table)]
    survivors = stop(list(records.values()), grace)
    open_ports = [port for record in records.values() for port in record.ports if port_open(port)]
    if survivors or open_ports:
        raise fail(f"still running: pids {survivors}; ports open: {open_ports}; state kept in {paths.state_file}")
    forget(paths, state)
    console.print(
        f"stopped {', '.join(running) or 'nothing (no recorded process was running)'} in "
        f"{time.monotonic() - started:.1f} s; no process of ours left, ports closed",
        soft_wrap=True,
    )


def running_stack_env(state_dir: Path) -> dict[str, str] | None:
    """The environment that points a client at the stack running from ``state_dir``, if it runs."""
    paths = StateDir(state_dir.resolve())
    state = live(paths)
    if state is None or set(state.processes) != set(COMPONENTS):
        return None
    return user_env(paths, state.settings)
