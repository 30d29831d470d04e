"""The torch side of joint and landmark detection (:mod:`tasks.keypoints` is its spec): Gaussian heatmaps,
sub-pixel decoding, MRE/SDR in the original frame, and the prediction hooks and writer of the one predictor.

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

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from tasks.augment import SeededDataset, build_augment
from tasks.base import PredictionWriter, Task, precision
from tasks.cache import SampleCache
from tasks.formats.images import image_size, read_grey
from tasks.heatmaps import HeatmapLoss, activate, decode_heatmaps, heatmap_sigma, heatmap_to_input
from tasks.interactive import render_hints, simulate_clicks
from tasks.keypoint_labels import KeypointSample, rows_without_images, write_wide
from tasks.keypoint_sets import LandmarkSet, get_set
from tasks.keypoints import SPEC
from tasks.keypoints.cache import save_cache
from tasks.keypoints.pseudo import training_samples as pseudo_samples
from tasks.keypoints.samples import split_samples
from tasks.letterbox import Letterbox
from tasks.schema import ResizeMode, image_hw, size_text
from tasks.metrics import keypoint_metrics
from tasks.shape_prior import ShapeModel
from tasks.spec import MODE_RESIZE
from tasks.tta import View


# --------------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------------

# A small right-handed triangle carried through the augmentation: its orientation flips exactly when the
# geometric transforms include a reflection, which is when left/right landmark pairs must swap.
_PROBE = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0]])


class KeypointDataset(SeededDataset):
    """Letterboxed images at ``size`` (one side, or ``(height, width)``) with their keypoints in the input frame.

    Items: ``image`` ``(1, H, W)``, ``keypoints`` ``(K, 2)`` input-frame pixels ``(x, y)``, ``visible`` ``(K,)``
    (0 for points that the augmentation moved off the input, and for a pseudo-label's points not kept), ``index``,
    ``orig_size``.
    """

    def __init__(self, samples: Sequence[KeypointSample], size: int | tuple[int, int], lmset: LandmarkSet,
                 resize: ResizeMode = "letterbox", augment=None, cache: SampleCache | None = None,
                 seed: int = 0) -> None:
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

        return self.cache.get([s.image_path], f"kp|{size_text(self.size)}|{self.resize}", make)

    def __getitem__(self, i: int) -> dict:
        item = self.load(i)
        image = item["image"]
        s = self.samples[i]
        lb = Letterbox.fit(*(int(v) for v in item["orig_size"]), self.size, self.resize)
        xy = lb.forward(s.coords) if s.coords is not None else None
        keep = getattr(s, "keep", None)   # a pseudo-label's kept points (tasks.keypoints.pseudo); None: all
        if self.augment is not None:
            self.reseed(i)
            points = np.zeros((0, 2)) if xy is None else xy
            centre = np.array([self.hw[1], self.hw[0]]) / 2  # (x, y)
            out = self.augment(image=image, keypoints=np.concatenate([points, _PROBE + centre]))
            image = out["image"]
            moved = np.asarray(out["keypoints"], np.float64)[:, :2]
            if xy is not None:
                xy = moved[: len(points)]
                p = moved[len(points):]
                cross = (p[1, 0] - p[0, 0]) * (p[2, 1] - p[0, 1]) - (p[1, 1] - p[0, 1]) * (p[2, 0] - p[0, 0])
                if cross < 0 and self.lmset.flip_pairs:
                    xy = xy[self.lmset.flip_perm]
                    keep = keep[self.lmset.flip_perm] if keep is not None else None
        batch = {
            "image": torch.from_numpy(np.array(image, np.float32)).div_(255.0).unsqueeze(0),
            "index": i,
            "orig_size": torch.as_tensor(item["orig_size"]),
        }
        if xy is not None:
            inside = (xy >= -0.5).all(-1) & (xy[:, 0] < self.hw[1] - 0.5) & (xy[:, 1] < self.hw[0] - 0.5)
            if keep is not None:
                inside &= keep
            batch["keypoints"] = torch.from_numpy(xy.astype(np.float32))
            batch["visible"] = torch.from_numpy(inside.astype(np.float32))
        return batch


# --------------------------------------------------------------------------------------------------
# Task
# --------------------------------------------------------------------------------------------------

class KeypointTask(Task):
    spec = SPEC

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

    def samples(self, split: str) -> list[KeypointSample]:
        """The images of a split: the fold's train/val part of ``root``, or the test images."""
        return split_samples(self.cfg.data, self.lmset, split)

    def dataset(self, samples: Sequence[KeypointSample], augment=None) -> KeypointDataset:
        d = self.cfg.data
        return KeypointDataset(samples, d.image_size, self.lmset, d.resize, augment,
                               SampleCache(d.cache_dir, enabled=d.cache), self.cfg.train.seed)

    def datasets(self) -> tuple[KeypointDataset, KeypointDataset]:
        aug = build_augment(self.cfg.augment, keypoints=True)
        train = self.samples("train") + pseudo_samples(self.cfg.data)   # pseudo-labels: training only
        return self.dataset(train, aug), self.dataset(self.samples("val"))

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

    def decode_blur(self, stride: float) -> float:
        """``data.decode_blur`` in heatmap pixels for a model of output ``stride``: ``auto`` is the target's sigma."""
        blur = self.cfg.data.decode_blur
        if blur == "auto":
            return heatmap_sigma(self.cfg.data.sigma, stride)
        return blur or 0.0

    def decode(self, heatmaps: torch.Tensor, input_size: int | tuple[int, int], letterboxes: Sequence[Letterbox]
               ) -> tuple[np.ndarray, np.ndarray]:
        """Activated ``(B, K, h, w)`` heatmaps of inputs of ``input_size`` (one side, or ``(height, width)``) →
        ORIGINAL-frame ``(B, K, 2)`` coordinates and ``(B, K)`` confidences: ``x`` scaled by the widths, ``y`` by
        the heights. With ``data.shape_prior`` gross outliers are replaced by the shape model's estimate first. A
        point on the letterbox padding is clamped onto the image (a point off the image is wrong by construction)."""
        h, w = heatmaps.shape[-2:]
        in_h, in_w = image_hw(input_size)
        uv, conf = decode_heatmaps(heatmaps, self.cfg.data.decode, self.decode_blur(in_w / w))
        xy = heatmap_to_input(uv, in_w / w, in_h / h).cpu().numpy()
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
            with precision(autocast):
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

    # ---------------------------------------------------------------------------------------- prediction

    def batches(self, samples: Sequence[KeypointSample], size: int | tuple[int, int], batch_size: int) -> Iterator[dict]:
        """Letterboxed images at ``size`` (from the decode cache after the first time), ``batch_size`` at a time,
        with each image's letterbox (the map back to its original frame)."""
        d = self.cfg.data
        dataset = KeypointDataset(samples, size, self.lmset, d.resize, None, SampleCache(d.cache_dir, enabled=d.cache))
        for start in range(0, len(dataset), batch_size):
            idx = range(start, min(start + batch_size, len(dataset)))
            yield {"image": torch.stack([dataset[i]["image"] for i in idx]), "samples": [samples[i] for i in idx],
                   "letterboxes": [dataset.letterbox(i) for i in idx], "size": size}

    def model_inputs(self, batch: dict, view: View = View(), model: nn.Module | None = None) -> dict[str, torch.Tensor]:
        """The image under ``view``; for a hinted model (``hint:``) also the hint maps ``batch["hints"]`` under the
        same view, their channels swapped by the set's ``flip_perm`` when it is mirrored, so a mirrored left
        corner hints the right corner channel. Given the ``model`` (export, FLOPs), a hinted one without hints in
        the batch gets the first landmark clicked at its true position where the batch has labels, no clicks
        (zeros) where it has none."""
        image = batch["image"]
        hints = batch.get("hints")
        num_hints = getattr(getattr(model, "module", model), "num_hints", 0)
        if hints is None and num_hints:
            height, width = image.shape[-2:]
            if "keypoints" in batch and "visible" in batch:
                clicked = torch.zeros_like(batch["visible"], dtype=torch.bool)
                clicked[:, 0] = batch["visible"][:, 0] > 0
                hints = render_hints(batch["keypoints"], clicked, height, width,
                                     self.cfg.data.clicks.hint_sigma or self.cfg.data.sigma)
            else:
                hints = image.new_zeros((image.shape[0], num_hints, height, width))
            hints = hints.to(image.device, image.dtype)
        if hints is None:
            return {"image": view.apply(image)}
        if view.mirrored and self.lmset.flip_perm is not None:
            hints = hints[:, list(self.lmset.flip_perm)]
        return {"image": view.apply(image), "hints": view.apply(hints)}

    def invert(self, output: torch.Tensor, view: View, batch: dict) -> torch.Tensor:
        """Heatmaps of ``view`` back in the frame of the plain input at the model's own output stride: flips
        undone with left/right pairs swapped (the set's ``flip_perm``), a scale resized back."""
        size = tuple(batch["image"].shape[-2:])
        stride = view.input_size(size)[0] / output.shape[-2]
        base = (round(size[0] / stride), round(size[1] / stride))
        return view.invert(output, base, self.lmset.flip_perm)

    @property
    def frame(self) -> tuple:
        """What heatmaps of two runs must share to be averaged: the input size and the resize mode."""
        return self.cfg.data.image_size, self.cfg.data.resize

    def writer(self, out_csv: str | Path, cache: Any | None, *, views: Sequence[View], workers: int,
               mode: str = MODE_RESIZE) -> KeypointWriter:
        return KeypointWriter(self, out_csv, cache)


class KeypointWriter(PredictionWriter):
    """Heatmaps → original-frame points (:meth:`KeypointTask.decode`, the shape prior included); on exit the wide
    CSV and, when asked, the cache ``keypoints.npz`` (names, points, confidences, landmark set)."""

    def __init__(self, task: KeypointTask, out_csv: str | Path, cache: Any | None) -> None:
        self.task, self.out_csv, self.cache = task, out_csv, cache
        self.names: list[str] = []
        self.coords: list[np.ndarray] = []
        self.confidence: list[np.ndarray] = []
        self.images = 0

    def add(self, batch: dict, outputs: torch.Tensor) -> None:
        xy, conf = self.task.decode(outputs.float(), batch["size"], batch["letterboxes"])
        self.names += [s.name for s in batch["samples"]]
        self.coords.append(xy)
        self.confidence.append(conf)
        self.images += len(xy)

    def result(self) -> tuple[list[str], np.ndarray]:
        """Names and points ``(N, K, 2)`` (original pixels) taken so far."""
        coords = np.concatenate(self.coords) if self.coords else np.zeros((0, self.task.num_outputs, 2))
        return self.names, coords

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            names, coords = self.result()
            conf = np.concatenate(self.confidence) if self.confidence else np.zeros((0, self.task.num_outputs))
            if self.out_csv is not None:
                write_wide(self.out_csv, names, coords, self.task.lmset)
            if self.cache is not None:
                self.cache(save_cache, self.cache.path, names, coords, conf, self.task.cfg.data.landmarks)
        return False
