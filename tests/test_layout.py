"""The package's layout is a contract: import-linter's layers / forbidden / acyclic contracts (pyproject.toml) hold,
and no module reads the repository (``recipes/``, ``../shared``) by path — a wheel install has neither."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import slowed_peft


ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(slowed_peft.__file__).parent
REPO_PATHS = ("recipes/", "recipes\\", "../shared", "shared/data")


def lint_imports(cwd: Path, config: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    return subprocess.run([exe, "--no-cache", str(config)], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_import_contracts_hold():
    result = lint_imports(ROOT, ROOT / "pyproject.toml")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert result.stdout.count("KEPT") == 3 and "BROKEN" not in result.stdout


def test_import_contracts_catch_an_upward_import_and_a_cycle(tmp_path):
    """The contracts are not vacuous: a copy of the package with tuner -> scripts and eval <-> data fails all three."""
    copy = tmp_path / "slowed_peft"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "tuner" / "_bad.py").write_text("from ..scripts import training  # noqa\n")
    (copy / "data" / "_bad.py").write_text("from ..eval import report  # noqa\n")
    (copy / "data" / "_recipes.py").write_text("import recipes  # noqa\n")
    result = lint_imports(tmp_path, ROOT / "pyproject.toml")
    assert result.returncode != 0
    assert result.stdout.count("BROKEN") == 3, result.stdout[-4000:]
    assert "slowed_peft.tuner._bad -> slowed_peft.scripts" in result.stdout


def _code_strings(path: Path) -> list[tuple[int, str]]:
    """String constants of a module that are not docstrings (a docstring may show a repository command)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def test_no_module_reads_repository_paths():
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {text[:80]!r}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for line, text in _code_strings(path)
        if any(marker in text for marker in REPO_PATHS)
    ]
    assert not offenders, "the package must not read or point at repository files:\n" + "\n".join(offenders)
