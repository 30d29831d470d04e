"""The torch side of hand-bone segmentation (:mod:`tasks.segmentation` is its spec): datasets, the multilabel
loss, validation Dice at the original size, and the prediction hooks and writer of the one predictor.

Prediction: each image is read at its original size; the model sees it resized to the input size (or, in
sliding-window mode, tiles at the original size: ``engine.sliding_window``); per-class probabilities are
averaged over TTA views and resized back, thresholded and RLE-encoded one class at a time in a thread pool
while the next image is on the device (at most ``2 x workers`` images in flight).
"""
from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import segmentation_models_pytorch as smp
import torch
from torch import nn

from tasks.augment import SeededDataset, build_augment
from tasks.base import PredictionWriter, Task, precision
from tasks.cache import SampleCache
from tasks.formats import FormatError
from tasks.formats.handbones import CLASSES, HandboneSample, list_samples, mislabelled_bones, read_masks, split_folds
from tasks.formats.images import read_grey, resize_grey
from tasks.metrics import dice_per_class
from tasks.roi_dataset import RoiDataset, box_dice
from tasks.segmentation import SPEC
from tasks.segmentation.cache import save_probs
from tasks.segmentation.masks import encode_probs, probs_to_masks, resolve_thresholds
from tasks.schema import image_hw, size_text
from tasks.segmentation.patches import FullSizeDataset
from tasks.segmentation.pseudo import read_ignore
from tasks.segmentation.pseudo import training_samples as pseudo_samples
from tasks.segmentation.samples import split_samples
from tasks.spec import MODE_RESIZE, MODE_SLIDING
from tasks.submission import AtomicCSVWriter
from tasks.tta import View, views_name


class HandboneDataset(SeededDataset):
    """Images (and masks) at ``size`` (``height x width``, each axis resized on its own); items are dicts of
    tensors plus ``name`` and ``index``.

    Masks stay uint8 0/1 (``(29, height, width)``): a quarter of float32's bytes through the loader workers,
    the collate, pinning and the copy to the device (29 x 1024² floats are 121 MB an image). When any sample is
    pseudo-labelled (:mod:`tasks.segmentation.pseudo`), every item also holds ``ignore`` (uint8 ``(29, height,
    width)``, 1 where the loss skips the pixel; all 0 for a labelled image), moved by the same augmentation.
    """

    def __init__(self, samples: Sequence[HandboneSample], size: int | tuple[int, int], augment=None,
                 cache: SampleCache | None = None, seed: int = 0) -> None:
        super().__init__(samples, size, augment, cache, seed)
        self.with_ignore = any(getattr(s, "ignore_path", None) is not None for s in self.samples)

    def load(self, i: int) -> dict[str, np.ndarray]:
        """Decoded image (and packed masks, and a pseudo-labelled image's packed ignore map) at the training size,
        plus the original size. A training pixel is ignored where any of the original pixels it covers is."""
        s = self.samples[i]
        ignore_path = getattr(s, "ignore_path", None)
        sources = [s.image_path] + [p for p in (s.label_path, ignore_path) if p is not None]

        def make() -> dict[str, np.ndarray]:
            image = read_grey(s.image_path)
            h, w = image.shape
            out = {"image": resize_grey(image, *self.hw), "orig_size": np.array([h, w])}
            if s.label_path is not None:
                masks = read_masks(s.label_path, h, w)
                small = np.stack([resize_grey(m * 255, *self.hw) >= 128 for m in masks])
                out["masks"] = np.packbits(small, axis=-1)
            if ignore_path is not None:
                ignore = read_ignore(ignore_path, h, w).view(np.uint8)
                out["ignore"] = np.packbits(np.stack([resize_grey(m * 255, *self.hw) > 0 for m in ignore]),
                                            axis=-1)
            return out

        return self.cache.get(sources, f"seg|{size_text(self.size)}", make)

    def label_notes(self, i: int) -> list[str]:
        """A pseudo-label lacks the bones nothing confident was found for: no note for it."""
        s = self.samples[i]
        return [] if getattr(s, "ignore_path", None) is not None else mislabelled_bones(s.label_path)

    def __getitem__(self, i: int) -> dict:
        item = self.load(i)
        image = item["image"]
        masks = ignore = None
        if "masks" in item:
            masks = np.unpackbits(item["masks"], axis=-1, count=self.hw[1])
        if self.with_ignore and masks is not None:
            ignore = np.unpackbits(item["ignore"], axis=-1, count=self.hw[1]) if "ignore" in item else \
                np.zeros_like(masks)
        if self.augment is not None:
            self.reseed(i)
            kwargs = {"image": image}
            if masks is not None:
                stacked = masks if ignore is None else np.concatenate([masks, ignore])
                kwargs["mask"] = stacked.transpose(1, 2, 0)
            out = self.augment(**kwargs)
            image = out["image"]
            if masks is not None:
                stacked = np.ascontiguousarray(out["mask"].transpose(2, 0, 1))
                masks, ignore = (stacked, None) if ignore is None else (stacked[:len(masks)], stacked[len(masks):])
        batch = {
            "image": torch.from_numpy(np.array(image, dtype=np.float32)).div_(255.0).unsqueeze(0),
            "index": i,
            "orig_size": torch.as_tensor(item["orig_size"]),
        }
        if masks is not None:
            batch["masks"] = torch.from_numpy(np.ascontiguousarray(masks))  # uint8: the loss makes them float
        if ignore is not None:
            batch["ignore"] = torch.from_numpy(np.ascontiguousarray(ignore))
        return batch


def _kept_mean(values: torch.Tensor, keep: torch.Tensor, dims: tuple[int, ...] | None = None) -> torch.Tensor:
    """The mean of ``values`` over the elements ``keep`` marks (1): over all of them (``dims`` None), or over
    ``dims`` and then over what is left."""
    if dims is None:
        return (values * keep).sum() / keep.sum().clamp_min(1)
    return ((values * keep).sum(dims) / keep.sum(dims).clamp_min(1)).mean()


class MultilabelLoss(nn.Module):
    """Weighted sum of ``bce``, ``dice``, ``focal`` and ``tversky`` (smp's multilabel losses).

    ``ignore`` (``(B, C, H, W)``, nonzero = skip; a pseudo-label's uncertain pixels) leaves pixels out of every
    term, with no loss and no gradient from them: binary cross-entropy and focal average over the kept pixels
    (focal per class, then over classes, as smp's), Dice and Tversky see prediction and target zero there (what
    smp's ``ignore_index`` does). Without it every term is smp's own."""

    def __init__(self, weights: dict[str, float], focal_gamma: float = 2.0, tversky_alpha: float = 0.3,
                 tversky_beta: float = 0.7) -> None:
        super().__init__()
        available = {
            "bce": lambda: smp.losses.SoftBCEWithLogitsLoss(),
            "dice": lambda: smp.losses.DiceLoss(mode="multilabel", from_logits=True),
            "focal": lambda: smp.losses.FocalLoss(mode="multilabel", gamma=focal_gamma),
            "tversky": lambda: smp.losses.TverskyLoss(mode="multilabel", alpha=tversky_alpha, beta=tversky_beta),
        }
        unknown = set(weights) - set(available)
        if unknown:
            raise ValueError(f"loss.weights: unknown loss {sorted(unknown)}; valid: {', '.join(available)}")
        if not any(w > 0 for w in weights.values()):
            raise ValueError("loss.weights: at least one loss needs a positive weight")
        self.terms = nn.ModuleDict({k: available[k]() for k, w in weights.items() if w > 0})
        self.weights = {k: float(w) for k, w in weights.items() if w > 0}

    def forward(self, logits: torch.Tensor, target: torch.Tensor, ignore: torch.Tensor | None = None) -> torch.Tensor:
        logits, target = logits.float(), target.float()
        if ignore is None:
            return sum(self.weights[k] * term(logits, target) for k, term in self.terms.items())
        ignore = ignore.bool()
        return sum(self.weights[k] * self.masked(k, term, logits, target, ignore) for k, term in self.terms.items())

    @staticmethod
    def masked(kind: str, term: nn.Module, logits: torch.Tensor, target: torch.Tensor,
               ignore: torch.Tensor) -> torch.Tensor:
        """One term without the ``ignore`` pixels."""
        if kind in ("dice", "tversky"):   # sigmoid(-1e4) is 0: no prediction there, and masked_fill passes no gradient
            return term(logits.masked_fill(ignore, -1e4), target.masked_fill(ignore, 0))
        keep = (~ignore).to(logits.dtype)
        if kind == "bce":
            return _kept_mean(nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none"), keep)
        values = term.focal_loss_fn(logits, target, reduction="none")
        return _kept_mean(values, keep, dims=tuple(d for d in range(values.ndim) if d != 1))


class SegmentationTask(Task):
    spec = SPEC

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.criterion = MultilabelLoss(cfg.loss.weights, cfg.loss.focal_gamma, cfg.loss.tversky_alpha,
                                        cfg.loss.tversky_beta)
        self.thresholds = resolve_thresholds(cfg.inference.threshold)

    @property
    def num_outputs(self) -> int:
        roi = self.cfg.data.roi
        return len(roi.classes) if roi is not None else len(CLASSES)

    def datasets(self) -> tuple[SeededDataset, SeededDataset]:
        data = self.cfg.data
        samples = list_samples(data.root)
        missing = [s for s in samples if s.label_path is None]
        if missing:
            raise FormatError(f"{data.root}: training images need labels (outputs_json/); none for {missing[0].image_path}")
        train_idx, val_idx = data.fold_indices(len(samples), lambda: split_folds(samples, data.n_folds, data.fold))
        cache = SampleCache(data.cache_dir, enabled=data.cache)
        aug = build_augment(self.cfg.augment)
        pseudo = pseudo_samples(data)   # training only: never in a validation fold
        if pseudo and data.roi is not None:
            raise ValueError("data.pseudo_roots: a stage-2 wrist-ROI run crops its training images around the true "
                             "bones; train it without pseudo-labels")
        if pseudo and data.patch_size is not None:
            raise ValueError("data.pseudo_roots: a patch-trained run (data.patch_size) crops full-size images that "
                             "carry no ignore map; train it without pseudo-labels, or without data.patch_size")
        if data.roi is not None:
            return (RoiDataset([samples[i] for i in train_idx], data.image_size, data.roi, aug, cache,
                               self.cfg.train.seed, jitter=True),
                    RoiDataset([samples[i] for i in val_idx], data.image_size, data.roi, None, cache))
        if data.patch_size is not None:
            return (FullSizeDataset([samples[i] for i in train_idx], data.patch_size, data.patch_foreground, aug, cache,
                                    self.cfg.train.seed),
                    FullSizeDataset([samples[i] for i in val_idx], None, cache=cache))
        train = HandboneDataset([samples[i] for i in train_idx] + pseudo, data.image_size, aug, cache,
                                self.cfg.train.seed)
        val = HandboneDataset([samples[i] for i in val_idx], data.image_size, None, cache)
        return train, val

    @property
    def validation_tile(self) -> int | None:
        """A patch-trained run validates whole images in tiles of its patch (:mod:`tasks.segmentation.patches`)."""
        return self.cfg.data.patch_size

    def loss(self, output: torch.Tensor, batch: dict) -> torch.Tensor:
        return self.criterion(output, batch["masks"], batch.get("ignore"))

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset: HandboneDataset, device: torch.device,
                 autocast=None, batch_size: int = 4) -> dict:
        """Dice per class: predicted at the training size, scored at the original size (or the training size);
        a stage-2 ROI run: its classes inside the ground-truth box at the original resolution; a patch-trained
        run: items at the original size (one at a time: sizes may differ), ``model`` in tiles, scored as they are."""
        model.eval()
        dices, losses = [], []
        roi = self.cfg.data.roi
        thresholds = self.thresholds[roi.class_indices] if roi is not None else self.thresholds
        full_size = getattr(dataset, "full_size", False)
        at_train_size = self.cfg.data.val_at_train_size or full_size
        if full_size:
            batch_size = 1
        for start in range(0, len(dataset), batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            images = torch.stack([it["image"] for it in items]).to(device)
            masks = torch.stack([it["masks"] for it in items]).to(device)
            with precision(autocast):
                logits = model(images)
            logits = logits.float()
            losses.append(float(self.criterion(logits, masks)) * len(items))
            probs = logits.sigmoid().cpu().numpy()
            for k, it in enumerate(items):
                if roi is not None:
                    box, target = dataset.box_targets(start + k)
                    dices.append(box_dice(probs[k], box, target, thresholds))
                    continue
                if at_train_size:
                    pred = probs_to_masks(probs[k], probs.shape[-2:], self.thresholds)
                    target = it["masks"].numpy()
                else:
                    h, w = (int(v) for v in it["orig_size"])
                    pred = probs_to_masks(probs[k], (h, w), self.thresholds)
                    target = read_masks(dataset.samples[start + k].label_path, h, w)
                dices.append(dice_per_class(pred, target))
        per_class = np.mean(dices, axis=0)
        names = roi.classes if roi is not None else CLASSES
        return {
            "score": float(per_class.mean()),
            "loss": float(sum(losses) / max(1, len(dataset))),
            "per_item": {c: float(v) for c, v in zip(names, per_class)},
        }

    # ---------------------------------------------------------------------------------------- prediction

    def samples(self, split: str) -> list[HandboneSample]:
        """The test folder (``data.test_root``), or the configured fold's ``train``/``val`` images of ``data.root``."""
        return split_samples(self.cfg.data, split)

    @staticmethod
    def image_batch(image: np.ndarray, size: int | tuple[int, int] | None) -> dict:
        """One uint8 image as a batch: ``image`` ``(1, 1, h, w)`` in [0, 1] resized to ``size`` (``data.image_size``;
        None: the original size, for sliding-window tiles) and ``raw``, the image itself (its size, the ROI crop)."""
        small = image if size is None else resize_grey(image, *image_hw(size))
        return {"image": torch.from_numpy(small.astype(np.float32)).div_(255)[None, None], "raw": [image]}

    def batches(self, samples: Sequence[HandboneSample], size: int | tuple[int, int] | None,
                batch_size: int = 1) -> Iterator[dict]:
        """One image at a time (images may differ in size; post-processing streams per image). An image whose
        size differs from the first one's is predicted at its own size, with a warning."""
        first = None
        for s in samples:
            image = read_grey(s.image_path)
            if first is None:
                first = image.shape
            elif image.shape != first:
                warnings.warn(f"{s.image_path}: size {image.shape[1]}x{image.shape[0]} differs from the usual "
                              f"{first[1]}x{first[0]}; predicted at its own size", stacklevel=2)
            yield {**self.image_batch(image, size), "samples": [s]}

    def activate(self, output: torch.Tensor) -> torch.Tensor:
        return output.sigmoid()

    def invert(self, output: torch.Tensor, view: View, batch: dict) -> torch.Tensor:
        """Maps back to the input's frame and size (flips undone, a scale resized back)."""
        return view.invert(output, tuple(batch["image"].shape[-2:]))

    def writer(self, out_csv: str | Path, cache: Any | None, *, views: Sequence[View], workers: int,
               mode: str = MODE_RESIZE) -> SegmentationWriter:
        return SegmentationWriter(out_csv, self.thresholds, cache, views_name(views), workers, mode)


def quantize(probs: torch.Tensor) -> np.ndarray:
    """Float probabilities → uint8 ``round(p * 255)`` on the host (the prediction cache's form)."""
    return probs.clamp_(0, 1).mul_(255).round_().to(torch.uint8).cpu().numpy()


def encode_image(name: str, probs: np.ndarray, size: tuple[int, int], thresholds: np.ndarray, cache: Any | None,
                 mode: str = MODE_RESIZE, tta: str = "identity") -> tuple[str, list[str]]:
    """One image's cache entry (when ``cache`` is given) and RLE per class at its original ``size``, one class's
    mask at a time (:func:`tasks.segmentation.masks.encode_probs`)."""
    if cache is not None:
        cache(save_probs, cache.path / f"{name}.npz", probs, size, mode, tta)
    return name, encode_probs(probs, size, thresholds)


class SegmentationWriter(PredictionWriter):
    """``image_name,class,rle`` rows (atomic CSV) from probability maps; each image's resize, thresholds and RLE
    (and its cache entry) run in a pool of ``workers`` threads while the next image is predicted (at most
    ``2 x workers`` images in flight), or in the loop itself with none (the default on a CPU with few cores:
    a thread would only take cores from the forward pass), and rows leave in input order. Maps at the
    original size (sliding window) arrive as float and are kept as uint8 ``p * 255``, a quarter of the
    memory, while they wait."""

    def __init__(self, out_csv: str | Path, thresholds: np.ndarray, cache: Any | None, tta: str, workers: int,
                 mode: str = MODE_RESIZE) -> None:
        self.csv = AtomicCSVWriter(out_csv)
        self.thresholds, self.cache, self.tta, self.mode = thresholds, cache, tta, mode
        self.workers = max(0, workers)
        self.pending: deque[Future] = deque()
        self.pool: ThreadPoolExecutor | None = None
        self.images = 0

    def __enter__(self) -> SegmentationWriter:
        self.csv.__enter__()
        if self.workers:
            self.pool = ThreadPoolExecutor(max_workers=self.workers)
        return self

    def add(self, batch: dict, outputs: torch.Tensor | np.ndarray) -> None:
        for sample, raw, probs in zip(batch["samples"], batch["raw"], outputs):
            if isinstance(probs, torch.Tensor):
                probs = quantize(probs) if self.mode == MODE_SLIDING else probs.float().cpu().numpy()
            job = (sample.name, probs, raw.shape[:2], self.thresholds, self.cache, self.mode, self.tta)
            if self.pool is None:
                self._write(*encode_image(*job))
                continue
            self.pending.append(self.pool.submit(encode_image, *job))
            while len(self.pending) > 2 * self.workers:
                self._write(*self.pending.popleft().result())

    def _write(self, name: str, rles: list[str]) -> None:
        self.csv.write_image(name, rles)
        self.images += 1

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is None:
                while self.pending:
                    self._write(*self.pending.popleft().result())
        finally:
            for future in self.pending:
                future.cancel()
            if self.pool is not None:
                self.pool.shutdown(wait=True)
            self.csv.__exit__(exc_type, exc, tb)
        return False
