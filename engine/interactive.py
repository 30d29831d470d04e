"""Interactive keypoint refinement with a trained run: revise predictions from user corrections, and
measure the MRE-vs-clicks curve of a run (model revision against manual-only revision).

:class:`InteractiveRun` is what ``tools/interactive_eval.py`` and the viewer (``display/viewer_app.py``) share: a loaded
keypoint run, the images of one split, and :meth:`InteractiveRun.predict`, which takes corrections in the
ORIGINAL image frame, maps them into the letterboxed input, renders the hint maps, runs the model (with
TTA when asked; hint channels flipped and left/right-swapped with the image) and returns original-frame
coordinates with the corrected points pinned. A run without hint input (a plain keypoint model) is
evaluated too: its "model revision" can only pin the clicked points.

Results of :func:`evaluate_run` go to ``<run>/interactive/``: ``<split>_clicks.csv`` (mode, clicks,
mre_px[, mre_mm], images) and ``<split>_clicks_per_image.csv``; the curve is also merged into
``summary.json`` (key ``interactive``), where the leaderboard report (and its plot) finds it.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from engine.predictor import LoadedModel, Predictor, check_split, load_model
from core.atomic import atomic_write
from tasks.formats.run_lock import claim_bookkeeping
from tasks.interactive import ClickCurve, click_curve, pin, render_hints
from tasks.keypoints.task import KeypointDataset, KeypointTask
from tasks.tta import View, views_from_config

HINTLESS_NOTE = "the model takes no hints: model revision only pins the clicked points"


@dataclass
class InteractiveRun:
    """A loaded keypoint run and the images of one split, ready to revise predictions from clicks."""

    member: LoadedModel
    task: KeypointTask
    dataset: KeypointDataset
    device: torch.device
    views: Sequence[View] = (View(),)

    @property
    def takes_hints(self) -> bool:
        return bool(getattr(self.member.model, "num_hints", 0))

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.dataset.samples]

    @property
    def hint_sigma(self) -> float:
        d = self.member.cfg.data
        return d.clicks.hint_sigma or d.sigma

    def true_coords(self) -> np.ndarray:
        """``(N, K, 2)`` labelled points of the split (an error when some image has none)."""
        missing = [s.name for s in self.dataset.samples if s.coords is None]
        if missing:
            raise ValueError(f"{len(missing)} images of this split have no labels (e.g. {missing[0]}): "
                             "the click protocol needs the true points")
        return np.stack([s.coords for s in self.dataset.samples])

    @torch.no_grad()
    def predict(self, hints: np.ndarray | None = None, clicked: np.ndarray | None = None,
                indices: Sequence[int] | None = None) -> np.ndarray:
        """Original-frame ``(n, K, 2)`` predictions of images ``indices`` (all when None) given corrections
        ``hints`` ``(n, K, 2)`` (original frame) where ``clicked`` ``(n, K)``; clicked points are pinned."""
        indices = list(range(len(self.dataset))) if indices is None else list(indices)
        k = len(self.task.lmset)
        if hints is None or clicked is None:
            hints, clicked = np.zeros((len(indices), k, 2)), np.zeros((len(indices), k), bool)
        hints, clicked = np.asarray(hints, np.float64), np.asarray(clicked, bool)
        if hints.shape != (len(indices), k, 2) or clicked.shape != (len(indices), k):
            raise ValueError(f"hints {hints.shape} / clicked {clicked.shape} do not match {len(indices)} images x {k} points")
        predictor = Predictor(self.member, self.views, self.device)
        size = self.dataset.size
        out = []
        batch_size = self.member.cfg.inference.batch_size
        for start in range(0, len(indices), batch_size):
            idx = indices[start:start + batch_size]
            batch = {"image": torch.stack([self.dataset[i]["image"] for i in idx]).to(self.device)}
            boxes = [self.dataset.letterbox(i) for i in idx]
            if self.takes_hints:
                xy = np.stack([lb.forward(h) for lb, h in zip(boxes, hints[start:start + len(idx)])])
                batch["hints"] = render_hints(torch.from_numpy(xy).to(self.device),
                                              torch.from_numpy(clicked[start:start + len(idx)]).to(self.device),
                                              *self.dataset.hw, self.hint_sigma)
            coords, _ = self.task.decode(predictor.forward(batch), size, boxes)
            out.append(coords)
        return pin(np.concatenate(out), hints, clicked)

    def click_curve(self, n_clicks: int) -> ClickCurve:
        """The click protocol (:func:`tasks.interactive.click_curve`) on every image of the split."""
        spacing = [s.spacing_mm for s in self.dataset.samples]
        return click_curve(lambda hints, clicked: self.predict(hints, clicked), self.true_coords(), n_clicks, spacing)


def open_run(ckpt: str | os.PathLike, split: str = "val", *, tta: bool = False, device: str = "auto") -> InteractiveRun:
    """Load a keypoint run's checkpoint with the images of ``split`` (``val``: its validation fold; ``test``)."""
    from engine.device import pick_device

    dev = pick_device(device)
    member = load_model(ckpt, dev)
    if not member.cfg.spec.clicks:
        raise ValueError(f"{ckpt}: a {member.cfg.task} run; interactive refinement needs a task of points "
                         "(keypoints)")
    check_split(member.cfg, split, ckpt)
    task = member.task
    views = views_from_config(member.cfg.inference.tta, enabled=tta)
    return InteractiveRun(member, task, task.dataset(task.samples(split)), dev, views)


def curve_table(curve: ClickCurve) -> pd.DataFrame:
    """The long table of a curve: one row per (mode, clicks)."""
    return pd.DataFrame(curve.rows())


def per_image_table(curve: ClickCurve, names: Sequence[str]) -> pd.DataFrame:
    """One row per (image, mode, clicks) with that image's MRE in pixels."""
    rows = [{"image_name": n, "mode": mode, "clicks": c, "mre_px": float(v[i, c])}
            for mode, v in (("model", curve.model_px), ("manual", curve.manual_px))
            for i, n in enumerate(names) for c in range(curve.n_clicks + 1)]
    return pd.DataFrame(rows)


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_write(path, "w", newline="") as f:
        df.to_csv(f, index=False, float_format="%.4f")


def evaluate_run(ckpt: str | os.PathLike, split: str = "val", n_clicks: int | None = None, *, tta: bool = False,
                 device: str = "auto", out_dir: str | os.PathLike | None = None) -> dict:
    """Run the click protocol on a run's ``split``; write the CSVs and ``summary.json['interactive']`` (into the
    run folder, under its claim, unless ``out_dir`` names another folder).

    ``n_clicks`` None takes the run's ``data.clicks.eval_clicks``. Returns the summary entry.
    """
    with claim_bookkeeping(Path(ckpt).parent) if out_dir is None else nullcontext():
        return _evaluate_run(ckpt, split, n_clicks, tta=tta, device=device, out_dir=out_dir)


def _evaluate_run(ckpt: str | os.PathLike, split: str, n_clicks: int | None, *, tta: bool, device: str,
                  out_dir: str | os.PathLike | None) -> dict:
    from engine.summary import update_summary

    run = open_run(ckpt, split, tta=tta, device=device)
    n = run.member.cfg.data.clicks.eval_clicks if n_clicks is None else n_clicks
    curve = run.click_curve(n)
    run_dir = Path(ckpt).parent
    out = Path(out_dir) if out_dir is not None else run_dir / "interactive"
    out.mkdir(parents=True, exist_ok=True)
    table = curve_table(curve)
    _write_csv(table, out / f"{split}_clicks.csv")
    _write_csv(per_image_table(curve, run.names), out / f"{split}_clicks_per_image.csv")
    entry = {
        "split": split, "images": len(run.names), "tta": tta, "takes_hints": run.takes_hints,
        "clicks": list(range(curve.n_clicks + 1)), "model_wins_1_5": curve.model_wins(),
        "csv": str(out / f"{split}_clicks.csv"),
    }
    for mode in ("model", "manual"):
        rows = table[table["mode"] == mode].sort_values("clicks")
        for unit in ("px", "mm"):
            if f"mre_{unit}" in rows:
                entry[f"{mode}_mre_{unit}"] = [round(float(v), 4) for v in rows[f"mre_{unit}"]]
    if not run.takes_hints:
        entry["note"] = HINTLESS_NOTE
    if (run_dir / "summary.json").is_file() and out_dir is None:
        update_summary(run_dir, interactive=entry)
    return entry


def format_curve(entry: dict) -> str:
    """A small text table of an :func:`evaluate_run` entry: clicks, model and manual MRE (px, and mm when known)."""
    mm = "model_mre_mm" in entry
    head = f"{'clicks':>6}  {'model px':>9}  {'manual px':>9}" + (f"  {'model mm':>8}  {'manual mm':>9}" if mm else "")
    lines = [head]
    for i, c in enumerate(entry["clicks"]):
        line = f"{c:>6}  {entry['model_mre_px'][i]:>9.2f}  {entry['manual_mre_px'][i]:>9.2f}"
        if mm:
            line += f"  {entry['model_mre_mm'][i]:>8.2f}  {entry['manual_mre_mm'][i]:>9.2f}"
        lines.append(line)
    return "\n".join(lines)
