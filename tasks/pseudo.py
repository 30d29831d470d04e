"""What the tasks' pseudo-label sides share (numpy only): the precision check, the spread threshold of value
tasks, the manifest ``pseudo.json`` of a pseudo-labelled folder, and how the folder's images point at the
test images.

A pseudo-labelled folder is a training folder in its task's own layout (``tasks/<task>/pseudo.py`` writes
and reads it), holding only the test predictions of an ensemble that a confidence threshold keeps, that
threshold fitted on the members' out-of-fold validation predictions so that the kept labels are right at a
target rate, the *precision* (:mod:`ensembles.pseudo`). Its images are symbolic links to the test images
(never copies); ``pseudo.json`` says where the labels came from, the thresholds and what was kept.
Training reads such folders through ``data.pseudo_roots``: their samples join the training images of every
fold and never a validation fold, so out-of-fold scores stay honest.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic import write_text
from tasks.formats import FormatError
from tasks.formats.tables import TEXT_ENCODING

MANIFEST = "pseudo.json"
FORMAT = 1


def check_precision(precision: object) -> float:
    """The target rate of right labels among the kept ones: a number strictly between 0 and 1."""
    if isinstance(precision, bool) or not isinstance(precision, (int, float)) or not math.isfinite(precision) \
            or not 0 < precision < 1:
        raise ValueError(f"precision {precision!r} is outside (0, 1): it is the share of kept pseudo-labels that "
                         "must be right on validation (e.g. 0.99)")
    return float(precision)


def fit_spread(spread: np.ndarray, right: np.ndarray, precision: float) -> float | None:
    """The largest spread ``t`` among ``spread`` such that of the items with spread ``<= t`` at least ``precision``
    are ``right``; None when not even the items of the smallest spread are (nothing is kept).

    The members' disagreement (``spread``, one value per item) is the confidence: an item is kept when its
    spread is at most ``t``. The threshold keeps the most items whose kept set still meets the precision (the
    kept set's rate need not fall monotonically as ``t`` grows; the largest ``t`` that meets it wins).
    """
    spread = np.asarray(spread, np.float64).ravel()
    right = np.asarray(right, bool).ravel()
    if spread.shape != right.shape:
        raise ValueError(f"{spread.size} spreads for {right.size} items")
    if spread.size == 0:
        raise ValueError("no validation items to fit a threshold on")
    if not np.isfinite(spread).all():
        raise ValueError("a spread is NaN or infinite")
    order = np.argsort(spread, kind="stable")
    values, hits = spread[order], right[order]
    last = np.r_[values[1:] != values[:-1], True]          # the last item of each run of equal spreads
    kept = np.flatnonzero(last) + 1
    rate = np.cumsum(hits)[last] / kept
    ok = np.flatnonzero(rate >= precision)
    return float(values[last][ok[-1]]) if ok.size else None


def member_spread(preds: np.ndarray) -> np.ndarray:
    """The members' disagreement about each value: the root mean square distance of the ``(M, N, ..., D)``
    members' values from their mean, over the last axis (``D``: a point's coordinates, or 1 for a number);
    ``(N, ...)``."""
    preds = np.asarray(preds, np.float64)
    return np.sqrt(((preds - preds.mean(0)) ** 2).sum(-1).mean(0))


def link(source: str | os.PathLike, target: Path) -> None:
    """``target`` becomes a symbolic link to the image ``source`` (absolute): a pseudo-labelled folder points at
    the test images instead of copying them."""
    target.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.abspath(source), target)


def write_manifest(folder: Path, manifest: dict) -> None:
    write_text(folder / MANIFEST, json.dumps(manifest, indent=2))


def read_manifest(root: str | os.PathLike, task: str) -> dict[str, Any]:
    """The ``pseudo.json`` of a pseudo-labelled folder of ``task``; a folder without one, or one of another task,
    is a :class:`FormatError` naming it."""
    path = Path(root) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding=TEXT_ENCODING))
    except FileNotFoundError:
        raise FormatError(f"{root}: not a pseudo-labelled folder (no {MANIFEST}; write one with "
                          "tools/pseudo_label.py)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FormatError(f"{path}: not a readable {MANIFEST} ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise FormatError(f"{path}: not a pseudo-label manifest of format {FORMAT}")
    if manifest.get("task") != task:
        raise FormatError(f"{path}: pseudo-labels of task {manifest.get('task')!r}, the run is {task}")
    return manifest


def pseudo_samples(data: Any, task: str, read: Callable[[Path, dict, Any], Sequence[Any]]) -> list[Any]:
    """The samples of every folder of ``data.pseudo_roots``, each read by its task's ``read(root, manifest, data)``
    after its manifest is checked (these join the training images only). A folder in which nothing was
    confident enough to keep holds no image and adds none."""
    out: list[Any] = []
    for root in data.pseudo_roots:
        manifest = read_manifest(root, task)
        if manifest.get("test", {}).get("written"):
            out += read(Path(root), manifest, data)
    return out
