"""The CSV-only commands (score, validate_submission, leaderboard) never import torch or the model stacks.

Each runs in a fresh interpreter exactly as ``python tools/<name>.py ...`` would (``runpy`` with the
script's folder first on ``sys.path``), then prints the modules it imported. Asserts on imports, never on
wall-clock time: ``benchmarks/cli_startup.py`` measures the time and memory this buys.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from core.cli import lazy_module

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "timm", "segmentation_models_pytorch", "ultralytics", "albumentations", "sklearn")

RUN_AND_LIST = """
import json, runpy, sys
script = sys.argv[1]
sys.argv = [script, *json.loads(sys.argv[2])]
sys.path[0] = str(__import__("pathlib").Path(script).parent)
try:
    runpy.run_path(script, run_name="__main__")
except SystemExit as e:
    code = e.code
else:
    code = 0
# a module registered by core.cli.lazy_module and never touched has not run: it does not count
pending = getattr(__import__("importlib.util").util, "_LazyModule", ())
print(json.dumps({"code": code, "modules": sorted(n for n, m in sys.modules.items() if not isinstance(m, pending))}))
"""


def run_listing_modules(script: str, *args: str) -> tuple[int, set[str], str]:
    """Run ``tools/<script>`` with ``args`` in a fresh interpreter: exit code, top-level modules imported, stderr."""
    proc = subprocess.run([sys.executable, "-c", RUN_AND_LIST, str(ROOT / "tools" / script), json.dumps(list(args))],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)  # PYTHONPATH: conftest
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert last.startswith("{"), f"{script} printed no module list; stderr:\n{proc.stderr}"
    report = json.loads(last)
    return report["code"], {m.split(".")[0] for m in report["modules"]}, proc.stderr


# What --help does without besides the model stacks: the scorer is imported after parsing, pandas lazily.
@pytest.mark.parametrize("script, also_absent", [("score.py", ("numpy", "cv2", "pandas")),
                                                 ("validate_submission.py", ("numpy", "cv2", "pandas")),
                                                 ("leaderboard.py", ("pandas",))])
def test_help_imports_no_model_stack(script, also_absent):
    code, modules, stderr = run_listing_modules(script, "--help")
    assert code == 0, stderr
    unwanted = modules & {*HEAVY, *also_absent}
    assert not unwanted, f"{script} --help imported {sorted(unwanted)}"


def test_lazy_module_runs_the_module_on_first_use(tmp_path, monkeypatch, capsys):
    (tmp_path / "lazy_probe_mod.py").write_text("print('executed')\nVALUE = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "lazy_probe_mod", raising=False)
    module = lazy_module("lazy_probe_mod")
    assert capsys.readouterr().out == ""
    assert module.VALUE == 42 and capsys.readouterr().out == "executed\n"
    assert sys.modules["lazy_probe_mod"] is module
    monkeypatch.delitem(sys.modules, "lazy_probe_mod")
    with pytest.raises(ModuleNotFoundError, match="no_such_module_here"):
        lazy_module("no_such_module_here")


def test_scoring_a_bone_age_csv_imports_no_model_stack(tmp_path):
    answers = tmp_path / "answers.csv"
    answers.write_text("id,boneage,male\n1,100,True\n2,150,False\n3,30,True\n")
    sub = tmp_path / "sub.csv"
    sub.write_text("id,boneage\n1,110\n2,150\n3,36\n")
    code, modules, stderr = run_listing_modules("score.py", str(sub), "--gt", str(answers), "--quiet")
    assert code == 0, stderr
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))


def test_faults_of_the_csv_tools_end_in_one_line(tmp_path):
    """A missing submission: ``error: <file>: ...`` and exit 2 from score; a test folder without images: INVALID,
exit 1 (a verdict on the submission, not a fault)."""
    missing = tmp_path / "nope.csv"
    code, modules, stderr = run_listing_modules("score.py", str(missing), "--gt", str(tmp_path))
    assert code == 2 and stderr.strip().startswith(f"error: {missing}") and "Traceback" not in stderr
    assert not modules & set(HEAVY)
    images = tmp_path / "test"
    (images / "DCM").mkdir(parents=True)
    header_only = tmp_path / "header.csv"
    header_only.write_text("image_name,class,rle\n")
    code, modules, stderr = run_listing_modules("validate_submission.py", str(header_only), "--images", str(images))
    assert code == 1 and stderr.startswith(f"INVALID: {images}")
    assert not modules & set(HEAVY)
