"""Weighted fusion of any task's predictions: probability maps, heatmaps, coordinates, scalars.

Every function takes ``preds``, a sequence of ``M`` arrays of one shape (one per member): segmentation
``(C, H, W)`` probabilities, keypoint heatmaps ``(K, h, w)`` or coordinates ``(K, 2)`` (or a batch
``(N, K, 2)``), bone-age scalars ``()`` or a batch ``(N,)``. Weights are ``None`` (equal), ``(M,)``
(one per member) or ``(M, C)`` (one per member per channel, where the channel is axis
``channel_axis`` of each prediction, 0 by default: the class, the keypoint; pass 1 for ``(N, K, 2)``).
They are checked (count, sign, finiteness, not all zero) and normalised so that every channel's
weights sum to 1 — a weight vector ``[2, 1, 1]`` means ``[0.5, 0.25, 0.25]``.

Per-class source selection ("take the wrist classes from the ROI model") is ``(M, C)`` weights that
are one-hot in the selected classes.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tasks.formats.tables import check_finite

# A fused value equal to the threshold (within TIE_EPS) is background: ``fused > t`` exactly as the
# single-model ``p > t``, robust to float rounding of weights such as 1/3 + 1/3 == 2/3.
TIE_EPS = 1e-9


def member_names(n_members: int, members: Sequence[str] | None) -> list[str]:
    """Names for messages: the given ones, else ``member 0``, ``member 1``, ..."""
    if members is not None:
        if len(members) != n_members:
            raise ValueError(f"{len(members)} member names for {n_members} members")
        return [str(m) for m in members]
    return [f"member {i}" for i in range(n_members)]


def normalize_weights(weights: Sequence[float] | np.ndarray | None, n_members: int, n_channels: int | None = None,
                      *, members: Sequence[str] | None = None, channels: Sequence[str] | None = None,
                      where: str = "weights") -> np.ndarray:
    """Check ``weights`` and return them as ``(M, C)`` float64 (``(M, 1)`` when global), columns summing to 1.

    ``weights`` may be None (equal), ``(M,)``, ``(M, 1)`` or ``(M, C)`` with ``C == n_channels``.
    Raises ``ValueError`` naming ``where``, the member and the channel for: a count that does not
    match the members, a negative / NaN / infinite weight, or a channel whose weights are all zero.
    """
    names = member_names(n_members, members)
    if n_members < 1:
        raise ValueError(f"{where}: an ensemble needs at least one member")
    if weights is None:
        return np.full((n_members, 1), 1.0 / n_members)
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim == 1:
        w = w[:, None]
    if w.ndim != 2 or w.shape[0] != n_members:
        raise ValueError(f"{where}: got weights of shape {np.shape(weights)} for {n_members} members "
                         f"({', '.join(names)}); give one weight per member, or a (members, channels) table")
    if w.shape[1] != 1 and n_channels is not None and w.shape[1] != n_channels:
        raise ValueError(f"{where}: per-channel weights have {w.shape[1]} columns, the predictions have "
                         f"{n_channels} channels")
    channel_names = list(channels) if channels is not None and len(channels) == w.shape[1] else \
        [f"channel {c}" for c in range(w.shape[1])]

    def who(m: int, c: int) -> str:
        return names[m] if w.shape[1] == 1 else f"{names[m]} ({channel_names[c]})"

    bad = ~np.isfinite(w)
    if bad.any():
        m, c = np.argwhere(bad)[0]
        raise ValueError(f"{where}: weight of {who(m, c)} is {w[m, c]}")
    if (w < 0).any():
        m, c = np.argwhere(w < 0)[0]
        raise ValueError(f"{where}: weight of {who(m, c)} is negative ({w[m, c]:g})")
    totals = w.sum(axis=0)
    if (totals <= 0).any():
        c = int(np.flatnonzero(totals <= 0)[0])
        what = "all weights are zero" if w.shape[1] == 1 else f"all weights of {channel_names[c]} are zero"
        raise ValueError(f"{where}: {what}; at least one member needs a positive weight")
    return w / totals


def _stack(preds: Sequence[np.ndarray | float], members: Sequence[str] | None) -> np.ndarray:
    if len(preds) == 0:
        raise ValueError("nothing to fuse: no member predictions")
    names = member_names(len(preds), members)
    arrays = [np.asarray(p) for p in preds]
    for name, a in zip(names, arrays):
        if a.shape != arrays[0].shape:
            raise ValueError(f"{name}: prediction of shape {a.shape} differs from {names[0]}'s {arrays[0].shape}")
        check_finite(a, name)
    return np.stack(arrays).astype(np.float64, copy=False)


def _weights_for(stack: np.ndarray, weights, members, channel_axis: int) -> np.ndarray:
    """Normalised weights shaped to broadcast against ``stack`` ``(M, *pred_shape)``."""
    ndim = stack.ndim - 1
    if weights is not None and np.ndim(weights) == 2 and np.shape(weights)[1] > 1:
        if not -ndim <= channel_axis < ndim:
            raise ValueError(f"per-channel weights need predictions with a channel axis {channel_axis}; "
                             f"got shape {stack.shape[1:]}")
        axis = channel_axis % ndim
        w = normalize_weights(weights, len(stack), stack.shape[1 + axis], members=members)
        shape = [len(stack)] + [1] * ndim
        shape[1 + axis] = w.shape[1]
        return w.reshape(shape)
    w = normalize_weights(weights, len(stack), members=members)
    return w.reshape((len(stack),) + (1,) * ndim)


def weighted_mean(preds: Sequence[np.ndarray | float], weights: Sequence[float] | np.ndarray | None = None, *,
                  members: Sequence[str] | None = None, channel_axis: int = 0) -> np.ndarray:
    """Weighted mean over members (weights normalised per channel); float64 of the prediction's shape.

    ``channel_axis``: the axis of each prediction that ``(M, C)`` weights index (0: ``(C, ...)`` maps,
    ``(K, 2)`` coordinates; 1: a batch ``(N, K, 2)`` of coordinates).
    """
    stack = _stack(preds, members)
    return (stack * _weights_for(stack, weights, members, channel_axis)).sum(axis=0)


def weighted_median(preds: Sequence[np.ndarray | float], weights: Sequence[float] | np.ndarray | None = None, *,
                    members: Sequence[str] | None = None, channel_axis: int = 0) -> np.ndarray:
    """Element-wise weighted median over members.

    The value where the cumulative (normalised) weight of the sorted member values first reaches 1/2;
    when it reaches exactly 1/2 the result is the mean of that value and the next one with positive
    weight, so equal weights reproduce ``np.median`` (even counts average the two middle values).
    Robust to one member's outlier coordinate or age, unlike the mean.
    """
    stack = _stack(preds, members)
    wb = np.broadcast_to(_weights_for(stack, weights, members, channel_axis), stack.shape)
    order = np.argsort(stack, axis=0, kind="stable")
    values = np.take_along_axis(stack, order, axis=0)
    cum = np.cumsum(np.take_along_axis(wb, order, axis=0), axis=0)
    lo = np.argmax(cum >= 0.5 - TIE_EPS, axis=0)[None]
    hi = np.argmax(cum > 0.5 + TIE_EPS, axis=0)[None]
    return 0.5 * (np.take_along_axis(values, lo, axis=0)[0] + np.take_along_axis(values, hi, axis=0)[0])


def fuse(preds: Sequence[np.ndarray | float], method: str = "mean", weights: Sequence[float] | np.ndarray | None = None,
         *, members: Sequence[str] | None = None, channel_axis: int = 0) -> np.ndarray:
    """``method`` ``"mean"`` (soft / weighted average) or ``"median"`` of member predictions."""
    if method == "mean":
        return weighted_mean(preds, weights, members=members, channel_axis=channel_axis)
    if method == "median":
        return weighted_median(preds, weights, members=members, channel_axis=channel_axis)
    raise ValueError(f"unknown fusion method {method!r}; valid: mean, median")


def threshold(fused: np.ndarray, thresholds: float | np.ndarray) -> np.ndarray:
    """``fused > t`` as uint8 (ties within ``TIE_EPS`` are background); ``thresholds`` scalar or per channel."""
    t = np.asarray(thresholds, np.float64)
    if t.ndim == 1:
        t = t.reshape((-1,) + (1,) * (fused.ndim - 1))
    return (fused > t + TIE_EPS).astype(np.uint8)
