"""The logic of the Streamlit viewer (``display/viewer_app.py``, started by ``tools/viewer.py``), without
Streamlit: which runs and images there are, the user's keypoint corrections (add, undo, the simulated
user's next one), the Plotly figures and what a click on a figure does, and the segmentation panels
(class-coloured masks, Dice).

Coordinates are ``(x, y)`` pixels of the original image, pixel centres at integers, as everywhere in the
harness. A correction is final: the model sees every correction so far as a hint and the corrected points
stay where the user put them.
"""
from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import plotly.graph_objects as go
import torch
import yaml

from tasks.formats.handbones import HandboneSample, list_samples, read_masks
from tasks.formats.images import read_grey
from tasks.formats.tables import TEXT_ENCODING
from tasks.interactive import pick_clicks, pin
from tasks.metrics import radial_errors
from display.overlay import overlay

# Trace names of the keypoint figure; a click is interpreted by the name of the trace it hit.
GRID = "click grid"
LANDMARKS = "prediction"
TRUTH = "truth"
CORRECTED = "corrected"
GRID_POINTS = 96        # click targets per side of the image
DISPLAY_SIDE = 768      # longest side of the background image sent to the browser


# ------------------------------------------------------------------------------------------- runs

def runs_problem(root: Path) -> str | None:
    """Why ``root`` cannot be browsed (missing, not a folder, no task folders), or None."""
    if not root.exists():
        return f"{root}: no such folder (start with `streamlit run tools/viewer.py -- --runs DIR` or set VIEWER_RUNS)"
    if not root.is_dir():
        return f"{root}: not a folder"
    if not any((root / task).is_dir() for task in ("keypoints", "segmentation")):
        return f"{root}: holds no keypoints/ or segmentation/ run folders (train a run with train.py first)"
    return None


def keypoint_runs(root: Path) -> list[Path]:
    """Run folders under ``root/keypoints`` that hold a ``best.pt``, by name."""
    folder = root / "keypoints"
    return sorted(p for p in folder.iterdir() if (p / "best.pt").is_file()) if folder.is_dir() else []


def run_task(run_dir: Path) -> str | None:
    """The task a run folder's ``config.yaml`` names (None without one); an unreadable file is an error naming it."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    try:
        raw = yaml.safe_load(path.read_text(encoding=TEXT_ENCODING))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ValueError(f"{path}: not a readable config ({err})") from None
    return raw.get("task") if isinstance(raw, dict) else None


def cached_images(run_dir: Path, split: str) -> list[str]:
    """Image names in a segmentation run's prediction cache ``preds/<split>/<image>.npz``."""
    folder = run_dir / "preds" / split
    if not folder.is_dir():
        return []
    return sorted(p.name[:-4] for p in folder.glob("*.npz") if not p.name.endswith(".tmp.npz"))


def segmentation_runs(root: Path, split: str) -> list[Path]:
    """Run folders under ``root/segmentation`` with a ``config.yaml`` and a prediction cache for ``split``."""
    folder = root / "segmentation"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if (p / "config.yaml").is_file() and cached_images(p, split))


def common_images(run_dirs: Sequence[Path], split: str) -> list[str]:
    """Images present in every run's cache for ``split``, sorted."""
    sets = [set(cached_images(r, split)) for r in run_dirs]
    return sorted(set.intersection(*sets)) if sets else []


# ------------------------------------------------------------------------------------ corrections

class Correction(NamedTuple):
    """The user put landmark ``landmark`` at ``(x, y)`` (original image pixels)."""

    landmark: int
    x: float
    y: float


Corrections = tuple[Correction, ...]


def hint_arrays(corrections: Corrections, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(1, K, 2)`` hint positions and ``(1, K)`` clicked mask for ``InteractiveRun.predict``; a landmark
    corrected twice counts at its latest position."""
    hints = np.zeros((1, k, 2))
    clicked = np.zeros((1, k), bool)
    for c in corrections:
        if not 0 <= c.landmark < k:
            raise ValueError(f"correction of landmark {c.landmark}: the run has {k} landmarks")
        hints[0, c.landmark] = (c.x, c.y)
        clicked[0, c.landmark] = True
    return hints, clicked


def corrected_landmarks(corrections: Corrections) -> list[int]:
    """Landmarks corrected so far, each once, in the order of their first correction."""
    return list(dict.fromkeys(c.landmark for c in corrections))


def manual_only(initial: np.ndarray, corrections: Corrections) -> np.ndarray:
    """The manual user's points: the first prediction with only the corrected points moved."""
    return pin(np.asarray(initial, np.float64)[None], *hint_arrays(corrections, len(initial)))[0]


def undo(corrections: Corrections) -> Corrections:
    """All but the last correction."""
    return corrections[:-1]


def worst_correction(current: np.ndarray, truth: np.ndarray, corrections: Corrections) -> Correction | None:
    """The simulated user's next correction: the worst point of ``current`` (``(K, 2)``) not corrected yet,
    moved to its true position (ties: lower index, as the click protocol); None when none is left."""
    errors = torch.from_numpy(radial_errors(current, truth))[None]
    clicked = torch.from_numpy(hint_arrays(corrections, len(truth))[1])
    j = int(pick_clicks(errors, clicked)[0])
    return None if j < 0 else Correction(j, float(truth[j, 0]), float(truth[j, 1]))


def mre(points: np.ndarray, truth: np.ndarray) -> float:
    """Mean radial error in pixels of ``(K, 2)`` points."""
    return float(radial_errors(points, truth).mean())


# ------------------------------------------------------------------------------ click handling

def handle_selection(event: Mapping | None, traces: Sequence[str], selected: int | None,
                     corrections: Corrections) -> tuple[int | None, Corrections]:
    """What a Plotly selection event (``st.plotly_chart(on_select=...)``'s state) does to the selected
    landmark and the corrections: a click on a landmark selects it; a click anywhere else on the image (a
    point of the click grid) moves the selected landmark there. ``traces`` names the figure's traces in
    order (:func:`trace_names`). Anything else changes nothing."""
    points = ((event or {}).get("selection") or {}).get("points") or []
    if not points:
        return selected, corrections
    point = points[0]
    curve = point.get("curve_number")
    role = traces[curve] if isinstance(curve, int) and 0 <= curve < len(traces) else None
    if role == LANDMARKS:
        return int(point["point_index"]), corrections
    if role == GRID and selected is not None:
        return selected, (*corrections, Correction(selected, float(point["x"]), float(point["y"])))
    return selected, corrections


def trace_names(fig: go.Figure) -> list[str]:
    """The names of a figure's traces, in curve-number order."""
    return [t.name for t in fig.data]


def click_grid(height: int, width: int, avoid: np.ndarray, per_side: int = GRID_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Click targets over the image: ``x``, ``y`` of a regular grid (about ``per_side`` points along the long
    side, at most one a pixel), without the points within 1.5 steps of a landmark in ``avoid`` ``(K, 2)``, so
    a click on a landmark's marker hits the landmark and not the grid."""
    step = max(1.0, max(height, width) / per_side)
    xs, ys = np.meshgrid(np.arange(step / 2 - 0.5, width - 0.5, step), np.arange(step / 2 - 0.5, height - 0.5, step))
    grid = np.stack([xs.ravel(), ys.ravel()], 1)
    if len(avoid):
        near = np.linalg.norm(grid[:, None] - np.asarray(avoid, np.float64)[None], axis=-1).min(1) < 1.5 * step
        grid = grid[~near]
    return grid[:, 0].round(2), grid[:, 1].round(2)


# ------------------------------------------------------------------------------------- figures

@dataclass(frozen=True)
class Background:
    """The radiograph as sent to the browser: an RGB image at most ``DISPLAY_SIDE`` on its long side, and
    the original ``height``/``width`` (the figure's axes are in original pixels)."""

    rgb: np.ndarray
    height: int
    width: int


def background(image_path: str | Path, side: int = DISPLAY_SIDE) -> Background:
    """Read a radiograph and downsize it for display (``display.overlay.overlay``)."""
    grey = read_grey(image_path)
    return Background(overlay(grey, max_side=side), *grey.shape[:2])


def _data_uri(rgb: np.ndarray) -> str:
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("could not encode the display image as PNG")
    return "data:image/png;base64," + base64.b64encode(png.tobytes()).decode("ascii")


def _segments(points: np.ndarray, pairs: Sequence[tuple[int, int]]) -> tuple[list, list]:
    xs, ys = [], []
    for a, b in pairs:
        xs += [points[a, 0], points[b, 0], None]
        ys += [points[a, 1], points[b, 1], None]
    return xs, ys


def keypoint_figure(bg: Background, points: np.ndarray, names: Sequence[str], edges: Sequence[tuple[int, int]], *,
                    truth: np.ndarray | None = None, corrected: Sequence[int] = (), selected: int | None = None,
                    clickable: bool = False, height: int = 560) -> go.Figure:
    """The radiograph with landmarks ``points`` ``(K, 2)`` joined by the skeleton ``edges``, the true points
    and each point's error (when ``truth`` is given), corrected points and the ``selected`` one marked.
    ``clickable`` adds the transparent click grid (trace :data:`GRID`) under the landmarks (:data:`LANDMARKS`)."""
    points = np.asarray(points, np.float64)
    scale_x, scale_y = bg.width / bg.rgb.shape[1], bg.height / bg.rgb.shape[0]
    fig = go.Figure(go.Image(source=_data_uri(bg.rgb), x0=scale_x / 2 - 0.5, y0=scale_y / 2 - 0.5, dx=scale_x,
                             dy=scale_y, hoverinfo="skip", name="image"))
    ex, ey = _segments(points, edges)
    fig.add_trace(go.Scatter(x=ex, y=ey, mode="lines", line=dict(color="rgba(255,210,60,0.8)", width=1.5),
                             hoverinfo="skip", name="skeleton", showlegend=False))
    if truth is not None:
        tx, ty = _segments(np.concatenate([points, truth]), [(i, len(points) + i) for i in range(len(points))])
        fig.add_trace(go.Scatter(x=tx, y=ty, mode="lines", line=dict(color="rgba(0,230,255,0.7)", width=1, dash="dot"),
                                 hoverinfo="skip", name="error", showlegend=False))
        fig.add_trace(go.Scatter(x=truth[:, 0], y=truth[:, 1], mode="markers", name=TRUTH, hoverinfo="skip",
                                 marker=dict(symbol="circle-open", size=9, color="rgb(0,230,255)", line=dict(width=2))))
    if clickable:
        gx, gy = click_grid(bg.height, bg.width, points)
        fig.add_trace(go.Scatter(x=gx, y=gy, mode="markers", name=GRID, showlegend=False,
                                 marker=dict(size=4, color="rgba(0,0,0,0)"),
                                 hovertemplate="place here (%{x:.0f}, %{y:.0f})<extra></extra>"))
    done = sorted(set(corrected))
    if done:
        fig.add_trace(go.Scatter(x=points[done, 0], y=points[done, 1], mode="markers", name=CORRECTED, hoverinfo="skip",
                                 marker=dict(symbol="diamond", size=15, color="rgb(60,220,90)",
                                             line=dict(color="black", width=1))))
    if selected is not None:
        fig.add_trace(go.Scatter(x=points[[selected], 0], y=points[[selected], 1], mode="markers+text",
                                 text=[names[selected]], textposition="top right", hoverinfo="skip",
                                 textfont=dict(color="rgb(255,235,80)", size=13), name="selected", showlegend=False,
                                 marker=dict(symbol="circle-open", size=20, color="rgb(255,235,80)", line=dict(width=3))))
    fig.add_trace(go.Scatter(x=points[:, 0], y=points[:, 1], mode="markers", name=LANDMARKS, text=list(names),
                             marker=dict(size=10, color="rgb(255,60,60)", line=dict(color="black", width=1)),
                             hovertemplate="%{text} (%{x:.1f}, %{y:.1f})<extra></extra>"))
    fig.update_xaxes(visible=False, range=[-0.5, bg.width - 0.5])
    fig.update_yaxes(visible=False, range=[bg.height - 0.5, -0.5], scaleanchor="x")
    fig.update_layout(height=height, margin=dict(l=0, r=0, t=28, b=0), hovermode="closest", dragmode=False,
                      clickmode="event+select", plot_bgcolor="white",
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="left", x=0))
    return fig


# ---------------------------------------------------------------------------------- segmentation

def split_images(cfg, split: str) -> dict[str, HandboneSample]:
    """A segmentation run's images of ``split`` by name, with their label files where known: the validation
    fold's from ``data.root``; the test images' from ``test_gt/outputs_json`` beside ``data.test_root`` when it
    exists (the phantom's and ``tools/score.py``'s layout)."""
    from tasks.segmentation.samples import split_samples

    if split == "test" and cfg.data.test_root:
        gt = Path(cfg.data.test_root).parent / "test_gt" / "outputs_json"
        if gt.is_dir():
            return {s.name: s for s in list_samples(cfg.data.test_root, labels=gt)}
    return {s.name: s for s in split_samples(cfg.data, split)}


@dataclass(frozen=True)
class SegmentationPanel:
    """One run's masks of one image drawn over it, and the run's mean Dice there (None without labels)."""

    rgb: np.ndarray
    dice: float | None


def segmentation_panel(run_dir: Path, split: str, sample: HandboneSample, side: int = 640) -> SegmentationPanel:
    """The cached probabilities of ``sample`` thresholded with the run's ``inference.threshold`` at the
    original size (as ``inference.py`` does), drawn with ``display.overlay.overlay``; Dice against its label."""
    from engine.config import load_config
    from tasks.segmentation.cache import CacheSpec, cache_path, load_cached
    from tasks.metrics import dice_per_class
    from tasks.segmentation.masks import probs_to_masks, resolve_thresholds

    cfg = load_config(run_dir / "config.yaml")
    entry = load_cached(cache_path(run_dir, split, sample.name), run_dir.name, CacheSpec.of(cfg))
    probs, size = entry.probs, entry.size
    masks = probs_to_masks(np.asarray(probs), size, resolve_thresholds(cfg.inference.threshold))
    image = read_grey(sample.image_path)
    if image.shape != size:
        raise ValueError(f"{cache_path(run_dir, split, sample.name)}: cached for a {size[1]}x{size[0]} image, "
                         f"{sample.image_path} is {image.shape[1]}x{image.shape[0]}")
    dice = None
    if sample.label_path is not None:
        dice = float(dice_per_class(masks, read_masks(sample.label_path, *size)).mean())
    return SegmentationPanel(overlay(image, masks, max_side=side), dice)
