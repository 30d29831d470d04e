"""No file from a run folder, a config or a data folder can run code: the source tree (not .venv, not tests) has
no ``torch.load`` without ``weights_only=True``, no pickle module, no ``allow_pickle=True``, no ``yaml.load``
without a safe loader, no ``eval``/``exec``, outside the commented allow-list below. The checker is tested on
planted snippets first, so a checker that finds nothing fails here."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Modules whose loading runs code named in the data (pickle and the libraries built on it).
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "cloudpickle", "dill", "joblib", "shelve", "marshal"}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"}
UNSAFE_YAML = {"unsafe_load", "unsafe_load_all", "full_load", "full_load_all"}

# (path relative to the repository, finding kind) -> why it is safe. Every entry needs its reason.
ALLOWED = {
    # imports pickle only for pickle.UnpicklingError (what torch.load(weights_only=True) raises for a refused
    # object) and the pickle.PROTO opcode byte, to tell a pickled file from a foreign one; it never unpickles
    ("tasks/formats/tensors.py", "pickle import"): "exception type and opcode constant only",
}


def _name(node: ast.AST) -> str:
    """``a.b.c`` of a Name/Attribute chain ('' for anything else)."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _name(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def findings(source: str, path: str = "<snippet>") -> list[tuple[str, int, str]]:
    """``(kind, line, text)`` of every construct that can run code from a file, in ``source``."""
    tree = ast.parse(source, path)
    aliases: dict[str, str] = {}  # local name -> module.attribute it was imported as
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
                if a.name.split(".")[0] in PICKLE_MODULES:
                    found.append(("pickle import", node.lineno, a.name))
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
            if node.module.split(".")[0] in PICKLE_MODULES:
                found.append(("pickle import", node.lineno, node.module))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _name(node.func)
        head, _, rest = name.partition(".")
        full = f"{aliases.get(head, head)}.{rest}" if rest else aliases.get(name, name)
        line = node.lineno
        if full in ("torch.load", "torch.serialization.load") and not _is_true(_keyword(node, "weights_only")):
            found.append(("torch.load", line, "without weights_only=True"))
        elif full in ("eval", "exec", "builtins.eval", "builtins.exec"):
            found.append(("eval/exec", line, full))
        elif full.endswith(".read_pickle") or full == "read_pickle":
            found.append(("pickle use", line, full))
        elif full.startswith("yaml.") and full.split(".")[-1] in UNSAFE_YAML:
            found.append(("yaml.load", line, full))
        elif full in ("yaml.load", "yaml.load_all"):
            loader = _keyword(node, "Loader") if _keyword(node, "Loader") is not None else \
                (node.args[1] if len(node.args) > 1 else None)
            if loader is None or _name(loader).split(".")[-1] not in SAFE_YAML_LOADERS:
                found.append(("yaml.load", line, "without a safe Loader"))
        allow = _keyword(node, "allow_pickle")
        if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
            found.append(("allow_pickle", line, f"{full}(allow_pickle=...)"))
    return sorted(found, key=lambda f: f[1])


PLANTED = '''
import pickle
import torch as T
from numpy import load as npload
from yaml import load as yload
import yaml, numpy as np, pandas as pd
from dill import loads

a = T.load("x.pt")
b = T.load("x.pt", weights_only=False)
c = np.load("x.npz", allow_pickle=True)
d = npload("x.npz", allow_pickle=flag)
e = yaml.load(text)
f = yload(text, Loader=yaml.Loader)
g = yaml.unsafe_load(text)
h = eval("1 + 1")
exec("import os")
i = pd.read_pickle("x.pkl")
'''

CLEAN = '''
import torch, yaml, numpy as np
from torch import load

a = torch.load("x.pt", map_location="cpu", weights_only=True)
b = load("x.pt", weights_only=True)
c = np.load("x.npz")
d = np.load("x.npz", allow_pickle=False)
e = yaml.safe_load(text)
f = yaml.load(text, Loader=yaml.SafeLoader)
g = yaml.load(text, yaml.CSafeLoader)
model.eval()
s = "eval('x'); import pickle"
'''


def test_the_checker_finds_each_planted_construct_and_nothing_in_clean_code():
    kinds = [(kind, line) for kind, line, _ in findings(PLANTED)]
    assert kinds == [("pickle import", 2), ("pickle import", 7), ("torch.load", 9), ("torch.load", 10),
                     ("allow_pickle", 11), ("allow_pickle", 12), ("yaml.load", 13), ("yaml.load", 14),
                     ("yaml.load", 15), ("eval/exec", 16), ("eval/exec", 17), ("pickle use", 18)]
    assert findings(CLEAN) == []


def source_files() -> list[Path]:
    """Every Python file of the project: not the virtual environment, the tests or hidden folders."""
    skip = {".venv", "tests", "node_modules", "__pycache__"}
    return sorted(p for p in ROOT.rglob("*.py")
                  if not any(part in skip or part.startswith(".") for part in p.relative_to(ROOT).parts[:-1]))


def test_no_source_file_can_run_code_from_a_file():
    files = source_files()
    assert len(files) > 100 and ROOT / "train.py" in files and ROOT / "tasks" / "formats" / "tensors.py" in files
    problems, used = [], set()
    for path in files:
        rel = path.relative_to(ROOT).as_posix()
        for kind, line, text in findings(path.read_text(encoding="utf-8"), rel):
            if (rel, kind) in ALLOWED:
                used.add((rel, kind))
            else:
                problems.append(f"{rel}:{line}: {kind} ({text})")
    assert problems == [], "code that can run what a file says:\n" + "\n".join(problems)
    assert used == set(ALLOWED), f"allow-list entries that no longer match anything: {set(ALLOWED) - used}"


@pytest.mark.parametrize("snippet", ["import pickle\n", "x = torch.load(p)\n", "yaml.load(s)\n", "eval(s)\n"])
def test_a_bad_line_in_a_source_file_fails_the_walk(tmp_path, snippet):
    """The walk over the tree reports a planted file (the same check, on a copy of one source file)."""
    path = tmp_path / "planted.py"
    path.write_text((ROOT / "engine" / "summary.py").read_text() + snippet)
    assert findings(path.read_text(), "planted.py")
