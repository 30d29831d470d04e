"""Joint and landmark detection: Gaussian heatmaps, sub-pixel decoding, MRE/SDR in the original frame.

Data: a folder with ``images/`` and a label file — SHS_NET ``coord_list.csv`` (15 joints), DHA ``all.csv``
(37 landmarks, no header), AASCE ``landmarks.csv`` + ``filenames.csv`` (68 normalised corners) or its
``labels_mat/`` folder of ``.mat`` files, or a wide CSV (``image_name,<lm>_x...,<lm>_y...``) for any set —
plus optional ``spacing.csv`` (``id,spacing_mm``, gives errors in mm) and ``split.csv``
(``img_id,split``: train/test rows, as the phantom writes). Rows of the label file whose image is not in
``images/`` are skipped (``all.csv`` covers the whole atlas); a labelled point off its image, a NaN
coordinate or a missing column is an error naming the file. The label files are read by
``tasks.keypoint_labels`` and the metrics live in ``tasks.metrics`` (no torch: the scorer shares them).

Images of any aspect ratio are letterboxed to ``image_size`` (``tasks.letterbox``), keypoints follow
the geometric augmentations (albumentations, ``xy``), and points that leave the input are masked out of
the loss. Targets are rendered at the model's own output stride (``tasks.heatmaps``). Metrics are
always measured in the ORIGINAL image frame (SHS_NET measured on its 224 grid; we do not).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Callable, Literal

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import nn
from tqdm import tqdm

from tasks.augment import SeededDataset, build_augment
from tasks.base import DataBase, Section, Task
from tasks.cache import SampleCache
from tasks.formats.folds import group_folds
from tasks.formats.images import image_size, read_grey
from tasks.heatmaps import DecodeMethod, HeatmapLoss, activate, decode_heatmaps, heatmap_sigma, heatmap_to_input
from tasks.interactive import ClickSettings, render_hints, simulate_clicks
from tasks.keypoint_labels import KeypointSample, LabelFormat, list_keypoint_samples, rows_without_images
from tasks.keypoint_labels import write_wide as write_wide  # re-exported: engine.predict_keypoints writes through it
from tasks.keypoint_sets import LandmarkSet, get_set
from tasks.letterbox import Letterbox, ResizeMode
from tasks.metrics import keypoint_metrics
from tasks.metrics import radial_errors as radial_errors  # re-exported: engine.predict_keypoints fits weights with it
from tasks.registry import TASKS
from tasks.shape_prior import ShapeModel


class ShapePriorSettings(Section):
    """``data.shape_prior``: replace grossly wrong landmarks by a point distribution model's estimate
    (:mod:`tasks.shape_prior`), fitted on the training fold's labels when a model is trained or loaded."""

    enabled: bool = False
    modes: int = Field(8, ge=0)              # principal modes of the shape model (at most training shapes - 1)
    factor: float = Field(5.0, gt=1)         # outlier: farther than factor x the point's training scatter
    rows_without_images: bool = True         # also fit on label rows whose image is absent (DHA all.csv: the atlas)


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
    # DARK's modulation: Gaussian sigma (heatmap pixels) smoothing the heatmaps before the sub-pixel step.
    # "auto": the target's own sigma at the model's output stride (sigma / stride); 0 or null: no blur.
    decode_blur: Literal["auto"] | float | None = "auto"
    # SDR radii of the validation metrics; None: the landmark set's (tasks.keypoint_sets), which tools/score.py
    # also uses unless given --sdr / --sdr-mm.
    sdr_radii_px: list[Annotated[float, Field(gt=0)]] | None = None
    sdr_radii_mm: list[Annotated[float, Field(gt=0)]] | None = None
    cache_dir: str | None = None
    clicks: ClickSettings = Field(default_factory=ClickSettings)
    shape_prior: ShapePriorSettings = Field(default_factory=ShapePriorSettings)

    @field_validator("decode_blur", mode="before")
    @classmethod
    def _blur_setting(cls, value: object) -> object:
        if value is None or value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError("should be 'auto' (the target's sigma), a Gaussian sigma >= 0 in heatmap pixels, "
                             "or 0 for no blur")
        if value < 0:
            raise ValueError("Input should be greater than or equal to 0")
        return float(value)


def split_folds(samples: Sequence[KeypointSample], n_folds: int, fold: int, lmset: LandmarkSet
                ) -> tuple[list[int], list[int]]:
    """Train/validation indices of ``fold``, grouped by patient (``lmset.patient_of``: the two sides of an
    SHS_NET film, the views of one AASCE patient stay on one side)."""
    return group_folds([lmset.patient_of(s.name) for s in samples], n_folds, fold, "images (groups)")


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
# Task
# --------------------------------------------------------------------------------------------------

@TASKS.register("keypoints")
class KeypointTask(Task):
    name = "keypoints"
    Data = KeypointData
    metric = "mre_px"
    mode = "min"
    default_loss = {"kl": 1.0}

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.lmset = get_set(cfg.data.landmarks)
        self.criterion = HeatmapLoss(cfg.loss.weights)
        if self.lmset.flip_pairs and cfg.augment.vflip > 0:
            raise ValueError(f"augment.vflip: landmark set {self.lmset.name} has left/right pairs but no "
                             "top/bottom correspondence; a vertical flip would mislabel it")
        self._shape_model: ShapeModel | None = None

    def shape_model(self) -> ShapeModel | None:
        """The fitted ``data.shape_prior`` model (None when off): the training fold's labels, plus the label
        rows without an image when asked. Fitted once, on first use; it needs ``data.root`` at hand."""
        settings = self.cfg.data.shape_prior
        if not settings.enabled:
            return None
        if self._shape_model is None:
            d = self.cfg.data
            try:
                shapes = [s.coords for s in self.samples("train")]
                if settings.rows_without_images:
                    shapes += list(rows_without_images(d.root, self.lmset, labels=d.labels,
                                                       label_format=d.label_format, images=d.images))
            except (OSError, ValueError) as err:
                raise ValueError(f"data.shape_prior: fits on the training labels in {d.root}: {err}") from None
            if len(shapes) < 3:
                raise ValueError(f"data.shape_prior: needs at least 3 training shapes, {d.root} fold {d.fold} "
                                 f"has {len(shapes)}")
            self._shape_model = ShapeModel.fit(np.stack(shapes), settings.modes)
        return self._shape_model

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
        train_idx, val_idx = split_folds(pool, d.n_folds, d.fold, self.lmset)
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

    def model_inputs(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        """The image and, for a hinted model (``hint:``), its hint maps: the first landmark clicked at its true
        position where the batch has labels, no clicks (zeros) where it has none."""
        image = batch["image"]
        num_hints = getattr(model, "num_hints", 0)
        if not num_hints:
            return {"image": image}
        height, width = image.shape[-2:]
        if "keypoints" in batch and "visible" in batch:
            clicked = torch.zeros_like(batch["visible"], dtype=torch.bool)
            clicked[:, 0] = batch["visible"][:, 0] > 0
            hints = render_hints(batch["keypoints"], clicked, height, width,
                                 self.cfg.data.clicks.hint_sigma or self.cfg.data.sigma)
        else:
            hints = image.new_zeros((image.shape[0], num_hints, height, width))
        return {"image": image, "hints": hints.to(image.device, image.dtype)}

    def loss(self, output: torch.Tensor, batch: dict) -> torch.Tensor:
        return self.criterion(output, batch["keypoints"], batch["visible"], tuple(batch["image"].shape[-2:]),
                              self.cfg.data.sigma)

    def decode_blur(self, stride: float) -> float:
        """``data.decode_blur`` in heatmap pixels for a model of output ``stride``: ``auto`` is the target's sigma."""
        blur = self.cfg.data.decode_blur
        if blur == "auto":
            return heatmap_sigma(self.cfg.data.sigma, stride)
        return blur or 0.0

    def decode(self, heatmaps: torch.Tensor, input_size: int, letterboxes: Sequence[Letterbox]) -> tuple[np.ndarray, np.ndarray]:
        """Activated ``(B, K, h, w)`` heatmaps of ``input_size``² inputs → ORIGINAL-frame ``(B, K, 2)``
        coordinates and ``(B, K)`` confidences. With ``data.shape_prior`` gross outliers are replaced by the
        shape model's estimate first. A point on the letterbox padding is clamped onto the image (a point
        off the image is wrong by construction)."""
        h, w = heatmaps.shape[-2:]
        uv, conf = decode_heatmaps(heatmaps, self.cfg.data.decode, self.decode_blur(input_size / w))
        xy = heatmap_to_input(uv, input_size / w, input_size / h).cpu().numpy()
        out = np.stack([lb.inverse(p) for lb, p in zip(letterboxes, xy)])
        shape = self.shape_model()
        if shape is not None:
            out, _ = shape.correct_all(out, self.cfg.data.shape_prior.factor)
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
        radii_px = self.lmset.sdr_px if d.sdr_radii_px is None else d.sdr_radii_px
        radii_mm = self.lmset.sdr_mm if d.sdr_radii_mm is None else d.sdr_radii_mm
        out = keypoint_metrics(pred, true, self.lmset.names, spacing, radii_px, radii_mm)
        out["loss"] = loss
        return out


