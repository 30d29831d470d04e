#!/usr/bin/env python
"""RLE encoding of the 29 masks of one 2048x2048 image: ours vs the per-class concatenate/where/join baseline.

  python benchmarks/rle_encode.py [--size 2048] [--repeat 5]
"""
from __future__ import annotations

import argparse

import numpy as np

from common import best_time, bone_masks
from tasks.rle import encode


def baseline_encode(mask: np.ndarray) -> str:
    pixels = np.concatenate([[0], mask.flatten(), [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    masks = bone_masks(args.size)
    ours = [encode(m) for m in masks]
    assert ours == [baseline_encode(m) for m in masks], "outputs differ"
    t_base = best_time(lambda: [baseline_encode(m) for m in masks], args.repeat)
    t_ours = best_time(lambda: [encode(m) for m in masks], args.repeat)
    print(f"29 masks {args.size}x{args.size}: baseline {t_base * 1000:.1f} ms, ours {t_ours * 1000:.1f} ms, "
          f"speed-up {t_base / t_ours:.1f}x (identical strings)")


if __name__ == "__main__":
    main()
