"""One spec per task (tasks/<task>/__init__.py): found by the package, torch-free, and the only way generic code
reaches a task (no string branches on task names outside the task packages)."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.spec import SubmissionFormat, TaskSpec, register, specs, task_names, task_of_header, task_spec

ROOT = Path(__file__).resolve().parents[1]


def test_the_spec_and_the_cache_path_import_no_torch():
    code = ("import json, sys, tasks, tasks.spec, tasks.scoring, engine.config, ensembles.api, ensembles.select, "
            "tasks.segmentation.ensemble, tasks.keypoints.ensemble, tasks.boneage.ensemble;"
            "[s.ensemble_side() for s in tasks.spec.specs()];"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'segmentation_models_pytorch', 'timm', 'models'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_every_task_package_registers_its_spec_with_its_torch_side():
    assert set(task_names()) >= {"segmentation", "keypoints", "boneage"}
    for spec in specs():
        cls = spec.task_class()
        assert cls.spec is spec and cls.__module__ == f"tasks.{spec.name}.task"
        assert spec.ensemble_side().output in ("maps", "values")
        assert spec.mode in ("max", "min") and spec.metric and spec.metric_label
        assert callable(spec.submission.scorer())


def test_submission_headers_name_their_task():
    assert task_of_header(["image_name", "class", "rle"]) == "segmentation"
    assert task_of_header(["id", "boneage"]) == "boneage"
    assert task_of_header(["image_name", "IP_x", "IP_y"]) == "keypoints"
    assert task_of_header(["x", "y"]) is None


def test_unknown_task_lists_the_valid_names_and_the_closest():
    with pytest.raises(ValueError) as err:
        task_spec("keypiont")
    assert str(err.value).startswith("unknown task 'keypiont'; did you mean 'keypoints'? (valid: segmentation, ")
    with pytest.raises(ValueError, match=r"^unknown task 'xyz' \(valid: "):
        task_spec("xyz")


def test_a_second_spec_under_a_taken_name_is_refused():
    taken = task_spec("boneage")
    other = TaskSpec(**{**taken.__dict__, "title": "another"})
    with pytest.raises(ValueError, match="task 'boneage' registered twice"):
        register(other)
    assert register(taken) is taken  # the same spec again is harmless (a package imported twice)
    assert isinstance(taken.submission, SubmissionFormat)


def test_config_names_the_unknown_task():
    from engine.config import ConfigError, build_config

    with pytest.raises(ConfigError, match=r"^cfg.yaml: unknown task 'segmentaton'; did you mean 'segmentation'\?"):
        build_config({"task": "segmentaton", "data": {"root": "x"}}, "cfg.yaml")


def _task_name_branches(path: Path, names: set[str]) -> list[str]:
    """``x == "segmentation"``-style comparisons (and ``in (...)`` of task names) in one file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            parts = [node.left, *node.comparators]
            literals = {p.value for p in parts if isinstance(p, ast.Constant)}
            literals |= {e.value for p in parts if isinstance(p, (ast.Tuple, ast.List, ast.Set))
                         for e in p.elts if isinstance(e, ast.Constant)}
            if literals & names:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return sorted(set(found))


def test_no_task_name_branches_outside_the_task_packages():
    names = set(task_names())
    generic = [ROOT / "train.py", ROOT / "inference.py"]
    for package in ("engine", "ensembles", "leaderboard", "sweeps", "models", "tools", "phantom"):
        generic += sorted((ROOT / package).rglob("*.py"))
    generic += sorted((ROOT / "tasks").glob("*.py"))  # (tasks/formats name columns such as 'boneage': not branches)
    found = [hit for path in generic for hit in _task_name_branches(path, names)]
    assert found == [], "per-task string branches outside tasks/<task>/: " + ", ".join(found)


def test_the_branch_finder_finds_a_branch(tmp_path):
    probe = ROOT / "tests" / "_probe_branch.py"
    probe.write_text('if task == "keypoints" or mode in ("boneage", "x"):\n    pass\n')
    try:
        assert _task_name_branches(probe, {"keypoints", "boneage"}) == ["tests/_probe_branch.py:1"]
    finally:
        probe.unlink()
