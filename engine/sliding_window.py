"""Sliding-window inference at the original resolution (nnU-Net style), beside whole-image resizing.

The image is cut into tiles of the model's training input size (``data.image_size``: square, or ``height x
width``; or the ``data.patch_size`` of a run trained on crops at the original resolution) that overlap by
``overlap`` (0.5: each tile starts half a tile after the previous one). Tile starts are
evenly spaced from 0 to ``side - tile``, so the last tile ends exactly on the image edge and no tile
reads outside the image; an image side smaller than the tile is padded with zeros (black, as outside
a radiograph) on both sides and the padding is cropped off the result. Each tile's sigmoid
probabilities are weighted by a Gaussian importance map (sigma = tile side / 8 along each axis, floored at
:data:`GAUSSIAN_FLOOR` so a corner covered by one tile keeps that tile's value) and accumulated in
float32 at the original size; the result is the weighted mean. Tiles go through the model in batches
of ``batch_size``.

TTA is applied per tile (the predictor's mean over its views, on each batch of tiles): a flip of a tile is
undone exactly on that tile, a scale view resizes the tile and maps its output back to the tile, so
the geometry of the stitched map is that of the image, whatever the views. (Flipping the whole image
instead would give the same tiles' union only when the tile grid is symmetric; per tile it always is.)

Peak memory, one image at a time: the accumulator ``4 * C * H * W`` bytes plus the weight sum
``4 * H * W`` (29 x 2048 x 2048: 486 MB + 17 MB) on the device, and one batch of tile outputs
(``batch_size * views * C * tile² * 4`` bytes). The segmentation writer keeps such a map as uint8
``p * 255`` (the prediction cache's form, 121 MB for that image) while it waits for post-processing.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tasks.schema import image_hw


GAUSSIAN_FLOOR = 1e-3  # smallest importance relative to the tile centre (nnU-Net floors at its smallest value)


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of tiles of ``tile`` px covering ``[0, length)``: evenly spaced, at most
    ``tile * (1 - overlap)`` apart, the first at 0 and the last at ``length - tile`` (one start, 0, when
    ``length <= tile``)."""
    if not 0 <= overlap < 1:
        raise ValueError(f"tile overlap must be in [0, 1), got {overlap}")
    if length <= tile:
        return [0]
    step = max(1.0, tile * (1 - overlap))
    n = math.ceil((length - tile) / step) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def tile_grid(height: int, width: int, tile: int | tuple[int, int], overlap: float) -> list[tuple[int, int]]:
    """``(y, x)`` top-left corners of every tile (one side, or ``(height, width)``) of an image of ``height x
    width`` (row-major)."""
    th, tw = image_hw(tile)
    return [(y, x) for y in tile_starts(height, th, overlap) for x in tile_starts(width, tw, overlap)]


def gaussian_importance(tile: int | tuple[int, int], sigma_scale: float = 1 / 8) -> np.ndarray:
    """``(th, tw)`` float32 Gaussian centred on the tile (one side, or ``(height, width)``; sigma ``side x
    sigma_scale`` along each axis), 1 at the centre, floored at :data:`GAUSSIAN_FLOOR`."""
    def axis(side: int) -> np.ndarray:
        r = np.arange(side, dtype=np.float64) - (side - 1) / 2
        return np.exp(-(r ** 2) / (2 * (side * sigma_scale) ** 2))

    th, tw = image_hw(tile)
    importance = np.outer(axis(th), axis(tw))
    importance /= importance.max()
    return np.maximum(importance, GAUSSIAN_FLOOR).astype(np.float32)


def _pad_to(x: torch.Tensor, tile: tuple[int, int]) -> tuple[torch.Tensor, int, int]:
    """``x`` (B, 1, h, w) zero-padded evenly to at least the tile's ``(height, width)``; returns the top and left
    pad."""
    h, w = x.shape[-2:]
    ph, pw = max(0, tile[0] - h), max(0, tile[1] - w)
    if not ph and not pw:
        return x, 0, 0
    top, left = ph // 2, pw // 2
    return F.pad(x, (left, pw - left, top, ph - top)), top, left


@torch.no_grad()
def sliding_window_predict(predict: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                           tile: int | tuple[int, int], overlap: float = 0.5, batch_size: int = 4,
                           sigma_scale: float = 1 / 8) -> torch.Tensor:
    """``(C, H, W)`` float32 probabilities of ``x`` (``(1, channels, H, W)`` input on the model's device), stitched
    from Gaussian-weighted tiles of ``tile`` (one side, or ``(height, width)``); ``predict(tiles)`` gives ``(B, C,
    th, tw)`` probabilities of a batch of tiles (the predictor's TTA mean, so views apply per tile: see the module
    docstring)."""
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"sliding_window_predict takes one image (1, channels, H, W), got {tuple(x.shape)}")
    height, width = x.shape[-2:]
    th, tw = image_hw(tile)
    padded, top, left = _pad_to(x, (th, tw))
    ph, pw = padded.shape[-2:]
    corners = tile_grid(ph, pw, (th, tw), overlap)
    importance = torch.from_numpy(gaussian_importance(tile, sigma_scale)).to(x.device)
    weight = torch.zeros((ph, pw), dtype=torch.float32, device=x.device)
    acc = None
    for start in range(0, len(corners), max(1, batch_size)):
        batch = corners[start:start + batch_size]
        tiles = torch.cat([padded[..., y:y + th, x0:x0 + tw] for y, x0 in batch])
        probs = predict(tiles).float()
        if acc is None:
            acc = torch.zeros((probs.shape[1], ph, pw), dtype=torch.float32, device=x.device)
        for (y, x0), p in zip(batch, probs):
            acc[:, y:y + th, x0:x0 + tw].addcmul_(p, importance)
            weight[y:y + th, x0:x0 + tw] += importance
    acc /= weight
    return acc[:, top:top + height, left:left + width]


class TiledModel(nn.Module):
    """``model`` applied in overlapping tiles of ``tile`` px at the input's own size: ``(B, C, H, W)`` in, the
    Gaussian-weighted mean of the tiles' raw outputs ``(B, K, H, W)`` out, one image at a time. What a run that
    trains on patches validates with (the trainer hands it to ``Task.evaluate``). Prediction stitches the tiles'
    probabilities instead (:class:`engine.predictor.Predictor`); the two differ only where overlapping tiles
    disagree, and this one needs no knowledge of the task's activation."""

    def __init__(self, model: nn.Module, tile: int, overlap: float = 0.5, batch_size: int = 4) -> None:
        super().__init__()
        self.model, self.tile, self.overlap, self.batch_size = model, tile, overlap, batch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([sliding_window_predict(self.model, x[i:i + 1], self.tile, self.overlap, self.batch_size)
                            for i in range(x.shape[0])])
