"""Gaussian heatmap targets, heatmap losses and sub-pixel decoding, all vectorised over batch and landmarks.

Frames. The network input is ``S x S``; its output heatmaps are ``h x w`` at stride ``S / h``. With pixel
centres at integers in both, input ``x`` and heatmap ``u`` relate by ``u = (x + 0.5) / stride - 0.5``
(heatmap pixel ``j`` covers input pixels ``[j*stride, (j+1)*stride)``), so a model with any output
stride gets targets at its own resolution and decodes back to the input frame exactly.

Activations. A heatmap is the activated output, peak near 1: ``sigmoid`` for the per-pixel losses (MSE
as SHS_NET, BCE, adaptive wing) and ``softmax`` (spatial softmax divided by its maximum, i.e.
``exp(z - max z)``) for the KL loss on normalised heatmaps. TTA and ensembles average heatmaps in that
space; decoding takes their log, where a Gaussian is a quadratic.
"""
from __future__ import annotations

import math
from typing import Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tasks.keypoints import DecodeMethod

Activation = Literal["sigmoid", "softmax"]


def input_to_heatmap(xy: torch.Tensor, stride_x: float, stride_y: float) -> torch.Tensor:
    """Input-frame ``(..., 2)`` coordinates → heatmap-frame coordinates."""
    out = xy.clone()
    out[..., 0] = (xy[..., 0] + 0.5) / stride_x - 0.5
    out[..., 1] = (xy[..., 1] + 0.5) / stride_y - 0.5
    return out


def heatmap_to_input(uv: torch.Tensor, stride_x: float, stride_y: float) -> torch.Tensor:
    """Heatmap-frame ``(..., 2)`` coordinates → input-frame coordinates (inverse of :func:`input_to_heatmap`)."""
    out = uv.clone()
    out[..., 0] = (uv[..., 0] + 0.5) * stride_x - 0.5
    out[..., 1] = (uv[..., 1] + 0.5) * stride_y - 0.5
    return out


def render_gaussians(uv: torch.Tensor, height: int, width: int, sigma: float) -> torch.Tensor:
    """``(B, K, height, width)`` Gaussians of peak 1 centred at heatmap-frame ``uv`` ``(B, K, 2)``.

    Separable (an outer product of two 1-D Gaussians), so the cost is one multiply per output pixel.
    Points off the heatmap still render the part of their Gaussian that falls on it; NaN points render 0.
    """
    ys = torch.arange(height, device=uv.device, dtype=torch.float32)
    xs = torch.arange(width, device=uv.device, dtype=torch.float32)
    u = torch.nan_to_num(uv[..., 0].float(), nan=-1e6)[..., None]
    v = torch.nan_to_num(uv[..., 1].float(), nan=-1e6)[..., None]
    gx = torch.exp(-((xs - u) ** 2) / (2 * sigma**2))
    gy = torch.exp(-((ys - v) ** 2) / (2 * sigma**2))
    return gy[..., :, None] * gx[..., None, :]


def activate(logits: torch.Tensor, activation: Activation) -> torch.Tensor:
    """Heatmaps (peak near 1) from ``(B, K, h, w)`` logits."""
    if activation == "sigmoid":
        return torch.sigmoid(logits)
    if activation == "softmax":
        flat = logits.flatten(-2)
        return torch.exp(flat - flat.amax(-1, keepdim=True)).view_as(logits)
    raise ValueError(f"unknown heatmap activation {activation!r}; valid: sigmoid, softmax")


def heatmap_sigma(sigma: float, stride: float) -> float:
    """The Gaussian of a target in heatmap pixels: ``sigma`` (input pixels) over the output stride, at least
    half a pixel (a narrower Gaussian is one bright pixel, and DARK's quadratic fit has nothing to fit)."""
    return max(sigma / stride, 0.5)


def gaussian_blur(hm: torch.Tensor, sigma: float) -> torch.Tensor:
    """Each ``(h, w)`` map of ``(B, K, h, w)`` smoothed by a normalised Gaussian of ``sigma`` pixels, radius
    ``ceil(3 sigma)``, edges replicated. On the CPU ``cv2.GaussianBlur`` one map at a time (18x faster than
    torch's convolution there: 90 vs 1640 ms for 296 maps of 128², one thread); on a GPU the same kernel as
    one separable convolution of all maps. Both give the same maps (tested)."""
    radius = max(1, int(math.ceil(3 * sigma)))
    if hm.device.type == "cpu":
        return _blur_cv2(hm, sigma, radius)
    return _blur_conv(hm, sigma, radius)


def _blur_cv2(hm: torch.Tensor, sigma: float, radius: int) -> torch.Tensor:
    maps = hm.detach().float().reshape(-1, *hm.shape[-2:]).numpy()
    out = np.empty_like(maps)
    size = (2 * radius + 1, 2 * radius + 1)
    for i, m in enumerate(maps):
        out[i] = cv2.GaussianBlur(m, size, sigma, sigmaY=sigma, borderType=cv2.BORDER_REPLICATE)
    return torch.from_numpy(out).view(hm.shape)


def _blur_conv(hm: torch.Tensor, sigma: float, radius: int) -> torch.Tensor:
    t = torch.arange(-radius, radius + 1, device=hm.device, dtype=hm.dtype)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    b, c, h, w = hm.shape
    x = hm.reshape(b * c, 1, h, w)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))
    return x.view(b, c, h, w)


def _neighbours(values: torch.Tensor, py: torch.Tensor, px: torch.Tensor, radius: int) -> torch.Tensor:
    """``(B, K, 2r+1, 2r+1)`` windows of ``values`` ``(B, K, h, w)`` centred at ``(py, px)`` (edge-replicated)."""
    b, k, h, w = values.shape
    offs = torch.arange(-radius, radius + 1, device=values.device)
    rows = (py[..., None] + offs).clamp(0, h - 1)  # (B, K, n)
    cols = (px[..., None] + offs).clamp(0, w - 1)
    idx = rows[..., :, None] * w + cols[..., None, :]  # (B, K, n, n)
    return values.flatten(-2).gather(-1, idx.flatten(-2)).view(b, k, 2 * radius + 1, 2 * radius + 1)


def _peaks(hm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Peak value and flat index of every ``(h, w)`` map. On the CPU numpy's SIMD argmax over the
    whole ``(B, K, h*w)`` array is several times faster than ``torch.max(dim)``; on a GPU torch's."""
    flat = hm.detach().flatten(-2)
    if flat.device.type == "cpu":
        idx = torch.from_numpy(flat.numpy().argmax(-1))
        return flat.gather(-1, idx[..., None])[..., 0], idx
    return flat.max(-1)


def decode_heatmaps(heatmaps: torch.Tensor, method: DecodeMethod = "dark", blur_sigma: float | None = None,
                    window: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Sub-pixel peak of every heatmap: ``(B, K, h, w)`` → coordinates ``(B, K, 2)`` (heatmap frame) and
    confidences ``(B, K)`` (the peak value). One argmax over all maps, then one gather: no loop.

    ``dark`` (Zhang et al., CVPR 2020): a Newton step on the log-heatmap at the argmax,
    ``offset = -H^-1 grad`` from central differences (exact for a Gaussian, whose log is a quadratic).
    ``blur_sigma`` (heatmap pixels) first smooths the heatmap, DARK's distribution modulation: pixel noise
    makes the finite differences of the log wander, and a blur of about the target's own sigma cuts the
    sub-pixel error about fivefold (``benchmarks/keypoint_decode.py``); a blurred Gaussian is still a
    Gaussian, so a clean peak decodes as exactly as without it. The argmax and the Newton step use the
    smoothed map; the confidence stays the unsmoothed heatmap's value at the peak. The step is dropped at
    the heatmap border or where the log is not concave, and capped at one pixel.
    ``softargmax``: centroid of the ``(2*window+1)^2`` neighbourhood of the argmax (weights: values above
    the window minimum). ``argmax``: the integer peak.
    """
    if heatmaps.ndim != 4:
        raise ValueError(f"heatmaps must be (B, K, h, w), got shape {tuple(heatmaps.shape)}")
    if method not in ("dark", "softargmax", "argmax"):
        raise ValueError(f"unknown decode method {method!r}; valid: dark, softargmax, argmax")
    hm = heatmaps if heatmaps.dtype == torch.float32 else heatmaps.float()
    raw = hm
    if method == "dark" and blur_sigma:
        hm = gaussian_blur(hm, blur_sigma)
    h, w = hm.shape[-2:]
    conf, flat_idx = _peaks(hm)
    if hm is not raw:
        conf = raw.flatten(-2).gather(-1, flat_idx[..., None].to(raw.device))[..., 0]
    py, px = flat_idx // w, flat_idx % w
    coords = torch.stack([px, py], -1).float()
    if method == "argmax":
        return coords, conf
    if method == "softargmax":
        win = _neighbours(hm, py, px, window)
        weights = (win - win.flatten(-2).amin(-1)[..., None, None]).clamp_min(0)
        offs = torch.arange(-window, window + 1, device=hm.device, dtype=hm.dtype)
        total = weights.sum((-1, -2)).clamp_min(1e-12)
        ox = (weights * offs[None, None, None, :]).sum((-1, -2)) / total
        oy = (weights * offs[None, None, :, None]).sum((-1, -2)) / total
        return coords + torch.stack([ox, oy], -1), conf
    n = torch.log(_neighbours(hm, py, px, 1).clamp_min(1e-10))   # the log of 9 pixels per map, not of the maps
    dx = 0.5 * (n[..., 1, 2] - n[..., 1, 0])
    dy = 0.5 * (n[..., 2, 1] - n[..., 0, 1])
    dxx = n[..., 1, 2] - 2 * n[..., 1, 1] + n[..., 1, 0]
    dyy = n[..., 2, 1] - 2 * n[..., 1, 1] + n[..., 0, 1]
    dxy = 0.25 * (n[..., 2, 2] - n[..., 2, 0] - n[..., 0, 2] + n[..., 0, 0])
    det = dxx * dyy - dxy**2
    ok = (det > 1e-12) & (dxx < 0) & (px > 0) & (px < w - 1) & (py > 0) & (py < h - 1)
    safe = torch.where(ok, det, torch.ones_like(det))
    ox = torch.where(ok, -(dyy * dx - dxy * dy) / safe, torch.zeros_like(det)).clamp(-1, 1)
    oy = torch.where(ok, -(dxx * dy - dxy * dx) / safe, torch.zeros_like(det)).clamp(-1, 1)
    return coords + torch.stack([ox, oy], -1), conf


def decode_one_dark(heatmap: np.ndarray) -> tuple[float, float, float]:
    """DARK on ONE ``(h, w)`` heatmap in numpy: the per-landmark baseline of ``benchmarks/keypoint_decode.py``
    (same maths as :func:`decode_heatmaps` without blur), returns ``(x, y, confidence)``."""
    h, w = heatmap.shape
    idx = int(np.argmax(heatmap))
    y, x = divmod(idx, w)
    conf = float(heatmap[y, x])
    if not (0 < x < w - 1 and 0 < y < h - 1):
        return float(x), float(y), conf
    p = np.log(np.maximum(heatmap[y - 1:y + 2, x - 1:x + 2].astype(np.float64), 1e-10))
    dx, dy = 0.5 * (p[1, 2] - p[1, 0]), 0.5 * (p[2, 1] - p[0, 1])
    dxx, dyy = p[1, 2] - 2 * p[1, 1] + p[1, 0], p[2, 1] - 2 * p[1, 1] + p[0, 1]
    dxy = 0.25 * (p[2, 2] - p[2, 0] - p[0, 2] + p[0, 0])
    det = dxx * dyy - dxy**2
    if det <= 1e-12 or dxx >= 0:
        return float(x), float(y), conf
    ox = float(np.clip(-(dyy * dx - dxy * dy) / det, -1, 1))
    oy = float(np.clip(-(dxx * dy - dxy * dx) / det, -1, 1))
    return x + ox, y + oy, conf


class HeatmapLoss(nn.Module):
    """Weighted sum of heatmap losses over the visible landmarks (``loss.weights`` keys).

    ``mse``: mean squared error of the sigmoid heatmap (SHS_NET). ``bce``: binary cross-entropy of the
    sigmoid logits against the Gaussian. ``awing``: adaptive wing loss (Wang et al., ICCV 2019) with its
    weight map (x10 on the dilated foreground), which keeps the background from drowning the peaks.
    ``kl``: KL divergence from the normalised target to the spatial softmax (cannot be mixed with the
    sigmoid losses: it needs the ``softmax`` activation). Landmarks marked invisible (off the augmented
    image) are masked out of every term.
    """

    SIGMOID = ("mse", "bce", "awing")

    def __init__(self, weights: dict[str, float], alpha: float = 2.1, omega: float = 14.0, epsilon: float = 1.0,
                 theta: float = 0.5) -> None:
        super().__init__()
        valid = self.SIGMOID + ("kl",)
        unknown = set(weights) - set(valid)
        if unknown:
            raise ValueError(f"loss.weights: unknown keypoint loss {sorted(unknown)}; valid: {', '.join(valid)} "
                             "(e.g. loss: {weights: {awing: 1.0}})")
        self.weights = {k: float(v) for k, v in weights.items() if v > 0}
        if not self.weights:
            raise ValueError("loss.weights: at least one keypoint loss needs a positive weight")
        if "kl" in self.weights and len(self.weights) > 1:
            raise ValueError("loss.weights: 'kl' (spatial softmax) cannot be mixed with sigmoid losses "
                             f"{sorted(set(self.weights) - {'kl'})}")
        self.activation: Activation = "softmax" if "kl" in self.weights else "sigmoid"
        self.alpha, self.omega, self.epsilon, self.theta = alpha, omega, epsilon, theta

    def _awing(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pred = torch.sigmoid(logits)
        diff = (pred - target).abs()
        power = self.alpha - target
        ratio = self.theta / self.epsilon
        a = self.omega / (1 + ratio**power) * power * ratio ** (power - 1) / self.epsilon
        c = self.theta * a - self.omega * torch.log1p(ratio**power)
        loss = torch.where(diff < self.theta, self.omega * torch.log1p((diff / self.epsilon) ** power), a * diff - c)
        fg = F.max_pool2d((target > 0.2).float(), 3, stride=1, padding=1)
        return loss * (1 + 10 * fg)

    def per_map(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``(B, K)`` loss of each heatmap."""
        total = torch.zeros(logits.shape[:2], device=logits.device)
        for key, weight in self.weights.items():
            if key == "mse":
                term = ((torch.sigmoid(logits) - target) ** 2).mean((-1, -2))
            elif key == "bce":
                term = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean((-1, -2))
            elif key == "awing":
                term = self._awing(logits, target).mean((-1, -2))
            else:
                t = target.flatten(-2)
                t = t / t.sum(-1, keepdim=True).clamp_min(1e-12)
                logq = F.log_softmax(logits.flatten(-2), -1)
                term = (t * (torch.log(t.clamp_min(1e-12)) - logq)).sum(-1)
            total = total + weight * term
        return total

    def forward(self, logits: torch.Tensor, xy: torch.Tensor, visible: torch.Tensor, input_size: tuple[int, int],
                sigma: float) -> torch.Tensor:
        """Loss of ``(B, K, h, w)`` logits for input-frame keypoints ``xy`` ``(B, K, 2)`` on an input of
        ``input_size`` = ``(H, W)``; ``sigma`` in input pixels (divided by the output stride)."""
        logits = logits.float()
        h, w = logits.shape[-2:]
        stride_x, stride_y = input_size[1] / w, input_size[0] / h
        uv = input_to_heatmap(xy.float(), stride_x, stride_y)
        target = render_gaussians(uv, h, w, heatmap_sigma(sigma, stride_x))
        per_map = self.per_map(logits, target)
        vis = visible.float()
        return (per_map * vis).sum() / vis.sum().clamp_min(1.0)
