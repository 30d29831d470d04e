"""Joint and landmark detection: Gaussian heatmaps, sub-pixel decoding, MRE/SDR in the original frame.

Data: a folder with ``images/`` and a label file — SHS_NET ``coord_list.csv`` (15 joints), DHA ``all.csv``
(37 landmarks, no header), AASCE ``landmarks.csv`` + ``filenames.csv`` (68 normalised corners) or its
``labels_mat/`` folder of ``.mat`` files, or a wide CSV (``image_name,<lm>_x...,<lm>_y...``) for any set —
plus optional ``spacing.csv`` (``id,spacing_mm``, gives errors in mm) and ``split.csv``
(``img_id,split``: train/test rows, as the phantom writes). Rows of the label file whose image is not in
``images/`` are skipped (``all.csv`` covers the whole atlas); a labelled point off its image, a NaN
coordinate or a missing column is an error naming the file.

Images of any aspect ratio are letterboxed to ``image_size`` (``tasks.letterbox``), keypoints follow
the geometric augmentations (albumentations, ``xy``), and points that leave the input are masked out of
the loss. Targets are rendered at the model's own output stride (``tasks.heatmaps``). Metrics are
always measured in the ORIGINAL image frame (SHS_NET measured on its 224 grid; we do not).
"""
from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Callable, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn
from tqdm import tqdm

from tasks.augment import SeededDataset, build_augment
from tasks.base import DataBase, Task
from tasks.cache import SampleCache
from tasks.formats import FormatError
from tasks.formats.folds import group_folds
from tasks.formats.images import IMAGE_SUFFIXES, image_size, read_grey
from tasks.heatmaps import DecodeMethod, HeatmapLoss, activate, decode_heatmaps, heatmap_to_input
from tasks.interactive import ClickSettings, simulate_clicks
from tasks.keypoint_sets import LANDMARK_SETS, LandmarkSet, get_set, set_for_columns
from tasks.letterbox import Letterbox, ResizeMode

ID_COLUMNS = ("image_name", "img_id")
LabelFormat = Literal["auto", "wide", "dha", "aasce", "mat"]
# A labelled point may sit up to a pixel beyond the border pixel centres (annotation tools round); further
# out it is off the image.
EDGE_TOLERANCE = 1.0


class KeypointData(DataBase):
    root: str = "data/phantom/joints"
    test_root: str | None = None
    landmarks: str = "shs15"
    labels: str | None = None
    label_format: LabelFormat = "auto"
    images: str = "images"
    spacing: str | None = "spacing.csv"
    split_file: str | None = "split.csv"
    resize: ResizeMode = "letterbox"
    sigma: float = Field(2.0, gt=0)
    decode: DecodeMethod = "dark"
    decode_blur: float | None = Field(None, ge=0)   # Gaussian sigma smoothing heatmaps before decoding; 0/None: none
    sdr_radii_px: list[Annotated[float, Field(gt=0)]] = Field(default_factory=lambda: [2.0, 4.0, 8.0])
    sdr_radii_mm: list[Annotated[float, Field(gt=0)]] = Field(default_factory=lambda: [2.0, 4.0, 10.0])
    cache_dir: str | None = None
    clicks: ClickSettings = Field(default_factory=ClickSettings)


@dataclass(frozen=True)
class KeypointSample:
    """One image: its label id (the submission's ``image_name``), path, ``(K, 2)`` coordinates (None
    for an unlabelled test image) and physical pixel size (None when unknown)."""

    name: str
    image_path: Path
    coords: np.ndarray | None
    spacing_mm: float | None = None


def stem(name: str) -> str:
    """``"10001.png"`` and ``"10001"`` name the same image (SHS ids carry the suffix, DHA ids do not)."""
    p = Path(name)
    return p.stem if p.suffix.lower() in IMAGE_SUFFIXES else name


# --------------------------------------------------------------------------------------------------
# Label files
# --------------------------------------------------------------------------------------------------

def _check_coords(path: Path, ids: Sequence[str], coords: np.ndarray, lmset: LandmarkSet) -> None:
    if coords.ndim != 3 or coords.shape[1:] != (len(lmset), 2):
        raise FormatError(f"{path}: expected {len(lmset)} landmarks of set {lmset.name}, got array {coords.shape}")
    bad = ~np.isfinite(coords)
    if bad.any():
        i, k, c = np.argwhere(bad)[0]
        raise FormatError(f"{path}: image {ids[i]}: {lmset.names[k]}_{'xy'[c]} is {coords[i, k, c]} "
                          f"({int(bad.any(-1).sum())} NaN/missing coordinates in all)")
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            raise FormatError(f"{path}: image {i} appears twice")
        seen.add(i)


def read_wide(path: str | os.PathLike, lmset: LandmarkSet | None = None) -> tuple[list[str], np.ndarray, LandmarkSet]:
    """A wide CSV (``image_name`` or ``img_id``, then ``<lm>_x`` ... ``<lm>_y`` ...; SHS_NET's
    ``coord_list.csv`` is one). ``lmset`` None infers the set from the header. Returns ids, ``(N, K, 2)``
    float64 coordinates and the set; missing columns, non-numbers and NaN raise :class:`FormatError`
    naming the file, line and column (``tasks.formats.shs.read_coords``)."""
    from tasks.formats.shs import read_coords

    path = Path(path)
    if lmset is None:
        try:
            with path.open(newline="") as f:
                header = [h.strip() for h in next(csv.reader(f), [])]
        except OSError as err:
            raise FormatError(f"{path}: cannot open ({err})") from None
        lmset = set_for_columns(header[1:])
        if lmset is None:
            raise FormatError(f"{path}: columns {header[:4]}... hold no complete landmark set "
                              f"({', '.join(LANDMARK_SETS)}: <lm>_x and <lm>_y for every landmark)")
    ids, coords = read_coords(path, lmset.names)
    _check_coords(path, ids, coords, lmset)
    return ids, coords, lmset


def write_wide(path: str | os.PathLike, names: Sequence[str], coords: np.ndarray, lmset: LandmarkSet) -> None:
    """Write the submission layout atomically: ``image_name,<lm>_x...,<lm>_y...`` (3 decimals).
    NaN/infinite coordinates or a shape that does not match the names raise :class:`FormatError`."""
    from tasks.formats.shs import write_coords

    write_coords(path, list(names), coords, lmset.names, id_column="image_name", decimals=3)


def sniff_label_format(path: Path, n_landmarks: int | None = None) -> str:
    """``mat`` for a folder (AASCE ``.mat`` files); ``wide`` when the first row is a header starting with an
    id column; ``aasce`` when it is ``2 * n_landmarks`` numbers (normalised x then y, no id); else ``dha``."""
    if path.is_dir():
        return "mat"
    try:
        with path.open(newline="") as f:
            first = next(csv.reader(f), [])
    except OSError as err:
        raise FormatError(f"{path}: cannot open label file ({err})") from None
    if first and first[0].strip() in ID_COLUMNS:
        return "wide"
    try:
        [float(v) for v in first]
    except ValueError:
        return "dha"
    return "aasce" if n_landmarks is None or len(first) == 2 * n_landmarks else "dha"


def read_labels(path: str | os.PathLike, lmset: LandmarkSet, fmt: LabelFormat = "auto",
                image_dir: str | os.PathLike | None = None) -> tuple[list[str], np.ndarray]:
    """Ids and ``(N, K, 2)`` original-pixel coordinates from a wide CSV (SHS_NET), a DHA ``all.csv``, an
    AASCE ``landmarks.csv`` (its ``filenames.csv`` beside it) or an AASCE ``.mat`` folder. The AASCE
    layouts need ``image_dir``: the CSV is normalised by each image's size, the ``.mat`` files are named
    after the images."""
    from tasks.formats import aasce
    from tasks.formats.dha import read_all

    path = Path(path)
    if not path.exists():
        raise FormatError(f"{path}: label file not found")
    if fmt == "auto":
        fmt = sniff_label_format(path, len(lmset))
    if fmt in ("aasce", "mat"):
        if image_dir is None or not Path(image_dir).is_dir():
            raise FormatError(f"{path}: AASCE labels need the image folder (CSV values are normalised by image size, "
                              f".mat files are named after the images); got {image_dir}")
        images = {p.name: p for p in sorted(Path(image_dir).iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
        if fmt == "aasce":
            ids, coords = aasce.read_csv_labels(path.parent, {n: image_size(p) for n, p in images.items()}, len(lmset),
                                                landmarks=path.name)
        else:
            ids, coords = aasce.read_mat_labels(path, list(images), len(lmset))
        if not ids:
            raise FormatError(f"{path}: no labels for any image in {image_dir}")
    elif fmt == "wide":
        ids, coords, _ = read_wide(path, lmset)
    elif fmt == "dha":
        ids, coords = read_all(path, len(lmset))
    else:
        raise ValueError(f"unknown label format {fmt!r}; valid: auto, wide, dha, aasce, mat")
    ids = [str(i) for i in ids]
    coords = np.asarray(coords, np.float64)
    _check_coords(path, ids, coords, lmset)
    return ids, coords


def read_spacing_file(path: Path) -> dict[str, float]:
    """``{stem: spacing_mm}`` from a ``spacing.csv`` (``id,spacing_mm``)."""
    from tasks.formats.dha import read_spacing

    return {stem(str(k)): float(v) for k, v in read_spacing(path).items()}


def read_split_file(path: Path) -> dict[str, str]:
    """``{stem: split}`` from ``split.csv`` (``img_id,split``)."""
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"img_id", "split"} <= set(reader.fieldnames):
                raise FormatError(f"{path}: split file needs columns img_id,split, got {reader.fieldnames}")
            return {stem(r["img_id"].strip()): r["split"].strip() for r in reader}
    except OSError as err:
        raise FormatError(f"{path}: cannot open split file ({err})") from None


def check_inside(path: Path, sample: KeypointSample, lmset: LandmarkSet, height: int, width: int) -> None:
    """A labelled point must lie on its image (at most ``EDGE_TOLERANCE`` px beyond the border pixel centres)."""
    xy = sample.coords
    off = ((xy[:, 0] < -EDGE_TOLERANCE) | (xy[:, 0] > width - 1 + EDGE_TOLERANCE)
           | (xy[:, 1] < -EDGE_TOLERANCE) | (xy[:, 1] > height - 1 + EDGE_TOLERANCE))
    if off.any():
        k = int(np.flatnonzero(off)[0])
        raise FormatError(f"{path}: image {sample.name}: {lmset.names[k]} at ({xy[k, 0]:.1f}, {xy[k, 1]:.1f}) lies "
                          f"outside the {width}x{height} image ({int(off.sum())} points off the image)")


def list_keypoint_samples(root: str | os.PathLike, lmset: LandmarkSet, *, labels: str | None = None,
                          label_format: LabelFormat = "auto", images: str = "images",
                          spacing: str | None = "spacing.csv", split_file: str | None = "split.csv",
                          split: str | None = None, require_labels: bool = True) -> list[KeypointSample]:
    """Samples of a keypoint folder, sorted by name; ids match images by stem (``10001`` = ``10001.png``).

    ``split`` keeps the images whose ``split_file`` row has that split (when the file exists). Label
    rows without an image are skipped (DHA's ``all.csv`` covers the whole atlas); with
    ``require_labels`` every kept image needs a label row, and every labelled point must lie on its image.
    """
    root = Path(root)
    image_dir = root / images
    if not image_dir.is_dir():
        raise FormatError(f"{root}: no image folder '{images}/'")
    files = {p.name: p for p in sorted(image_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    if not files:
        raise FormatError(f"{image_dir}: no images")
    by_stem = {stem(n): p for n, p in files.items()}
    if len(by_stem) != len(files):
        dup = sorted(n for n in files if sum(stem(m) == stem(n) for m in files) > 1)
        raise FormatError(f"{image_dir}: images {dup[:2]} share a name; ids could not tell them apart")
    label_path = root / (labels or lmset.label_file)
    coords_by_stem: dict[str, tuple[str, np.ndarray]] = {}
    if label_path.exists():
        ids, coords = read_labels(label_path, lmset, label_format, image_dir)
        coords_by_stem = {stem(i): (i, c) for i, c in zip(ids, coords) if stem(i) in by_stem}
    elif require_labels:
        raise FormatError(f"{label_path}: label file not found (landmark set {lmset.name} reads "
                          f"{lmset.label_file}; set data.labels for another file)")
    keep = list(by_stem)
    if split is not None and split_file and (root / split_file).is_file():
        splits = read_split_file(root / split_file)
        keep = [s for s in keep if splits.get(s) == split]
        if not keep:
            raise FormatError(f"{root / split_file}: no images of split {split!r}")
    if require_labels:
        unlabelled = [s for s in keep if s not in coords_by_stem]
        if unlabelled:
            raise FormatError(f"{label_path}: no label row for image {by_stem[unlabelled[0]].name} "
                              f"({len(unlabelled)} images unlabelled)")
    spacings = read_spacing_file(root / spacing) if spacing and (root / spacing).is_file() else {}
    samples = []
    for s in sorted(keep):
        name, xy = coords_by_stem.get(s, (by_stem[s].name, None))
        sample = KeypointSample(name, by_stem[s], xy, spacings.get(s))
        if xy is not None:
            check_inside(label_path, sample, lmset, *image_size(by_stem[s]))
        samples.append(sample)
    return samples


def group_of(name: str) -> str:
    """Fold group: the two sides of one image (``*_L``/``*_R``, as in SHS_NET) stay together, and so do
    the views of one AASCE patient (``sunhl-1th-03-Jan-2017-165 A AP``, ``...-04-Jan-2017-165 B AP``)."""
    s = stem(name)
    spine = re.search(r"-(\d+) [A-Z] (AP|PA|LAT)$", s)
    return f"patient-{spine.group(1)}" if spine else re.sub(r"_[LR]$", "", s)


def split_folds(samples: Sequence[KeypointSample], n_folds: int, fold: int) -> tuple[list[int], list[int]]:
    return group_folds([group_of(s.name) for s in samples], n_folds, fold, "images (groups)")


# --------------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------------

# A small right-handed triangle carried through the augmentation: its orientation flips exactly when the
# geometric transforms include a reflection, which is when left/right landmark pairs must swap.
_PROBE = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0]])


class KeypointDataset(SeededDataset):
    """Letterboxed images at ``size x size`` with their keypoints in the input frame.

    Items: ``image`` ``(1, S, S)``, ``keypoints`` ``(K, 2)`` input-frame pixels, ``visible`` ``(K,)``
    (0 for points that the augmentation moved off the input), ``index``, ``orig_size``.
    """

    def __init__(self, samples: Sequence[KeypointSample], size: int, lmset: LandmarkSet, resize: ResizeMode = "letterbox",
                 augment=None, cache: SampleCache | None = None, seed: int = 0) -> None:
        super().__init__(samples, size, augment, cache, seed)
        self.lmset = lmset
        self.resize = resize

    def letterbox(self, i: int) -> Letterbox:
        """The map between sample ``i``'s original frame and the input (from the image header only)."""
        return Letterbox.fit(*image_size(self.samples[i].image_path), self.size, self.resize)

    def load(self, i: int) -> dict[str, np.ndarray]:
        """The letterboxed image (cached once at the training size) and the original size."""
        s = self.samples[i]

        def make() -> dict[str, np.ndarray]:
            image = read_grey(s.image_path)
            lb = Letterbox.fit(*image.shape, self.size, self.resize)
            return {"image": lb.image(image), "orig_size": np.array(image.shape, np.int64)}

        return self.cache.get([s.image_path], f"kp|{self.size}|{self.resize}", make)

    def __getitem__(self, i: int) -> dict:
        item = self.load(i)
        image = item["image"]
        s = self.samples[i]
        lb = Letterbox.fit(*(int(v) for v in item["orig_size"]), self.size, self.resize)
        xy = lb.forward(s.coords) if s.coords is not None else None
        if self.augment is not None:
            self.reseed(i)
            points = np.zeros((0, 2)) if xy is None else xy
            centre = self.size / 2
            out = self.augment(image=image, keypoints=np.concatenate([points, _PROBE + centre]))
            image = out["image"]
            moved = np.asarray(out["keypoints"], np.float64)[:, :2]
            if xy is not None:
                xy = moved[: len(points)]
                p = moved[len(points):]
                cross = (p[1, 0] - p[0, 0]) * (p[2, 1] - p[0, 1]) - (p[1, 1] - p[0, 1]) * (p[2, 0] - p[0, 0])
                if cross < 0 and self.lmset.flip_pairs:
                    xy = xy[self.lmset.flip_perm]
        batch = {
            "image": torch.from_numpy(np.array(image, np.float32)).div_(255.0).unsqueeze(0),
            "index": i,
            "orig_size": torch.as_tensor(item["orig_size"]),
        }
        if xy is not None:
            inside = (xy >= -0.5).all(-1) & (xy[:, 0] < self.size - 0.5) & (xy[:, 1] < self.size - 0.5)
            batch["keypoints"] = torch.from_numpy(xy.astype(np.float32))
            batch["visible"] = torch.from_numpy(inside.astype(np.float32))
        return batch


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------

def radial_errors(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Euclidean error of every point: ``(N, K, 2)`` x2 → ``(N, K)``."""
    pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    if pred.shape != true.shape:
        raise ValueError(f"predicted coordinates {pred.shape} != true coordinates {true.shape}")
    return np.linalg.norm(pred - true, axis=-1)


def sdr(errors: np.ndarray, radius: float) -> float:
    """Successful detection rate: the fraction of points within ``radius`` (inclusive)."""
    return float((np.asarray(errors) <= radius).mean())


def _radius_key(radius: float, unit: str) -> str:
    return f"sdr_{radius:g}{unit}"


def keypoint_metrics(pred: np.ndarray, true: np.ndarray, names: Sequence[str], spacing_mm: Sequence[float | None] | None = None,
                     radii_px: Sequence[float] = (2, 4, 8), radii_mm: Sequence[float] = (2, 4, 10)) -> dict:
    """MRE (px, and mm when every image has a spacing), SDR at each radius, per-landmark MRE (px).

    ``score`` is the MRE in pixels of the original images (lower is better).
    """
    err = radial_errors(pred, true)
    out: dict = {"score": float(err.mean()), "mre_px": float(err.mean()), "sd_px": float(err.std())}
    for r in radii_px:
        out[_radius_key(r, "px")] = sdr(err, r)
    out["per_item"] = {n: float(v) for n, v in zip(names, err.mean(0))}
    if spacing_mm is not None and len(spacing_mm) and all(s is not None for s in spacing_mm):
        err_mm = err * np.asarray(spacing_mm, np.float64)[:, None]
        out["mre_mm"] = float(err_mm.mean())
        for r in radii_mm:
            out[_radius_key(r, "mm")] = sdr(err_mm, r)
        out["per_item_mm"] = {n: float(v) for n, v in zip(names, err_mm.mean(0))}
    return out


# --------------------------------------------------------------------------------------------------
# Task
# --------------------------------------------------------------------------------------------------

class KeypointTask(Task):
    name = "keypoints"
    Data = KeypointData
    metric = "mre_px"
    mode = "min"

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.lmset = get_set(cfg.data.landmarks)
        self.criterion = HeatmapLoss(cfg.loss.weights)
        if self.lmset.flip_pairs and cfg.augment.vflip > 0:
            raise ValueError(f"augment.vflip: landmark set {self.lmset.name} has left/right pairs but no "
                             "top/bottom correspondence; a vertical flip would mislabel it")

    @property
    def num_outputs(self) -> int:
        return len(self.lmset)

    @property
    def activation(self) -> str:
        return self.criterion.activation

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        return activate(logits, self.criterion.activation)

    def samples(self, split: Literal["train", "val", "test"]) -> list[KeypointSample]:
        """The images of a split: the fold's train/val part of ``root``, or the test images
        (``test_root``, else the ``test`` rows of ``root``'s split file)."""
        d = self.cfg.data
        kw = dict(labels=d.labels, label_format=d.label_format, images=d.images, spacing=d.spacing,
                  split_file=d.split_file)
        if split == "test":
            if d.test_root:
                return list_keypoint_samples(d.test_root, self.lmset, split=None, require_labels=False, **kw)
            if not (d.split_file and (Path(d.root) / d.split_file).is_file()):
                raise ValueError(f"data.test_root is not set and {Path(d.root) / str(d.split_file)} does not exist: "
                                 "no test images")
            return list_keypoint_samples(d.root, self.lmset, split="test", require_labels=False, **kw)
        pool = list_keypoint_samples(d.root, self.lmset, split="train", **kw)
        train_idx, val_idx = split_folds(pool, d.n_folds, d.fold)
        return [pool[i] for i in (train_idx if split == "train" else val_idx)]

    def dataset(self, samples: Sequence[KeypointSample], augment=None) -> KeypointDataset:
        d = self.cfg.data
        return KeypointDataset(samples, d.image_size, self.lmset, d.resize, augment,
                               SampleCache(d.cache_dir, enabled=d.cache), self.cfg.train.seed)

    def datasets(self) -> tuple[KeypointDataset, KeypointDataset]:
        aug = build_augment(self.cfg.augment, keypoints=True)
        return self.dataset(self.samples("train"), aug), self.dataset(self.samples("val"))

    def forward(self, model: nn.Module, batch: dict) -> torch.Tensor:
        """Plain models see the image. A hinted model (``hint:``) in training first meets a simulated
        user (:func:`tasks.interactive.simulate_clicks`, no gradient, eval mode, on the unwrapped module so
        DDP ranks need not agree on the number of rounds) and is trained on the resulting hints."""
        inner = getattr(model, "module", model)
        if not getattr(inner, "num_hints", 0) or not model.training:
            return model(batch["image"])
        settings = self.cfg.data.clicks
        image, size = batch["image"], batch["image"].shape[-2:]

        def decode(logits: torch.Tensor) -> torch.Tensor:
            uv, _ = decode_heatmaps(self.activate(logits.float()), "argmax")
            return heatmap_to_input(uv, size[1] / logits.shape[-1], size[0] / logits.shape[-2])

        inner.eval()
        try:
            hints = simulate_clicks(inner, image, batch["keypoints"], batch["visible"], decode, settings,
                                    settings.hint_sigma or self.cfg.data.sigma)
        finally:
            inner.train()
        return model(image, hints)

    def loss(self, output: torch.Tensor, batch: dict) -> torch.Tensor:
        return self.criterion(output, batch["keypoints"], batch["visible"], tuple(batch["image"].shape[-2:]),
                              self.cfg.data.sigma)

    def decode(self, heatmaps: torch.Tensor, input_size: int, letterboxes: Sequence[Letterbox]) -> tuple[np.ndarray, np.ndarray]:
        """Activated ``(B, K, h, w)`` heatmaps of ``input_size``² inputs → ORIGINAL-frame ``(B, K, 2)``
        coordinates and ``(B, K)`` confidences. A peak on the letterbox padding is clamped onto the
        image (a point off the image is wrong by construction)."""
        uv, conf = decode_heatmaps(heatmaps, self.cfg.data.decode, self.cfg.data.decode_blur)
        h, w = heatmaps.shape[-2:]
        xy = heatmap_to_input(uv, input_size / w, input_size / h).cpu().numpy()
        out = np.stack([lb.inverse(p) for lb, p in zip(letterboxes, xy)])
        for lb, p in zip(letterboxes, out):
            np.clip(p[:, 0], 0, lb.width - 1, out=p[:, 0])
            np.clip(p[:, 1], 0, lb.height - 1, out=p[:, 1])
        return out, conf.cpu().numpy()

    @torch.no_grad()
    def predict(self, model: Callable, dataset: KeypointDataset, device: torch.device, autocast=None, batch_size: int = 4,
                heatmap_fn: Callable | None = None, progress: bool = False) -> tuple[np.ndarray, np.ndarray, float]:
        """Original-frame coordinates ``(N, K, 2)``, confidences ``(N, K)`` and the mean loss (NaN without
        labels or with ``heatmap_fn``) of a dataset. ``heatmap_fn(images) -> activated heatmaps``
        replaces the plain forward pass (TTA, ensembles)."""
        coords, confs, losses = [], [], []
        starts = range(0, len(dataset), batch_size)
        for start in tqdm(starts, desc="predict", disable=not progress, dynamic_ncols=True):
            idx = list(range(start, min(start + batch_size, len(dataset))))
            items = [dataset[i] for i in idx]
            images = torch.stack([it["image"] for it in items]).to(device)
            with autocast() if autocast else torch.autocast(device.type, enabled=False):
                if heatmap_fn is None:
                    logits = model(images).float()
                    heatmaps = self.activate(logits)
                else:
                    logits, heatmaps = None, heatmap_fn(images).float()
            if logits is not None and "keypoints" in items[0]:
                kp = torch.stack([it["keypoints"] for it in items]).to(device)
                vis = torch.stack([it["visible"] for it in items]).to(device)
                loss = self.criterion(logits, kp, vis, tuple(images.shape[-2:]), self.cfg.data.sigma)
                losses.append(float(loss) * len(items))
            xy, conf = self.decode(heatmaps.float(), dataset.size, [dataset.letterbox(i) for i in idx])
            coords.append(xy)
            confs.append(conf)
        loss = sum(losses) / len(dataset) if losses else float("nan")
        return np.concatenate(coords), np.concatenate(confs), loss

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset: KeypointDataset, device: torch.device, autocast=None,
                 batch_size: int = 4) -> dict:
        """MRE (px of the original images; mm where spacing is known), SDR, per-landmark MRE."""
        model.eval()
        pred, _, loss = self.predict(model, dataset, device, autocast, batch_size)
        true = np.stack([s.coords for s in dataset.samples])
        spacing = [s.spacing_mm for s in dataset.samples]
        d = self.cfg.data
        out = keypoint_metrics(pred, true, self.lmset.names, spacing, d.sdr_radii_px, d.sdr_radii_mm)
        out["loss"] = loss
        return out


# --------------------------------------------------------------------------------------------------
# Scoring a submission
# --------------------------------------------------------------------------------------------------

def _ground_truth(gt: Path, lmset: LandmarkSet, images: str | os.PathLike | None) -> tuple[list[KeypointSample], Path]:
    """Labelled samples to score against: ``gt`` is a keypoint folder (its ``test`` split when it has a
    split file) or a label file beside ``images/`` (or ``images`` given)."""
    if gt.is_dir():
        has_split = (gt / "split.csv").is_file()
        if images is not None:
            samples = list_keypoint_samples(gt, lmset, images=str(Path(images).resolve()),
                                            split="test" if has_split else None)
        else:
            samples = list_keypoint_samples(gt, lmset, split="test" if has_split else None)
        return samples, gt / lmset.label_file
    if not gt.is_file():
        raise FormatError(f"{gt}: ground truth not found")
    root = gt.parent
    image_dir = Path(images).resolve() if images is not None else root / "images"
    if image_dir.is_dir():
        split = "test" if (root / "split.csv").is_file() else None
        return list_keypoint_samples(root, lmset, labels=gt.name, images=str(image_dir), split=split), gt
    ids, coords = read_labels(gt, lmset)
    spacings = read_spacing_file(root / "spacing.csv") if (root / "spacing.csv").is_file() else {}
    return [KeypointSample(i, root / i, c, spacings.get(stem(i))) for i, c in zip(ids, coords)], gt


def score_submission(csv_path: str | os.PathLike, gt: str | os.PathLike, images: str | os.PathLike | None = None,
                     radii_px: Sequence[float] = (2, 4, 8), radii_mm: Sequence[float] = (2, 4, 10)) -> dict:
    """Score a wide keypoint CSV against ground truth, in the original pixels (and mm where known).

    ``gt``: a keypoint folder (``coord_list.csv``/``all.csv`` + ``images/`` [+ ``spacing.csv``,
    ``split.csv`` whose ``test`` rows are scored]) or a label file. Every ground-truth image needs a
    row and every row a ground truth. Public/private halves as on a leaderboard.
    """
    from tasks.scoring import public_private_split

    names, pred, lmset = read_wide(csv_path)
    samples, gt_file = _ground_truth(Path(gt), lmset, images)
    by_stem = {stem(s.name): s for s in samples}
    pred_by_stem = {stem(n): p for n, p in zip(names, pred)}
    unknown = [n for n in names if stem(n) not in by_stem]
    if unknown:
        raise FormatError(f"{csv_path}: image {unknown[0]} has no ground truth in {gt_file} ({len(unknown)} such rows)")
    missing = [s.name for s in samples if stem(s.name) not in pred_by_stem]
    if missing:
        raise FormatError(f"{csv_path}: {len(missing)} ground-truth images have no row, e.g. {missing[0]}")
    order = sorted(by_stem)
    p = np.stack([pred_by_stem[k] for k in order])
    t = np.stack([by_stem[k].coords for k in order])
    spacing = [by_stem[k].spacing_mm for k in order]
    result = keypoint_metrics(p, t, lmset.names, spacing, radii_px, radii_mm)
    public, private = public_private_split(order)
    err = radial_errors(p, t).mean(1)
    half = {k: float(e) for k, e in zip(order, err)}
    result["public"] = float(np.mean([half[k] for k in public])) if public else math.nan
    result["private"] = float(np.mean([half[k] for k in private])) if private else math.nan
    result.update(metric="mre_px", images=len(order), landmarks=lmset.name)
    return result
