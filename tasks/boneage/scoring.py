"""Local scoring of a bone-age submission (``id,boneage`` months) against answers. Pandas is imported only
when a CSV is scored; no torch."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tasks.formats import FormatError
from tasks.metrics import WITHIN_MONTHS, age_metrics
from tasks.scoring import check_coverage, halves


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


def baseline_months(baseline: float | str | os.PathLike) -> float:
    """The constant answer of the bone-age baseline: months as given, or the mean age of an RSNA labels CSV
    (e.g. the training set's ``boneage-training-dataset.csv``)."""
    from tasks.formats.rsna import read_labels as read_rsna_labels  # pandas: only for bone age

    if isinstance(baseline, (int, float)):
        return float(baseline)
    return float(read_rsna_labels(baseline, require_age=True)["boneage"].mean())


def score(csv_path: str | os.PathLike, gt: str | os.PathLike, images: str | os.PathLike | None = None,
                  *, within: Sequence[float] = WITHIN_MONTHS, baseline_age: float | str | os.PathLike | None = None,
                  subset: bool = False, per_image: bool = False) -> dict:
    """Score an ``id,boneage`` submission against answers (``id,boneage[,male]``): MAE months and the rest
    of :func:`age_metrics` (share within each of ``within`` months, the spread of the predictions, the MAE
    of a constant answer when ``baseline_age`` is given: months, or a labels CSV whose mean age it is), plus
    the public/private halves by patient (an RSNA id). ``subset``: score only the ids the CSV has (a
    validation fold); ``per_image``: each id's error."""
    from tasks.formats.rsna import patient_of, read_submission  # pandas: only when a bone-age CSV is scored

    gt = Path(gt)
    truth = read_submission(gt, answers=True)
    sub = read_submission(csv_path)
    extra = sorted(set(sub["id"]) - set(truth["id"]))
    if extra:
        raise FormatError(f"{csv_path}: id {extra[0]} is not in the answers {gt}")
    check_coverage(csv_path, sorted(set(truth["id"]) - set(sub["id"])), f"ids of {gt}", subset)
    truth = truth[truth["id"].isin(set(sub["id"]))].reset_index(drop=True)
    pred = sub.set_index("id").loc[truth["id"], "boneage"].to_numpy()
    age = truth["boneage"].to_numpy()
    male = truth["male"].to_numpy(bool) if "male" in truth else _sex_for(gt, list(truth["id"]))
    result = age_metrics(pred, age, male, within=within,
                         baseline_age=None if baseline_age is None else baseline_months(baseline_age))
    err = {str(i): float(e) for i, e in zip(truth["id"], np.abs(pred - age))}
    result.update(halves(err, patient_of), images=len(truth), metric="mae_months")
    if per_image:
        result["per_image"] = {i: {"score": err[str(i)], "pred": float(p), "age": float(a)}
                               for i, p, a in zip(truth["id"], pred, age)}
    return result
