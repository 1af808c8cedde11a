"""The code version in every manifest names the commit the code came from and whether it was edited."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import tasks.version

GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false"]


def git(repo: Path, *args: str) -> str:
    return subprocess.run([*GIT, "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()


def code_version_of(repo: Path) -> dict:
    """code_version as the copy of tasks/version.py in ``repo`` computes it (a fresh module, a fresh cache)."""
    spec = importlib.util.spec_from_file_location("copied_version", repo / "tasks" / "version.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.code_version()


def test_the_code_version_follows_commits_and_edits(tmp_path):
    repo = tmp_path / "checkout"
    (repo / "tasks").mkdir(parents=True)
    shutil.copy(tasks.version.__file__, repo / "tasks" / "version.py")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "first")
    first = code_version_of(repo)
    assert (first["git_commit"], first["git_dirty"]) == (git(repo, "rev-parse", "HEAD"), False)

    with (repo / "tasks" / "version.py").open("a") as f:
        f.write("\n# an edit not yet committed\n")
    edited = code_version_of(repo)
    assert (edited["git_commit"], edited["git_dirty"]) == (first["git_commit"], True)

    git(repo, "commit", "-q", "-am", "second")
    second = code_version_of(repo)
    assert second["git_commit"] != first["git_commit"] and second["git_dirty"] is False
    assert second["git_commit"] == git(repo, "rev-parse", "HEAD")
