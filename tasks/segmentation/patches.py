"""Patch training at the original resolution (nnU-Net style): ``data.patch_size`` crops from the full-size image.

Training items are square crops of ``patch`` px cut from the image and its masks at their ORIGINAL size (never
resized), a new crop per item and epoch, seeded by (run seed, epoch, index) like the augmentations. With
probability ``foreground`` (``data.patch_foreground``, nnU-Net's 1/3) the crop is centred on a random pixel of a
random class present in the image, otherwise placed uniformly at random; it is moved, not shrunk, to lie inside
the image. A side shorter than the patch is padded with zeros (black, as outside a radiograph; masks empty), the
image centred, so a patch larger than the image is allowed. The crop then goes through the run's augmentation.

Validation items are the whole image and its masks at the original size: the trainer validates them in tiles of
the patch (``Task.validation_tile``, ``engine.sliding_window.TiledModel``), as prediction does
(``inference.sliding_window``, which such a run must set).

The decode cache holds one entry per image at the original size, shared by the training crops and validation:
the image, the packed masks and up to :data:`FOREGROUND_POINTS` sampled foreground pixels per class (for
2048² and 29 classes about 19 MB an image).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from tasks.augment import SeededDataset, sample_seed
from tasks.cache import SampleCache
from tasks.formats.handbones import HandboneSample, mislabelled_bones, read_masks
from tasks.formats.images import read_grey

FOREGROUND_POINTS = 64  # foreground pixels kept per class, sampled once per image (the crop centres drawn from)
CACHE_TAG = f"seg-full|fg{FOREGROUND_POINTS}"


def foreground_points(masks: np.ndarray, per_class: int = FOREGROUND_POINTS, seed: int = 0) -> np.ndarray:
    """``(N, 3)`` int32 rows ``(class, y, x)``: up to ``per_class`` pixels of each class of ``(C, H, W)`` ``masks``,
    drawn without replacement (the same for the same masks: ``seed``); a class without pixels has none."""
    rng = np.random.default_rng(seed)
    rows = []
    for c, mask in enumerate(masks):
        ys, xs = np.nonzero(mask)
        if len(ys):
            keep = rng.choice(len(ys), min(per_class, len(ys)), replace=False)
            rows.append(np.stack([np.full(len(keep), c), ys[keep], xs[keep]], axis=1))
    return np.concatenate(rows).astype(np.int32) if rows else np.zeros((0, 3), np.int32)


def _place(start: int, side: int, patch: int) -> int:
    """A crop's start moved to lie inside ``[0, side)``; negative (centred padding) when the side is shorter."""
    if side < patch:
        return -((patch - side) // 2)
    return int(min(max(start, 0), side - patch))


def crop_origin(shape: tuple[int, int], patch: int, rng: np.random.Generator, points: np.ndarray,
                foreground: float) -> tuple[int, int]:
    """Top-left ``(y, x)`` of a crop of ``patch`` px of an image of ``shape``: centred on a random ``points`` row of
    a random class among them with probability ``foreground``, else uniform; inside the image (see
    :func:`_place`)."""
    h, w = shape
    if len(points) and rng.random() < foreground:
        cls = rng.choice(np.unique(points[:, 0]))
        of_class = points[points[:, 0] == cls]
        _, cy, cx = of_class[rng.integers(len(of_class))]
        y0, x0 = int(cy) - patch // 2, int(cx) - patch // 2
    else:
        y0, x0 = int(rng.integers(0, max(h - patch, 0) + 1)), int(rng.integers(0, max(w - patch, 0) + 1))
    return _place(y0, h, patch), _place(x0, w, patch)


def _window(y0: int, x0: int, patch: int, h: int, w: int) -> tuple[slice, slice, slice, slice]:
    """Source rows/columns inside the image and where they land in the crop."""
    ys, ye, xs, xe = max(y0, 0), min(y0 + patch, h), max(x0, 0), min(x0 + patch, w)
    return slice(ys, ye), slice(xs, xe), slice(ys - y0, ye - y0), slice(xs - x0, xe - x0)


def cut(image: np.ndarray, y0: int, x0: int, patch: int) -> np.ndarray:
    """The ``patch x patch`` crop of ``(H, W)`` ``image`` at ``(y0, x0)``, zeros outside the image."""
    rows, cols, to_rows, to_cols = _window(y0, x0, patch, *image.shape)
    out = np.zeros((patch, patch), image.dtype)
    out[to_rows, to_cols] = image[rows, cols]
    return out


def cut_packed(packed: np.ndarray, width: int, y0: int, x0: int, patch: int) -> np.ndarray:
    """The ``(C, patch, patch)`` uint8 0/1 crop of masks packed along their width (``np.packbits(axis=-1)`` of
    ``(C, H, width)``), unpacking only the bytes the crop covers; zeros outside the image."""
    rows, cols, to_rows, to_cols = _window(y0, x0, patch, packed.shape[1], width)
    first, last = cols.start // 8, -(-cols.stop // 8)
    bits = np.unpackbits(packed[:, rows, first:last], axis=-1)
    out = np.zeros((packed.shape[0], patch, patch), np.uint8)
    out[:, to_rows, to_cols] = bits[..., cols.start - 8 * first:cols.stop - 8 * first]
    return out


class FullSizeDataset(SeededDataset):
    """Hand-bone images at their original size: crops of ``patch`` px (training, see the module docstring) or,
    with ``patch`` None, the whole image (validation). Items: ``image`` ``(1, s, s)`` float in [0, 1], ``masks``
    ``(29, s, s)`` uint8, ``index`` and ``orig_size``."""

    full_size = True  # items are at the original size: validation scores them as they are

    def __init__(self, samples: Sequence[HandboneSample], patch: int | None, foreground: float = 0.33,
                 augment=None, cache: SampleCache | None = None, seed: int = 0) -> None:
        super().__init__(samples, patch or 0, augment, cache, seed)
        self.patch, self.foreground = patch, foreground

    def load(self, i: int) -> dict[str, np.ndarray]:
        """The image, its packed masks and foreground points at the original size (cached)."""
        s = self.samples[i]

        def make() -> dict[str, np.ndarray]:
            image = read_grey(s.image_path)
            masks = read_masks(s.label_path, *image.shape).astype(bool)
            return {"image": image, "masks": np.packbits(masks, axis=-1), "points": foreground_points(masks)}

        return self.cache.get([s.image_path, s.label_path], CACHE_TAG, make)

    def label_notes(self, i: int) -> list[str]:
        return mislabelled_bones(self.samples[i].label_path)

    def __getitem__(self, i: int) -> dict:
        item = self.load(i)
        image = item["image"]
        h, w = image.shape
        if self.patch is None:
            masks = np.unpackbits(item["masks"], axis=-1, count=w)
        else:
            rng = np.random.default_rng(sample_seed(self.seed, self.epoch, i))
            y0, x0 = crop_origin((h, w), self.patch, rng, item["points"], self.foreground)
            image, masks = cut(image, y0, x0, self.patch), cut_packed(item["masks"], w, y0, x0, self.patch)
        if self.augment is not None:
            self.reseed(i)
            out = self.augment(image=image, mask=masks.transpose(1, 2, 0))
            image, masks = out["image"], np.ascontiguousarray(out["mask"].transpose(2, 0, 1))
        return {
            "image": torch.from_numpy(np.array(image, dtype=np.float32)).div_(255.0).unsqueeze(0),
            "index": i,
            "orig_size": torch.tensor([h, w]),
            "masks": torch.from_numpy(np.ascontiguousarray(masks)),
        }
