"""``smp:<arch>/<encoder>``: every segmentation_models_pytorch architecture with every smp or timm encoder.

Encoders are smp's own names (``resnet34``, ``efficientnet-b0``, ...) or any timm model as ``tu-<name>``.
The output has ``num_outputs`` channels: 29 class logits for segmentation, K heatmaps for keypoints.
"""
from __future__ import annotations

import json
from functools import lru_cache

import segmentation_models_pytorch as smp
import torch
from torch import nn

from models.registry import UnknownModelError, close_matches, register_family
from models.weights import load_local_weights


def architectures() -> list[str]:
    return list(smp.MODEL_ARCHITECTURES_MAPPING)


@lru_cache(maxsize=1)
def encoders() -> list[str]:
    import timm

    return list(smp.encoders.get_encoder_names()) + [f"tu-{n}" for n in timm.list_models()]


def parse(rest: str) -> tuple[str, str]:
    arch, sep, encoder = rest.partition("/")
    if not sep or not encoder:
        raise UnknownModelError(f"smp model {rest!r}: expected 'smp:<arch>/<encoder>', e.g. smp:unet/resnet34")
    return arch.lower(), encoder


def validate(rest: str) -> None:
    arch, encoder = parse(rest)
    if arch not in architectures():
        raise UnknownModelError(f"unknown smp architecture {arch!r}; valid: {', '.join(architectures())}"
                                + _did_you_mean(arch, architectures()))
    if encoder not in encoders():
        raise UnknownModelError(f"unknown encoder {encoder!r} for smp:{arch}" + _did_you_mean(encoder, encoders())
                                + "  (smp encoders, or any timm model as 'tu-<name>')")


def _did_you_mean(word: str, names: list[str]) -> str:
    hits = close_matches(word, names)
    return f"; did you mean: {', '.join(hits)}" if hits else ""


def list_names() -> list[str]:
    smp_encoders = smp.encoders.get_encoder_names()
    return [f"smp:{a}/{e}" for a in architectures() for e in smp_encoders] + [
        f"smp:{a}/tu-<any timm model>" for a in architectures()]


def input_multiple(rest: str, options: dict) -> int:
    """The encoder's output stride where the architecture needs the input divisible by it, else 1."""
    return _input_multiple(rest, json.dumps(options, sort_keys=True, default=str))


@lru_cache(maxsize=64)
def _input_multiple(rest: str, options_json: str) -> int:
    arch, encoder = parse(rest)
    try:
        with torch.device("meta"):   # the structure only: no memory, no weights
            model = smp.create_model(arch, encoder_name=encoder, encoder_weights=None, **json.loads(options_json))
    except (TypeError, ValueError, KeyError, RuntimeError):
        return 1   # options this architecture rejects: the real build reports them
    return int(model.encoder.output_stride) if getattr(model, "requires_divisible_input_shape", True) else 1


@register_family("smp", tasks=("segmentation", "keypoints"), list_names=list_names, validate=validate,
                 input_multiple=input_multiple, examples=("smp:unet/resnet34", "smp:unetplusplus/tu-efficientnet_b0", "smp:deeplabv3plus/resnet50",
                           "smp:segformer/mit_b0", "smp:fpn/tu-convnext_nano"))
def build_smp(rest: str, *, task: str, num_outputs: int, in_channels: int = 1, weights: str | None = None,
              **kwargs) -> nn.Module:
    """Any segmentation_models_pytorch architecture x encoder (weights only from a local file)."""
    arch, encoder = parse(rest)
    model = smp.create_model(arch, encoder_name=encoder, encoder_weights=None, in_channels=in_channels,
                             classes=num_outputs, **kwargs)
    load_local_weights(model, weights)
    return model
