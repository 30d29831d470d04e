#!/usr/bin/env python
"""inference.py's pipeline on a 2048x2048 test set: post-processing overhead and peak memory.

  python benchmarks/inference_speed.py [--images 20] [--size 2048] [--model smp:unet/resnet34] [--input 1024]

Measures, in one run on the same images and model (random weights):
  model   - reading images + model + TTA (hflip) only, probabilities discarded;
  full    - the same plus upsampling to 2048, thresholds, RLE and the CSV (the real pipeline);
and the peak RSS of the full pipeline for N and 4N images in fresh processes (memory must not grow).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from common import bone_masks
import engine  # noqa: F401
import torch

from engine.config import load_config
from engine.predictor import LoadedModel, ProbabilitySource, predict_rows, write_submission
from engine.device import amp_dtype, pick_device
from tasks.tta import views_from_config
from models import create_model
from tasks.formats.handbones import list_samples
from tasks.formats.images import read_grey
from tasks.segmentation.masks import resolve_thresholds


def make_images(root: Path, n: int, size: int) -> None:
    for i in range(n):
        image = (bone_masks(size, seed=i).max(0) * 180 + 30).astype(np.uint8)
        path = root / "DCM" / f"ID{i // 2:03d}" / f"image{i:013d}_{'LR'[i % 2]}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), image)


def build(model_name: str, input_size: int, device: torch.device) -> tuple[ProbabilitySource, np.ndarray]:
    cfg = load_config(None, {"task": "segmentation", "data": {"root": "x", "image_size": input_size},
                             "model": {"name": model_name}})
    model = create_model(model_name, task="segmentation", num_outputs=29).to(device).eval()
    views = views_from_config(cfg.inference.tta)
    return ProbabilitySource([LoadedModel(model, cfg, Path("bench"))], views, device,
                             amp=amp_dtype("auto", device)), resolve_thresholds(0.5)


def run_full(root: Path, model_name: str, input_size: int, out_csv: Path) -> dict:
    device = pick_device("auto")
    source, thresholds = build(model_name, input_size, device)
    samples = list_samples(root, labels=None)
    source(read_grey(samples[0].image_path))  # warm-up
    t0 = time.perf_counter()
    for s in samples:
        source(read_grey(s.image_path))
    if device.type == "cuda":
        torch.cuda.synchronize()
    model_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    write_submission(predict_rows(samples, source, thresholds, workers=4, progress=False), out_csv)
    full_s = time.perf_counter() - t0
    return {"images": len(samples), "model_s": model_s, "full_s": full_s,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "device": str(device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--model", default="smp:unet/resnet34")
    parser.add_argument("--input", type=int, default=1024)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_full(Path(args.child), args.model, args.input, Path(args.child) / "sub.csv")))
        return
    with tempfile.TemporaryDirectory() as tmp:
        results = []
        for n in (args.images, 4 * args.images):
            root = Path(tmp) / f"n{n}"
            make_images(root, n, args.size)
            out = subprocess.run([sys.executable, __file__, "--child", str(root), "--model", args.model,
                                  "--input", str(args.input)], capture_output=True, text=True, check=True)
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    for r in results:
        overhead = (r["full_s"] - r["model_s"]) / r["model_s"]
        print(f"{r['images']:4d} images {args.size}px on {r['device']}: model+TTA {r['model_s']:.2f}s, "
              f"full pipeline {r['full_s']:.2f}s (post-processing adds {overhead:+.1%}), peak RSS {r['peak_rss_mb']:.0f} MB")
    print(f"peak RSS ratio {4 * args.images} vs {args.images} images: {results[1]['peak_rss_mb'] / results[0]['peak_rss_mb']:.2f}")


if __name__ == "__main__":
    main()
