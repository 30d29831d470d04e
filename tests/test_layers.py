"""The house's flow runs one way (docs/architecture.md): every import of a package — at the top of a module,
inside a function, or importlib.import_module with a literal name — goes to itself or to a package it may use."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What each package may import besides itself: the table of docs/architecture.md.
MAY_IMPORT = {
    "core": set(),
    "tasks.formats": {"core"},
    "tasks": {"core", "tasks.formats"},
    "models": {"core", "tasks.formats", "tasks"},
    "engine": {"core", "tasks.formats", "tasks", "models"},
    "ensembles": {"core", "tasks.formats", "tasks", "models", "engine"},
    "phantom": {"core", "tasks.formats", "tasks"},
    "leaderboard": {"core", "tasks.formats", "tasks"},
    "sweeps": {"core", "tasks.formats", "tasks", "models", "engine"},
    "display": {"core", "tasks.formats", "tasks", "models", "engine", "ensembles", "leaderboard", "phantom"},
    "cycle": {"core", "tasks.formats", "tasks", "models", "engine", "ensembles", "leaderboard", "sweeps"},
}


def layer(module: str) -> str | None:
    """The layer of a dotted module name of the project (``tasks.formats`` apart from the rest of ``tasks``)."""
    parts = module.split(".")
    if parts[0] == "tasks" and len(parts) > 1 and parts[1] == "formats":
        return "tasks.formats"
    return parts[0] if parts[0] in MAY_IMPORT else None


def imports_of(path: Path, module: str) -> list[tuple[int, str]]:
    """``(line, imported module)`` of every import in a file, deferred ones included."""
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            found.append((node.lineno, base))
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", "")) in ("import_module", "__import__")):
            found.append((node.lineno, node.args[0].value))
    return found


def violations(root: Path = ROOT) -> list[str]:
    out = []
    for package in MAY_IMPORT:
        folder = root / package.replace(".", "/")
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(root).with_suffix("")
            module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
            own = layer(module)
            for line, target in imports_of(path, module):
                other = layer(target)
                if other is not None and other != own and other not in MAY_IMPORT[own]:
                    out.append(f"{path.relative_to(root)}:{line}: {own} imports {target}")
    return out


def test_no_import_runs_against_the_layer_order():
    assert violations() == []


def test_the_checker_sees_a_deferred_import_against_the_order(tmp_path):
    (tmp_path / "leaderboard").mkdir()
    (tmp_path / "leaderboard" / "x.py").write_text("def f():\n    from engine.trainer import train\n")
    (tmp_path / "core").mkdir()
    (tmp_path / "core" / "y.py").write_text("import importlib\nimportlib.import_module('tasks.spec')\n")
    assert violations(tmp_path) == ["core/y.py:2: core imports tasks.spec",
                                    "leaderboard/x.py:2: leaderboard imports engine.trainer"]
