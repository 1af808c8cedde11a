"""What the stack records about itself: its parts, where its files live, the settings it runs with,
the processes `up` started, and the state file that keeps them between commands."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tasks.ports import LOOPBACK

POOL = "llamaline-local"
WORKER_NAME = "llamaline-local-worker"
SERVER, RAY, WORKER = "prefect-server", "ray-head", "prefect-worker"
COMPONENTS = (SERVER, RAY, WORKER)


class StackError(Exception):
    """A part of the stack failed; ``component`` names whose log tail to show."""

    def __init__(self, message: str, component: str | None = None) -> None:
        super().__init__(message)
        self.component = component


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


def boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def load_state(paths: StateDir) -> State | None:
    if not paths.state_file.exists():
        return None
    raw = json.loads(paths.state_file.read_text())
    return State(
        boot_id=raw["boot_id"],
        settings=Settings(**raw["settings"]),
        ray_temp_dir=raw["ray_temp_dir"],
        processes={name: Launched(**record) for name, record in raw["processes"].items()},
    )


def save_state(paths: StateDir, state: State) -> None:
    # 0600: the database URL may carry a password.
    tmp = paths.state_file.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(state), f, indent=2)
    tmp.replace(paths.state_file)


def forget(paths: StateDir, state: State) -> None:
    """Remove the state file, the token and Ray's short alias; logs, database and data stay."""
    paths.state_file.unlink(missing_ok=True)
    paths.ray_token.unlink(missing_ok=True)
    if state.ray_temp_dir and Path(state.ray_temp_dir).is_symlink():
        Path(state.ray_temp_dir).unlink()
