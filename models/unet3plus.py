"""``custom:unet3plus/<encoder>``: UNet 3+ (Huang et al., ICASSP 2020) over any smp/timm encoder.

The hand-bone competition teams used UNet3+; smp lacks it. Every decoder stage sees every encoder
stage at or above its resolution (max-pooled down) and every deeper decoder stage (upsampled): the
full-scale skip connections. This module also proves the plugin path for an in-house architecture.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.encoders import get_encoder
from torch import nn

import models.smp_compat as smp_compat
from models.registry import InputSize, UnknownModelError, register_family
from models.smp_models import encoders, list_names as smp_names, timm_note
from models.weights import load_local_weights


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class UNet3Plus(nn.Module):
    """Encoder (smp) + full-scale decoder + 1x1 head, output at the input resolution."""

    def __init__(self, encoder_name: str, in_channels: int, classes: int, cat_channels: int = 32,
                 depth: int = 5) -> None:
        super().__init__()
        self.encoder = get_encoder(encoder_name, in_channels=in_channels, depth=depth, weights=None)
        # Stages with features: strides 2, 4, ..., 2**depth less the empty placeholders smp gives encoders that
        # start at stride 4 (MiT, and timm transformers and ConvNeXt as tu-: 0 channels at stride 2).
        self.stages = [i for i, c in enumerate(self.encoder.out_channels) if i > 0 and c > 0]
        chans = [self.encoder.out_channels[i] for i in self.stages]
        n = len(chans)
        if n < 2:
            raise ValueError(f"custom:unet3plus/{encoder_name}: the encoder gives {n} feature stage(s); UNet 3+ needs 2 or more")
        self.n = n
        fused = cat_channels * n
        self.branches = nn.ModuleList()
        self.fuse = nn.ModuleList()
        for level in range(n - 1):  # decoder levels 0..n-2 (stride 2..2**(n-1))
            ins = [chans[j] for j in range(level + 1)] + [
                fused if j < n - 1 else chans[-1] for j in range(level + 1, n)]
            self.branches.append(nn.ModuleList(_conv(c, cat_channels) for c in ins))
            self.fuse.append(_conv(fused, fused))
        self.head = nn.Conv2d(fused, classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        out = self.encoder(x)
        feats = [out[i] for i in self.stages]
        dec: dict[int, torch.Tensor] = {self.n - 1: feats[-1]}
        for level in range(self.n - 2, -1, -1):
            # Plain ints: an export traces the pooling at fixed sizes (torch.onnx cannot export a traced output size)
            target = tuple(int(v) for v in feats[level].shape[-2:])
            parts = []
            for j, conv in enumerate(self.branches[level]):
                src = feats[j] if j <= level else dec[j]
                if j < level:
                    src = F.adaptive_max_pool2d(src, target)
                elif j > level:
                    src = F.interpolate(src, size=target, mode="bilinear", align_corners=False)
                parts.append(conv(src))
            dec[level] = self.fuse[level](torch.cat(parts, 1))
        return F.interpolate(self.head(dec[0]), size=size, mode="bilinear", align_corners=False)


def validate(rest: str) -> None:
    arch, sep, encoder = rest.partition("/")
    if arch != "unet3plus" or not sep:
        raise UnknownModelError(f"custom model {rest!r}: expected 'custom:unet3plus/<encoder>', e.g. custom:unet3plus/resnet34")
    if encoder not in encoders():
        raise UnknownModelError(f"unknown encoder {encoder!r} for custom:unet3plus")
    why = smp_compat.problem("unet", encoder)   # the same encoder build as smp's U-Net (depth 5)
    if why:
        raise UnknownModelError(f"custom:{rest}: {why}; try {', '.join(smp_compat.suggest('unet', encoder))}")


def input_size(rest: str, options: dict) -> InputSize:
    """Any size (every stage is resized to its target), except a timm encoder's fixed input size."""
    fixed = smp_compat.fixed_size(rest.partition("/")[2], {})
    return InputSize(fixed=fixed, note="timm's fixed input size" if fixed else "")


def list_names() -> list[str]:
    return [n.replace("smp:unet/", "custom:unet3plus/") for n in smp_names() if n.startswith("smp:unet/")]


@register_family("custom", tasks=("segmentation", "keypoints"), list_names=list_names, validate=validate,
                 input_size=input_size, note=lambda: timm_note("custom:unet3plus"),
                 examples=("custom:unet3plus/resnet34", "custom:unet3plus/tu-efficientnet_b0"))
def build_unet3plus(rest: str, *, task: str, num_outputs: int, in_channels: int = 1, weights: str | None = None,
                    cat_channels: int = 32) -> nn.Module:
    """In-house UNet 3+ with full-scale skip connections over an smp/timm encoder."""
    encoder = rest.partition("/")[2]
    model = UNet3Plus(encoder, in_channels, num_outputs, cat_channels=cat_channels)
    load_local_weights(model, weights)
    return model
