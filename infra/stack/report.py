"""What `up`, `status` and `down` print: the status table, how to use the stack, a failed part's log."""

from __future__ import annotations

import shlex

import typer
from rich.console import Console
from rich.table import Table

from infra.stack.health import health_checks
from infra.stack.launch import user_env
from infra.stack.processes import is_ours, process_table
from infra.stack.state import COMPONENTS, POOL, RAY, SERVER, WORKER, Settings, State, StateDir

console = Console()


def _urls(settings: Settings) -> dict[str, str]:
    return {SERVER: settings.ui_url, RAY: settings.dashboard_url, WORKER: f"pool {POOL}"}


def status_table(paths: StateDir, state: State) -> tuple[Table, bool]:
    """Each part: pid, alive, healthy, URL; and whether every part is up and healthy."""
    processes = process_table()
    checks = health_checks(paths, state)
    table = Table(title=f"llamaline stack ({paths.root})")
    for column in ("component", "pid", "alive", "healthy", "url"):
        table.add_column(column)
    all_up = True
    for name in COMPONENTS:
        record = state.processes.get(name)
        alive = record is not None and is_ours(record, processes)
        healthy = alive and name in checks and checks[name]()
        all_up &= healthy
        table.add_row(
            name, str(record.pid) if record else "-", _mark(alive), _mark(healthy), _urls(state.settings)[name],
        )
    return table, all_up


def _mark(flag: bool) -> str:
    return "[green]yes[/green]" if flag else "[red]no[/red]"


def print_usage(paths: StateDir, settings: Settings) -> None:
    console.print(f"Prefect UI      {settings.ui_url}")
    console.print(f"Prefect API     {settings.api_url}")
    console.print(f"Ray dashboard   {settings.dashboard_url}")
    console.print(f"RAY_ADDRESS     {settings.ray_address}")
    console.print(f"data            {settings.data_dir}")
    console.print(f"logs            {paths.logs}")
    console.print("\nTo use the stack from a shell:")
    for key, value in user_env(paths, settings).items():
        console.print(f"export {key}={shlex.quote(value)}", markup=False, highlight=False, soft_wrap=True)


def print_log_tail(paths: StateDir, name: str, lines: int = 30) -> None:
    log = paths.log(name)
    if log.exists():
        console.print(f"[bold]last lines of {log}:[/bold]")
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        console.print("\n".join(tail), markup=False, highlight=False, soft_wrap=True)


def fail(message: str) -> typer.Exit:
    """Print the error; the caller raises what this returns (exit code 1)."""
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code=1)
