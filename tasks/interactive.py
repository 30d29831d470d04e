"""Interactive keypoint refinement: hint maps, simulated clicks, pinned points and the MRE-vs-clicks curve.

A user looks at the predicted landmarks, drags the worst one to where it belongs and expects the others
to follow. The model sees each correction as a hint map (a Gaussian at the corrected point in that
landmark's channel, zeros elsewhere; :func:`render_hints`) and predicts all the heatmaps again; the
corrected points stay where the user put them (:func:`pin`).

Training simulates the user (as RITM and Kim et al. do): a few forward passes without gradient, each time
"correcting" the worst point, or one of the ``worst_of`` worst at random (:func:`pick_clicks`), then one
pass with the loss. The evaluation protocol (:func:`click_curve`) clicks the worst point of every image
``n_clicks`` times and reports the MRE after each click for two users: one whose clicks the model revises
(``model``) and one who only moves the clicked points (``manual``).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tasks.heatmaps import render_gaussians
from tasks.keypoints import ClickSettings


def render_hints(xy: torch.Tensor, clicked: torch.Tensor, height: int, width: int, sigma: float) -> torch.Tensor:
    """``(B, K, height, width)`` hint maps: a peak-1 Gaussian at input-frame ``xy`` ``(B, K, 2)`` where
    ``clicked`` ``(B, K)`` is true, zeros elsewhere (pixel centres at integers, like the targets)."""
    maps = render_gaussians(torch.nan_to_num(xy.float(), nan=-1e6), height, width, sigma)
    return maps * clicked.to(maps.dtype)[..., None, None]


def pick_clicks(errors: torch.Tensor, clicked: torch.Tensor, worst_of: int = 1,
                generator: torch.Generator | None = None, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """The point each image's user corrects next: ``(B,)`` indices into K, ``-1`` where none is left.

    Among the points not yet ``clicked`` (and ``allowed``, e.g. visible), one of the ``worst_of``
    largest ``errors`` ``(B, K)`` is chosen uniformly (``worst_of=1``: the worst; ties go to the lower
    index). Deterministic given ``generator``.
    """
    err = errors.detach().float().clone()
    free = ~clicked.bool()
    if allowed is not None:
        free &= allowed.bool()
    err[~free] = -torch.inf
    k = min(worst_of, err.shape[1])
    order = torch.sort(err, dim=1, descending=True, stable=True).indices[:, :k]
    n_free = free.sum(1).clamp(max=k)
    choice = (torch.rand(err.shape[0], generator=generator, device="cpu") * n_free.cpu().clamp(min=1)).long()
    picked = order.gather(1, choice.to(order.device)[:, None])[:, 0]
    return torch.where(n_free > 0, picked, torch.full_like(picked, -1))


def pin(pred: np.ndarray | torch.Tensor, hints: np.ndarray | torch.Tensor, clicked: np.ndarray | torch.Tensor):
    """``pred`` ``(..., K, 2)`` with every clicked point replaced by its hint position (a correction is final)."""
    if isinstance(pred, torch.Tensor):
        return torch.where(clicked.bool()[..., None], hints.to(pred.dtype), pred)
    return np.where(np.asarray(clicked, bool)[..., None], np.asarray(hints, np.float64), pred)


@dataclass
class ClickCurve:
    """Per-image MRE ``(N, n_clicks + 1)`` after 0..n clicks, for model revision and for manual-only revision,
    in original pixels (and mm where every image has a spacing), plus the points clicked ``(N, n_clicks)``."""

    model_px: np.ndarray
    manual_px: np.ndarray
    clicked: np.ndarray
    spacing_mm: np.ndarray | None = None

    @property
    def n_clicks(self) -> int:
        return self.model_px.shape[1] - 1

    def rows(self) -> list[dict]:
        """One row per (mode, clicks): mean MRE px (and mm), the long table of the CSV and the plot."""
        out = []
        for mode, per_image in (("model", self.model_px), ("manual", self.manual_px)):
            for c in range(self.n_clicks + 1):
                row = {"mode": mode, "clicks": c, "mre_px": float(per_image[:, c].mean()), "images": len(per_image)}
                if self.spacing_mm is not None:
                    row["mre_mm"] = float((per_image[:, c] * self.spacing_mm).mean())
                out.append(row)
        return out

    def model_wins(self, clicks: Sequence[int] = (1, 2, 3, 4, 5)) -> bool:
        """Does model revision give a lower MRE than manual revision at each of ``clicks``?"""
        return all(self.model_px[:, c].mean() < self.manual_px[:, c].mean() for c in clicks if c <= self.n_clicks)


Predictor = Callable[[np.ndarray, np.ndarray], np.ndarray]


def click_curve(predict: Predictor, true: np.ndarray, n_clicks: int = 10,
                spacing_mm: Sequence[float | None] | None = None) -> ClickCurve:
    """Run the click protocol on N images at once.

    ``predict(hints, clicked)`` returns original-frame ``(N, K, 2)`` predictions given hint positions
    ``(N, K, 2)`` (original frame) and the ``(N, K)`` clicked mask; it need not pin. Click ``c`` corrects,
    in every image, the worst point not clicked before (ties: lower index) to its true position: the
    ``model`` user then takes the model's revision of all points (clicked ones pinned), the ``manual``
    user moves only that point. Both start from the same prediction with no hint.
    """
    if n_clicks < 0:
        raise ValueError(f"n_clicks must be 0 or more, got {n_clicks}")
    true = np.asarray(true, np.float64)
    n, k = true.shape[:2]
    none = np.zeros((n, k), bool)
    start = np.asarray(predict(true, none), np.float64)
    model, manual = start.copy(), start.copy()
    model_clicked, manual_clicked = none.copy(), none.copy()
    model_px = [np.linalg.norm(model - true, axis=-1).mean(1)]
    manual_px = [model_px[0].copy()]
    picks = []
    for _ in range(min(n_clicks, k)):
        rows = np.arange(n)
        j = pick_clicks(torch.from_numpy(np.linalg.norm(manual - true, axis=-1)), torch.from_numpy(manual_clicked)).numpy()
        manual_clicked[rows, j] = True
        manual[rows, j] = true[rows, j]
        j = pick_clicks(torch.from_numpy(np.linalg.norm(model - true, axis=-1)), torch.from_numpy(model_clicked)).numpy()
        model_clicked[rows, j] = True
        picks.append(j)
        model = pin(np.asarray(predict(true, model_clicked), np.float64), true, model_clicked)
        model_px.append(np.linalg.norm(model - true, axis=-1).mean(1))
        manual_px.append(np.linalg.norm(manual - true, axis=-1).mean(1))
    spacing = None
    if spacing_mm is not None and len(spacing_mm) == n and all(s is not None for s in spacing_mm):
        spacing = np.asarray(spacing_mm, np.float64)
    return ClickCurve(np.stack(model_px, 1), np.stack(manual_px, 1),
                      np.stack(picks, 1) if picks else np.zeros((n, 0), int), spacing)


def simulate_clicks(model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], image: torch.Tensor, xy: torch.Tensor,
                    visible: torch.Tensor, decode: Callable[[torch.Tensor], torch.Tensor], settings: ClickSettings,
                    sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Training-time user: the hint maps to train the loss pass with, for a batch.

    ``xy`` ``(B, K, 2)`` input-frame truth, ``visible`` ``(B, K)``; ``decode(logits)`` → input-frame
    ``(B, K, 2)``. Up to ``initial_hints`` random visible points are hinted first; then a uniform number of
    rounds in ``0..train_clicks``, each a no-gradient forward pass followed by one correction per image
    (one of the ``worst_of`` worst visible points). Returns ``(B, K, H, W)`` hint maps.
    """
    b, k = xy.shape[:2]
    h, w = image.shape[-2:]
    clicked = torch.zeros((b, k), dtype=torch.bool, device=xy.device)
    vis = visible.bool()
    if settings.initial_hints:
        count = torch.randint(0, settings.initial_hints + 1, (b,), generator=generator)
        scores = torch.rand((b, k), generator=generator).to(xy.device).masked_fill(~vis, 2.0)
        rank = scores.argsort(1).argsort(1)
        clicked = rank < count.to(xy.device)[:, None]
        clicked &= vis
    rounds = int(torch.randint(0, settings.train_clicks + 1, (1,), generator=generator))
    rows = torch.arange(b, device=xy.device)
    with torch.no_grad():
        for _ in range(rounds):
            pred = decode(model(image, render_hints(xy, clicked, h, w, sigma)))
            j = pick_clicks((pred - xy).norm(dim=-1), clicked, settings.worst_of, generator, allowed=vis)
            ok = j >= 0
            clicked[rows[ok], j[ok]] = True
    return render_hints(xy, clicked, h, w, sigma)
