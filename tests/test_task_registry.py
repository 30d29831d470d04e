"""Tasks register with ``@TASKS.register`` like predictors and ensemble runners; the light path stays torch-free."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tasks.registry import TASK_NAMES, TASKS, Registry, get_task_class


def test_light_task_modules_import_no_torch():
    code = ("import json, sys, tasks, tasks.registry, tasks.scoring, tasks.formats.handbones, tasks.formats.rsna;"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'segmentation_models_pytorch', 'timm', 'tasks'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    modules = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert not {m for m in modules if not m.startswith("tasks")}, modules
    assert "tasks.plugins" not in modules and "tasks.segmentation" not in modules


def test_every_task_name_has_its_registered_class():
    expected = {"segmentation": "SegmentationTask", "keypoints": "KeypointTask", "boneage": "BoneAgeTask"}
    assert set(TASK_NAMES) == set(expected)
    for name, cls in expected.items():
        task = get_task_class(name)
        assert task.__name__ == cls and task.__module__ == f"tasks.{name}"
    assert TASKS.tasks() == sorted(TASK_NAMES)


def test_unknown_task_lists_the_valid_names_and_the_closest():
    with pytest.raises(ValueError) as err:
        get_task_class("keypiont")
    assert str(err.value) == "unknown task 'keypiont'; did you mean 'keypoints'? (valid: segmentation, keypoints, boneage)"
    with pytest.raises(ValueError, match=r"^unknown task 'xyz' \(valid: segmentation, keypoints, boneage\)$"):
        get_task_class("xyz")


def test_registry_takes_only_known_tasks_once():
    table = Registry("probe")
    with pytest.raises(ValueError, match="probe: unknown task 'pose'"):
        table.register("pose")
    fn = table.register("boneage")(len)
    assert fn is len and table.get("boneage") is len
    with pytest.raises(ValueError, match="probe for task 'boneage' registered twice"):
        table.register("boneage")(abs)
    with pytest.raises(ValueError, match=r"no probe for task 'keypoints' \(have: boneage\)"):
        table.get("keypoints")


def test_config_names_the_unknown_task():
    from engine.config import ConfigError, build_config

    with pytest.raises(ConfigError, match=r"^cfg.yaml: unknown task 'segmentaton'; did you mean 'segmentation'\?"):
        build_config({"task": "segmentaton", "data": {"root": "x"}}, "cfg.yaml")
