#!/usr/bin/env python
"""Keypoint inference: TTA and ensembles, decoded to ORIGINAL image pixels, written as the wide CSV.

One run (``inference.py`` calls :func:`predict_run`): heatmaps of every TTA view are mapped back to
the base frame (flips un-flipped, left/right channels swapped by the set's ``flip_perm``, scales
resized back), averaged in heatmap space and decoded once. Several runs (``python -m
engine.predict_keypoints``): ``soft`` averages the members' heatmaps (same input size), ``mean`` and
``median`` fuse their decoded coordinates (any sizes) with :mod:`ensembles.weighted`; ``--fit-weights``
fits per-member (or per-member-per-landmark) weights of the coordinate mean on the validation fold with
:func:`ensembles.fit.fit_weights` (cross-fitted; never on the test set) and uses them for any fusion.

The prediction cache (``--save-probs``): ``<dir>/keypoints.npz`` with ``names``, ``coords`` ``(N, K, 2)``
original pixels, ``confidence`` ``(N, K)`` and the landmark set.

  python -m engine.predict_keypoints --ckpt runs/keypoints/a-f0/best.pt --ckpt runs/keypoints/b-f0/best.pt \\
      --fuse median --fit-weights --tta -o submissions/kp_ens.csv
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Callable

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import engine  # noqa: F401  (offline environment first)

import numpy as np
import torch

from engine.config import Config
from engine.predictor import LoadedModel, load_model, prediction_cache
from ensembles.tta import View, views_from_config
from tasks.formats.atomic import atomic_write
from tasks.keypoints import KeypointDataset, KeypointTask, group_of, radial_errors, write_wide

FUSIONS = ("soft", "mean", "median")


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
    from engine.trainer import amp_dtype

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


def load_cache(path: str | Path) -> tuple[list[str], np.ndarray, np.ndarray, str]:
    """Names, coordinates, confidences and landmark set of a ``keypoints.npz``."""
    with np.load(path) as f:
        return [str(n) for n in f["names"]], f["coords"], f["confidence"], str(f["landmarks"])


def predict_run(cfg: Config | None, ckpt: str | Path, *, out_csv: str | Path, split: str = "test", tta: bool = False,
                save_probs_dir: str | Path | None = None, device: str = "auto", workers: int | None = None,
                progress: bool = True) -> dict:
    """Predict one trained run; returns ``{"images", "seconds", "images_per_s", "csv"}``.

    ``workers`` is accepted for the common interface; decoding is vectorised on the device.
    """
    from engine.summary import record_summary
    from engine.trainer import pick_device

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


@torch.no_grad()
def soft_ensemble(members: Sequence[LoadedModel], split: str, views: Sequence[View], device: torch.device,
                  weights: np.ndarray | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Weighted mean of the members' TTA heatmaps (resized to the first member's output size), decoded once.

    Members must share the input size and resize mode (their heatmaps then share the input frame).
    """
    from ensembles.weighted import normalize_weights

    frames = {(m.cfg.data.image_size, m.cfg.data.resize) for m in members}
    if len(frames) > 1:
        raise ValueError(f"soft (heatmap) fusion needs members with one input size and resize mode, got {sorted(frames)}; "
                         "use --fuse mean or median (coordinates) instead")
    tasks = [KeypointTask(m.cfg) for m in members]
    if len({t.lmset.name for t in tasks}) > 1:
        raise ValueError(f"members predict different landmark sets: {sorted({t.lmset.name for t in tasks})}")
    w = normalize_weights(weights, len(members), len(tasks[0].lmset), members=[str(m.source) for m in members])
    dataset = split_dataset(tasks[0], split)
    batch = members[0].cfg.inference.batch_size

    def fused(images: torch.Tensor) -> torch.Tensor:
        total = None
        for m, t, wm in zip(members, tasks, w):
            hm = tta_heatmaps(m.model, images, views, t.activate, t.lmset.flip_perm)
            if total is not None and hm.shape[-2:] != total.shape[-2:]:
                hm = torch.nn.functional.interpolate(hm, size=total.shape[-2:], mode="bilinear", align_corners=False)
            hm = hm * torch.as_tensor(wm, dtype=hm.dtype, device=hm.device).view(1, -1, 1, 1)
            total = hm if total is None else total + hm
        return total

    coords, conf, _ = tasks[0].predict(members[0].model, dataset, device, None, batch, heatmap_fn=fused)
    return [s.name for s in dataset.samples], coords, conf


def fuse_coordinates(preds: np.ndarray, method: str, weights: np.ndarray | None = None) -> np.ndarray:
    """Weighted mean or median of ``(M, N, K, 2)`` member coordinates → ``(N, K, 2)``; ``weights`` ``(M,)``
    or ``(M, K)`` (per landmark: :mod:`ensembles.weighted` takes the channel as each prediction's axis 0)."""
    from ensembles.weighted import fuse

    fused = fuse([np.moveaxis(p, 1, 0) for p in np.asarray(preds, np.float64)], method, weights)
    return np.moveaxis(fused, 0, 1)


def predict_ensemble(ckpts: Sequence[str | Path], *, out_csv: str | Path, split: str = "test", fusion: str = "mean",
                     weights: Sequence[float] | np.ndarray | None = None, fit: bool = False, per_landmark: bool = False,
                     tta: bool = False, device: str = "auto", progress: bool = True) -> dict:
    """Fuse several keypoint runs and write the wide CSV; returns stats plus the weights used
    (and, with ``fit``, the fit's validation MRE with equal and with fitted weights)."""
    from engine.trainer import pick_device
    from ensembles.weighted import normalize_weights

    if fusion not in FUSIONS:
        raise ValueError(f"unknown fusion {fusion!r}; valid: {', '.join(FUSIONS)}")
    dev = pick_device(device)
    members = [load_model(c, dev) for c in ckpts]
    views = views_from_config(members[0].cfg.inference.tta, enabled=tta)
    lmset = KeypointTask(members[0].cfg).lmset
    info: dict = {}

    def member_coords(which: str) -> tuple[list[str], np.ndarray, KeypointDataset]:
        outs = [predict_member(m, which, views, dev, progress) for m in members]
        names = outs[0][0]
        for (n, *_), c in zip(outs, ckpts):
            if n != names:
                raise ValueError(f"{c}: predicts other {which} images than {ckpts[0]} (different data or fold)")
        return names, np.stack([o[1] for o in outs]), outs[0][3]

    if fit:
        from ensembles.fit import fit_weights

        val_names, val_preds, val_set = member_coords("val")
        true = np.stack([s.coords for s in val_set.samples])
        result = fit_weights(val_preds, true, radial_errors, groups=[group_of(n) for n in val_names],
                             per_channel=per_landmark)
        weights = result.weights
        info["fit"] = {"config": result.config, "val_mre_px_before": result.before, "val_mre_px_after": result.after,
                       "notes": result.notes}
    w = normalize_weights(weights, len(members), len(lmset), members=[str(c) for c in ckpts])
    t0 = time.perf_counter()
    if fusion == "soft":
        names, coords, _ = soft_ensemble(members, split, views, dev, w)
    else:
        names, preds, _ = member_coords(split)
        coords = fuse_coordinates(preds, fusion, w)
    write_wide(out_csv, names, coords, lmset)
    seconds = time.perf_counter() - t0
    info.update(images=len(names), seconds=round(seconds, 3), images_per_s=round(len(names) / seconds, 3),
                csv=str(out_csv), weights=w.tolist())
    return info


def main(argv: list[str] | None = None) -> int:
    from tasks.formats import FormatError

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", action="append", required=True, help="a run's best.pt (repeat for an ensemble)")
    parser.add_argument("-o", "--out", required=True, help="submission CSV")
    parser.add_argument("--split", choices=("test", "val"), default="test")
    parser.add_argument("--fuse", choices=FUSIONS, default="mean", help="soft: heatmaps; mean/median: coordinates")
    parser.add_argument("--weights", type=float, nargs="+", help="one weight per member")
    parser.add_argument("--fit-weights", action="store_true", help="fit member weights on the validation fold")
    parser.add_argument("--per-landmark", action="store_true", help="with --fit-weights: one weight per member per landmark")
    parser.add_argument("--tta", action="store_true")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    try:
        info = predict_ensemble(args.ckpt, out_csv=args.out, split=args.split, fusion=args.fuse, weights=args.weights,
                                fit=args.fit_weights, per_landmark=args.per_landmark, tta=args.tta, device=args.device)
    except (FormatError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if "fit" in info:
        fit = info["fit"]
        print(f"fitted on the validation fold ({fit['config']}, cross-fitted): MRE px {fit['val_mre_px_before']:.3f} "
              f"(equal weights) -> {fit['val_mre_px_after']:.3f}" + "".join(f"; {n}" for n in fit["notes"]))
    print(f"wrote {info['csv']}: {info['images']} images in {info['seconds']:.1f}s; weights {np.round(info['weights'], 3).tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
