"""Soft fusion: average (or median) of member probabilities, then per-class thresholds.

``soft_mean``/``soft_median`` are the equal-weight cases of :mod:`ensembles.weighted` and accept any
task's predictions (maps, ``(K, 2)`` coordinates, ages). :func:`fuse_maps` is the map version used by
the segmentation (and heatmap) ensembles: members may come at different sizes and as the uint8
prediction cache (``p * 255``); it works one channel at a time, so besides the members' own maps it
holds one float32 ``(C, h, w)`` result and one resized channel.
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from ensembles.weighted import check_finite, member_names, normalize_weights, weighted_mean, weighted_median


def soft_mean(preds: Sequence[np.ndarray | float], *, members: Sequence[str] | None = None) -> np.ndarray:
    """Equal-weight mean over members (any shape, float64)."""
    return weighted_mean(preds, None, members=members)


def soft_median(preds: Sequence[np.ndarray | float], *, members: Sequence[str] | None = None) -> np.ndarray:
    """Element-wise median over members (any shape, float64); equals ``np.median(axis=0)``."""
    return weighted_median(preds, None, members=members)


def as_probability(channel: np.ndarray) -> np.ndarray:
    """A float32 probability view of one channel: uint8 cache values are ``p * 255``."""
    if channel.dtype == np.uint8:
        return channel.astype(np.float32) * np.float32(1 / 255)
    return channel.astype(np.float32, copy=False)


def fuse_channel(maps: Sequence[np.ndarray], weights: np.ndarray, channel: int, size: tuple[int, int]) -> np.ndarray:
    """Weighted sum (``weights``: ``(M,)``, already normalised) of one channel of every member at ``size``, float32."""
    height, width = size
    acc = np.zeros((height, width), np.float32)
    for wk, m in zip(weights, maps):
        if wk == 0:
            continue
        prob = as_probability(m[channel])
        if prob.shape != (height, width):
            prob = cv2.resize(prob, (width, height), interpolation=cv2.INTER_LINEAR)
        acc += np.float32(wk) * prob
    return np.clip(acc, 0.0, 1.0, out=acc)


def pow2_ratio(small: int, big: int) -> int | None:
    """``big / small`` when it is a power of two (1, 2, 4, ...), else None."""
    if small <= 0 or big % small:
        return None
    r = big // small
    return r if r & (r - 1) == 0 else None


def find_region(maps: Sequence[np.ndarray], channel: int, limits: Sequence[float | None], target: tuple[int, int],
                margin: int = 2, row_max: Sequence[np.ndarray] | None = None) -> tuple[slice, slice]:
    """Where, on the ``target`` grid, one channel can exceed its threshold: a crop that saves the work outside it.

    Member ``m`` (skipped when ``limits[m]`` is None) contributes the box of its pixels above
    ``limits[m]`` (probability units). A weighted mean, and a vote, can only pass a threshold where some
    member does, and bilinear upsampling never leaves the hull of its neighbours, so outside the union
    of these boxes (grown by ``margin`` source pixels) the fused mask is empty. The crop is aligned so
    that each member's part is whole pixels and an upsampling by a power of two gives, inside it,
    exactly the values of upsampling the whole map. Returns ``(rows, cols)`` on ``target``, an empty
    pair of slices when no member passes anywhere, or the whole grid when a member's size is not a
    power-of-two fraction of ``target`` (no exact crop). ``row_max``: each member's ``m.max(axis=2)``,
    computed once per image, so finding a box reads only the rows that pass.
    """
    th, tw = target
    whole = (slice(0, th), slice(0, tw))
    ratios = []
    for k, (m, limit) in enumerate(zip(maps, limits)):
        if limit is None:
            continue
        ry, rx = pow2_ratio(m.shape[1], th), pow2_ratio(m.shape[2], tw)
        if ry is None or rx is None:
            return whole
        ratios.append((k, m, limit, ry, rx))
    boxes = []
    for k, m, limit, ry, rx in ratios:
        scaled = limit * 255 if m.dtype == np.uint8 else limit
        rmax = row_max[k][channel] if row_max is not None else m[channel].max(axis=1)
        rows = np.flatnonzero(rmax > scaled)
        if rows.size == 0:
            continue
        y, y_end = int(rows[0]), int(rows[-1]) + 1
        cols = np.flatnonzero(m[channel, y:y_end].max(axis=0) > scaled)
        x, x_end = int(cols[0]), int(cols[-1]) + 1
        boxes.append((y * ry, y_end * ry, x * rx, x_end * rx))
    if not boxes:
        return slice(0, 0), slice(0, 0)
    step_y = max(r[3] for r in ratios)
    step_x = max(r[4] for r in ratios)
    y0 = max(0, (min(b[0] for b in boxes) - margin * step_y) // step_y * step_y)
    x0 = max(0, (min(b[2] for b in boxes) - margin * step_x) // step_x * step_x)
    y1 = min(th, -(-(max(b[1] for b in boxes) + margin * step_y) // step_y) * step_y)
    x1 = min(tw, -(-(max(b[3] for b in boxes) + margin * step_x) // step_x) * step_x)
    return slice(y0, y1), slice(x0, x1)


def crop_channel(m: np.ndarray, channel: int, region: tuple[slice, slice], target: tuple[int, int],
                 probability: bool = True) -> np.ndarray:
    """One member channel on the ``region`` of the ``target`` grid, float32 (bilinear, half-pixel centres).

    ``probability``: uint8 values become ``p`` (else they stay 0-255). With a whole-grid region this is
    the plain resize; with a region from :func:`find_region`, its exact crop.
    """
    rows, cols = region
    th, tw = target
    h, w = m.shape[1:]
    if (h, w) == (th, tw):
        part = m[channel, rows, cols]
    elif (rows.start, rows.stop, cols.start, cols.stop) == (0, th, 0, tw):
        part = m[channel]
    else:
        ry, rx = th // h, tw // w
        part = m[channel, rows.start // ry:rows.stop // ry, cols.start // rx:cols.stop // rx]
    part = as_probability(part) if probability else part.astype(np.float32)
    size = (rows.stop - rows.start, cols.stop - cols.start)
    if part.shape != size:
        part = cv2.resize(part, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return part


def check_maps(maps: Sequence[np.ndarray], members: Sequence[str] | None = None) -> list[str]:
    """Check member maps are ``(C, h, w)`` with one channel count and finite values; returns member names."""
    if len(maps) == 0:
        raise ValueError("nothing to fuse: no member maps")
    names = member_names(len(maps), members)
    n_channels = maps[0].shape[0] if maps[0].ndim == 3 else None
    for name, m in zip(names, maps):
        if m.ndim != 3:
            raise ValueError(f"{name}: expected a (channels, height, width) map, got shape {m.shape}")
        if m.shape[0] != n_channels:
            raise ValueError(f"{name}: {m.shape[0]} channels, but {names[0]} has {n_channels} (different class lists?)")
        check_finite(m, name)
    return names


def largest_size(maps: Sequence[np.ndarray]) -> tuple[int, int]:
    """``(h, w)`` of the member map with the most pixels (where members of different sizes meet)."""
    return tuple(max((m.shape[-2:] for m in maps), key=lambda s: s[0] * s[1]))


def fuse_maps(maps: Sequence[np.ndarray], weights: Sequence[float] | np.ndarray | None = None,
              size: tuple[int, int] | None = None, *, members: Sequence[str] | None = None,
              classes: Sequence[str] | None = None) -> np.ndarray:
    """Weighted mean of ``(C, h_m, w_m)`` probability maps → float32 ``(C, *size)`` in [0, 1].

    ``maps`` are float probabilities or uint8 ``p * 255``; each member is resized (bilinear, half-pixel
    centres as ``F.interpolate(align_corners=False)``) to ``size`` (default: the largest member's size),
    one channel at a time. ``weights``: None, ``(M,)`` or ``(M, C)``, normalised per channel; members
    with zero weight for a channel are skipped. Different channel counts, NaN or infinite values raise
    ``ValueError`` naming the member.
    """
    names = check_maps(maps, members)
    n_channels = maps[0].shape[0]
    w = normalize_weights(weights, len(maps), n_channels, members=names, channels=classes)
    size = tuple(size) if size is not None else largest_size(maps)
    out = np.empty((n_channels,) + size, np.float32)
    for c in range(n_channels):
        out[c] = fuse_channel(maps, w[:, c if w.shape[1] > 1 else 0], c, size)
    return out
