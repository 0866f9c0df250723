"""The import-layer rules of DESIGN.md: memora/core is pure, and imports only point downward."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "memora"
FORBIDDEN_IN_CORE = {"trio", "socket", "time", "random", "os", "threading", "asyncio"}
FORBIDDEN_IN_CORE_MEMORA = {"memora.net", "memora.sim", "memora.api", "memora.service"}
IO_CALLS = {"open", "print", "input", "exec", "eval", "__import__"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


def called_builtins(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return {
        node.func.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }


CORE_FILES = sorted((PACKAGE / "core").rglob("*.py"))


def test_core_has_modules() -> None:
    assert len(CORE_FILES) >= 8


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_core_imports_nothing_impure(path: Path) -> None:
    modules = imported_modules(path)
    roots = {module.split(".")[0] for module in modules}
    assert not roots & FORBIDDEN_IN_CORE, f"{path} imports {roots & FORBIDDEN_IN_CORE}"
    upward = {m for m in modules if any(m.startswith(f) for f in FORBIDDEN_IN_CORE_MEMORA)}
    assert not upward, f"{path} imports upper layers {upward}"


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_core_does_no_io(path: Path) -> None:
    calls = called_builtins(path) & IO_CALLS
    assert not calls, f"{path} calls {calls}"


def test_the_checker_catches_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom time import monotonic\nprint('x')\n")
    assert {"os", "time"} <= imported_modules(bad)
    assert "print" in called_builtins(bad)
