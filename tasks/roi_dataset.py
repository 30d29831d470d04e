"""Stage-2 data of the two-stage wrist ROI: crops around the ground-truth wrist at ``data.image_size``.

Targets are only the ROI classes (``data.roi.classes``; the model has that many output channels): the
other bones are cut by the crop border and come from stage 1 anyway, so predicting them would spend
capacity on classes that are never pasted. Training crops jitter the box (margin and centre, seeded
per run seed, epoch and index like the augmentations); validation crops use the plain box. An image
with none of the box classes (a young child's unossified carpals in the phantoms) is cropped at the
fallback box, as stage 1 finding nothing is at inference, so stage 2 also learns empty crops.
Validation Dice is that of the ROI classes inside the box at the original resolution (the crop's
probabilities pasted back at the box size) — stage 2 given a perfect stage-1 box.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from tasks.augment import SeededDataset, sample_seed
from tasks.cache import SampleCache
from tasks.formats.handbones import HandboneSample, mislabelled_bones, read_masks
from tasks.formats.images import read_grey
from tasks.metrics import dice_per_class
from tasks.roi import Box, RoiConfig, box_from_masks, crop, crop_masks, fallback_box, paste, square_box


class RoiDataset(SeededDataset):
    """Items: ``image`` ``(1, s, s)`` float, ``masks`` ``(K, s, s)`` uint8 (the ROI classes), ``box``,
    ``index`` and ``orig_size``; ``s`` = ``data.image_size``."""

    def __init__(self, samples: Sequence[HandboneSample], size: int, roi: RoiConfig, augment=None,
                 cache: SampleCache | None = None, seed: int = 0, jitter: bool = False) -> None:
        super().__init__(samples, size, augment, cache, seed)
        self.roi = roi
        self.jitter = jitter

    def load(self, i: int) -> dict[str, np.ndarray]:
        """Full-size image, packed full-size masks of the ROI classes and the plain box (cached)."""
        s = self.samples[i]
        roi = self.roi

        def make() -> dict[str, np.ndarray]:
            image = read_grey(s.image_path)
            h, w = image.shape
            masks = read_masks(s.label_path, h, w)
            box = box_from_masks(masks[roi.box_indices], roi.margin) or fallback_box((h, w))
            return {"image": image, "masks": np.packbits(masks[roi.class_indices].astype(bool), axis=-1),
                    "box": np.array(box)}

        tag = f"seg-roi|{','.join(roi.classes)}|{','.join(roi.box_classes)}|{roi.margin}"
        return self.cache.get([s.image_path, s.label_path], tag, make)

    def label_notes(self, i: int) -> list[str]:
        return mislabelled_bones(self.samples[i].label_path)

    def full_masks(self, item: dict[str, np.ndarray]) -> np.ndarray:
        return np.unpackbits(item["masks"], axis=-1, count=item["image"].shape[1])

    def jittered(self, box: Box, shape: tuple[int, int], i: int) -> Box:
        """The plain box with its margin and centre moved by up to ``jitter`` x its side (seeded)."""
        rng = np.random.default_rng(sample_seed(self.seed, self.epoch, i))
        x0, y0, x1, y1 = box
        side = x1 - x0
        j = self.roi.jitter * side
        grow = rng.uniform(-j, j) / 2
        dx, dy = rng.uniform(-j, j, size=2)
        return square_box((x0 + dx - grow, y0 + dy - grow, x1 + dx + grow, y1 + dy + grow), 0.0, shape)

    def __getitem__(self, i: int) -> dict:
        item = self.load(i)
        image = item["image"]
        box = tuple(int(v) for v in item["box"])
        if self.jitter and self.roi.jitter > 0:
            box = self.jittered(box, image.shape, i)
        masks = crop_masks(self.full_masks(item), box, self.size)
        image = crop(image, box, self.size)
        if self.augment is not None:
            self.reseed(i)
            out = self.augment(image=image, mask=masks.transpose(1, 2, 0))
            image, masks = out["image"], np.ascontiguousarray(out["mask"].transpose(2, 0, 1))
        return {
            "image": torch.from_numpy(np.array(image, dtype=np.float32)).div_(255.0).unsqueeze(0),
            "masks": torch.from_numpy(masks),
            "box": torch.as_tensor(box),
            "index": i,
            "orig_size": torch.as_tensor(item["image"].shape),
        }

    def box_targets(self, i: int) -> tuple[Box, np.ndarray]:
        """The plain box of item ``i`` and its ROI masks inside it at the original resolution."""
        item = self.load(i)
        x0, y0, x1, y1 = (int(v) for v in item["box"])
        return (x0, y0, x1, y1), self.full_masks(item)[:, y0:y1, x0:x1]


def box_dice(probs: np.ndarray, box: Box, target: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Dice per ROI class of crop probabilities ``(K, s, s)`` pasted at the box size against ``target``
    ``(K, bh, bw)`` (the masks inside the box)."""
    x0, y0, x1, y1 = box
    full = paste(np.zeros((probs.shape[0], y1 - y0, x1 - x0), np.float32), probs, (0, 0, x1 - x0, y1 - y0))
    pred = (full > np.asarray(thresholds, np.float32).reshape(-1, 1, 1)).astype(np.uint8)
    return dice_per_class(pred, target)
