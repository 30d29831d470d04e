"""``shsnet:unet``: the plain U-Net of SHS_NET's joint detector (Ronneberger et al. 2015), the keypoint baseline.

Double 3x3 conv + BN + ReLU blocks, max-pool down, transposed-conv up, skip concatenation, a 1x1 head
with one output map per landmark (or class). Options (``model.options``): ``base_channels`` (SHS_NET: 64),
``depth`` (number of poolings, 4), ``out_stride`` (1, 2, 4, ...: stop the decoder early and emit
heatmaps at that stride; the keypoint task renders its targets at whatever stride the model emits,
and a coarse output is much cheaper on a CPU). Inputs of any size work: each decoder stage is resized
to its skip connection.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.registry import UnknownModelError, register_family
from models.weights import load_local_weights

ARCHS = ("unet",)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class PlainUNet(nn.Module):
    """U-Net with ``depth`` poolings; the output is at ``out_stride`` of the input."""

    def __init__(self, in_channels: int, classes: int, base_channels: int = 64, depth: int = 4,
                 out_stride: int = 1) -> None:
        super().__init__()
        levels = math.log2(out_stride) if out_stride >= 1 else -1
        if levels != int(levels) or not 0 <= levels <= depth:
            raise ValueError(f"shsnet:unet: out_stride must be a power of 2 between 1 and 2**depth={2**depth}, got {out_stride}")
        if depth < 1 or base_channels < 1:
            raise ValueError(f"shsnet:unet: depth and base_channels must be positive (got {depth}, {base_channels})")
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList([_block(in_channels, widths[0])] + [_block(widths[i - 1], widths[i])
                                                                      for i in range(1, depth + 1)])
        self.stop = int(levels)
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i], widths[i - 1], 2, stride=2)
                                for i in range(depth, self.stop, -1))
        self.fuse = nn.ModuleList(_block(2 * widths[i - 1], widths[i - 1]) for i in range(depth, self.stop, -1))
        self.head = nn.Conv2d(widths[self.stop], classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2, ceil_mode=True))
            skips.append(x)
        x = skips.pop()
        for up, fuse in zip(self.up, self.fuse):
            skip = skips.pop()
            x = up(x)
            if x.shape[-2:] != skip.shape[-2:]:
                x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = fuse(torch.cat([skip, x], 1))
        return self.head(x)


def validate(rest: str) -> None:
    if rest not in ARCHS:
        raise UnknownModelError(f"unknown shsnet architecture {rest!r}; valid: {', '.join(f'shsnet:{a}' for a in ARCHS)}")


@register_family("shsnet", tasks=("keypoints", "segmentation"), list_names=lambda: [f"shsnet:{a}" for a in ARCHS],
                 validate=validate, examples=("shsnet:unet",))
def build_shsnet(rest: str, *, task: str, num_outputs: int, in_channels: int = 1, weights: str | None = None,
                 base_channels: int = 64, depth: int = 4, out_stride: int = 1) -> nn.Module:
    """SHS_NET-style plain U-Net (heatmap baseline); options base_channels, depth, out_stride."""
    validate(rest)
    model = PlainUNet(in_channels, num_outputs, base_channels, depth, out_stride)
    load_local_weights(model, weights, encoder_attr="down")
    return model
