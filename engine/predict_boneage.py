"""Bone-age inference: one run (optional TTA) to an ``id,boneage`` CSV, and CSV-level ensembles.

  python inference.py --ckpt runs/boneage/<run>/best.pt -o submissions/ba.csv [--tta] [--split val]
  python -m engine.predict_boneage fuse a.csv b.csv c.csv --method median -o submissions/ba-median.csv
  python -m engine.predict_boneage fuse a.csv b.csv --fit a-val.csv b-val.csv --truth <train csv> -o ens.csv

TTA for a regressor is the mean age over the views of ``inference.tta`` (hflip, vflip, scales); the
sex input is the same in every view. It is off unless asked for: a horizontal flip turns a left hand
into a right one, which a model trained on left hands has never seen (robustness studies of the 2017
winner found flips change its error), so check it on validation first (``--split val`` with and
without ``--tta``, then ``tools/score.py``).

Ensembles fuse member CSVs by weighted mean (weights given, or fitted on the members' validation
predictions against the training labels, cross-fitted: :func:`ensembles.fit.fit_weights`) or median.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from engine.config import Config
from engine.predictor import load_model, prediction_cache
from tasks.boneage import BoneAgeSample, BoneAgeTask, read_submission
from tasks.formats import FormatError
from tasks.formats.rsna import write_predictions


def split_samples(task: BoneAgeTask, split: str) -> list[BoneAgeSample]:
    """The test CSV's samples, or the run's validation fold."""
    if split == "test":
        return task.test_samples()
    if split == "val":
        return task.split()[1]
    raise ValueError(f"unknown split {split!r}; valid: test, val")


def predict_run(cfg: Config | None, ckpt: str | Path, *, out_csv: str | Path, split: str = "test", tta: bool = False,
                save_probs_dir: str | Path | None = None, device: str = "auto", workers: int | None = None,
                progress: bool = True) -> dict:
    """Predict one trained run into ``out_csv`` (``id,boneage`` months); returns images, seconds, images/s, csv.

    ``save_probs_dir``: also keep the predictions as the run's prediction cache (``"auto"``:
    ``<run>/preds/<split>/boneage.csv``) for ensembles. ``workers`` is unused (no post-processing).
    """
    from engine.summary import record_summary
    from engine.trainer import amp_dtype, pick_device
    from ensembles.tta import views_from_config

    dev = pick_device(device)
    member = load_model(ckpt, dev, cfg)
    cfg = member.cfg
    task = BoneAgeTask(cfg)
    samples = split_samples(task, split)
    dataset = task.dataset(samples)
    views = views_from_config(cfg.inference.tta, enabled=tta)
    amp = amp_dtype(cfg.train.amp, dev)
    autocast = (lambda: torch.autocast(dev.type, dtype=amp)) if amp else None
    t0 = time.perf_counter()
    ages = task.predict(member.model, dataset, dev, autocast, cfg.inference.batch_size, views)
    seconds = time.perf_counter() - t0
    frame = pd.DataFrame({"id": [s.id for s in samples], "boneage": ages})
    write_predictions(out_csv, frame)
    cache = prediction_cache(save_probs_dir, ckpt, split)
    if cache is not None:
        cache(write_predictions, cache.path / "boneage.csv", frame)
    stats = {"images": len(samples), "seconds": round(seconds, 3),
             "images_per_s": round(len(samples) / max(seconds, 1e-9), 3), "csv": str(out_csv)}
    run_dir = Path(ckpt).parent
    if (run_dir / "summary.json").is_file() and split == "test":
        key = "images_per_s_tta" if tta and len(views) > 1 else "images_per_s"
        record_summary(run_dir, speed={key: stats["images_per_s"]})
    return stats


def _aligned(csvs: Sequence[str | Path], ids: Sequence[str] | None = None) -> tuple[list[str], np.ndarray]:
    """Ids (of ``ids`` or the first CSV) and ``(M, N)`` member predictions in that order; every member
    must predict exactly the same ids."""
    frames = [read_submission(c) for c in csvs]
    ids = list(ids) if ids is not None else list(frames[0]["id"])
    wanted = set(ids)
    preds = []
    for path, df in zip(csvs, frames):
        have = set(df["id"])
        if have != wanted:
            diff = sorted(wanted - have) or sorted(have - wanted)
            raise FormatError(f"{path}: predicts a different set of ids than the others (e.g. {diff[0]})")
        preds.append(df.set_index("id").loc[ids, "boneage"].to_numpy(np.float64))
    return ids, np.stack(preds)


def fit_fusion_weights(val_csvs: Sequence[str | Path], truth_csv: str | Path, grid_step: float = 0.1) -> np.ndarray:
    """Member weights of the weighted mean minimising the validation MAE (cross-fitted); ``(M,)``."""
    from ensembles.fit import fit_weights

    truth = read_submission(truth_csv, answers=True).set_index("id")
    ids, preds = _aligned(val_csvs)
    missing = [i for i in ids if i not in truth.index]
    if missing:
        raise FormatError(f"{truth_csv}: no label for validation id {missing[0]}")
    result = fit_weights(preds, truth.loc[ids, "boneage"].to_numpy(np.float64),
                         lambda fused, target: np.abs(fused - target), grid_step=grid_step)
    return np.asarray(result.weights, np.float64).reshape(len(val_csvs), -1)[:, 0]


def fuse_csvs(csvs: Sequence[str | Path], out_csv: str | Path, method: str = "mean",
              weights: Sequence[float] | np.ndarray | None = None) -> pd.DataFrame:
    """Fuse member submissions (weighted mean or weighted median, ensembles.weighted) into ``out_csv``."""
    from ensembles.weighted import fuse

    ids, preds = _aligned(csvs)
    fused = fuse(list(preds), method, weights, members=[str(c) for c in csvs])
    frame = pd.DataFrame({"id": ids, "boneage": fused})
    write_predictions(out_csv, frame)
    return frame


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    fz = sub.add_parser("fuse", help="fuse id,boneage submissions")
    fz.add_argument("csvs", nargs="+")
    fz.add_argument("--method", choices=("mean", "median"), default="mean")
    fz.add_argument("--weights", type=float, nargs="+", help="one weight per CSV (default: equal)")
    fz.add_argument("--fit", nargs="+", metavar="VAL_CSV", help="validation predictions of the same members "
                    "(inference.py --split val), in the same order: fit the weights on them")
    fz.add_argument("--truth", help="with --fit: the labels (training CSV id,boneage,male)")
    fz.add_argument("-o", "--out", required=True)
    args = parser.parse_args(argv)
    try:
        weights = args.weights
        if args.fit:
            if not args.truth or len(args.fit) != len(args.csvs):
                raise ValueError("--fit needs --truth and one validation CSV per member CSV")
            weights = fit_fusion_weights(args.fit, args.truth)
            print("fitted weights: " + ", ".join(f"{Path(c).name}={w:.2f}" for c, w in zip(args.csvs, weights)))
        frame = fuse_csvs(args.csvs, args.out, args.method, weights)
    except (FormatError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {len(frame)} ids ({args.method} of {len(args.csvs)} members)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
