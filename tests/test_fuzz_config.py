"""Fuzzing the config readers (Hypothesis): run config YAML, command-line overrides and ensemble YAML.

The originals are shipped configs. An equivalent change (BOM, CRLF, trailing blank line) loads the same
config; a corrupting one loads a valid config or ends in one ConfigError whose one-line message names the
file (or, for an override, its key); a name that would become a folder never leads out of ``out_dir``.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from engine.config import ConfigError, load_config
from ensembles.config import load_ensemble_config
from fuzzing import NUMBERS, PATH_NAMES, corrupted, equivalent, inside, outcome

ROOT = Path(__file__).resolve().parents[1]
RUN_CONFIG = ROOT / "configs" / "segmentation" / "demo_unet.yaml"
ENSEMBLE_CONFIG = ROOT / "configs" / "ensembles" / "seg_weighted.yaml"
KEYS = ("train.lr", "train.epochs", "data.image_size", "data.fold", "model.name", "model.options", "loss.weights",
        "loss.weights.dice", "inference.threshold", "inference.tta.scales", "augment.extra", "logging.run_name",
        "logging.out_dir", "name", "task", "train", "train.lrr", "data..fold", ".", "model.options.encoder_depth")
VALUES = ("{", "}", "{a: }", "{a: 1", "[", "[1, ", "{a: {b: }}", "!!python/object:os.system {}",
          "!!python/object/apply:os.system [echo]", "!!binary aGVsbG8=", "&a [*a]", "*a", "- a", ": ", "a: b: c",
          "'", '"', "|", ">", "%YAML 1.1", "---", "...", "\t", "{a: !!float x}", "1e-05", "off", "None")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz_config")


@given(content=equivalent(RUN_CONFIG.read_bytes()))
def test_a_run_config_loads_equal_after_an_equivalent_change(work, content):
    path = work / "demo_unet.yaml"
    path.write_bytes(content)
    assert load_config(path).to_dict() == load_config(RUN_CONFIG).to_dict()


@given(content=corrupted(RUN_CONFIG.read_bytes()))
@example(content=b"task: " + b"[" * 500 + b"]" * 500)                       # was a RecursionError in PyYAML
def test_a_corrupted_run_config_loads_valid_or_is_named(work, content):
    path = work / "demo_unet.yaml"
    path.write_bytes(content)
    cfg = outcome(lambda: load_config(path), path, (ConfigError,))
    if cfg is not None:
        assert cfg.run_dir.resolve().parent == (Path(cfg.logging.out_dir) / cfg.task).resolve()


@given(key=st.sampled_from(KEYS),
       value=st.one_of(st.sampled_from(VALUES), st.sampled_from(PATH_NAMES), st.sampled_from(NUMBERS),
                       st.text(max_size=12)))
@example(key="model.options", value="{")                                    # was a yaml ParserError traceback
@example(key="model.options", value="{a: }")                                # a key without its value
@example(key="model.options", value="!!python/object:os.system {}")         # was a yaml ConstructorError traceback
@example(key="logging.run_name", value="../../../x")                        # wrote outside out_dir
@example(key="data..fold", value="1")                                       # named key 'data.', not the override
@example(key="train.lr", value="{a: !!float x}")                            # was a ValueError without the override
@example(key="model.options", value="&a [*a]")                              # was a RecursionError
@example(key="model.options", value="[" * 500 + "]" * 500)                   # was a RecursionError in PyYAML
def test_an_override_loads_a_valid_config_or_is_one_line_naming_its_key(work, key, value):
    cfg = outcome(lambda: load_config(RUN_CONFIG, [f"--{key}={value}"]), key, (ConfigError,))
    if cfg is not None:
        assert inside(Path(cfg.logging.out_dir) / cfg.task, cfg.run_name)


@given(content=equivalent(ENSEMBLE_CONFIG.read_bytes()))
def test_an_ensemble_config_loads_equal_after_an_equivalent_change(work, content):
    path = work / "seg_weighted.yaml"
    path.write_bytes(content)
    assert load_ensemble_config(path) == load_ensemble_config(ENSEMBLE_CONFIG)


@given(content=corrupted(ENSEMBLE_CONFIG.read_bytes()))
@example(content=ENSEMBLE_CONFIG.read_bytes() + b"\nname: ../../../x\n")   # wrote outside out_dir
def test_a_corrupted_ensemble_config_loads_valid_or_is_named(work, content):
    path = work / "seg_weighted.yaml"
    path.write_bytes(content)
    ens = outcome(lambda: load_ensemble_config(path), path, (ConfigError,))
    if ens is not None:
        assert inside(Path(ens.out_dir) / ens.task, ens.run_name)
