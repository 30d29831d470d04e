"""Pseudo-labels from a fitted ensemble, whatever its task: a confidence threshold fitted on the members' out-of-fold
validation predictions, then the test predictions it keeps written as a training folder in the task's own
layout (``tools/pseudo_label.py``; a competition cycle's pseudo-label round).

The task's pseudo-label side (``tasks/<task>/pseudo.py``, reached through its spec) defines the confidence and
what a right label is, fits the threshold on arrays, and writes and reads the folder; this module gathers the
arrays the way the ensemble fuses them:

- maps (segmentation): each validation image's members' cached maps fused with the ensemble's weights (its
  method's: equal for soft and hard, the fitted or given ones for weighted) at the fit size
  (``fit.fit_size``, as the ensemble's own fit) against the truth there; each test image's fused map at its
  original size, on the cache's levels ``round(255 p)``;
- values (keypoints, bone age): the members' out-of-fold validation values and their fusion by the ensemble's
  method (``soft``, which averages outputs before decoding, by the mean of the decoded members: the spread
  needs each member's values), against the truth; the same for the test images.

Test predictions come from every member run's ``preds/test`` cache when all are there, else from the members'
models (the one predictor, with the ensemble's TTA views when ``tta``). The thresholds hold for test predictions
made the way the validation caches were (same TTA views: a warning says when the caches differ).

The folder is built beside ``out`` and renamed into place once complete, under ``out``'s claim
(:mod:`tasks.formats.run_lock`): a failed or interrupted run leaves no half-written folder and an existing one
untouched; ``out`` is replaced only with ``overwrite``.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from engine.config import ConfigError
from ensembles.config import EnsembleConfig, load_ensemble_config
from ensembles.members import Member, resolve_members
from tasks.formats import FormatError
from tasks.formats.run_lock import claim
from tasks.pseudo import FORMAT, check_precision, write_manifest


def pseudo_label(ens: EnsembleConfig | str | os.PathLike, out: str | os.PathLike, *, precision: float = 0.99,
                 tta: bool = False, device: str = "auto", overwrite: bool = False,
                 progress: bool = True) -> tuple[Path, dict]:
    """Fit the confidence threshold of ensemble ``ens`` (a config, or its YAML) at ``precision`` on its members'
    validation caches and write the test predictions it keeps into the folder ``out`` (its task's training
    layout, ``pseudo.json`` beside); returns the folder and the manifest. ``overwrite`` replaces an existing
    folder (only once the new one is complete)."""
    precision = check_precision(precision)
    if not isinstance(ens, EnsembleConfig):
        ens = load_ensemble_config(ens)
    side = ens.spec.pseudo_side()
    out = Path(out)
    with claim(out):
        if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
            raise FileExistsError(f"{out}: exists; choose another --out or replace it (--overwrite)")
        if side.output == "maps":
            thresholds, validation, test_source, write = _maps(ens, side, precision, tta, device, progress)
        else:
            thresholds, validation, test_source, write = _values(ens, side, precision, tta, device)
        manifest: dict[str, Any] = {
            "format": FORMAT, "task": ens.task, "precision": precision, "definition": side.definition,
            "source": {"ensemble": ens.run_name, "method": ens.method, "members": ens.labels,
                       "member_runs": {m.label: [str(r) for r in m.run_dirs] for m in ens.members},
                       "test_predictions": test_source, "tta": tta},
            "thresholds": thresholds, "validation": validation}

        def build(folder: Path) -> None:
            stats = write(folder)
            manifest["images"] = stats.pop("per_image")
            manifest["test"] = stats
            write_manifest(folder, manifest)

        _build_atomically(out, build)
    return out, manifest


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def pseudo_report(out: str, manifest: dict) -> str:
    """The fitted thresholds and what was kept, for the terminal."""
    source, val, test = manifest["source"], manifest["validation"], manifest["test"]
    lines = [f"pseudo-labels of ensemble {source['ensemble']} ({manifest['task']}, {source['method']} of "
             f"{len(source['members'])} members; test predictions from {source['test_predictions']}), "
             f"precision {manifest['precision']:g}",
             f"validation: kept {_percent(val['kept'])} of the labels, right {_percent(val.get('right'))} of the kept "
             f"(the target: {_percent(manifest['precision'])})",
             f"test: {test['images']} images, {test['written']} written, kept {_percent(test['kept'])} of the labels"]
    thresholds = manifest["thresholds"]
    per_item = {k: v for k, v in thresholds.items() if isinstance(v, dict)}
    scalars = {k: v for k, v in thresholds.items() if not isinstance(v, (dict, list))}
    if scalars:
        lines.append("threshold: " + ", ".join(f"{k} {'none (nothing kept)' if v is None else v}"
                                               for k, v in scalars.items()))
    kept = next((v for k, v in test.items() if k.startswith("kept_per_")), {})
    if per_item:
        keys = list(per_item)
        lines.append(f"{'':<14}" + "".join(f"{k:>8}" for k in keys) + f"{'kept':>8}")
        for name in next(iter(per_item.values())):
            cells = ["-" if per_item[k][name] is None else f"{per_item[k][name]:.3f}" for k in keys]
            lines.append(f"  {name:<12}" + "".join(f"{c:>8}" for c in cells) + f"{_percent(kept.get(name)):>8}")
    elif kept:
        lines.append("kept per item: " + ", ".join(f"{k} {_percent(v)}" for k, v in kept.items()))
    lines.append(f"wrote {out}")
    return "\n".join(lines)


def _build_atomically(out: Path, build: Any) -> None:
    """``build(folder)`` into a fresh folder beside ``out``, then renamed to ``out`` (an old ``out`` goes only once
    the new one is in place). Leftovers of an interrupted build are removed first: the caller holds the claim."""
    parent = out.resolve().parent
    for stale in parent.glob(f".{out.name}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    temp = parent / f".{out.name}.{os.getpid()}.tmp"
    temp.mkdir(parents=True)
    try:
        build(temp)
        if out.exists():
            old = parent / f".{out.name}.{os.getpid()}.old.tmp"
            os.rename(out, old)
            os.rename(temp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(temp, out)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


# ------------------------------------------------------------------------------------------------ maps

def fused_levels(maps: list[np.ndarray], weights: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(C, H, W)`` uint8 levels ``round(255 p)`` of the members' maps fused with ``(M, C)`` weights at the
    largest member size, then resized (bilinear) to the original ``size``, one class at a time."""
    import cv2

    from ensembles.soft import fuse_channel, largest_size

    fuse_size = largest_size(maps)
    out = np.empty((maps[0].shape[0], *size), np.uint8)
    for c in range(out.shape[0]):
        prob = fuse_channel(maps, weights[:, c], c, fuse_size)
        if prob.shape != size:
            prob = cv2.resize(prob, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        out[c] = np.rint(np.clip(prob, 0, 1) * 255)
    return out


def _maps(ens: EnsembleConfig, side: Any, precision: float, tta: bool, device: str, progress: bool):
    from tqdm import tqdm

    from ensembles.fit import validation_items
    from ensembles.runner import (Fuser, check_cache, ensemble_samples, live_member_maps, member_maps_from_cache,
                                  model_predict, warn_tta_mismatch)

    members = resolve_members(ens, need_models=False)
    val = ensemble_samples(ens, members, "val")
    unlabelled = [s.name for s in val if s.label_path is None]
    if unlabelled:
        raise FormatError(f"{ens.run_name}: validation image {unlabelled[0]} has no label file")
    check_cache(members, val, "val")
    weights = Fuser(ens, members, postprocess={}).weights

    def val_items() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        bar = tqdm(val, desc="fit pseudo-label band", disable=not progress, dynamic_ncols=True)
        for maps, gt, _ in validation_items(members, bar, ens.fit.fit_size):
            fused = np.einsum("mc,mcp->cp", weights.astype(np.float32), maps)
            yield np.rint(np.clip(fused, 0, 1) * 255).astype(np.uint8), gt

    thresholds, validation = side.fit(val_items(), precision)   # before the test images: they reset the sources
    test = ensemble_samples(ens, members, "test")
    try:
        check_cache(members, test, "test")
        predict = None
        warn_tta_mismatch(members)
    except FormatError as no_cache:
        from engine.device import pick_device

        try:
            members = resolve_members(ens, need_models=True)
        except (ValueError, OSError) as err:
            raise ConfigError(f"{err} (the members' test caches cannot stand in: {no_cache})") from None
        ensemble_samples(ens, members, "test")
        predict = model_predict(members, ens, tta, pick_device(device))
    read = ens.spec.ensemble_side().read_image

    def test_items() -> Iterator[tuple[Any, np.ndarray]]:
        for s in tqdm(test, desc="pseudo-labels", disable=not progress, dynamic_ncols=True):
            if predict is None:
                maps, size = member_maps_from_cache(members, s.name, "test")
            else:
                image = read(s.image_path)
                maps, size = live_member_maps(members, predict, s.name, image), image.shape[:2]
            yield s, fused_levels(maps, weights, size)

    return thresholds, validation, "cache" if predict is None else "models", \
        lambda folder: side.write(folder, test_items(), thresholds)


# ---------------------------------------------------------------------------------------------- values

def _values(ens: EnsembleConfig, side: Any, precision: float, tta: bool, device: str):
    from ensembles.values import channels_of, ensemble_weights, fuse_values, member_predictions, validation_values

    members = resolve_members(ens, need_models=False)
    ens_side = ens.spec.ensemble_side()
    channels = channels_of(ens, members)
    weights = ensemble_weights(ens, members, channels)
    method = "mean" if ens.method == "soft" else ens.method

    def fuse(preds: np.ndarray) -> np.ndarray:
        return fuse_values(preds, method, weights, ens_side.channel_axis, radius=ens.radius, min_votes=ens.min_votes)

    cfg = members[0].cfgs[0]
    _, val_preds, truth = validation_values(ens, members)
    thresholds, validation = side.fit(val_preds, fuse(val_preds), truth, cfg, precision)
    cached = all((run / "preds" / "test" / ens_side.cache_file).is_file() for m in members for run in m.run_dirs)
    try:
        predicting: list[Member] = members if cached else resolve_members(ens, need_models=True)
    except (ValueError, OSError) as err:
        raise ConfigError(f"{err} (and not every member run has a test cache preds/test/{ens_side.cache_file} to "
                          "stand in)") from None
    names, preds = member_predictions(ens, predicting, "test", from_cache=cached, tta=tta, device=device)
    by_name = {s.name: s for s in side.test_samples(cfg)}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ConfigError(f"{ens.run_name}: test image {missing[0]} of the members' predictions is not among the test "
                          f"images of {members[0].run_dirs[0]}'s config")
    samples = [by_name[n] for n in names]
    fused = fuse(preds)
    return thresholds, validation, "cache" if cached else "models", \
        lambda folder: side.write(folder, samples, preds, fused, thresholds, cfg)

