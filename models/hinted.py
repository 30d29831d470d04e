"""``hint:<model>``: any keypoint model, conditioned on user corrections (interactive keypoint estimation).

After Kim et al., "Morphology-Aware Interactive Keypoint Estimation" (MICCAI 2022): the input is the
image plus K hint channels, a Gaussian at each point the user has corrected and zeros elsewhere; the
output is the usual K heatmaps. ``rest`` is any registered keypoint model name, so every smp pair works
underneath (``hint:smp:unet/resnet34``, ``hint:smp:unet/tu-hrnet_w18``) and so does the plain U-Net
(``hint:shsnet:unet``); the inner model is built with ``in_channels + K`` input channels.

Called with the image alone (``model(x)``) the hints are zeros: a hinted model is also an ordinary
keypoint model, so training, TTA, ensembles and ``inference.py`` use it unchanged. The task simulates
the clicks (``tasks.interactive``). Options: ``leaky_relu`` (a negative slope: every ReLU of the inner
model becomes a LeakyReLU, as in the seed U-Net), everything else goes to the inner builder.
"""
from __future__ import annotations

import torch
from torch import nn

from models.registry import InputSize, UnknownModelError, check_options, input_size, register_family, resolve
from models.weights import load_local_weights

FAMILY = "hint"


class HintedModel(nn.Module):
    """Concatenates the image and ``num_hints`` hint maps and runs the inner model on them."""

    def __init__(self, inner: nn.Module, image_channels: int, num_hints: int) -> None:
        super().__init__()
        self.inner = inner
        self.image_channels = image_channels
        self.num_hints = num_hints

    def forward(self, x: torch.Tensor, hints: torch.Tensor | None = None) -> torch.Tensor:
        if x.shape[1] != self.image_channels:
            raise ValueError(f"hinted model: expected {self.image_channels} image channels, got input {tuple(x.shape)}")
        if hints is None:
            hints = x.new_zeros((x.shape[0], self.num_hints, *x.shape[-2:]))
        elif hints.shape[1] != self.num_hints or hints.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"hinted model: hints {tuple(hints.shape)} do not match {self.num_hints} maps of the "
                             f"input's size {tuple(x.shape[-2:])}")
        return self.inner(torch.cat([x, hints.to(x.dtype)], 1))


def leaky(module: nn.Module, slope: float) -> nn.Module:
    """Replace every ``nn.ReLU`` in ``module`` by ``nn.LeakyReLU(slope)`` (in place; returns ``module``)."""
    for name, child in module.named_children():
        if isinstance(child, nn.ReLU):
            setattr(module, name, nn.LeakyReLU(slope, inplace=child.inplace))
        else:
            leaky(child, slope)
    return module


def validate(rest: str) -> None:
    family, _ = resolve(rest, "keypoints")
    if family.kind != "torch" or family.name == FAMILY:
        raise UnknownModelError(f"hint:{rest}: the inner model must be a torch keypoint model other than hint: "
                                "(e.g. hint:smp:unet/resnet18, hint:shsnet:unet)")


EXAMPLES = ("hint:smp:unet/resnet18", "hint:shsnet:unet")


def list_names() -> list[str]:
    return list(EXAMPLES)


def check_inner_options(rest: str, options: dict) -> None:
    """``leaky_relu`` is the hint family's own option; the others are the inner model's."""
    options.pop("leaky_relu", None)
    check_options(rest, "keypoints", options)


def inner_input_size(rest: str, options: dict) -> InputSize:
    """The inner model's requirement (the hint options are not the inner model's)."""
    options.pop("leaky_relu", None)
    return input_size(rest, "keypoints", options)


@register_family(FAMILY, tasks=("keypoints",), list_names=list_names, validate=validate,
                 input_size=inner_input_size, check_options=check_inner_options, examples=EXAMPLES,
                 note=lambda: "+ hint:<name> over any other torch keypoint model listed (smp, custom, shsnet)")
def build_hinted(rest: str, *, task: str, num_outputs: int, in_channels: int = 1, weights: str | None = None,
                 leaky_relu: float | None = None, **options) -> nn.Module:
    """Interactive keypoints: image + one hint map per landmark in, heatmaps out (any keypoint model inside)."""
    validate(rest)
    family, inner_rest = resolve(rest, task)
    inner = family.builder(inner_rest, task=task, num_outputs=num_outputs, in_channels=in_channels + num_outputs,
                           **options)
    if leaky_relu is not None:
        leaky(inner, float(leaky_relu))
    model = HintedModel(inner, in_channels, num_outputs)
    load_local_weights(model, weights, encoder_attr="inner")
    return model
