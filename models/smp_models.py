"""``smp:<arch>/<encoder>``: every segmentation_models_pytorch architecture with every smp or timm encoder.

Encoders are smp's own names (``resnet34``, ``efficientnet-b0``, ...) or any timm model as ``tu-<name>``.
The output has ``num_outputs`` channels: 29 class logits for segmentation, K heatmaps for keypoints.
"""
from __future__ import annotations

from functools import lru_cache

import segmentation_models_pytorch as smp
from torch import nn

import models.smp_compat as smp_compat
from models.registry import InputSize, UnknownModelError, close_matches, register_family
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
    """A known architecture and encoder that smp can build together (:mod:`models.smp_compat`)."""
    arch, encoder = parse(rest)
    if arch not in architectures():
        raise UnknownModelError(f"unknown smp architecture {arch!r}; valid: {', '.join(architectures())}"
                                + _did_you_mean(arch, architectures()))
    if encoder not in encoders():
        raise UnknownModelError(f"unknown encoder {encoder!r} for smp:{arch}" + _did_you_mean(encoder, encoders())
                                + "  (smp encoders, or any timm model as 'tu-<name>')")
    why = smp_compat.problem(arch, encoder)
    if why:
        raise UnknownModelError(f"smp:{arch}/{encoder}: {why}; try {', '.join(smp_compat.suggest(arch, encoder))}")


def _did_you_mean(word: str, names: list[str]) -> str:
    hits = close_matches(word, names)
    return f"; did you mean: {', '.join(hits)}" if hits else ""


def list_names() -> list[str]:
    """Every pair of an smp architecture and an smp encoder that builds (timm encoders: :func:`timm_note`)."""
    return [f"smp:{a}/{e}" for a in architectures() for e in smp_compat.valid_encoders(a)]


def timm_encoders(pattern: str = "*") -> list[str]:
    """``tu-<name>`` of every timm model whose name matches the shell-style ``pattern`` (timm.list_models)."""
    import timm

    return [f"tu-{n}" for n in timm.list_models(pattern)]


def timm_note(prefix: str) -> str:
    """The one ``--list-models`` line on the timm encoders a family takes as ``<prefix>/tu-<name>``."""
    return (f"+ {prefix}/tu-<name> over any of {len(timm_encoders())} timm models, each pair checked when a config "
            "names it (list them: python train.py --list-models --encoders 'convnext*')")


def input_size(rest: str, options: dict) -> InputSize:
    """The input sizes the pair takes with these ``model.options``."""
    return smp_compat.input_size(*parse(rest), options)


def check_options(rest: str, options: dict) -> None:
    """``model.options`` the pair takes (:func:`models.smp_compat.check_options`)."""
    smp_compat.check_options(*parse(rest), options)


@register_family("smp", tasks=("segmentation", "keypoints"), list_names=list_names, validate=validate,
                 input_size=input_size, check_options=check_options,
                 note=lambda: timm_note("smp:<arch>") + "; smp:dpt takes timm encoders only (made for ViTs)", examples=("smp:unet/resnet34", "smp:unetplusplus/tu-efficientnet_b0", "smp:deeplabv3plus/resnet50",
                           "smp:segformer/mit_b0", "smp:fpn/tu-convnext_nano"))
def build_smp(rest: str, *, task: str, num_outputs: int, in_channels: int = 1, weights: str | None = None,
              **kwargs) -> nn.Module:
    """Any segmentation_models_pytorch architecture x encoder (weights only from a local file)."""
    arch, encoder = parse(rest)
    model = smp.create_model(arch, encoder_name=encoder, encoder_weights=None, in_channels=in_channels,
                             classes=num_outputs, **kwargs)
    load_local_weights(model, weights)
    return model
