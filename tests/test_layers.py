"""Imports point one way: infra (CLI, stack) -> flows -> modeling -> tasks -> ground.

Every module of the four packages is parsed, imports inside functions included. A module may import
from its own layer and from the layers below it, never from one above.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Lowest first. A module belongs to the layer of the longest name here that is it or a package above it.
LAYERS: dict[str, tuple[str, ...]] = {
    # Records, storage, settings and runtime helpers: what every other layer may use.
    "ground": (
        "tasks.documents",
        "tasks.shards",
        "tasks.storage",
        "tasks.settings",
        "tasks.ray_runtime",
        "tasks.ports",
        "tasks.version",
    ),
    "tasks": ("tasks",),
    "modeling": ("modeling",),
    "flows": ("flows",),
    "infra": ("infra",),
}
RANK = {layer: rank for rank, layer in enumerate(LAYERS)}
PACKAGES = ("flows", "tasks", "modeling", "infra")

# Known upward imports, each to be removed with the change that fixes it; an entry nothing needs fails.
TEMPORARY_EXCEPTIONS: dict[tuple[str, str], str] = {}


def layer_of(module: str) -> str:
    matches = [
        (len(name), layer) for layer, names in LAYERS.items() for name in names
        if module == name or module.startswith(name + ".")
    ]
    return max(matches)[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    base = REPO.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imported_modules(node: ast.Import | ast.ImportFrom, importer: str, is_package: bool) -> list[str]:
    """Our modules an import statement loads: ``from a import b`` counts as ``a.b`` when that is a module."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = importer.split(".") if is_package else importer.split(".")[:-1]
        anchor = package[: len(package) - (node.level - 1)]
        base = ".".join([*anchor, base] if base else anchor)
    return [f"{base}.{alias.name}" if is_module(f"{base}.{alias.name}") else base for alias in node.names]


def upward_imports(path: Path, source: str) -> list[tuple[int, str, str, str]]:
    """(line, statement, imported module, its layer) for each import in ``source``, the text of the
    module at ``path``, from a layer above that module's."""
    importer = module_name(path)
    rank = RANK[layer_of(importer)]
    found = []
    for node in ast.walk(ast.parse(source, filename=str(path))):
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        for target in imported_modules(node, importer, path.name == "__init__.py"):
            if target.split(".")[0] in PACKAGES and RANK[layer_of(target)] > rank:
                found.append((node.lineno, ast.unparse(node), target, layer_of(target)))
    return found


def sources() -> list[Path]:
    return sorted(path for package in PACKAGES for path in (REPO / package).rglob("*.py"))


def test_every_ground_module_exists():
    assert [name for name in LAYERS["ground"] if not is_module(name)] == []


def test_no_module_imports_from_a_higher_layer():
    violations, excused = [], set()
    for path in sources():
        importer = module_name(path)
        for line, statement, target, layer in upward_imports(path, path.read_text()):
            if (importer, target) in TEMPORARY_EXCEPTIONS:
                excused.add((importer, target))
                continue
            violations.append(
                f"{path.relative_to(REPO)}:{line}: `{statement}` imports {target} ({layer} layer) "
                f"into a {layer_of(importer)}-layer module"
            )
    assert violations == [], "imports against the layer rule:\n" + "\n".join(violations)
    stale = set(TEMPORARY_EXCEPTIONS) - excused
    assert not stale, f"temporary exceptions no module needs any more, remove them: {sorted(stale)}"


@pytest.mark.parametrize(
    "source, importer, expected",
    [
        # Inside a function, relative, and the `from package import module` form.
        ("def f():\n    from infra.cli import app\n", "tasks/stage.py", [(2, "infra.cli", "infra")]),
        ("from .stage import run_stage\n", "tasks/storage.py", [(1, "tasks.stage", "tasks")]),
        ("from tasks import stage\n", "tasks/storage.py", [(1, "tasks.stage", "tasks")]),
        ("import flows.curate\n", "modeling/train.py", [(1, "flows.curate", "flows")]),
        # Downward and sideways imports are fine; so is anything not ours.
        ("from tasks.storage import resolve\nimport ray\n", "infra/cli.py", []),
        ("from ..stage import run_stage\nfrom ..storage import resolve\n", "tasks/curate/quality.py", []),
    ],
)
def test_the_check_sees_each_form_of_import(source, importer, expected):
    found = upward_imports(REPO / importer, source)
    assert [(line, target, layer) for line, _, target, layer in found] == expected
