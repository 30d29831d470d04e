"""Hand-bone segmentation: 29 overlapping classes, sigmoid per class (multilabel, never softmax).

Data: the boostcamp layout (``tasks.formats.handbones``), folds grouped by patient (``IDxxx``).
Metric: Dice per class per image at the ORIGINAL image size, empty/empty = 1, mean over images then
over classes — the competition's definition.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import cv2
import numpy as np
import segmentation_models_pytorch as smp
import torch
from torch import nn

from tasks.augment import SeededDataset, build_augment
from tasks.base import DataBase, Task, check_thresholds
from tasks.cache import SampleCache
from tasks.formats import FormatError
from tasks.formats.handbones import CLASSES, HandboneSample, list_samples, mislabelled_bones, read_masks, split_folds
from tasks.formats.images import read_grey, resize_grey
from tasks.metrics import dice_per_class
from tasks.roi import RoiConfig
from tasks.roi_dataset import RoiDataset, box_dice
from tasks.registry import TASKS
from tasks.rle import encode


class SegmentationData(DataBase):
    root: str = "data/phantom/handbones/train"
    test_root: str | None = "data/phantom/handbones/test"
    val_at_train_size: bool = False
    cache_dir: str | None = None
    roi: RoiConfig | None = None   # set: a stage-2 wrist-ROI run (crops at image_size; tasks.roi)


def resolve_thresholds(threshold: float | Sequence[float] | dict[str, float], classes: Sequence[str] = CLASSES) -> np.ndarray:
    """Per-class thresholds from a float, a list in class order, or a ``{class: t}`` dict (others 0.5).
    Values outside (0, 1), a list of another length or an unknown class are a ValueError
    (:func:`tasks.base.check_thresholds`)."""
    check_thresholds(threshold, classes)
    if isinstance(threshold, (int, float)):
        return np.full(len(classes), float(threshold), np.float32)
    if isinstance(threshold, dict):
        return np.array([float(threshold.get(c, 0.5)) for c in classes], np.float32)
    return np.asarray(threshold, np.float32)


def class_masks(probs: np.ndarray, size: tuple[int, int], thresholds: np.ndarray,
                out: np.ndarray | None = None) -> Iterator[np.ndarray]:
    """Each class's ``(H, W)`` uint8 mask at the original size, in class order, from ``(C, h, w)`` probabilities
    (float, or uint8 = p*255): bilinear with half-pixel centres (as ``F.interpolate(align_corners=False)``),
    then ``p > threshold``.

    ``out``: a ``(C, H, W)`` array the masks are written into; without it, one ``(H, W)`` buffer is reused, so a
    mask is valid only until the next one is made (encode it first).
    """
    height, width = size
    scale = 255.0 if probs.dtype == np.uint8 else 1.0
    buffer = np.empty((height, width), np.uint8) if out is None else None
    upsampled = None
    for c, prob in enumerate(probs):
        if prob.shape != (height, width):
            upsampled = cv2.resize(prob.astype(np.float32, copy=False), (width, height), dst=upsampled,
                                   interpolation=cv2.INTER_LINEAR)
            prob = upsampled
        mask = buffer if out is None else out[c]
        np.greater(prob, thresholds[c] * scale, out=mask, casting="unsafe")
        yield mask


def probs_to_masks(probs: np.ndarray, size: tuple[int, int], thresholds: np.ndarray) -> np.ndarray:
    """``(C, h, w)`` probabilities → ``(C, H, W)`` uint8 masks at the original size (:func:`class_masks`), one
    class at a time, so a 29x2048x2048 float map never exists in memory."""
    out = np.empty((probs.shape[0], *size), np.uint8)
    for _ in class_masks(probs, size, thresholds, out):
        pass
    return out


def encode_probs(probs: np.ndarray, size: tuple[int, int], thresholds: np.ndarray) -> list[str]:
    """The RLE of each class's mask at the original size (the submission's rows of one image): each class
    upsampled, thresholded and encoded in turn, so one ``(H, W)`` mask exists at a time, never ``(C, H, W)``."""
    return [encode(mask) for mask in class_masks(probs, size, thresholds)]


class HandboneDataset(SeededDataset):
    """Images (and masks) at ``size x size``; items are dicts of tensors plus ``name`` and ``index``.

    Masks stay uint8 0/1 (``(29, size, size)``): a quarter of float32's bytes through the loader workers,
    the collate, pinning and the copy to the device (29 x 1024² floats are 121 MB an image).
    """

    def __init__(self, samples: Sequence[HandboneSample], size: int, augment=None, cache: SampleCache | None = None,
                 seed: int = 0) -> None:
        super().__init__(samples, size, augment, cache, seed)

    def load(self, i: int) -> dict[str, np.ndarray]:
        """Decoded image (and packed masks) at the training size, plus the original size."""
        s = self.samples[i]
        sources = [s.image_path] + ([s.label_path] if s.label_path else [])

        def make() -> dict[str, np.ndarray]:
            image = read_grey(s.image_path)
            h, w = image.shape
            out = {"image": resize_grey(image, self.size, self.size), "orig_size": np.array([h, w])}
            if s.label_path is not None:
                masks = read_masks(s.label_path, h, w)
                small = np.stack([resize_grey(m * 255, self.size, self.size) >= 128 for m in masks])
                out["masks"] = np.packbits(small, axis=-1)
            return out

        return self.cache.get(sources, f"seg|{self.size}", make)

    def label_notes(self, i: int) -> list[str]:
        return mislabelled_bones(self.samples[i].label_path)

    def __getitem__(self, i: int) -> dict:
        item = self.load(i)
        image = item["image"]
        masks = None
        if "masks" in item:
            masks = np.unpackbits(item["masks"], axis=-1, count=self.size)
        if self.augment is not None:
            self.reseed(i)
            kwargs = {"image": image}
            if masks is not None:
                kwargs["mask"] = masks.transpose(1, 2, 0)
            out = self.augment(**kwargs)
            image = out["image"]
            if masks is not None:
                masks = np.ascontiguousarray(out["mask"].transpose(2, 0, 1))
        batch = {
            "image": torch.from_numpy(np.array(image, dtype=np.float32)).div_(255.0).unsqueeze(0),
            "index": i,
            "orig_size": torch.as_tensor(item["orig_size"]),
        }
        if masks is not None:
            batch["masks"] = torch.from_numpy(masks)  # uint8: the loss makes them float on the device
        return batch


class MultilabelLoss(nn.Module):
    """Weighted sum of ``bce``, ``dice``, ``focal`` and ``tversky`` (smp's multilabel losses)."""

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

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = logits.float(), target.float()
        return sum(self.weights[k] * term(logits, target) for k, term in self.terms.items())


@TASKS.register("segmentation")
class SegmentationTask(Task):
    name = "segmentation"
    Data = SegmentationData
    metric = "dice"
    mode = "max"
    sigmoid_outputs = True
    default_loss = {"bce": 1.0, "dice": 1.0}
    classes: tuple[str, ...] = CLASSES

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.criterion = MultilabelLoss(cfg.loss.weights, cfg.loss.focal_gamma, cfg.loss.tversky_alpha,
                                        cfg.loss.tversky_beta)
        self.thresholds = resolve_thresholds(cfg.inference.threshold)

    @property
    def num_outputs(self) -> int:
        roi = self.cfg.data.roi
        return len(roi.classes) if roi is not None else len(self.classes)

    def datasets(self) -> tuple[HandboneDataset, HandboneDataset]:
        data = self.cfg.data
        samples = list_samples(data.root)
        missing = [s for s in samples if s.label_path is None]
        if missing:
            raise FormatError(f"{data.root}: training images need labels (outputs_json/); none for {missing[0].image_path}")
        train_idx, val_idx = split_folds(samples, data.n_folds, data.fold)
        cache = SampleCache(data.cache_dir, enabled=data.cache)
        aug = build_augment(self.cfg.augment)
        if data.roi is not None:
            return (RoiDataset([samples[i] for i in train_idx], data.image_size, data.roi, aug, cache,
                               self.cfg.train.seed, jitter=True),
                    RoiDataset([samples[i] for i in val_idx], data.image_size, data.roi, None, cache))
        train = HandboneDataset([samples[i] for i in train_idx], data.image_size, aug, cache, self.cfg.train.seed)
        val = HandboneDataset([samples[i] for i in val_idx], data.image_size, None, cache)
        return train, val

    def loss(self, output: torch.Tensor, batch: dict) -> torch.Tensor:
        return self.criterion(output, batch["masks"])

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset: HandboneDataset, device: torch.device,
                 autocast=None, batch_size: int = 4) -> dict:
        """Dice per class: predicted at the training size, scored at the original size (or the training size);
        a stage-2 ROI run: its classes inside the ground-truth box at the original resolution."""
        model.eval()
        dices, losses = [], []
        roi = self.cfg.data.roi
        thresholds = self.thresholds[roi.class_indices] if roi is not None else self.thresholds
        at_train_size = self.cfg.data.val_at_train_size
        for start in range(0, len(dataset), batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            images = torch.stack([it["image"] for it in items]).to(device)
            masks = torch.stack([it["masks"] for it in items]).to(device)
            with autocast() if autocast else torch.autocast(device.type, enabled=False):
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
        names = roi.classes if roi is not None else self.classes
        return {
            "score": float(per_class.mean()),
            "loss": float(sum(losses) / max(1, len(dataset))),
            "per_item": {c: float(v) for c, v in zip(names, per_class)},
        }
