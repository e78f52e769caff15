"""The core's import structure: the tuner imports nothing above it, and importing has no side effect but SLOWED."""

from __future__ import annotations

import ast
from pathlib import Path

import slowed_peft

PACKAGE = Path(slowed_peft.__file__).parent


def package_imports(path: Path) -> set[str]:
    """Absolute names of the ``slowed_peft`` modules that ``path`` imports (module level or inside functions)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                names.add(f"{base}.{node.module}" if node.module else base)
            elif node.module and node.module.startswith("slowed_peft"):
                names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("slowed_peft"))
    return names


def test_tuner_imports_only_itself_and_utils():
    offenders = {}
    for path in sorted((PACKAGE / "tuner").glob("*.py")):
        bad = {n for n in package_imports(path) if not n.startswith(("slowed_peft.tuner", "slowed_peft.utils"))}
        if bad:
            offenders[path.name] = sorted(bad)
    assert not offenders, f"slowed_peft.tuner must not import upward (DESIGN.md 'Around the core'): {offenders}"


def test_import_helper_sees_upward_imports():
    """The scanner itself: the masking package does import the tuner (so an upward import would be seen)."""
    assert "slowed_peft.tuner.drift" in package_imports(PACKAGE / "masking" / "callbacks.py")
    assert "slowed_peft.tuner.registration" in package_imports(PACKAGE / "hub.py")


def test_tuner_modules_form_no_import_cycle():
    """``config`` takes the PEFT type from ``registration``; ``registration`` imports neither config nor model."""
    graph = {}
    for path in (PACKAGE / "tuner").glob("*.py"):
        name = "slowed_peft.tuner" + ("" if path.name == "__init__.py" else "." + path.stem)
        graph[name] = {n for n in package_imports(path) if n.startswith("slowed_peft.tuner")}
    assert graph["slowed_peft.tuner.registration"] == set()

    def cycle_from(node, stack):
        if node in stack:
            return stack[stack.index(node):] + [node]
        for nxt in sorted(graph.get(node, ())):
            found = cycle_from(nxt, stack + [node])
            if found:
                return found
        return None

    cycles = [c for c in (cycle_from(n, []) for n in sorted(graph)) if c]
    assert not cycles, f"import cycle: {' -> '.join(cycles[0])}"
