#!/usr/bin/env python
"""Patch training at the original resolution against the whole image resized, at equal training steps: test Dice.

  python benchmarks/patch_training.py                      # 1024² phantoms, 16 train / 8 test, 256 px, 3 seeds
  python benchmarks/patch_training.py --workdir /tmp/patch --epochs 30 --seeds 0 1 2 --json out.json

A rerun with the same ``--workdir`` reuses the data and every finished run (its summary.json).

Both methods train the same model (``--model`` with ``--options``) on every training image (``data.fold: all``:
no validation pass, whose cost would differ between them) for ``--epochs`` epochs of ``ceil(n_train / batch)``
steps each, with the same batch size, learning rate, augmentation and training seed:

- ``resize``: the whole image resized to ``--input`` px (``data.image_size``), predicted the same way and the
  probabilities resized back to the original size;
- ``patch``: one random ``--input`` px crop per image and epoch from the full-size image (``data.patch_size``, a
  third of the crops centred on a foreground pixel), predicted in overlapping tiles of ``--input`` px at the
  original size (``inference.sliding_window``, overlap ``--overlap``).

Each run predicts the test images (no TTA) and is scored with the task's scorer (mean Dice over images and
classes, empty/empty = 1, as ``tools/score.py``). Per method: each seed's Dice and their mean ± sample sd. The
wall times are written too, but on a shared machine they say little; the figures are the accuracies.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import engine  # noqa: F401  (offline environment first)

from common import write_result

METHODS = ("resize", "patch")


def method_config(method: str, data: Path, runs: Path, seed: int, args: argparse.Namespace):
    from engine.config import load_config

    patch = method == "patch"
    return load_config(None, {
        "task": "segmentation", "name": f"{method}-s{seed}",
        "data": {"root": str(data / "handbones" / "train"), "test_root": str(data / "handbones" / "test"),
                 "image_size": args.input, "fold": "all", "cache_dir": str(runs.parent / "cache"),
                 **({"patch_size": args.input} if patch else {})},
        "model": {"name": args.model, "options": json.loads(args.options)},
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "warmup_epochs": 1,
                  "seed": seed, "device": args.device},
        "inference": {"sliding_window": patch, "tile_overlap": args.overlap, "batch_size": 4},
        "logging": {"out_dir": str(runs), "progress": False},
    })


def run_one(method: str, data: Path, runs: Path, seed: int, args: argparse.Namespace) -> dict:
    """Train (or reuse) one run, predict and score the test images."""
    from engine.predictor import predict_run
    from engine.summary import read_summary
    from engine.trainer import train
    from tasks.segmentation.scoring import score

    cfg = method_config(method, data, runs, seed, args)
    summary = read_summary(cfg.run_dir)
    if not summary:
        summary = train(cfg, overwrite=cfg.run_dir.exists())
    t0 = time.perf_counter()
    csv = cfg.run_dir / "test.csv"
    predict_run(cfg, cfg.run_dir / "best.pt", out_csv=csv, device=args.device, progress=False)
    predict_s = time.perf_counter() - t0
    result = score(csv, data / "handbones" / "test_gt", data / "handbones" / "test")
    row = {"dice": round(float(result["score"]), 4), "train_s": summary.get("train_time_s"),
           "predict_s": round(predict_s, 1), "train_images": summary.get("train_images")}
    print(f"{method} seed {seed}: test Dice {row['dice']:.4f} (train {row['train_s']}s, predict {row['predict_s']}s)",
          flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", help="data and runs (default: a temporary folder)")
    parser.add_argument("--size", type=int, default=1024, help="phantom image side")
    parser.add_argument("--n-train", type=int, default=16)
    parser.add_argument("--n-test", type=int, default=8)
    parser.add_argument("--input", type=int, default=256, help="resize target and patch side")
    parser.add_argument("--model", default="smp:unet/resnet18")
    parser.add_argument("--options", default='{"decoder_channels": [128, 64, 32, 16, 16]}',
                        help="model.options as JSON")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--overlap", type=float, default=0.5, help="sliding-window tile overlap")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", help="result file (default benchmarks/results/patch_training.json)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        data, runs = work / "data", work / "runs"
        if not (data / "phantom.json").is_file():
            from phantom import generate

            generate(data, n_train=args.n_train, n_test=args.n_test, size=args.size, seed=0, workers=2)
        rows = {m: {} for m in METHODS}
        for seed in args.seeds:
            for method in METHODS:
                rows[method][seed] = run_one(method, data, runs, seed, args)
    steps = math.ceil(args.n_train / args.batch_size) * args.epochs
    summary = {}
    for method in METHODS:
        dice = [r["dice"] for r in rows[method].values()]
        summary[method] = {"mean": round(statistics.mean(dice), 4),
                           "sd": round(statistics.stdev(dice), 4) if len(dice) > 1 else None, "seeds": len(dice)}
        print(f"{method:>6}: test Dice {summary[method]['mean']:.4f}"
              + (f" ± {summary[method]['sd']:.4f}" if summary[method]["sd"] is not None else "")
              + f" over {len(dice)} seed(s), {steps} training steps", flush=True)
    out = write_result("patch_training", {
        "phantom": {"size": args.size, "n_train": args.n_train, "n_test": args.n_test, "seed": 0},
        "model": args.model, "options": json.loads(args.options), "input": args.input, "epochs": args.epochs,
        "batch_size": args.batch_size, "steps": steps, "lr": args.lr, "tile_overlap": args.overlap,
        "metric": "test Dice (mean over images and classes, empty/empty = 1)",
        "note": "wall times from a shared, loaded CPU: they are no speed figures; compare the Dice",
        "summary": summary, "runs": {m: {str(s): r for s, r in rows[m].items()} for m in METHODS}}, args.json)
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
