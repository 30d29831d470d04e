#!/usr/bin/env python
"""Heatmap decoding, speed and accuracy, in one run.

Speed: decodes ``--batch`` x ``--landmarks`` heatmaps of ``--size`` x ``--size`` (Gaussians of ``--sigma``
at random sub-pixel positions, plus Gaussian pixel noise of std ``--noise``, clipped to [0, 1]):
:func:`tasks.heatmaps.decode_heatmaps` (one argmax over all maps, one gather, no loop) against
:func:`tasks.heatmaps.decode_one_dark` called once per landmark (the usual loop). Both give the same
coordinates (checked); reports the best of ``--repeat`` times, and the time with the blur.

Accuracy: at each of ``--noise-levels`` the mean and 95th-percentile sub-pixel error of DARK without the
blur against DARK with the blur the harness uses by default (``data.decode_blur: auto``: the target's
sigma, here ``--sigma`` since the maps are at stride 1), and their ratio.

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
    """True heatmap-frame peaks ``(B, K, 2)`` and their Gaussians with pixel noise of std ``noise``, in [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    uv = torch.rand(batch, landmarks, 2, generator=gen) * (size - 16) + 8
    heatmaps = render_gaussians(uv, size, size, sigma)
    heatmaps = (heatmaps + noise * torch.randn(heatmaps.shape, generator=gen)).clamp(0, 1)
    return uv, heatmaps


def decode_errors(uv: torch.Tensor, heatmaps: torch.Tensor, blur: float) -> np.ndarray:
    """Distance of each DARK-decoded peak (blur sigma ``blur``; 0: none) from the truth, heatmap pixels."""
    coords, _ = decode_heatmaps(heatmaps, "dark", blur)
    return (coords.cpu() - uv).norm(dim=-1).numpy().ravel()


def accuracy(args: argparse.Namespace) -> list[dict]:
    rows = []
    for noise in args.noise_levels:
        uv, heatmaps = make_heatmaps(args.batch, args.landmarks, args.size, args.sigma, noise, seed=1)
        plain, blurred = decode_errors(uv, heatmaps, 0.0), decode_errors(uv, heatmaps, args.sigma)
        rows.append({"noise": noise, "mean_px_unblurred": round(float(plain.mean()), 4),
                     "mean_px_blurred": round(float(blurred.mean()), 4),
                     "p95_px_unblurred": round(float(np.percentile(plain, 95)), 4),
                     "p95_px_blurred": round(float(np.percentile(blurred, 95)), 4),
                     "ratio": round(float(plain.mean() / blurred.mean()), 2) if blurred.mean() > 1e-3 else None})
    return rows


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
    parser.add_argument("--noise", type=float, default=0.05, help="std of the Gaussian pixel noise (speed part)")
    parser.add_argument("--noise-levels", type=float, nargs="+", default=[0.0, 0.01, 0.02, 0.05, 0.1],
                        help="noise stds of the accuracy part")
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

    def vectorised_blur():
        coords, _ = decode_heatmaps(on_device, "dark", args.sigma)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return coords

    vectorised()  # warm-up (CUDA context, kernels)
    vectorised_blur()
    t_vec = best_time(vectorised, args.repeat)
    t_blur = best_time(vectorised_blur, args.repeat)
    t_loop = best_time(lambda: loop_decode(as_numpy), max(1, args.repeat // 2))
    coords = vectorised().cpu().numpy()
    reference = loop_decode(as_numpy)
    agree = float(np.abs(coords - reference).max())
    err_vec = float(np.linalg.norm(coords - uv.numpy(), axis=-1).mean())
    maps = args.batch * args.landmarks
    result = {
        "batch": args.batch, "landmarks": args.landmarks, "size": args.size, "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "sigma": args.sigma, "noise": args.noise,
        "vectorised_ms": round(t_vec * 1e3, 3), "vectorised_blur_ms": round(t_blur * 1e3, 3),
        "loop_ms": round(t_loop * 1e3, 3),
        "speedup": round(t_loop / t_vec, 1), "maps_per_s_vectorised": round(maps / t_vec),
        "max_disagreement_px": agree, "mean_error_px": round(err_vec, 4),
        "accuracy": accuracy(args),
    }
    print(f"decode {args.batch}x{args.landmarks} heatmaps of {args.size}x{args.size} on {device} "
          f"({torch.get_num_threads()} threads)")
    print(f"  vectorised (decode_heatmaps):      {result['vectorised_ms']:9.2f} ms")
    print(f"  vectorised with blur sigma {args.sigma:g}:   {result['vectorised_blur_ms']:9.2f} ms")
    print(f"  per-landmark loop (decode_one_dark): {result['loop_ms']:9.2f} ms")
    print(f"  speed-up x{result['speedup']}, same coordinates within {agree:.1e} px, "
          f"mean error vs truth {err_vec:.4f} px")
    print(f"sub-pixel error (heatmap px) of DARK without / with the blur (sigma {args.sigma:g}), "
          f"{args.batch * args.landmarks} peaks per noise level:")
    print("  noise std   mean unblurred  mean blurred   p95 unblurred  p95 blurred   ratio")
    for r in result["accuracy"]:
        ratio = f"{r['ratio']:.1f}x" if r["ratio"] is not None else "—"
        print(f"  {r['noise']:9.3f}   {r['mean_px_unblurred']:14.4f}  {r['mean_px_blurred']:12.4f}   "
              f"{r['p95_px_unblurred']:13.4f}  {r['p95_px_blurred']:11.4f}   {ratio:>5}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
