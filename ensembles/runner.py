"""Ensembles of dense maps (segmentation) end to end: members on the fly (models loaded once) or from the
prediction cache; the task's ensemble side (``tasks/<task>/ensemble.py``, ``output = "maps"``) gives its
images, classes, thresholds, truth and cache.

Per image, each member gives ``(C, h_m, w_m)`` probabilities at its own size (a member with several
fold runs: the mean of its fold models on the test set, the out-of-fold model on the validation set),
as uint8 ``p * 255`` — the cache's form, so on the fly and ``--from-cache`` fuse the same numbers.
The fusion works one class at a time — fused at the largest member size, resized to the original
size, thresholded, RLE-encoded — and only on the crop where the class can be foreground (no pixel
outside every member's above-threshold box can pass; see ``ensembles.soft.find_region``). It runs in
a thread pool while the next image is read or predicted. At most ``2 x workers`` images are in
flight, fewer when their maps would exceed ``max_in_flight_mb``, so peak memory does not depend on
the number of images. Fusing from the cache imports no torch.
"""
from __future__ import annotations

import sys
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from engine.config import ConfigError
from ensembles.config import EnsembleConfig, postprocess_spec, threshold_vector, weight_table
from ensembles.hard import region_runs, resolve_min_votes, runs_to_rle
from ensembles.members import Member, record_ensemble, resolve_members, timed_stats
from ensembles.soft import check_maps, crop_channel, find_region, largest_size, pow2_ratio
from ensembles.weighted import TIE_EPS, check_finite, normalize_weights
from tasks.formats import FormatError
from tasks.postprocess import apply_ops, class_ops
from tasks.submission import AtomicCSVWriter


def ensemble_samples(ens: EnsembleConfig, members: list[Member], split: str) -> list[Any]:
    """Images of ``split`` every member predicts, and for each member which of its runs predict each one.

    test: every run predicts every image (``test_root`` of the ensemble, else the members', which must
    agree). val: each run predicts its validation fold (a run on all data none); a member's folds must not
    overlap; the ensemble covers the images every member has (out-of-fold when a member lists all its folds).
    """
    side = ens.spec.ensemble_side()
    if split == "test":
        roots = {str(c.data.test_root) for m in members for c in m.cfgs}
        root = ens.test_root
        if root is None:
            if len(roots) != 1 or roots == {"None"}:
                raise ConfigError(f"ensemble {ens.run_name}: members name different (or no) test roots "
                                  f"{sorted(roots)}; set test_root in the ensemble config")
            root = roots.pop()
        samples = side.test_samples(root)
        for m in members:
            m.sources = {s.name: list(range(len(m.run_dirs))) for s in samples}
        return samples
    by_name: dict[str, Any] = {}
    for m in members:
        m.sources = {}
        for r in m.validation_runs():
            for s in side.samples(m.cfgs[r], "val"):
                if s.name in m.sources:
                    raise ConfigError(f"member {m.label}: image {s.name} is in the validation fold of both "
                                      f"{m.run_dirs[m.sources[s.name][0]]} and {m.run_dirs[r]} (same fold twice?)")
                m.sources[s.name] = [r]
                by_name[s.name] = s
    common = set.intersection(*(set(m.sources) for m in members))
    if not common:
        raise ConfigError(f"ensemble {ens.run_name}: the members' validation folds share no image; members trained "
                          f"on different folds need all their folds ('runs: [...-f0, ...-f1, ...]') for out-of-fold "
                          f"predictions")
    if any(len(m.sources) != len(common) for m in members):
        sizes = ", ".join(f"{m.label}: {len(m.sources)}" for m in members)
        warnings.warn(f"ensemble {ens.run_name}: validation images differ between members ({sizes}); using the "
                      f"{len(common)} they share", stacklevel=2)
    return [s for s in sorted(by_name.values(), key=lambda s: (side.group(s), s.name)) if s.name in common]


class Fuser:
    """One image's member maps → RLE per class, one class at a time (soft, weighted or hard), each class's
    mask post-processed (``postprocess``, default: the ensemble's) before it is encoded."""

    def __init__(self, ens: EnsembleConfig, members: list[Member], classes: tuple[str, ...] | None = None,
                 postprocess: dict[str, list[str]] | None = None) -> None:
        classes = ens.spec.classes if classes is None else classes
        self.method = ens.method
        self.postprocess = postprocess_spec(ens) if postprocess is None else postprocess
        self.ops = class_ops(self.postprocess, classes)
        self.labels = [m.label for m in members]
        self.classes = classes
        if ens.method == "weighted":
            self.weights = normalize_weights(weight_table(ens, classes), len(members), len(classes),
                                             members=self.labels, channels=classes, where=f"{ens.run_name}: weights")
        else:
            self.weights = np.full((len(members), len(classes)), 1.0 / len(members))
        self.thresholds = threshold_vector(ens, classes) if ens.method != "hard" else None
        self.member_thresholds = np.stack([m.thresholds for m in members])
        self.min_votes = resolve_min_votes(ens.min_votes, len(members)) if ens.method == "hard" else None

    def __call__(self, maps: list[np.ndarray], size: tuple[int, int]) -> list[str]:
        check_maps(maps, self.labels)
        if maps[0].shape[0] != len(self.classes):
            raise ValueError(f"{self.labels[0]}: {maps[0].shape[0]} channels for {len(self.classes)} classes")
        row_max = [m.max(axis=2) for m in maps]
        return [self.fuse_class(maps, c, size, row_max) for c in range(len(self.classes))]

    def fuse_class(self, maps: list[np.ndarray], c: int, size: tuple[int, int],
                   row_max: list[np.ndarray] | None = None) -> str:
        """RLE of class ``c``, computed only on the crop where it can be foreground (see ``find_region``)."""
        mask, row0, col0 = self.fuse_mask(maps, c, size, row_max)
        if self.ops[c]:
            mask = apply_ops(mask, self.ops[c])
        return runs_to_rle(*region_runs(mask, row0, col0, size[1]))

    def fuse_mask(self, maps: list[np.ndarray], c: int, size: tuple[int, int],
                  row_max: list[np.ndarray] | None = None) -> tuple[np.ndarray, int, int]:
        """Class ``c``'s mask before post-processing, as a crop holding all of it, and the crop's top-left
        corner (row, column) in the image of ``size``."""
        height, width = size
        if self.method == "hard":
            limits = list(self.member_thresholds[:, c])
            rows, cols = find_region(maps, c, limits, size, row_max=row_max)
            counts = np.zeros((rows.stop - rows.start, cols.stop - cols.start), np.uint8)
            for t, m in zip(limits, maps):
                part = crop_channel(m, c, (rows, cols), size, probability=m.dtype != np.uint8)
                counts += part > (t * 255 if m.dtype == np.uint8 else t)
            mask = counts >= self.min_votes
        else:
            w = self.weights[:, c]
            fuse_size = largest_size(maps)
            ry, rx = pow2_ratio(fuse_size[0], height), pow2_ratio(fuse_size[1], width)
            limits = [float(self.thresholds[c]) if wk > 0 else None for wk in w]
            region = find_region(maps, c, limits, fuse_size, row_max=row_max) if ry and rx else \
                (slice(0, fuse_size[0]), slice(0, fuse_size[1]))
            rows, cols = region
            prob = np.zeros((rows.stop - rows.start, cols.stop - cols.start), np.float32)
            for wk, m in zip(w, maps):
                if wk > 0:
                    prob += np.float32(wk) * crop_channel(m, c, region, fuse_size)
            np.clip(prob, 0.0, 1.0, out=prob)
            if fuse_size != (height, width):
                ry, rx = height / fuse_size[0], width / fuse_size[1]
                rows = slice(round(rows.start * ry), round(rows.stop * ry))
                cols = slice(round(cols.start * rx), round(cols.stop * rx))
                if prob.size:
                    prob = cv2.resize(prob, (cols.stop - cols.start, rows.stop - rows.start),
                                      interpolation=cv2.INTER_LINEAR)
            mask = prob > self.thresholds[c] + TIE_EPS
        return mask, rows.start, cols.start

    def describe(self) -> dict:
        out: dict = {"method": self.method, "members": self.labels}
        if self.method == "hard":
            out.update(min_votes=self.min_votes, member_thresholds=self.member_thresholds.round(4).tolist())
        else:
            w = self.weights
            out["weights"] = (w[:, 0].round(4).tolist() if np.allclose(w, w[:, :1]) else
                              {c: w[:, k].round(4).tolist() for k, c in enumerate(self.classes)})
            t = self.thresholds
            out["thresholds"] = float(t[0]) if np.allclose(t, t[0]) else dict(zip(self.classes, t.round(4).tolist()))
        if self.postprocess:
            out["postprocess"] = self.postprocess
        return out


def warn_tta_mismatch(members: list[Member]) -> list[str]:
    """Warn (stderr, ``warning:``) for every member run whose validation cache, which weights and thresholds
    are fitted on, was predicted with other TTA views than its test cache, which they are applied to.

    Fitted on plain validation maps and applied to hflip-averaged test maps, the demo's fitted ensemble lost
    to its best member (test Dice 0.776 vs 0.791); fitted on validation maps made like the test maps, it won
    (0.794). Returns the messages."""
    notes = []
    for m in members:
        cache_tta = m.cfgs[0].spec.ensemble_side().cache_tta
        for run, cfg in zip(m.run_dirs, m.cfgs):
            val, test = cache_tta(run, "val", cfg), cache_tta(run, "test", cfg)
            if val and test and val != test:
                notes.append(f"member {m.label}: {run / 'preds' / 'val'} was predicted with TTA views {val}, "
                             f"{run / 'preds' / 'test'} with {test}; what is fitted on the first does not carry "
                             f"over to the second: write both the same way (inference.py --split val "
                             f"{'--tta ' if test != 'identity' else ''}--save-probs)")
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    return notes


def check_cache(members: list[Member], samples: list[Any], split: str) -> None:
    """Every (member run, image) has a cache entry, and a run's cache holds no image outside the set."""
    wanted = {s.name for s in samples}
    for m in members:
        for r, run in enumerate(m.run_dirs):
            folder = run / "preds" / split
            expected = {n for n, rs in m.sources.items() if r in rs and n in wanted}
            have = {p.name[:-4] for p in folder.glob("*.npz")} if folder.is_dir() else set()
            missing = sorted(expected - have)
            if missing:
                raise FormatError(f"member {m.label}: {folder} lacks {len(missing)} of {len(expected)} images "
                                  f"(e.g. {missing[0]}); write it with `python inference.py --ckpt "
                                  f"{run / m.checkpoint} --split {split} --save-probs`")
            if split == "test":
                extra = sorted(have - expected)
                if extra:
                    raise FormatError(f"member {m.label}: {folder} holds {len(extra)} images that are not in the "
                                      f"test set (e.g. {extra[0]}): members must predict the same images")


def member_maps_from_cache(members: list[Member], name: str, split: str) -> tuple[list[np.ndarray], tuple[int, int]]:
    """Each member's cached map for one image (fold runs averaged), and the original size (must agree)."""
    maps, size = [], None
    for m in members:
        side = m.cfgs[0].spec.ensemble_side()
        runs = m.sources[name]
        parts = []
        for r in runs:
            probs, orig = side.load_cached(side.cache_path(m.run_dirs[r], split, name), f"member {m.label}", m.cfgs[r])
            if size is None:
                size = orig
            elif orig != size:
                raise FormatError(f"member {m.label}: image {name} has size {orig} in {m.run_dirs[r]}, other members "
                                  f"say {size}")
            parts.append(probs)
        if len(parts) == 1:
            maps.append(parts[0])
        else:
            shapes = {p.shape for p in parts}
            if len(shapes) != 1:
                raise FormatError(f"member {m.label}: its fold runs cache {name} at different sizes {sorted(shapes)}")
            maps.append(np.mean([p.astype(np.float32) / (255 if p.dtype == np.uint8 else 1) for p in parts], axis=0))
    return maps, size


def stream(jobs: Iterator[Callable[[], tuple[str, list[str]]]], workers: int,
           limit: Callable[[], int] | None = None) -> Iterator[tuple[str, list[str]]]:
    """Run zero-argument jobs in a pool, yielding results in order.

    At most ``limit()`` jobs wait or run besides the one being made (default ``2 x workers``); a limit of
    0 runs each job inline, so only one image's maps exist at a time.
    """
    workers = max(1, workers)
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for job in jobs:
            bound = 2 * workers if limit is None else limit()
            if bound == 0:
                while pending:
                    yield pending.popleft().result()
                result, job = job(), None  # drop the job (and its maps) before the next one is made
                yield result
                continue
            pending.append(pool.submit(job))
            job = None
            while len(pending) > bound:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def in_flight(budget_mb: float, image_bytes: int, workers: int) -> int:
    """How many images may wait or run in the pool so that their maps, and the next image's, fit ``budget_mb``."""
    return max(0, min(2 * max(1, workers), int(budget_mb * 2**20 // max(1, image_bytes)) - 1))


def cache_rows(members: list[Member], samples: list[Any], fuser: Fuser, split: str, workers: int,
               progress: bool = True, budget_mb: float = 1024) -> Iterator[tuple[str, list[str]]]:
    """Rows fused from the prediction cache; reading and fusing run in the pool.

    Maps exist only inside running jobs, so the pool gets as many workers as ``budget_mb`` holds images
    (sized from the first image's cache files), at least one.
    """
    check_cache(members, samples, split)
    if samples:
        side = members[0].cfgs[0].spec.ensemble_side()
        first = sum(side.cache_path(m.run_dirs[r], split, samples[0].name).stat().st_size
                    for m in members for r in m.sources[samples[0].name])
        workers = max(1, min(workers, int(budget_mb * 2**20 // max(1, first))))

    def job(name: str) -> Callable[[], tuple[str, list[str]]]:
        def run() -> tuple[str, list[str]]:
            maps, size = member_maps_from_cache(members, name, split)
            return name, fuser(maps, size)
        return run

    bar = tqdm(samples, desc="ensemble (cache)", disable=not progress, dynamic_ncols=True)
    return stream((job(s.name) for s in bar), workers)


def quantize(probs: np.ndarray, where: str) -> np.ndarray:
    """Float probabilities → uint8 ``p * 255``, the cache's form: a quarter of the memory in flight, and the
    on-the-fly ensemble fuses exactly what ``--from-cache`` would (NaN/inf: an error naming ``where``)."""
    if not np.isfinite(probs.sum(dtype=np.float64)):
        check_finite(probs, where)
    flat = np.ascontiguousarray(probs, np.float32).reshape(-1, probs.shape[-1])
    # one pass: saturate(round(p * 255)), as np.rint(clip(p, 0, 1) * 255) for p >= 0
    return cv2.convertScaleAbs(flat, alpha=255.0).reshape(probs.shape)


MemberPredict = Callable[[int, int, np.ndarray], np.ndarray]


def model_predict(members: list[Member], ens: EnsembleConfig, tta: bool, device) -> MemberPredict:
    """``predict(member, run, image) -> (C, h, w)`` float probabilities; every model is loaded once here and
    predicts with the one predictor (``engine.predictor.Predictor``) under its TTA views
    (:meth:`EnsembleConfig.member_tta`): the whole image resized to its input size or, where its run's
    ``inference.sliding_window`` says so, in tiles at the original size."""
    from engine.predictor import Predictor, load_model, to_device
    from tasks.tta import views_from_config

    for m in members:
        if any(getattr(cfg.data, "roi", None) is not None for cfg in m.cfgs):
            raise ConfigError(f"member {m.label}: a stage-2 wrist-ROI run predicts only with its stage 1; write its "
                              f"two-stage maps with `python inference.py --ckpt {m.run_dirs[0] / m.checkpoint} "
                              "--stage1 <stage-1 run>/best.pt --split <split> --save-probs` and fuse with --from-cache")
    predictors = [[Predictor(load_model(ckpt, device, cfg), views_from_config(ens.member_tta(cfg), enabled=tta), device)
                   for ckpt, cfg in zip(m.checkpoints, m.cfgs)] for m in members]

    def predict(member: int, run: int, image: np.ndarray) -> np.ndarray:
        predictor = predictors[member][run]
        batch = to_device(predictor.task.image_batch(image, predictor.input_size), device)
        return predictor(batch)[0].float().cpu().numpy()

    return predict


def live_member_maps(members: list[Member], predict: MemberPredict, name: str, image: np.ndarray) -> list[np.ndarray]:
    """Every member's map of one image on the fly, quantised as the cache holds it: the mean of the member's
    runs that predict the image, summed in place (few float maps alive)."""
    maps = []
    for k, m in enumerate(members):
        runs = m.sources[name]
        total = predict(k, runs[0], image)
        if len(runs) > 1:
            total = total.astype(np.float32, copy=True)
            for r in runs[1:]:
                total += predict(k, r, image)
            total /= len(runs)
        maps.append(quantize(total, f"member {m.label}: {name}"))
        total = None
    return maps


def live_rows(members: list[Member], samples: list[Any], fuser: Fuser, predict: MemberPredict,
              workers: int, progress: bool = True, read: Callable[[Path], np.ndarray] | None = None,
              budget_mb: float = 1024) -> Iterator[tuple[str, list[str]]]:
    """Rows predicted on the fly: each image through each member (its fold runs averaged), quantised, fused
    in the pool while the next image is predicted. The images in flight are bounded so that their maps
    fit ``budget_mb`` (sized from the first image; 0 in flight: fused inline)."""
    read = read or members[0].cfgs[0].spec.ensemble_side().read_image
    bound = {"n": 2 * max(1, workers)}

    def jobs() -> Iterator[Callable[[], tuple[str, list[str]]]]:
        for s in tqdm(samples, desc="ensemble", disable=not progress, dynamic_ncols=True):
            image = read(s.image_path)
            maps = live_member_maps(members, predict, s.name, image)
            if s is samples[0]:
                bound["n"] = in_flight(budget_mb, sum(m.nbytes for m in maps), workers)
            yield (lambda name=s.name, maps=maps, size=image.shape: (name, fuser(maps, size)))
            maps = None  # the job holds them; the next image's maps are made without these alive here

    return stream(jobs(), workers, lambda: bound["n"])


def write_rows(rows: Iterator[tuple[str, list[str]]], out_csv: str | Path, classes: tuple[str, ...]) -> int:
    """Stream ``(image_name, rles)`` rows into an atomic ``image_name,class,rle`` CSV; returns the images written."""
    n = 0
    with AtomicCSVWriter(out_csv) as writer:
        for name, rles in rows:
            writer.write_image(name, rles, classes)
            n += 1
    return n


def predict_ensemble(ens: EnsembleConfig, *, out_csv: str | Path, split: str = "test", tta: bool = False,
                     from_cache: bool = False, device: str = "auto", workers: int | None = None,
                     progress: bool = True) -> dict:
    """Write the ensemble's submission CSV (atomic) and its run folder's summary.json; returns stats."""
    members = resolve_members(ens, need_models=not from_cache)
    samples = ensemble_samples(ens, members, split)
    fuser = Fuser(ens, members)
    workers = workers or ens.workers
    if from_cache:
        if tta:
            raise ConfigError("--tta with --from-cache: the cache holds what the members predicted (with or without "
                              "TTA); re-run the members with --tta --save-probs instead")
        if split == "test" and "fit" in (ens.weights, ens.thresholds):
            warn_tta_mismatch(members)
        rows = cache_rows(members, samples, fuser, split, workers, progress, ens.max_in_flight_mb)
    else:
        from engine.device import pick_device

        predict = model_predict(members, ens, tta, pick_device(device))
        rows = live_rows(members, samples, fuser, predict, workers, progress, budget_mb=ens.max_in_flight_mb)
    t0 = time.perf_counter()
    n = write_rows(rows, out_csv, ens.spec.classes)
    stats = timed_stats(n, time.perf_counter() - t0, out_csv)
    if split == "test":
        record_ensemble(ens, members, fuser.describe(), tta=tta, from_cache=from_cache,
                        images_per_s=stats["images_per_s"])
    return stats
