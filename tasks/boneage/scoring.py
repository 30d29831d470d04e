"""Local scoring of a bone-age submission (``id,boneage`` months) against answers. Pandas is imported only
when a CSV is scored; no torch."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tasks.formats import FormatError
from tasks.metrics import age_metrics
from tasks.scoring import public_private_split


def _sex_for(gt: Path, ids: Sequence[str]) -> np.ndarray | None:
    """Sex of each id from the test CSV beside an answers file (``boneage-test-dataset.csv``), if there."""
    from tasks.formats.rsna import read_labels as read_rsna_labels  # pandas: only for bone age

    for name in ("boneage-test-dataset.csv", "labels.csv"):
        path = gt.parent / name
        if path.is_file() and path.resolve() != gt.resolve():
            df = read_rsna_labels(path)
            sex = dict(zip(df["id"], df["male"]))
            if all(i in sex for i in ids):
                return np.array([sex[i] for i in ids], bool)
    return None


def score(csv_path: str | os.PathLike, gt: str | os.PathLike, images: str | os.PathLike | None = None,
                  **_) -> dict:
    """Score an ``id,boneage`` submission against answers (``id,boneage[,male]``): MAE months and the rest
    of :func:`age_metrics`, plus the public/private halves of the leaderboard split."""
    from tasks.formats.rsna import read_submission  # pandas: only when a bone-age CSV is scored

    gt = Path(gt)
    truth = read_submission(gt, answers=True)
    sub = read_submission(csv_path)
    missing = sorted(set(truth["id"]) - set(sub["id"]))
    if missing:
        raise FormatError(f"{csv_path}: {len(missing)} ids of {gt} have no prediction, e.g. {missing[0]}")
    extra = sorted(set(sub["id"]) - set(truth["id"]))
    if extra:
        raise FormatError(f"{csv_path}: id {extra[0]} is not in the answers {gt}")
    pred = sub.set_index("id").loc[truth["id"], "boneage"].to_numpy()
    age = truth["boneage"].to_numpy()
    male = truth["male"].to_numpy(bool) if "male" in truth else _sex_for(gt, list(truth["id"]))
    result = age_metrics(pred, age, male)
    public, private = public_private_split(list(truth["id"]))
    pub = truth["id"].isin(public).to_numpy()
    err = np.abs(pred - age)
    result.update(public=float(err[pub].mean()) if pub.any() else float("nan"),
                  private=float(err[~pub].mean()) if (~pub).any() else float("nan"),
                  images=len(truth), metric="mae_months")
    return result
