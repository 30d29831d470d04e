#!/usr/bin/env python
"""Sliding-window inference vs whole-image resizing: time and peak memory on one image, same model.

  python benchmarks/sliding_window.py [--size 1024] [--input 256] [--model smp:fpn/resnet18] [--overlap 0.5] [--repeat 3]

Each mode runs in a fresh process (random weights, CPU unless a GPU is there): one image of ``--size``²
through the model to thresholded masks at the original size (``probs_to_masks``, what precedes RLE):
  resize  - the image resized to ``--input``, probabilities upsampled per class (engine.predictor.Predictor);
  sliding - tiles of ``--input`` at the original size, Gaussian-weighted (the same predictor with
            ``inference.sliding_window``, engine.sliding_window).
Reported: best-of-``--repeat`` seconds, tiles, and the peak RSS above the RSS before the first prediction.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from common import best_time, bone_masks, reset_peak_rss, rss_mb


def child(args: argparse.Namespace) -> dict:
    import engine  # noqa: F401
    import torch

    from engine.config import load_config
    from engine.device import pick_device
    from engine.predictor import LoadedModel, Predictor, to_device
    from engine.sliding_window import tile_grid
    from models import create_model
    from tasks.segmentation.masks import probs_to_masks, resolve_thresholds
    from tasks.segmentation.task import quantize
    from tasks.tta import View

    torch.manual_seed(0)
    device = pick_device("auto")
    cfg = load_config(None, {"task": "segmentation", "data": {"root": "x", "image_size": args.input},
                             "model": {"name": args.model},
                             "inference": {"sliding_window": args.mode == "sliding", "tile_overlap": args.overlap,
                                           "batch_size": 4}})
    model = create_model(args.model, task="segmentation", num_outputs=29).to(device).eval()
    predictor = Predictor(LoadedModel(model, cfg, Path("bench")), [View()], device)
    image = (bone_masks(args.size, seed=0).max(0) * 180 + 30).astype("uint8")
    thresholds = resolve_thresholds(0.5)
    base = rss_mb()
    reset_peak_rss()

    def run() -> None:
        probs = predictor(to_device(predictor.task.image_batch(image, predictor.input_size), device))[0]
        probs = quantize(probs) if args.mode == "sliding" else probs.cpu().numpy()  # as the writer keeps them
        probs_to_masks(probs, image.shape, thresholds)

    seconds = best_time(run, args.repeat)
    tiles = len(tile_grid(args.size, args.size, args.input, args.overlap)) if args.mode == "sliding" else 1
    return {"mode": args.mode, "seconds": round(seconds, 3), "tiles": tiles,
            "peak_above_start_mb": round(rss_mb() - base, 1), "device": str(device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--input", type=int, default=256)
    parser.add_argument("--model", default="smp:fpn/resnet18")
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--mode", choices=("resize", "sliding"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(child(args)))
        return
    rows = {}
    for mode in ("resize", "sliding"):
        cmd = [sys.executable, __file__, "--mode", mode] + sys.argv[1:]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows[mode] = json.loads(out.strip().splitlines()[-1])
    print(f"one {args.size}x{args.size} image, {args.model} at {args.input} px, overlap {args.overlap}, "
          f"{rows['resize']['device']}")
    print(f"{'mode':<8} {'tiles':>5} {'seconds':>8} {'peak MB above start':>20}")
    for mode, r in rows.items():
        print(f"{mode:<8} {r['tiles']:>5} {r['seconds']:>8.3f} {r['peak_above_start_mb']:>20.1f}")
    s, r = rows["sliding"], rows["resize"]
    print(f"sliding / resize: {s['seconds'] / r['seconds']:.1f}x time, "
          f"{s['peak_above_start_mb'] / max(r['peak_above_start_mb'], 0.1):.1f}x peak memory")


if __name__ == "__main__":
    main()
