"""The ImageNet weights of a listed model's encoder, as the state dict ``model.weights`` reads.

The one place that lets smp or timm download (``tools/export_weights.py``, on a machine with internet);
training never calls it. ``smp:``/``custom:`` models: the smp encoder (or the timm model of a ``tu-``
encoder, as smp wraps it) at 3 input channels, so :func:`models.weights.match_encoder` adapts the first
convolution to the model's channels when it loads. ``timm:`` models: the whole timm model, as
``timm.create_model(name, pretrained=True).state_dict()`` gives it. ``hint:`` models: their inner model's.
"""
from __future__ import annotations

import warnings

import segmentation_models_pytorch as smp
import timm
import torch

from models.registry import resolve


def _smp_weights_tag(encoder: str) -> str | bool:
    """``True`` for a timm encoder (its name carries the tag), else smp's ``imagenet`` (or its first) weights."""
    if encoder.startswith("tu-"):
        return True
    settings = list(smp.encoders.encoders[encoder]["pretrained_settings"])
    if not settings:
        raise ValueError(f"{encoder}: smp has no pretrained weights for this encoder")
    return "imagenet" if "imagenet" in settings else settings[0]


def encoder_state(name: str, *, pretrained: bool = True) -> dict[str, torch.Tensor]:
    """The encoder weights of model ``name`` (``pretrained=False``: randomly initialised, no download).

    Raises ValueError for a family without an ImageNet encoder and ConnectionError (one line) when the
    download fails.
    """
    family, rest = resolve(name)
    if family.name == "hint":
        return encoder_state(rest, pretrained=pretrained)
    if family.name not in ("smp", "custom", "timm"):
        raise ValueError(f"{name}: the {family.name!r} family has no ImageNet encoder to export "
                         "(families with one: smp, custom, timm, hint over those)")
    try:
        if family.name == "timm":
            return timm.create_model(rest, pretrained=pretrained).state_dict()
        arch, _, encoder = rest.partition("/")
        weights = _smp_weights_tag(encoder) if pretrained else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = smp.create_model("unet" if family.name == "custom" else arch, encoder_name=encoder,
                                     encoder_weights=weights, in_channels=3, classes=1)
        return model.encoder.state_dict()
    except (ValueError, TypeError):
        raise
    except Exception as err:  # hub, URL and file errors of two libraries: a download that did not happen
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConnectionError(f"{name}: could not download the ImageNet weights ({type(err).__name__}: {first}); "
                              "export them on a machine with internet and copy the file here") from None
