"""Bone-age inference: one run (optional TTA) to an ``id,boneage`` CSV.

  python inference.py --ckpt runs/boneage/<run>/best.pt -o submissions/ba.csv [--tta] [--split val]

TTA for a regressor is the mean age over the views of ``inference.tta`` (hflip, vflip, scales); the
sex input is the same in every view. It is off unless asked for: a horizontal flip turns a left hand
into a right one, which a model trained on left hands has never seen (robustness studies of the 2017
winner found flips change its error), so check it on validation first (``--split val`` with and
without ``--tta``, then ``tools/score.py``).

Ensembles of bone-age runs live in :mod:`ensembles.boneage` (``inference.py --ensemble
configs/ensembles/boneage_mean.yaml``); they read the prediction cache ``<run>/preds/<split>/boneage.csv``
that ``--save-probs`` writes.
"""
from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from engine.config import Config
from engine.predictor import PREDICTORS, LoadedModel, load_model, prediction_cache
from engine.tta import View
from tasks.boneage import BoneAgeSample, BoneAgeTask, read_submission
from tasks.formats import FormatError
from tasks.formats.rsna import MAX_AGE_MONTHS, write_predictions

CACHE_FILE = "boneage.csv"


def load_cache(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """Ids and ages (months) of a run's ``boneage.csv``: the one reader of the bone-age cache. Checked as a
    submission (header ``id,boneage``, non-empty unique ids, finite numbers) and as months: every age within
    [-240, 480] (twice the oldest RSNA age; a model of 0-240 months predicts nothing beyond that, so a cache
    in days, or one that is no prediction at all, is refused). A fault is a :class:`FormatError` naming the file."""
    frame = read_submission(path)
    ages = frame["boneage"].to_numpy(np.float64)
    bad = np.flatnonzero((ages < -MAX_AGE_MONTHS) | (ages > 2 * MAX_AGE_MONTHS))
    if bad.size:
        raise FormatError(f"{path}: id {frame['id'].iloc[bad[0]]!r} has age {ages[bad[0]]:g}, outside "
                          f"[{-MAX_AGE_MONTHS:g}, {2 * MAX_AGE_MONTHS:g}] months: not a bone-age prediction in months")
    return [str(i) for i in frame["id"]], ages


def split_samples(task: BoneAgeTask, split: str) -> list[BoneAgeSample]:
    """The test CSV's samples, or the run's validation fold."""
    if split == "test":
        return task.test_samples()
    if split == "val":
        return task.split()[1]
    raise ValueError(f"unknown split {split!r}; valid: test, val")


def predict_samples(member: LoadedModel, split: str, views: Sequence[View], device: torch.device
                    ) -> tuple[list[BoneAgeSample], np.ndarray]:
    """The samples of ``split`` and one model's ages (months, mean over ``views``) for them."""
    from engine.device import amp_dtype

    task = BoneAgeTask(member.cfg)
    samples = split_samples(task, split)
    amp = amp_dtype(member.cfg.train.amp, device)
    autocast = (lambda: torch.autocast(device.type, dtype=amp)) if amp else None
    ages = task.predict(member.model, task.dataset(samples), device, autocast, member.cfg.inference.batch_size, views)
    return samples, ages


@PREDICTORS.register("boneage")
def predict_run(cfg: Config | None, ckpt: str | os.PathLike, *, out_csv: str | Path, split: str = "test", tta: bool = False,
                save_probs_dir: str | Path | None = None, device: str = "auto", workers: int | None = None,
                progress: bool = True) -> dict:
    """Predict one trained run into ``out_csv`` (``id,boneage`` months); returns images, seconds, images/s, csv.

    ``save_probs_dir``: also keep the predictions as the run's prediction cache (``"auto"``:
    ``<run>/preds/<split>/boneage.csv``) for ensembles. ``workers`` is unused (no post-processing).
    """
    from engine.summary import record_summary
    from engine.device import pick_device
    from engine.tta import views_from_config

    dev = pick_device(device)
    member = load_model(ckpt, dev, cfg)
    views = views_from_config(member.cfg.inference.tta, enabled=tta)
    t0 = time.perf_counter()
    samples, ages = predict_samples(member, split, views, dev)
    seconds = time.perf_counter() - t0
    frame = pd.DataFrame({"id": [s.id for s in samples], "boneage": ages})
    write_predictions(out_csv, frame)
    cache = prediction_cache(save_probs_dir, ckpt, split)
    if cache is not None:
        cache(write_predictions, cache.path / CACHE_FILE, frame)
    stats = {"images": len(samples), "seconds": round(seconds, 3),
             "images_per_s": round(len(samples) / max(seconds, 1e-9), 3), "csv": str(out_csv)}
    run_dir = Path(ckpt).parent
    if (run_dir / "summary.json").is_file() and split == "test":
        key = "images_per_s_tta" if tta and len(views) > 1 else "images_per_s"
        record_summary(run_dir, speed={key: stats["images_per_s"]})
    return stats
