"""Segmentation ensembles end to end: members on the fly (models loaded once) or from the prediction cache;
and what every task's ensemble shares: its members (:func:`resolve_members`) and its run folder
(:func:`write_ensemble_summary`).

Per image, each member gives ``(C, h_m, w_m)`` probabilities at its own size (a member with several
fold runs: the mean of its fold models on the test set, the out-of-fold model on the validation set),
as uint8 ``p * 255`` — the cache's form, so on the fly and ``--from-cache`` fuse the same numbers.
The fusion works one class at a time — fused at the largest member size, resized to the original
size, thresholded, RLE-encoded — and only on the crop where the class can be foreground (no pixel
outside every member's above-threshold box can pass; see ``ensembles.soft.find_region``). It runs in
a thread pool while the next image is read or predicted. At most ``2 x workers`` images are in
flight, fewer when their maps would exceed ``max_in_flight_mb``, so peak memory does not depend on
the number of images.
"""
from __future__ import annotations

import time
import warnings
import sys
import zipfile
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np
from tqdm import tqdm

from engine.checkpoint import Checkpoint
from engine.config import Config, ConfigError
from engine.run_folder import member_config
from engine.sliding_window import MODE_RESIZE, MODE_SLIDING
from ensembles.config import EnsembleConfig, postprocess_spec, read_fit, threshold_vector, weight_table
from ensembles.hard import region_runs, resolve_min_votes, runs_to_rle
from ensembles.registry import ENSEMBLE_RUNNERS
from ensembles.soft import check_maps, crop_channel, find_region, largest_size, pow2_ratio
from ensembles.weighted import TIE_EPS, check_finite, normalize_weights
from tasks.formats import FormatError
from tasks.formats.atomic import write_text
from tasks.formats.handbones import CLASSES, HandboneSample, list_samples
from tasks.postprocess import apply_ops, class_ops
from tasks.registry import get_task_class
from tasks.segmentation import resolve_thresholds


@dataclass
class Member:
    """A resolved member: its label, run folders, their configs and its own thresholds (segmentation hard
    votes; None for the other tasks)."""

    label: str
    run_dirs: list[Path]
    cfgs: list[Config]
    checkpoint: str
    thresholds: np.ndarray | None
    sources: dict[str, list[int]] = field(default_factory=dict)  # image name -> indices of the runs predicting it
    # per run: its checkpoint as read for its config (built into a model without a second read), or the file
    # where the run has none (fused from its prediction cache; a model load then names the missing file)
    checkpoints: list[Checkpoint | Path] = field(default_factory=list)

    @property
    def image_size(self) -> int:
        return max(c.data.image_size for c in self.cfgs)


def resolve_members(ens: EnsembleConfig) -> list[Member]:
    """Read each member's run configs; check task and data agree (errors name the member and run).

    Keypoint and bone-age members read their test images from the ensemble's ``test_root`` when it is set.
    """
    members = []
    for spec in ens.members:
        cfgs, checkpoints = [], []
        for run in spec.run_dirs:
            if not (run / "config.yaml").is_file():
                raise ConfigError(f"member {spec.label}: {run} is not a run folder (no config.yaml)")
            cfg, ckpt = member_config(run, spec.checkpoint)
            checkpoints.append(run / spec.checkpoint if ckpt is None else ckpt)
            if cfg.task != ens.task:
                raise ConfigError(f"member {spec.label}: run {run} is a {cfg.task} run, the ensemble is {ens.task}")
            if ens.test_root is not None and ens.task != "segmentation":
                cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"test_root": ens.test_root})})
            cfgs.append(cfg)
        own = spec.threshold if spec.threshold is not None else cfgs[0].inference.threshold
        thresholds = resolve_thresholds(own) if ens.task == "segmentation" else None
        members.append(Member(spec.label, spec.run_dirs, cfgs, spec.checkpoint, thresholds, checkpoints=checkpoints))
    roots = {(m.label, str(c.data.root)) for m in members for c in m.cfgs}
    if len({r for _, r in roots}) > 1:
        detail = ", ".join(f"{label}: {root}" for label, root in sorted(roots))
        raise ConfigError(f"ensemble {ens.run_name}: members were trained on different data ({detail})")
    return members


def ensemble_samples(ens: EnsembleConfig, members: list[Member], split: str) -> list[HandboneSample]:
    """Images of ``split`` every member predicts, and for each member which of its runs predict each one.

    test: every run predicts every image (``test_root`` of the ensemble, else the members', which must
    agree). val: each run predicts its validation fold; a member's folds must not overlap; the
    ensemble covers the images every member has (out-of-fold when a member lists all its folds).
    """
    from engine.predictor import split_samples

    if split == "test":
        roots = {str(c.data.test_root) for m in members for c in m.cfgs}
        root = ens.test_root
        if root is None:
            if len(roots) != 1 or roots == {"None"}:
                raise ConfigError(f"ensemble {ens.run_name}: members name different (or no) test roots "
                                  f"{sorted(roots)}; set test_root in the ensemble config")
            root = roots.pop()
        samples = list_samples(root, labels=None)
        for m in members:
            m.sources = {s.name: list(range(len(m.run_dirs))) for s in samples}
        return samples
    by_name: dict[str, HandboneSample] = {}
    for m in members:
        m.sources = {}
        for r, cfg in enumerate(m.cfgs):
            for s in split_samples(cfg, "val"):
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
    return [s for s in sorted(by_name.values(), key=lambda s: (s.patient, s.name)) if s.name in common]


class Fuser:
    """One image's member maps → RLE per class, one class at a time (soft, weighted or hard), each class's
    mask post-processed (``postprocess``, default: the ensemble's) before it is encoded."""

    def __init__(self, ens: EnsembleConfig, members: list[Member], classes: tuple[str, ...] = CLASSES,
                 postprocess: dict[str, list[str]] | None = None) -> None:
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


def predict_mode(cfg: Config) -> str:
    """How a run predicts (and so what its prediction cache must hold): whole-image resizing or sliding window."""
    return MODE_SLIDING if cfg.inference.sliding_window else MODE_RESIZE


def cache_path(run_dir: Path, split: str, name: str) -> Path:
    return run_dir / "preds" / split / f"{name}.npz"


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Arrays of an uncompressed ``.npz`` (what ``np.savez`` writes), read straight from their offsets.

    Large arrays are memory-mapped, small ones read: no ``zipfile`` CRC pass and no copies (the cache
    is written atomically by this harness, and a short file still fails); a compressed archive goes
    through ``np.load``. An array of Python objects is refused (it would need unpickling). A missing file raises
    FileNotFoundError, a damaged one ValueError (zipfile and numpy's header parser raise many types:
    BadZipFile, NotImplementedError, tokenize.TokenError, ...).
    """
    try:
        return _read_npz(path)
    except FileNotFoundError:
        raise
    except Exception as err:
        raise ValueError(f"{type(err).__name__}: {err}") from None


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    out = {}
    size = Path(path).stat().st_size
    with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
        for info in archive.infolist():
            key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if info.compress_type != zipfile.ZIP_STORED:
                with np.load(path) as f:
                    return {k: f[k] for k in f.files}
            raw.seek(info.header_offset)
            local = raw.read(30)
            if local[:4] != b"PK\x03\x04":
                raise ValueError(f"bad local header for {info.filename}")
            name_len, extra_len = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
            raw.seek(info.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(raw)
            shape, fortran, dtype = np.lib.format._read_array_header(raw, version)
            if dtype.hasobject:
                raise ValueError(f"{info.filename} holds Python objects")
            count = int(np.prod(shape))
            start = raw.tell()
            if start + count * dtype.itemsize > size:
                raise ValueError(f"{info.filename} is truncated")
            if count * dtype.itemsize < 1 << 16:
                out[key] = np.fromfile(raw, dtype=dtype, count=count).reshape(shape, order="F" if fortran else "C")
            else:  # mapped: read once, by whatever touches it first (no copy into this process)
                out[key] = np.memmap(path, dtype=dtype, mode="r", offset=start, shape=shape,
                                     order="F" if fortran else "C")
    return out


@dataclass(frozen=True)
class CacheSpec:
    """What a run's cache entries must hold: ``classes`` maps made by ``mode`` (``resize``: at the model's
    ``image_size``; ``sliding_window``: at the original size; ``two_stage``, a wrist-ROI run's map: the original
    size divided by a power of two, :func:`engine.roi_predictor.map_shape`)."""

    classes: int
    mode: str
    image_size: int
    two_stage: bool = False

    @classmethod
    def of(cls, cfg: Config) -> CacheSpec:
        """The spec of the run whose config is ``cfg``."""
        return cls(len(CLASSES), predict_mode(cfg), cfg.data.image_size, getattr(cfg.data, "roi", None) is not None)

    def shape(self, orig: tuple[int, int], got: tuple[int, int]) -> str | None:
        """Why maps of size ``got`` do not fit an image of size ``orig`` (None: they fit)."""
        if self.two_stage:
            factor = 1
            while factor <= max(orig):
                if (max(1, round(orig[0] / factor)), max(1, round(orig[1] / factor))) == got:
                    return None
                factor *= 2
            return "the run's two-stage maps are the image size divided by a power of two"
        want = orig if self.mode == MODE_SLIDING else (self.image_size, self.image_size)
        if got == want:
            return None
        how = "at the original size (sliding window)" if self.mode == MODE_SLIDING else \
            f"at the model's {self.image_size} px input (whole image resized)"
        return f"the run predicts {want[0]}x{want[1]} maps, {how}"


@dataclass(frozen=True)
class CacheEntry:
    """One image's cached prediction: probabilities ``(C, h, w)`` (uint8 ``p * 255`` or float in [0, 1]), the
    original image size, and how they were made (``mode``, the TTA views)."""

    probs: np.ndarray
    size: tuple[int, int]
    mode: str
    tta: str | None


def load_cached(path: Path, where: str, spec: CacheSpec) -> CacheEntry:
    """The one reader of a segmentation cache entry (``engine.predictor.save_probs`` writes them), checked
    against what it says and what its run says (``spec``): ``orig_size`` two positive integers, ``probs`` of
    ``spec.classes`` classes, uint8 or float in [0, 1] and finite, made by the run's ``mode`` at the size that
    mode gives. A fault is a :class:`FormatError` naming ``where`` and the file; nothing is stretched to fit.
    (An entry without a mode was made by whole-image resizing.)
    """
    try:
        arrays = read_npz(path)
        probs, orig = arrays["probs"], np.asarray(arrays["orig_size"])
        made = str(arrays["mode"][()]) if "mode" in arrays else MODE_RESIZE
        tta = str(arrays["tta"][()]) if "tta" in arrays else None
    except FileNotFoundError:
        raise FormatError(f"{where}: cached prediction {path} is missing") from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise FormatError(f"{where}: {path} is not a prediction cache entry ({err})") from None
    if made != spec.mode:
        raise FormatError(f"{where}: {path} was predicted with {made}, the run's config asks for {spec.mode} "
                          f"(inference.sliding_window); write the cache again with `inference.py --save-probs`")
    if orig.shape != (2,) or orig.dtype.kind not in "iu" or (orig < 1).any():
        raise FormatError(f"{where}: {path} holds orig_size {orig.tolist()}, not an image height and width")
    size = (int(orig[0]), int(orig[1]))
    if probs.ndim != 3:
        raise FormatError(f"{where}: {path} holds probs of shape {probs.shape}, expected (classes, h, w)")
    if probs.shape[0] != spec.classes:
        raise FormatError(f"{where}: {path} holds {probs.shape[0]} classes, the run predicts {spec.classes}")
    problem = spec.shape(size, tuple(probs.shape[1:]))
    if problem:
        raise FormatError(f"{where}: {path} holds probs of shape {tuple(probs.shape)} for a {size[0]}x{size[1]} image "
                          f"(its orig_size); {problem}: written by another run or another version of it? write the "
                          "cache again with `inference.py --save-probs`")
    if probs.dtype != np.uint8 and probs.dtype.kind != "f":
        raise FormatError(f"{where}: {path} holds probs of dtype {probs.dtype}; the cache holds uint8 p*255 (or "
                          "floats in [0, 1])")
    if probs.dtype.kind == "f":
        try:
            check_finite(probs, f"{where}: {path}")
        except ValueError as err:
            raise FormatError(str(err)) from None
        if probs.min() < 0 or probs.max() > 1:
            raise FormatError(f"{where}: {path} holds float probs in [{probs.min():g}, {probs.max():g}], not in [0, 1]")
    return CacheEntry(probs, size, made, tta)


def cache_tta(run_dir: Path, split: str, spec: CacheSpec) -> str | None:
    """The TTA views of a run's cached ``split`` predictions (its first entry); None where there is no readable
    entry or the cache was written before it recorded them."""
    folder = run_dir / "preds" / split
    for path in sorted(folder.glob("*.npz")) if folder.is_dir() else []:
        try:
            return load_cached(path, str(run_dir), spec).tta
        except FormatError:
            return None
    return None


def warn_tta_mismatch(members: list[Member]) -> list[str]:
    """Warn (stderr, ``warning:``) for every member run whose validation cache, which weights and thresholds
    are fitted on, was predicted with other TTA views than its test cache, which they are applied to.

    Fitted on plain validation maps and applied to hflip-averaged test maps, the demo's fitted ensemble lost
    to its best member (test Dice 0.776 vs 0.791); fitted on validation maps made like the test maps, it won
    (0.794). Returns the messages."""
    notes = []
    for m in members:
        for run, cfg in zip(m.run_dirs, m.cfgs):
            val, test = cache_tta(run, "val", CacheSpec.of(cfg)), cache_tta(run, "test", CacheSpec.of(cfg))
            if val and test and val != test:
                notes.append(f"member {m.label}: {run / 'preds' / 'val'} was predicted with TTA views {val}, "
                             f"{run / 'preds' / 'test'} with {test}; what is fitted on the first does not carry "
                             f"over to the second: write both the same way (inference.py --split val "
                             f"{'--tta ' if test != 'identity' else ''}--save-probs)")
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    return notes


def check_cache(members: list[Member], samples: list[HandboneSample], split: str) -> None:
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
        runs = m.sources[name]
        parts = []
        for r in runs:
            entry = load_cached(cache_path(m.run_dirs[r], split, name), f"member {m.label}", CacheSpec.of(m.cfgs[r]))
            probs, orig = entry.probs, entry.size
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


def cache_rows(members: list[Member], samples: list[HandboneSample], fuser: Fuser, split: str, workers: int,
               progress: bool = True, budget_mb: float = 1024) -> Iterator[tuple[str, list[str]]]:
    """Rows fused from the prediction cache; reading and fusing run in the pool.

    Maps exist only inside running jobs, so the pool gets as many workers as ``budget_mb`` holds images
    (sized from the first image's cache files), at least one.
    """
    check_cache(members, samples, split)
    if samples:
        first = sum(cache_path(m.run_dirs[r], split, samples[0].name).stat().st_size
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
    predicts under its TTA views (:meth:`EnsembleConfig.member_tta`), on the whole image resized to its
    input size or, where its run's ``inference.sliding_window`` says so, in tiles at the original size."""
    import torch

    from engine.predictor import load_model
    from engine.device import amp_dtype
    from engine.sliding_window import sliding_window_predict
    from engine.tta import tta_predict, views_from_config
    from tasks.formats.images import resize_grey

    for m in members:
        if any(getattr(cfg.data, "roi", None) is not None for cfg in m.cfgs):
            raise ConfigError(f"member {m.label}: a stage-2 wrist-ROI run predicts only with its stage 1; write its "
                              f"two-stage maps with `python inference.py --ckpt {m.run_dirs[0] / m.checkpoint} "
                              "--stage1 <stage-1 run>/best.pt --split <split> --save-probs` and fuse with --from-cache")
    models = [[load_model(ckpt, device, cfg) for ckpt, cfg in zip(m.checkpoints, m.cfgs)] for m in members]
    views = [[views_from_config(ens.member_tta(cfg), enabled=tta) for cfg in m.cfgs] for m in members]

    @torch.no_grad()
    def predict(member: int, run: int, image: np.ndarray) -> np.ndarray:
        loaded = models[member][run]
        size = loaded.image_size
        amp = amp_dtype(loaded.cfg.train.amp, device)
        sliding = loaded.cfg.inference.sliding_window
        if not sliding:
            image = resize_grey(image, size, size)
        x = torch.tensor(image, device=device).float().div_(255)[None, None]  # a copy: images may be read-only
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            if sliding:
                probs = sliding_window_predict(loaded.model, x, size, loaded.cfg.inference.tile_overlap,
                                               views[member][run], loaded.cfg.inference.batch_size)
            else:
                probs = tta_predict(loaded.model, x, views[member][run])[0]
            return probs.float().cpu().numpy()

    return predict


def live_rows(members: list[Member], samples: list[HandboneSample], fuser: Fuser, predict: MemberPredict,
              workers: int, progress: bool = True, read: Callable[[Path], np.ndarray] | None = None,
              budget_mb: float = 1024) -> Iterator[tuple[str, list[str]]]:
    """Rows predicted on the fly: each image through each member (its fold runs averaged), quantised, fused
    in the pool while the next image is predicted. The images in flight are bounded so that their maps
    fit ``budget_mb`` (sized from the first image; 0 in flight: fused inline)."""
    from tasks.formats.images import read_grey

    read = read or read_grey
    bound = {"n": 2 * max(1, workers)}

    def member_mean(k: int, name: str, image: np.ndarray) -> np.ndarray:
        """The member's map for this image: its fold runs' mean, summed in place (few float maps alive)."""
        runs = members[k].sources[name]
        first = predict(k, runs[0], image)
        if len(runs) == 1:
            return first
        total = first.astype(np.float32, copy=True)
        for r in runs[1:]:
            total += predict(k, r, image)
        total /= len(runs)
        return total

    def jobs() -> Iterator[Callable[[], tuple[str, list[str]]]]:
        for s in tqdm(samples, desc="ensemble", disable=not progress, dynamic_ncols=True):
            image = read(s.image_path)
            maps = [quantize(member_mean(k, s.name, image), f"member {m.label}: {s.name}")
                    for k, m in enumerate(members)]
            if s is samples[0]:
                bound["n"] = in_flight(budget_mb, sum(m.nbytes for m in maps), workers)
            yield (lambda name=s.name, maps=maps, size=image.shape: (name, fuser(maps, size)))
            maps = None  # the job holds them; the next image's maps are made without these alive here

    return stream(jobs(), workers, lambda: bound["n"])


@ENSEMBLE_RUNNERS.register("segmentation")
def predict_ensemble(ens: EnsembleConfig, *, out_csv: str | Path, split: str = "test", tta: bool = False,
                     from_cache: bool = False, device: str = "auto", workers: int | None = None,
                     progress: bool = True) -> dict:
    """Write the ensemble's submission CSV (atomic) and its run folder's summary.json; returns stats."""
    from engine.predictor import write_submission
    from engine.device import pick_device

    members = resolve_members(ens)
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
        predict = model_predict(members, ens, tta, pick_device(device))
        rows = live_rows(members, samples, fuser, predict, workers, progress, budget_mb=ens.max_in_flight_mb)
    t0 = time.perf_counter()
    n = write_submission(rows, out_csv)
    seconds = time.perf_counter() - t0
    stats = {"images": n, "seconds": round(seconds, 3), "images_per_s": round(n / max(seconds, 1e-9), 3),
             "csv": str(out_csv)}
    if split == "test":
        record_ensemble(ens, members, fuser.describe(), tta=tta, from_cache=from_cache,
                        images_per_s=stats["images_per_s"])
    return stats


def record_ensemble(ens: EnsembleConfig, members: list[Member], describe: dict, *, tta: bool, from_cache: bool,
                    images_per_s: float) -> None:
    """After a test-set prediction: the ensemble's run folder (bookkeeping: a read-only folder warns, the
    submission stands); the speed only when the members ran (a fusion of caches measures no model)."""
    from engine.cli import Output

    speed = None if from_cache else {"images_per_s_tta" if tta else "images_per_s": images_per_s}
    Output(ens.run_dir, required=False)(write_ensemble_summary, ens, members, describe, speed=speed)


def write_ensemble_summary(ens: EnsembleConfig, members: list[Member], describe: dict, speed: dict | None = None,
                           val: dict | None = None) -> dict:
    """The ensemble's run folder (any task): summary.json (members, method, weights, thresholds, validation
    score; ``describe`` says how it fuses) + its config; the task's metric and mode come from its Task."""
    import yaml

    from engine.summary import base_summary, read_summary, update_summary, write_summary

    run_dir = ens.run_dir
    task = get_task_class(ens.task)
    if not read_summary(run_dir):
        write_summary(run_dir, base_summary(
            name=ens.run_name, task=ens.task, kind="ensemble", model=f"ensemble:{ens.method}", family="ensemble",
            arch=ens.method, config_id=ens.run_name, image_size=max(m.image_size for m in members),
            metric=task.metric, mode=task.mode, val={"score": None}))
    fields: dict = {"members": [m.label for m in members], "ensemble": describe,
                    "member_runs": {m.label: [str(r) for r in m.run_dirs] for m in members}}
    if val is None and ens.fit_path.is_file():
        try:
            val = read_fit(ens).get("val")
        except ConfigError:
            val = None
    if val is not None:
        fields["val"] = val
    if speed:
        fields["speed"] = speed
    summary = update_summary(run_dir, **fields)
    write_text(run_dir / "ensemble.yaml", yaml.safe_dump(ens.model_dump(mode="json"), sort_keys=False))
    return summary
