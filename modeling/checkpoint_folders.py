"""A run's checkpoint folders: naming, which rank wrote which file, integrity, RNG state.

A checkpoint is a folder `step-NNNNNNNN` of torch.distributed.checkpoint files (model and
optimizer, sharded as trained) plus one JSON per rank (step, data position, RNG states and the
sha256 of the files that rank wrote). A folder being written is `step-NNNNNNNN.tmp`, renamed into
place when complete; resuming takes the newest folder whose files are all present and intact.
Evaluation reads only the model's part of a checkpoint (`load_model_weights`).
"""

from __future__ import annotations

import json
import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp

from tasks.storage import resolve, sha256_of

CHECKPOINT_NAME = re.compile(r"^step-(\d{8})$")
TEMPORARY_SUFFIX = ".tmp"
DCP_METADATA = ".metadata"


def checkpoint_steps(folder: str | Path) -> list[int]:
    """Steps of the checkpoint folders in `folder`, ascending (temporary folders are ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := CHECKPOINT_NAME.match(p.name)))


def checkpoint_path(folder: str | Path, step: int) -> Path:
    return Path(folder) / f"step-{step:08d}"


def rank_file(folder: Path, rank: int) -> Path:
    return folder / f"rank-{rank:05d}.json"


def sha256_file(path: Path) -> str:
    return sha256_of(resolve(str(path)))


def files_written_by(folder: Path, rank: int) -> list[Path]:
    """The DCP files of one rank (FileSystemWriter names them __<rank>_<n>.distcp; the coordinator,
    rank 0, also writes .metadata)."""
    files = sorted(folder.glob(f"__{rank}_*.distcp"))
    if rank == 0:
        files.append(folder / DCP_METADATA)
    return files


def checkpoint_problem(folder: str | Path, rank: int, world_size: int) -> str | None:
    """Why `rank` cannot resume from `folder` (missing or changed files), or None when it can."""
    folder = Path(folder)
    if not folder.is_dir():
        return "not a folder"
    for other in range(world_size):
        if not rank_file(folder, other).is_file():
            return f"{rank_file(folder, other).name} is missing (incomplete, or saved by another world size)"
    try:
        state = json.loads(rank_file(folder, rank).read_text())
    except (OSError, ValueError) as error:
        return f"{rank_file(folder, rank).name} is unreadable: {error}"
    if state.get("world_size") != world_size:
        return f"saved by world size {state.get('world_size')}, resuming with {world_size}"
    for name, expected in state.get("files", {}).items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if sha256_file(path) != expected:
            return f"{name} does not match its sha256 (corrupt)"
    return None


def load_model_weights(folder: str | Path, model: torch.nn.Module) -> None:
    """The model's weights of a checkpoint folder, whatever world size wrote it, into `model` (a
    module of the run's shape); the optimizer's states, twice the weights' size, are not read."""
    state = {"model": model.state_dict()}
    with warnings.catch_warnings():
        # Outside a process group DCP reads in this one process, which is what evaluation wants.
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        dcp.load(state, checkpoint_id=str(folder))
    model.load_state_dict(state["model"])


def rng_state() -> dict[str, Any]:
    numpy_state = np.random.get_state(legacy=False)
    state = {
        "torch": torch.get_rng_state().tolist(),
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": {**numpy_state, "state": {"key": numpy_state["state"]["key"].tolist(),
                                           "pos": int(numpy_state["state"]["pos"])}},
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = dict(state["numpy"])
    numpy_state["state"] = {"key": np.array(numpy_state["state"]["key"], dtype=np.uint32),
                            "pos": numpy_state["state"]["pos"]}
    np.random.set_state(numpy_state)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])
