"""Test-time augmentation views with exact inverses, merged in probability space.

A view transforms the input batch; its inverse maps the output maps (``(B, K, h, w)``: class logits or
keypoint heatmaps) back to the frame of the un-augmented input. For keypoint heatmaps a flip also swaps
the channels of left/right pairs (``flip_perm``). Sigmoid outputs are averaged as probabilities, not
logits: a confident view cannot outvote the others by a huge logit (see README, "TTA").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class View:
    hflip: bool = False
    vflip: bool = False
    scale: float = 1.0

    @property
    def name(self) -> str:
        parts = [p for p, on in (("hflip", self.hflip), ("vflip", self.vflip)) if on]
        if self.scale != 1.0:
            parts.append(f"x{self.scale:g}")
        return "+".join(parts) or "identity"

    def apply(self, x: torch.Tensor, multiple: int = 32) -> torch.Tensor:
        if self.scale != 1.0:
            h, w = x.shape[-2:]
            size = (max(multiple, round(h * self.scale / multiple) * multiple),
                    max(multiple, round(w * self.scale / multiple) * multiple))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        dims = [d for d, on in ((-1, self.hflip), (-2, self.vflip)) if on]
        return torch.flip(x, dims) if dims else x

    def invert(self, y: torch.Tensor, size: tuple[int, int], flip_perm: Sequence[int] | None = None) -> torch.Tensor:
        """Map outputs of the augmented input back to ``size`` in the original frame."""
        dims = [d for d, on in ((-1, self.hflip), (-2, self.vflip)) if on]
        if dims:
            y = torch.flip(y, dims)
            if flip_perm is not None:
                y = y[:, list(flip_perm)]
        if tuple(y.shape[-2:]) != tuple(size):
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        return y


def views_from_config(tta, enabled: bool = True) -> list[View]:
    """Views from ``inference.tta`` (hflip, vflip, scales); identity only when TTA is off."""
    if not enabled:
        return [View()]
    flips = [(False, False)]
    if tta.hflip:
        flips.append((True, False))
    if tta.vflip:
        flips.append((False, True))
    scales = list(dict.fromkeys(tta.scales or [1.0]))
    return [View(h, v, s) for s in scales for h, v in flips]


def tta_predict(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, views: Sequence[View],
                activation: Callable[[torch.Tensor], torch.Tensor] = torch.sigmoid,
                flip_perm: Sequence[int] | None = None, out_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Mean over views of ``activation(model(view(x)))`` mapped back to the base frame.

    ``out_size`` is the output size of the un-augmented input (default: the input size).
    """
    size = out_size or tuple(x.shape[-2:])
    total = None
    for view in views:
        y = activation(view.invert(model(view.apply(x)).float(), size, flip_perm))
        total = y if total is None else total + y
    return total / len(views)
