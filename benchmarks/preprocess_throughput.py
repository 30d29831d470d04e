#!/usr/bin/env python
"""Radiograph preprocessing throughput at full size, and what the sample cache saves on a second epoch.

  python benchmarks/preprocess_throughput.py                       # the 40 shared real RSNA hands (1600x2080)
  python benchmarks/preprocess_throughput.py --root data/phantom/boneage --csv boneage-training-dataset.csv \
      --images boneage-training-dataset --limit 100

1. Throughput (images/s, single process) of: decoding alone, then decoding + each preprocessing chain
   (hand mask + crop; + min-max + CLAHE; + orientation; + ROI mosaic), every image at its full size.
2. The bone-age dataset (preprocess + letterbox to --size) iterated twice over a fresh cache folder:
   epoch 1 decodes and preprocesses (and fills the cache), epoch 2 reads the cache; and once with the
   cache disabled, the cost of every epoch without it.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import engine  # noqa: F401  (offline environment first)

from tasks.boneage.task import BoneAgeDataset
from tasks.boneage.samples import list_samples
from tasks.cache import SampleCache
from tasks.formats.images import read_grey
from tasks.preprocess import Preprocess

CHAINS = {
    "decode only": None,
    "mask + crop": {"crop_to_hand": True, "remove_background": True},
    "mask + crop + minmax + CLAHE": {"crop_to_hand": True, "remove_background": True, "minmax": True, "clahe": True},
    "orientation + mask + crop + minmax + CLAHE": {"orientation": "rotate_mirror", "crop_to_hand": True,
                                                   "remove_background": True, "minmax": True, "clahe": True},
    "mask + ROI mosaic (2x2 of 256)": {"roi_mosaic": True, "minmax": True},
}


def throughput(paths: list[Path], chain: dict | None) -> float:
    pre = Preprocess(chain) if chain is not None else None
    t0 = time.perf_counter()
    for p in paths:
        image = read_grey(p)
        if pre is not None:
            pre(image)
    return len(paths) / (time.perf_counter() - t0)


def epoch_seconds(dataset: BoneAgeDataset) -> float:
    t0 = time.perf_counter()
    for i in range(len(dataset)):
        dataset[i]
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    default_root = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "rsna_boneage"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(default_root))
    parser.add_argument("--csv", default="labels.csv")
    parser.add_argument("--images", default="images")
    parser.add_argument("--limit", type=int, help="use only the first N images")
    parser.add_argument("--size", type=int, default=256, help="training size of the dataset test")
    args = parser.parse_args(argv)
    root = Path(args.root)
    samples = list_samples(root / args.csv, root / args.images)[: args.limit]
    paths = [s.image_path for s in samples]
    h, w = read_grey(paths[0]).shape
    print(f"{len(paths)} images from {root} (first {w}x{h})")
    print("\n1. throughput at full size (single process)")
    for name, chain in CHAINS.items():
        print(f"  {name:<44} {throughput(paths, chain):7.2f} img/s")

    chain = Preprocess(CHAINS["mask + crop + minmax + CLAHE"])
    print(f"\n2. dataset epochs at {args.size} px with the 'mask + crop + minmax + CLAHE' chain")
    with tempfile.TemporaryDirectory() as tmp:
        cached = BoneAgeDataset(samples, args.size, chain, cache=SampleCache(tmp))
        cold, warm = epoch_seconds(cached), epoch_seconds(cached)
    uncached = epoch_seconds(BoneAgeDataset(samples, args.size, chain, cache=SampleCache(enabled=False)))
    n = len(samples)
    print(f"  no cache (every epoch)     {uncached:7.2f} s  ({n / uncached:8.1f} img/s)")
    print(f"  cache, epoch 1 (fills it)  {cold:7.2f} s  ({n / cold:8.1f} img/s)")
    print(f"  cache, epoch 2 (reads it)  {warm:7.2f} s  ({n / warm:8.1f} img/s)")
    print(f"  speed-up of epoch 2 over an uncached epoch: {uncached / warm:.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
