"""Keypoint inference of one run, with TTA, decoded to ORIGINAL image pixels, written as the wide CSV.

``inference.py`` calls :func:`predict_run`: heatmaps of every TTA view are mapped back to the base
frame (flips un-flipped, left/right channels swapped by the set's ``flip_perm``, scales resized back),
averaged in heatmap space and decoded once. Ensembles of keypoint runs live in
:mod:`ensembles.keypoints` (``inference.py --ensemble configs/ensembles/kp_*.yaml``).

The prediction cache (``--save-probs``): ``<dir>/keypoints.npz`` with ``names``, ``coords`` ``(N, K, 2)``
original pixels, ``confidence`` ``(N, K)`` and the landmark set.
"""
from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from engine.config import Config
from engine.predictor import PREDICTORS, LoadedModel, load_model, prediction_cache
from engine.tta import View, views_from_config
from tasks.formats import FormatError
from tasks.formats.atomic import atomic_write
from tasks.keypoint_sets import get_set
from tasks.formats.names import check_name
from tasks.keypoints import KeypointDataset, KeypointTask, write_wide


def tta_heatmaps(model: Callable[..., torch.Tensor], x: torch.Tensor, views: Sequence[View],
                 activation: Callable[[torch.Tensor], torch.Tensor], flip_perm: Sequence[int] | None = None,
                 hints: torch.Tensor | None = None) -> torch.Tensor:
    """Mean activated heatmaps over ``views`` in the frame of the plain forward pass.

    A flipped view's heatmaps are flipped back and their channels permuted by ``flip_perm`` (left/right
    pairs swap; identity for one hand). The output size of the un-augmented input follows from each
    view's own stride, so models with any output stride work with flips and scales alike. ``hints``
    (``(B, K, H, W)`` hint maps of a ``hint:`` model) go through the same view, their channels permuted
    the same way, so a flipped left corner hints the right corner channel.
    """
    size = tuple(x.shape[-2:])
    total = None
    for view in views:
        if hints is None:
            y = model(view.apply(x)).float()
        else:
            flipped = (view.hflip or view.vflip) and flip_perm is not None
            y = model(view.apply(x), view.apply(hints[:, list(flip_perm)] if flipped else hints)).float()
        stride = view.input_size(size)[0] / y.shape[-2]
        base = (round(size[0] / stride), round(size[1] / stride))
        y = activation(view.invert(y, base, flip_perm))
        total = y if total is None else total + y
    return total / len(views)


def autocast_factory(device: torch.device, cfg: Config) -> Callable | None:
    """A context factory for the run's AMP setting on ``device`` (None: full precision)."""
    from engine.device import amp_dtype

    dtype = amp_dtype(cfg.train.amp, device)
    return (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else None


def split_dataset(task: KeypointTask, split: str) -> KeypointDataset:
    if split not in ("test", "val"):
        raise ValueError(f"split must be 'test' or 'val', got {split!r}")
    return task.dataset(task.samples(split))


@torch.no_grad()
def predict_member(member: LoadedModel, split: str, views: Sequence[View], device: torch.device,
                   progress: bool = False) -> tuple[list[str], np.ndarray, np.ndarray, KeypointDataset]:
    """Names, original-frame coordinates ``(N, K, 2)`` and confidences ``(N, K)`` of one model on a split."""
    task = KeypointTask(member.cfg)
    dataset = split_dataset(task, split)
    member.model.eval()
    coords, conf, _ = task.predict(member.model, dataset, device, autocast_factory(device, member.cfg),
                                   member.cfg.inference.batch_size,
                                   heatmap_fn=lambda images: tta_heatmaps(member.model, images, views, task.activate,
                                                                           task.lmset.flip_perm),
                                   progress=progress)
    return [s.name for s in dataset.samples], coords, conf, dataset


def save_cache(directory: str | Path, names: Sequence[str], coords: np.ndarray, conf: np.ndarray, landmarks: str) -> Path:
    """Write ``keypoints.npz`` (atomic) into ``directory``."""
    path = Path(directory) / "keypoints.npz"
    with atomic_write(path, "wb") as f:
        np.savez(f, names=np.asarray(names), coords=coords, confidence=conf, landmarks=np.asarray(landmarks))
    return path


def load_cache(path: str | Path, landmarks: str | None = None) -> tuple[list[str], np.ndarray, np.ndarray, str]:
    """Names, coordinates, confidences and landmark set of a ``keypoints.npz``: the one reader of the keypoint
    cache, checked against what it says and, given ``landmarks`` (the run's ``data.landmarks``), what its run says.

    ``names`` N unique image names; ``coords`` ``(N, K, 2)`` and ``confidence`` ``(N, K)`` finite floats, K the
    size of its landmark set; that set a registered one (the run's, when given). A fault is a
    :class:`FormatError` naming the file.
    """
    try:
        with np.load(path) as f:
            names, coords, conf, lmset = f["names"], f["coords"], f["confidence"], str(f["landmarks"][()])
    except FileNotFoundError:
        raise FormatError(f"{path}: keypoint cache is missing") from None
    except Exception as err:  # numpy and zipfile raise many types for a damaged archive
        raise FormatError(f"{path}: not a keypoint cache ({type(err).__name__}: {err})") from None
    if landmarks is not None and lmset != landmarks:
        raise FormatError(f"{path}: holds landmark set {lmset}, the run predicts {landmarks}")
    try:
        k = len(get_set(lmset).names)
    except ValueError as err:
        raise FormatError(f"{path}: {err}") from None
    n = len(names)
    if names.ndim != 1 or names.dtype.kind != "U" or len(set(names.tolist())) != n:
        raise FormatError(f"{path}: names must be {n} distinct image names (got {names.dtype} of shape {names.shape})")
    for key, value, shape in (("coords", coords, (n, k, 2)), ("confidence", conf, (n, k))):
        if value.shape != shape or value.dtype.kind != "f":
            raise FormatError(f"{path}: {key} of shape {value.shape} ({value.dtype}), expected {shape} floats: "
                              f"{n} images x {k} landmarks of {lmset}")
        if not np.isfinite(value).all():
            raise FormatError(f"{path}: {key} holds {int((~np.isfinite(value)).sum())} NaN/infinite values")
    return [check_name(str(v), f"{path}: names") for v in names], coords, conf, lmset


@PREDICTORS.register("keypoints")
def predict_run(cfg: Config | None, ckpt: str | os.PathLike, *, out_csv: str | Path, split: str = "test", tta: bool = False,
                save_probs_dir: str | Path | None = None, device: str = "auto", workers: int | None = None,
                progress: bool = True) -> dict:
    """Predict one trained run; returns ``{"images", "seconds", "images_per_s", "csv"}``.

    ``workers`` is accepted for the common interface; decoding is vectorised on the device.
    """
    from engine.summary import record_summary
    from engine.device import pick_device

    dev = pick_device(device)
    member = load_model(ckpt, dev, cfg)
    views = views_from_config(member.cfg.inference.tta, enabled=tta)
    t0 = time.perf_counter()
    names, coords, conf, _ = predict_member(member, split, views, dev, progress)
    write_wide(out_csv, names, coords, KeypointTask(member.cfg).lmset)
    seconds = time.perf_counter() - t0
    cache = prediction_cache(save_probs_dir, ckpt, split)
    if cache is not None:
        cache(save_cache, cache.path, names, coords, conf, member.cfg.data.landmarks)
    stats = {"images": len(names), "seconds": round(seconds, 3), "images_per_s": round(len(names) / seconds, 3),
             "csv": str(out_csv)}
    run_dir = Path(ckpt).parent
    if (run_dir / "summary.json").is_file() and split == "test":
        record_summary(run_dir, speed={"images_per_s_tta" if len(views) > 1 else "images_per_s": stats["images_per_s"]})
    return stats
