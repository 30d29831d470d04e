"""Local scoring of an orientation submission (``img_id,label``) against a labelled folder or labels file:
accuracy of the 12-class label, of the rotation and of the side, per true class, public/private halves.
Standard library and numpy only."""
from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tasks.formats import FormatError
from core.atomic import atomic_write
from tasks.orientation import CLASS_NAMES
from tasks.orientation.labels import read_labels
from tasks.scoring import check_coverage, halves


def accuracies(pred: np.ndarray, truth: np.ndarray) -> dict:
    """Label (``score``), rotation and side accuracy of predicted classes against true ones, and the accuracy
    per true class present (``per_item``)."""
    pred, truth = np.asarray(pred, int), np.asarray(truth, int)
    if len(truth) == 0:
        raise FormatError("no films to score")
    per_item = {CLASS_NAMES[c]: float((pred[truth == c] == c).mean()) for c in sorted(set(truth.tolist()))}
    return {"score": float((pred == truth).mean()), "accuracy": float((pred == truth).mean()),
            "rotation_acc": float((pred % 4 == truth % 4).mean()), "side_acc": float((pred // 4 == truth // 4).mean()),
            "per_item": per_item}


def write_labels(path: str | os.PathLike, names: Sequence[str], labels: Sequence[int] | np.ndarray) -> None:
    """Write ``img_id,label`` atomically."""
    if len(names) != len(labels):
        raise FormatError(f"{path}: {len(labels)} labels for {len(names)} films")
    with atomic_write(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["img_id", "label"])
        writer.writerows((n, int(label)) for n, label in zip(names, labels))


def read_submission(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """Ids and labels of an ``img_id,label`` submission (every row labelled 0-11, ids unique)."""
    rows = read_labels(path, require=True)
    return [r[0] for r in rows], np.array([r[1] for r in rows], int)


def score(csv_path: str | os.PathLike, gt: str | os.PathLike, images: str | os.PathLike | None = None, *,
          subset: bool = False, per_image: bool = False) -> dict:
    """Score a submission against ``gt``: a labelled folder (its ``labels.csv``) or a labels file; public/private
    halves by patient (the labels' ``patient`` column, else each film its own). ``subset``: score only the
    films the CSV has (a validation fold); ``per_image``: each film's predicted and true class."""
    gt = Path(gt)
    table = gt / "labels.csv" if gt.is_dir() else gt
    rows = read_labels(table, require=True)
    truth = {img_id: label for img_id, label, _ in rows}
    patient = {img_id: p for img_id, _, p in rows}
    names, pred = read_submission(csv_path)
    unknown = [n for n in names if n not in truth]
    if unknown:
        raise FormatError(f"{csv_path}: film {unknown[0]} has no label in {table} ({len(unknown)} such rows)")
    check_coverage(csv_path, sorted(set(truth) - set(names)), "labelled films", subset)
    true = np.array([truth[n] for n in names])
    result = accuracies(pred, true)
    correct = {n: float(p == t) for n, p, t in zip(names, pred, true)}
    result.update(halves(correct, patient.__getitem__), images=len(names), metric="accuracy")
    if per_image:
        result["per_image"] = {n: {"score": correct[n], "pred": int(p), "true": int(t)}
                               for n, p, t in zip(names, pred, true)}
    return result
