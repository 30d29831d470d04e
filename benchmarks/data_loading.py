#!/usr/bin/env python
"""One training epoch of data loading: decoded-once cache vs decoding the PNGs and JSONs every time.

  python benchmarks/data_loading.py [--images 16] [--size 2048] [--train-size 512]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from common import bone_masks
import engine  # noqa: F401
from tasks.cache import SampleCache
from tasks.formats.handbones import CLASSES, list_samples, mask_to_polygons, write_polygons
from tasks.segmentation.task import HandboneDataset


def make_dataset(root: Path, n: int, size: int) -> None:
    for i in range(n):
        masks = bone_masks(size, seed=i)
        stem = f"image{i:013d}_{'LR'[i % 2]}"
        image_path = root / "DCM" / f"ID{i // 2:03d}" / f"{stem}.png"
        image_path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(image_path), (masks.max(0) * 180 + 30).astype(np.uint8))
        write_polygons(root / "outputs_json" / f"ID{i // 2:03d}" / f"{stem}.json",
                       {c: mask_to_polygons(m) for c, m in zip(CLASSES, masks)})


def epoch(dataset: HandboneDataset) -> float:
    t0 = time.perf_counter()
    for i in range(len(dataset)):
        dataset[i]
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--train-size", type=int, default=512)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "train"
        make_dataset(root, args.images, args.size)
        samples = list_samples(root)
        plain = HandboneDataset(samples, args.train_size, cache=SampleCache(enabled=False))
        cached = HandboneDataset(samples, args.train_size, cache=SampleCache(Path(tmp) / "cache"))
        t_plain = epoch(plain)
        t_first = epoch(cached)
        t_cached = epoch(cached)
    print(f"{args.images} images {args.size}px -> {args.train_size}px: decode every epoch {t_plain:.2f}s, "
          f"first cached epoch {t_first:.2f}s, later epochs {t_cached:.2f}s: {t_plain / t_cached:.1f}x faster")


if __name__ == "__main__":
    main()
