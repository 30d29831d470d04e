#!/usr/bin/env python
"""Segmentation inference at 2048²: the harness's pipeline against a plain loop doing the same work.

  python benchmarks/inference_speed.py [--images 8] [--size 2048] [--model smp:unet/resnet34] [--input 1024]
                                       [--rounds 5] [--device auto] [--workers auto] [--json PATH]

Plain loop (written below as one would by hand): read the PNG, resize to the model input, forward,
sigmoid, then per class resize to the original size, threshold, RLE, CSV row. Harness: what
``inference.py`` runs after loading the model (the one predictor, ``engine.predictor.Predictor``, without TTA,
and the segmentation writer with ``inference.post_workers`` threads, :func:`engine.device.post_workers`). Both
write a CSV of the same images with the same model (random weights); the CSVs must be byte-identical.
Rounds alternate the two (medians reported), and each path's peak RSS above the loaded model is read
per path. Prints and writes (default ``benchmarks/results/inference_speed.json``) images/s of each and
the ratio harness / plain (the target: >= 0.95).
"""
from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

import engine  # noqa: F401  (offline environment first)

import cv2
import numpy as np
import torch

from common import alternate, check_same, medians, reset_peak_rss, rss_mb, write_handbones, write_result
from engine.config import load_config
from engine.device import pick_device, post_workers
from engine.predictor import LoadedModel, Predictor
from tasks.tta import View
from models import create_model
from tasks.formats.handbones import CLASSES, list_samples
from tasks.rle import encode


def plain_loop(paths: list[Path], model: torch.nn.Module, input_size: int, threshold: float, device: torch.device,
               out_csv: Path) -> None:
    with open(out_csv, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_name", "class", "rle"])
        for path in paths:
            image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            height, width = image.shape
            small = cv2.resize(image, (input_size, input_size), interpolation=cv2.INTER_AREA)
            x = torch.from_numpy(small).float().div_(255)[None, None].to(device)
            with torch.no_grad():
                probs = model(x).float().sigmoid()[0].cpu().numpy()
            for c, name in enumerate(CLASSES):
                prob = cv2.resize(probs[c], (width, height), interpolation=cv2.INTER_LINEAR)
                writer.writerow([path.name, name, encode(prob > np.float32(threshold))])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--model", default="smp:unet/resnet34")
    parser.add_argument("--input", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", default="auto", help="the harness's post_workers (auto or a number)")
    parser.add_argument("--json", help="result file (default benchmarks/results/inference_speed.json)")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    workers = post_workers(args.workers if args.workers == "auto" else int(args.workers), device)
    torch.manual_seed(0)
    model = create_model(args.model, task="segmentation", num_outputs=len(CLASSES)).to(device).eval()
    cfg = load_config(None, {"task": "segmentation", "data": {"root": "x", "image_size": args.input},
                             "model": {"name": args.model}})
    predictor = Predictor(LoadedModel(model, cfg, Path("bench")), [View()], device)

    def harness(samples, out_csv: Path) -> None:
        with predictor.task.writer(out_csv, None, views=[View()], workers=workers) as writer:
            for batch, outputs in predictor.batches(samples):
                writer.add(batch, outputs)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "test"
        write_handbones(root, args.images, args.size, labels=False)
        samples = list_samples(root, labels=None)
        paths = [s.image_path for s in samples]
        plain_csv, ours_csv = Path(tmp) / "plain.csv", Path(tmp) / "ours.csv"
        harness(samples[:1], Path(tmp) / "warm.csv")  # warm-up (allocator, kernels)
        peaks = {"plain": 0.0, "harness": 0.0}
        base = rss_mb()

        def run(name: str, fn) -> None:
            reset_peak_rss()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            peaks[name] = max(peaks[name], rss_mb() - base)

        times = alternate({
            "plain": lambda: run("plain", lambda: plain_loop(paths, model, args.input, 0.5, device, plain_csv)),
            "harness": lambda: run("harness", lambda: harness(samples, ours_csv)),
        }, args.rounds)
        check_same("submission CSV", plain_csv.read_bytes(), ours_csv.read_bytes())
    med = medians(times)
    speed = {name: args.images / t for name, t in med.items()}
    ratio = speed["harness"] / speed["plain"]
    result = {"images": args.images, "size": args.size, "model": args.model, "input": args.input,
              "device": str(device), "post_workers": workers, "rounds": args.rounds,
              "seconds": {k: [round(t, 3) for t in v] for k, v in times.items()},
              "images_per_s": {k: round(v, 4) for k, v in speed.items()},
              "peak_rss_above_model_mb": {k: round(v) for k, v in peaks.items()},
              "ratio_harness_over_plain": round(ratio, 3)}
    out = write_result("inference_speed", result, args.json)
    print(f"{args.images} images {args.size}² -> {args.model} at {args.input} on {device} (post_workers {workers}), "
          f"medians of {args.rounds} alternating rounds: plain {speed['plain']:.3f} img/s, harness "
          f"{speed['harness']:.3f} img/s: ratio {ratio:.3f} (identical CSVs); peak RSS above the model: plain "
          f"{peaks['plain']:.0f} MB, harness {peaks['harness']:.0f} MB -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
