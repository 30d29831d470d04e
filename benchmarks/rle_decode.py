#!/usr/bin/env python
"""RLE decoding of the 29 masks of one 2048x2048 image (and of 29 empty ones): ours vs the plain loop.

The baseline is the straightforward decoder of competition notebooks: a zero array and one slice
assignment per run. Scoring and validation decode every class of every test image, so both the
bone-sized and the empty case matter.

  python benchmarks/rle_decode.py [--size 2048] [--repeat 5]
"""
from __future__ import annotations

import argparse

import numpy as np

from common import best_time, bone_masks
from tasks.rle import decode, encode


def baseline_decode(rle: str, height: int, width: int) -> np.ndarray:
    mask = np.zeros(height * width, np.uint8)
    values = [int(v) for v in rle.split()]
    for start, length in zip(values[0::2], values[1::2]):
        mask[start - 1:start - 1 + length] = 1
    return mask.reshape(height, width)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    n = args.size
    cases = {"bones": [encode(m) for m in bone_masks(n)], "empty": [""] * 29}
    for label, rles in cases.items():
        for rle in rles:
            assert np.array_equal(decode(rle, n, n), baseline_decode(rle, n, n)), "outputs differ"
        t_base = best_time(lambda: [baseline_decode(r, n, n) for r in rles], args.repeat)
        t_ours = best_time(lambda: [decode(r, n, n) for r in rles], args.repeat)
        print(f"29 {label} masks {n}x{n}: baseline loop {t_base * 1000:.2f} ms, ours {t_ours * 1000:.2f} ms, "
              f"ratio {t_base / t_ours:.2f}x (identical masks, ours also checks order and bounds)")


if __name__ == "__main__":
    main()
