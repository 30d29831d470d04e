#!/usr/bin/env python
"""One training epoch of data loading (no augmentation): the harness's decoded-once cache against plain ``.npy``
files of the same arrays, and against decoding the PNGs and JSONs every time.

  python benchmarks/data_loading.py [--images 16] [--size 2048] [--train-size 512] [--rounds 5] [--json PATH]

Plain (written below as one would by hand): ``np.load`` of an image ``.npy`` and a masks ``.npy`` per item,
made into the tensors the harness's items hold. Harness: ``HandboneDataset[i]`` with its ``SampleCache``
filled (one file of ``.npy`` records per item, masks bit-packed). Items must be equal. Rounds alternate the
two (medians); decoding every time is timed once, for scale. Prints and writes (default
``benchmarks/results/data_loading.json``) items/s of each and the ratio harness / plain.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import engine  # noqa: F401  (offline environment first)

import numpy as np
import torch

from common import alternate, check_same, medians, write_handbones, write_result
from tasks.cache import SampleCache
from tasks.formats.handbones import list_samples
from tasks.segmentation.task import HandboneDataset


def plain_item(folder: Path, i: int) -> dict:
    image = np.load(folder / f"{i}_image.npy")
    masks = np.load(folder / f"{i}_masks.npy")
    return {"image": torch.from_numpy(image).float().div_(255).unsqueeze(0), "masks": torch.from_numpy(masks)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--train-size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", help="result file (default benchmarks/results/data_loading.json)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root, plain_dir = Path(tmp) / "train", Path(tmp) / "plain"
        write_handbones(root, args.images, args.size)
        samples = list_samples(root)
        decoding = HandboneDataset(samples, args.train_size, cache=SampleCache(enabled=False))
        cached = HandboneDataset(samples, args.train_size, cache=SampleCache(Path(tmp) / "cache"))
        plain_dir.mkdir()
        for i in range(len(cached)):  # fills the harness's cache; the plain files hold the same arrays, unpacked
            arrays = cached.load(i)
            np.save(plain_dir / f"{i}_image.npy", arrays["image"])
            np.save(plain_dir / f"{i}_masks.npy", np.unpackbits(arrays["masks"], axis=-1, count=args.train_size))
        for i in range(len(cached)):
            ours, plain = cached[i], plain_item(plain_dir, i)
            check_same(f"item {i}", True, all(torch.equal(ours[k], plain[k]) for k in plain))
        times = alternate({"plain": lambda: [plain_item(plain_dir, i) for i in range(len(cached))],
                           "harness": lambda: [cached[i] for i in range(len(cached))]}, args.rounds)
        decode = alternate({"decode": lambda: [decoding[i] for i in range(len(decoding))]}, 1)["decode"][0]
    med = medians(times)
    speed = {name: args.images / t for name, t in med.items()}
    ratio = speed["harness"] / speed["plain"]
    result = {"images": args.images, "size": args.size, "train_size": args.train_size, "rounds": args.rounds,
              "seconds": {k: [round(t, 4) for t in v] for k, v in times.items()}, "decode_every_epoch_s": round(decode, 3),
              "items_per_s": {k: round(v, 2) for k, v in speed.items()}, "ratio_harness_over_plain": round(ratio, 3)}
    out = write_result("data_loading", result, args.json)
    print(f"{args.images} images {args.size}px -> {args.train_size}px, medians of {args.rounds} alternating rounds: "
          f"plain .npy {speed['plain']:.1f} items/s, harness cache {speed['harness']:.1f} items/s: ratio {ratio:.3f} "
          f"(equal items); decoding PNG + JSON every epoch {args.images / decode:.1f} items/s -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
