"""Segmentation prediction rows: the submission CSV and the prediction cache the segmentation writer writes are
byte-identical to what the harness wrote before masks were encoded class by class and before the one predictor
(digests recorded from that code on a fixed input), whatever the number of post-processing threads; the thread
count follows the device."""
from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from core.cli import Output
from engine.device import post_workers
from tasks.formats.handbones import list_samples
from tasks.formats.images import read_grey
from tasks.rle import encode
from tasks.segmentation.masks import encode_probs, probs_to_masks
from tasks.segmentation.task import SegmentationWriter
from tasks.spec import MODE_RESIZE, MODE_SLIDING
from tasks.submission import iter_images

SIZES = [(50, 70), (64, 64), (33, 47), (24, 24)]
THRESHOLDS = np.linspace(0.2, 0.8, 29).astype(np.float32)
# sha256 over the CSV and every cache file (name, bytes), written by the harness at commit c289687 (one (29, H, W)
# uint8 mask array per image, then RLE) from the fixed input below.
DIGEST_MODEL_SIZE = "d98ed4b680c24a85eedde6fc95be86aa18e11fdf6646ff872127c0cf9173469c"
DIGEST_ORIGINAL_SIZE = "e0f4ae156216590454f9b0e12288dd2712af859eb8179219684868b0a98ea36d"


def write_images(root: Path) -> None:
    for i, (h, w) in enumerate(SIZES):
        path = root / "DCM" / f"ID{i // 2:03d}" / f"image{i:013d}_{'LR'[i % 2]}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), (np.arange(h * w).reshape(h, w) * (i + 3) % 256).astype(np.uint8))


def smooth_probs(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(29, h, w) float32 probabilities fixed by the image: one cone per class (exact float arithmetic only, so
    the same on every machine), class 0 empty, class 1 full."""
    h, w = size
    seed = int(image.sum())
    y, x = np.mgrid[0:h, 0:w].astype(np.float32) / np.float32(max(h, w))
    probs = np.empty((29, h, w), np.float32)
    for c in range(29):
        cx, cy = ((seed + 7 * c) % 11) / 10, ((seed + 5 * c) % 13) / 12
        r2 = np.float32((0.1 + (c % 5) / 10) ** 2)
        probs[c] = np.clip(1 - ((x - np.float32(cx)) ** 2 + (y - np.float32(cy)) ** 2) / r2, 0, 1)
    probs[0], probs[1] = 0.0, 1.0
    return probs


class ModelSizeSource:
    """A resizing predictor's maps: float32 at the model's output size (24 px)."""

    mode = MODE_RESIZE

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return smooth_probs(image, (24, 24))


class OriginalSizeSource:
    """A sliding-window predictor's maps as the writer keeps them: uint8 (p*255) at the original size."""

    mode = MODE_SLIDING

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(smooth_probs(image, image.shape) * 255), 0, 255).astype(np.uint8)


def digest(csv: Path, cache: Path) -> str:
    h = hashlib.sha256(csv.read_bytes())
    for path in sorted(cache.iterdir()):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("workers", [0, 1, 3])
@pytest.mark.parametrize("source, expected", [(ModelSizeSource(), DIGEST_MODEL_SIZE),
                                              (OriginalSizeSource(), DIGEST_ORIGINAL_SIZE)])
def test_csv_and_cache_are_byte_identical_to_the_full_mask_array_code(tmp_path, source, expected, workers):
    write_images(tmp_path / "test")
    samples = list_samples(tmp_path / "test", labels=None)
    cache = Output(tmp_path / "cache", required=True)
    with SegmentationWriter(tmp_path / "sub.csv", THRESHOLDS, cache, "identity", workers, source.mode) as writer:
        for sample in samples:
            image = read_grey(sample.image_path)
            writer.add({"samples": [sample], "raw": [image]}, [source(image)])
    assert writer.images == len(SIZES)
    assert digest(tmp_path / "sub.csv", tmp_path / "cache") == expected
    names = [name for name, _ in iter_images(tmp_path / "sub.csv")]
    assert names == [s.name for s in samples]  # input order, whatever the thread count


@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_encode_probs_equals_masks_then_rle(dtype):
    probs = smooth_probs(np.full((5, 5), 7, np.uint8), (24, 24))
    if dtype == np.uint8:
        probs = np.clip(np.rint(probs * 255), 0, 255).astype(np.uint8)
    rles = encode_probs(probs, (37, 53), THRESHOLDS)
    assert rles == [encode(m) for m in probs_to_masks(probs, (37, 53), THRESHOLDS)]
    assert rles[0] == "" and rles[1] == f"1 {37 * 53}"  # empty class, full class


def test_post_workers_follow_the_device(monkeypatch):
    import torch

    monkeypatch.setattr("engine.device.cpu_count", lambda: 2)
    assert post_workers("auto", torch.device("cpu")) == 0      # inline: the forward pass keeps both cores
    assert post_workers("auto", torch.device("cuda")) == 2
    monkeypatch.setattr("engine.device.cpu_count", lambda: 16)
    assert post_workers("auto", torch.device("cpu")) == 1
    assert post_workers("auto", torch.device("cuda")) == 8
    assert post_workers(3, torch.device("cpu")) == 3           # a number is taken as given
    assert post_workers(0, torch.device("cuda")) == 0
