"""The output prior: sigmoid outputs start at model.output_prior, and a whole-model weights file keeps its head."""
from __future__ import annotations

import math

import pytest
import torch

from engine.config import build_config
from engine.trainer import build_model
from models import create_model
from models.output_prior import output_layer, set_output_prior
from tasks.spec import task_spec


def _cfg(tmp_path, **model):
    return build_config({"task": "segmentation", "data": {"root": str(tmp_path), "image_size": 32},
                         "model": {"name": "smp:unet/resnet18", **model}})


@pytest.mark.parametrize("name", ["smp:unet/resnet18", "smp:fpn/resnet18", "custom:unet3plus/resnet18"])
def test_prior_sets_every_output_probability(name):
    model = create_model(name, task="segmentation", num_outputs=29)
    set_output_prior(model, 29, 0.01)
    assert torch.allclose(output_layer(model, 29).bias, torch.full((29,), math.log(0.01 / 0.99)))
    assert torch.allclose(torch.sigmoid(output_layer(model, 29).bias), torch.full((29,), 0.01), atol=1e-6)


def test_trainer_build_applies_prior_and_none_keeps_init(tmp_path):
    task_cls = task_spec("segmentation").task_class()
    cfg = _cfg(tmp_path)
    assert cfg.model.output_prior == 0.01
    bias = output_layer(build_model(cfg, task_cls(cfg)), 29).bias
    assert torch.allclose(bias, torch.full((29,), math.log(0.01 / 0.99)))
    off = _cfg(tmp_path, output_prior=None)
    assert torch.count_nonzero(output_layer(build_model(off, task_cls(off)), 29).bias) == 0   # smp's own init: 0


def test_whole_model_weights_keep_their_head(tmp_path):
    task_cls = task_spec("segmentation").task_class()
    donor = create_model("smp:unet/resnet18", task="segmentation", num_outputs=29)
    torch.nn.init.constant_(output_layer(donor, 29).bias, 1.5)
    torch.save(donor.state_dict(), tmp_path / "whole.pt")
    cfg = _cfg(tmp_path, weights=str(tmp_path / "whole.pt"))
    model = build_model(cfg, task_cls(cfg))
    assert torch.allclose(output_layer(model, 29).bias, torch.full((29,), 1.5))


def test_model_without_such_layer_is_refused():
    with pytest.raises(ValueError, match="model.output_prior"):
        output_layer(torch.nn.Sequential(torch.nn.Conv2d(1, 3, 1)), 29)


def test_prior_out_of_range_is_a_config_error(tmp_path):
    with pytest.raises(Exception, match="output_prior"):
        _cfg(tmp_path, output_prior=1.5)
