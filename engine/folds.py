"""Train every fold of one configuration and keep its out-of-fold predictions (nnU-Net's five-fold default).

``python train.py -c CONFIG --folds all`` (or ``--folds 0,2``) trains ``data.fold = 0 .. n_folds-1``, one
run folder each (``<name>-f<fold>``), and after each fold writes the validation split's prediction cache
(``<run>/preds/val/``, what ``inference.py --ckpt <run>/best.pt --split val --save-probs`` writes, plus the
validation CSV ``<run>/preds/val.csv``), so ensemble fitting and selection need nothing else. The run
folder rules of :mod:`engine.run_folder` hold for every fold and are checked for all folds before the
first one trains: a fold whose folder holds a run is refused unless ``--resume`` (finished folds are
skipped, a started one resumed from ``last.pt``, both only with the saved config) or ``--overwrite``.
A fold counts as done when its summary.json records the out-of-fold cache (``oof``); a finished fold
whose cache was not completed (killed while predicting) gets its predictions on ``--resume``. Each fold's
folder is claimed (:func:`engine.run_folder.claim_run`) while it trains and predicts: a fold another
process is training ends the command with ``error: <fold folder>: in use by pid N on <host> since <time>``.

The final model on all data (``data.fold: all``, nnU-Net's "all" fold; ``train.py --folds all`` still means the
folds 0..n-1) trains for :func:`full_data_epochs` epochs, the folds' mean epochs to their best checkpoint, with
the config changes :func:`full_data_overrides` gives; it has no out-of-fold predictions.

The report (:func:`cv_report`, printed) and ``<out_dir>/<task>/<name>-cv.json`` (:func:`write_cv`) give
every fold's validation metrics of its ``best.pt`` (MRE px/mm and SDR for keypoints; MAE and the
training-mean baseline MAE for bone age) and their mean ± sample sd over the folds, with the images each
fold trained and validated on.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.config import Config, ConfigError
from engine.run_folder import check_run_folder, claim_run, holds_run
from engine.status import is_main_process
from engine.summary import read_summary, record_summary
from core.atomic import write_text
from tasks.schema import FOLD_ALL

TrainOne = Callable[[Config, bool, bool], dict]  # (cfg, resume, overwrite) -> summary


def parse_folds(spec: str, n_folds: int) -> list[int]:
    """``"all"`` → ``[0 .. n_folds-1]``; ``"0,2"`` → ``[0, 2]`` (each in range, no repeats)."""
    if spec.strip().lower() == "all":
        return list(range(n_folds))
    try:
        folds = [int(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--folds: {spec!r} is not 'all' or a list of fold numbers such as 0,2") from None
    if not folds:
        raise ConfigError("--folds: no fold given")
    bad = [f for f in folds if not 0 <= f < n_folds]
    if bad:
        raise ConfigError(f"--folds: fold {bad[0]} out of range for data.n_folds={n_folds} (0..{n_folds - 1})")
    if len(set(folds)) != len(folds):
        raise ConfigError(f"--folds: {spec!r} names a fold twice")
    return folds


@dataclass
class FoldPlan:
    """What happens to one fold: ``train`` (a fresh run), ``resume`` (continue last.pt) or ``skip`` (finished)."""

    cfg: Config
    action: str


def plan_folds(cfgs: Sequence[Config], resume: bool, overwrite: bool) -> list[FoldPlan]:
    """Check every fold's run folder before anything is trained (read-only); raises ``RunFolderError``."""
    if resume and overwrite and cfgs:
        check_run_folder(cfgs[0], resume=True, overwrite=True)  # refuses the pair, naming the folder
    plans = []
    for cfg in cfgs:
        run_dir = cfg.run_dir
        if resume and holds_run(run_dir):
            check_run_folder(cfg, resume=True, overwrite=False)  # last.pt and the same config
            plans.append(FoldPlan(cfg, "skip" if (run_dir / "summary.json").is_file() else "resume"))
        else:
            check_run_folder(cfg, resume=False, overwrite=overwrite)
            plans.append(FoldPlan(cfg, "train"))
    return plans


def predict_out_of_fold(cfg: Config, device: str | None = None, progress: bool | None = None, tta: bool = False) -> dict:
    """Predict the run's validation fold into its prediction cache and record it in summary.json (``oof``, with
    ``tta``: whether the run's TTA views were averaged, as they must be where its test predictions average them)."""
    from engine.predictor import predict_run

    run_dir = cfg.run_dir
    ckpt = run_dir / "best.pt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"{ckpt}: the run has no best.pt (it never validated); nothing to predict")
    stats = predict_run(
        cfg, ckpt, out_csv=run_dir / "preds" / "val.csv", split="val", tta=tta, save_probs_dir="auto",
        device=device or cfg.train.device, workers=None, progress=cfg.logging.progress if progress is None else progress)
    record_summary(run_dir, oof={"split": "val", "images": stats["images"], "cache": "preds/val",
                                 "csv": "preds/val.csv", "tta": tta})
    return stats


def fold_images(cfg: Config) -> dict[str, list[str]]:
    """The image files of the fold's ``train`` and ``val`` splits, as the task splits them."""

    train_set, val_set = cfg.spec.task_class()(cfg).datasets()
    return {"train": [str(s.image_path) for s in train_set.samples],
            "val": [str(s.image_path) for s in val_set.samples]}


def run_folds(cfgs: Sequence[Config], train_one: TrainOne, resume: bool = False, overwrite: bool = False,
              log: Callable[[str], None] = print) -> list[dict]:
    """Train (or resume, or skip) each fold, then write its out-of-fold predictions; returns one row per fold:
    ``{"fold", "run", "action", "metric", "score", "best_epoch", "oof_images", "val", "images"}`` (``val``:
    the numeric validation metrics of best.pt; ``images``: :func:`fold_images`)."""
    plans = plan_folds(cfgs, resume, overwrite)
    rows = []
    for plan in plans:
        cfg = plan.cfg
        with claim_run(cfg.run_dir):  # the fold's folder while it trains and takes its out-of-fold predictions
            summary = _run_fold(plan, train_one, overwrite, log)
        if is_main_process():
            rows.append({"fold": cfg.data.fold, "run": str(cfg.run_dir), "action": plan.action,
                         "metric": summary.get("metric"), "score": (summary.get("val") or {}).get("score"),
                         "best_epoch": summary.get("best_epoch"), "oof_images": (summary.get("oof") or {}).get("images"),
                         "val": numeric_metrics(summary.get("val") or {}), "images": fold_images(cfg)})
    return rows


def _run_fold(plan: FoldPlan, train_one: TrainOne, overwrite: bool, log: Callable[[str], None]) -> dict:
    """Train, resume or skip one fold, then (rank 0) write its out-of-fold predictions; returns its summary."""
    cfg = plan.cfg
    if plan.action == "skip":
        log(f"fold {cfg.data.fold}: {cfg.run_dir} is finished, skipped")
        summary = read_summary(cfg.run_dir)
    else:
        log(f"fold {cfg.data.fold}: {'resuming' if plan.action == 'resume' else 'training'} {cfg.run_dir}")
        summary = train_one(cfg, plan.action == "resume", overwrite)
    if not is_main_process():
        return summary
    if not (cfg.run_dir / "best.pt").is_file():
        log(f"fold {cfg.data.fold}: no epoch passed the checkpoint rule ({summary.get('selected_by')}): "
            "no best.pt, no validation metrics, no out-of-fold predictions")
    elif not (plan.action == "skip" and summary.get("oof")):
        predict_out_of_fold(cfg)
        summary = read_summary(cfg.run_dir)
    return summary


def numeric_metrics(val: dict) -> dict[str, float]:
    """The scalar validation metrics (``score`` and the task's extras; not the loss or per-item tables)."""
    return {k: float(v) for k, v in val.items()
            if k != "loss" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def cv_summary(rows: Sequence[dict]) -> dict[str, dict[str, float | None]]:
    """Each metric's mean and sample sd (None for one fold) over the folds that report it."""
    keys = dict.fromkeys(k for r in rows for k in r.get("val") or {})
    out = {}
    for key in keys:
        values = np.array([r["val"][key] for r in rows if key in (r.get("val") or {})], np.float64)
        out[key] = {"mean": float(values.mean()), "sd": float(values.std(ddof=1)) if len(values) > 1 else None,
                    "folds": len(values)}
    return out


def write_cv(cfg: Config, rows: Sequence[dict]) -> Path:
    """``<out_dir>/<task>/<name>-cv.json``: the folds (metrics, best epoch, train and val images) and the
    mean ± sd of each metric; returns its path."""
    path = cfg.run_dir.parent / f"{cfg.run_name.removesuffix(f'-f{cfg.data.fold}')}-cv.json"
    doc = {"task": cfg.task, "metric": next((r["metric"] for r in rows if r["metric"]), None),
           "folds": list(rows), "summary": cv_summary(rows)}
    write_text(path, json.dumps(doc, indent=1) + "\n")
    return path


def cv_report(rows: Sequence[dict]) -> str:
    """Per-fold table and the cross-validated mean ± sample sd of the validation metric."""
    metric = next((r["metric"] for r in rows if r["metric"]), "score")
    lines = [f"{'fold':>4}  {'run':<40} {'action':<7} {'best epoch':>10} {'val images':>10}  val/{metric}"]
    for r in rows:
        score = f"{r['score']:.4f}" if r["score"] is not None else "-"
        epoch = r["best_epoch"] + 1 if r["best_epoch"] is not None else "-"
        lines.append(f"{r['fold']:>4}  {Path(r['run']).name:<40} {r['action']:<7} {epoch:>10} "
                     f"{r['oof_images'] if r['oof_images'] is not None else '-':>10}  {score}")
    scores = np.array([r["score"] for r in rows if r["score"] is not None], np.float64)
    folds = ",".join(str(r["fold"]) for r in rows)
    if len(scores) >= 2:
        lines.append(f"cross-validated val/{metric} over folds {folds}: {scores.mean():.4f} ± {scores.std(ddof=1):.4f} "
                     f"(mean ± sd, {len(scores)} folds)")
    elif len(scores) == 1:
        lines.append(f"val/{metric} of fold {folds}: {scores[0]:.4f} (one fold: no spread)")
    summary = cv_summary(rows)
    extra = [k for k in summary if k != "score"]
    if extra:
        lines.append(f"{'fold':>4}  " + "  ".join(f"{k:>12}" for k in extra))
        for r in rows:
            lines.append(f"{r['fold']:>4}  " + "  ".join(f"{(r.get('val') or {}).get(k, float('nan')):>12.4f}"
                                                         for k in extra))
        lines.append(f"{'mean':>4}  " + "  ".join(f"{summary[k]['mean']:>12.4f}" for k in extra))
        lines.append(f"{'sd':>4}  " + "  ".join(f"{summary[k]['sd']:>12.4f}" if summary[k]["sd"] is not None
                                                 else f"{'-':>12}" for k in extra))
    return "\n".join(lines)


def full_data_epochs(summaries: Sequence[Mapping[str, Any]]) -> int:
    """Epochs for the model on all data from the cross-validated folds' summaries (summary.json, as read): the mean
    over the folds of the epochs each trained up to its best checkpoint (``best_epoch + 1``: ``best_epoch`` counts
    from 0), rounded half up.

    Why: a fold's best epoch is where more training stopped helping on images it never saw; the all-data model
    holds no image out to tell it, so it trains as long as the folds needed on average (each epoch then holds
    k/(k-1) times a fold's images, as in nnU-Net, which keeps its fixed number of epochs for the "all" fold). Its
    learning-rate schedule is laid over these epochs. A fold with no best epoch (no epoch passed its checkpoint
    rule) says nothing about when to stop and is left out, and so is an all-data run; a ValueError when no fold
    is left."""
    best = [int(s["best_epoch"]) + 1 for s in summaries
            if s.get("best_epoch") is not None and s.get("fold") != FOLD_ALL]
    if not best:
        raise ValueError(f"none of the {len(summaries)} fold summaries has a best epoch (best_epoch): no epoch "
                         "count for the model on all data")
    return max(1, math.floor(sum(best) / len(best) + 0.5))


def full_data_overrides(epochs: int) -> dict:
    """The config changes (``engine.config.load_config`` overrides) that turn a fold's config into the model on
    all data: ``data.fold: all``, ``epochs`` epochs, and none of the settings that need validation scores (early
    stopping, the checkpoint rules), which such a config refuses."""
    return {"data": {"fold": FOLD_ALL},
            "train": {"epochs": int(epochs), "early_stop_patience": None, "select_ema": None, "select_min_spread": None}}
