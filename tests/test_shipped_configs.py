"""Every config the repository ships loads and names a model the registry serves for its task with options it
takes, and every ensemble config parses: a typo in a recipe fails here, not minutes into a user's run."""
from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import load_config
from ensembles.config import load_ensemble_config
from models.registry import check_options, resolve

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TRAINING = sorted(p for p in CONFIGS.glob("*/*.yaml") if p.parent.name not in ("ensembles", "cycles"))
ENSEMBLES = sorted((CONFIGS / "ensembles").glob("*.yaml"))


def test_the_shipped_configs_are_found():
    assert {p.parent.name for p in TRAINING} == {"segmentation", "keypoints", "boneage", "orientation"}
    assert len(TRAINING) >= 15 and len(ENSEMBLES) >= 5


@pytest.mark.parametrize("path", TRAINING, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_training_config_loads_and_its_model_resolves(path):
    cfg = load_config(path)
    assert cfg.task == path.parent.name
    resolve(cfg.model.name, cfg.task)            # raises, listing valid names, for an unknown or refused model
    check_options(cfg.model.name, cfg.task, cfg.model.options)  # raises for an option the model does not take


@pytest.mark.parametrize("path", ENSEMBLES, ids=lambda p: p.name)
def test_ensemble_config_loads(path):
    ens = load_ensemble_config(path)
    assert ens.members
