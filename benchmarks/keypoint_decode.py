#!/usr/bin/env python
"""Heatmap decoding: the vectorised DARK decoder against a per-landmark Python loop, in one run.

Decodes ``--batch`` x ``--landmarks`` heatmaps of ``--size`` x ``--size`` (noisy Gaussians at random
sub-pixel positions): :func:`tasks.heatmaps.decode_heatmaps` (one argmax over all maps, one gather, no
loop) against :func:`tasks.heatmaps.decode_one_dark` called once per landmark (the usual loop). Both
give the same coordinates (checked); reports the best of ``--repeat`` times and the localisation error.

  python benchmarks/keypoint_decode.py [--batch 32] [--landmarks 37] [--size 256] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import best_time
import engine  # noqa: F401

import numpy as np
import torch

from tasks.heatmaps import decode_heatmaps, decode_one_dark, render_gaussians


def make_heatmaps(batch: int, landmarks: int, size: int, sigma: float, noise: float, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    uv = torch.rand(batch, landmarks, 2, generator=gen) * (size - 16) + 8
    heatmaps = render_gaussians(uv, size, size, sigma)
    heatmaps = heatmaps * (1 - noise) + noise * torch.rand(heatmaps.shape, generator=gen) * 0.2
    return uv, heatmaps


def loop_decode(heatmaps: np.ndarray) -> np.ndarray:
    out = np.empty(heatmaps.shape[:2] + (2,))
    for b in range(heatmaps.shape[0]):
        for k in range(heatmaps.shape[1]):
            x, y, _ = decode_one_dark(heatmaps[b, k])
            out[b, k] = (x, y)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--landmarks", type=int, default=37)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--sigma", type=float, default=2.0)
    parser.add_argument("--noise", type=float, default=0.05, help="fraction of uniform noise mixed into the maps")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    uv, heatmaps = make_heatmaps(args.batch, args.landmarks, args.size, args.sigma, args.noise)
    as_numpy = heatmaps.numpy()
    device = torch.device(args.device)
    on_device = heatmaps.to(device)

    def vectorised():
        coords, _ = decode_heatmaps(on_device, "dark")
        if device.type == "cuda":
            torch.cuda.synchronize()
        return coords

    vectorised()  # warm-up (CUDA context, kernels)
    t_vec = best_time(vectorised, args.repeat)
    t_loop = best_time(lambda: loop_decode(as_numpy), max(1, args.repeat // 2))
    coords = vectorised().cpu().numpy()
    reference = loop_decode(as_numpy)
    agree = float(np.abs(coords - reference).max())
    err_vec = float(np.linalg.norm(coords - uv.numpy(), axis=-1).mean())
    maps = args.batch * args.landmarks
    result = {
        "batch": args.batch, "landmarks": args.landmarks, "size": args.size, "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "vectorised_ms": round(t_vec * 1e3, 3), "loop_ms": round(t_loop * 1e3, 3),
        "speedup": round(t_loop / t_vec, 1), "maps_per_s_vectorised": round(maps / t_vec),
        "max_disagreement_px": agree, "mean_error_px": round(err_vec, 4),
    }
    print(f"decode {args.batch}x{args.landmarks} heatmaps of {args.size}x{args.size} on {device} "
          f"({torch.get_num_threads()} threads)")
    print(f"  vectorised (decode_heatmaps):      {result['vectorised_ms']:9.2f} ms")
    print(f"  per-landmark loop (decode_one_dark): {result['loop_ms']:9.2f} ms")
    print(f"  speed-up x{result['speedup']}, same coordinates within {agree:.1e} px, "
          f"mean error vs truth {err_vec:.4f} px")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
