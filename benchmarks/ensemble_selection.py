#!/usr/bin/env python
"""Does greedy ensemble selection (Caruana) beat the best single run and the plain average ON TEST?

  python benchmarks/ensemble_selection.py                     # phantom 40 train / 16 test at 128 px, 4 configs x 2 folds
  python benchmarks/ensemble_selection.py --workdir /tmp/sel --epochs 20 --n-train 64 --n-test 24 --json out.json

A rerun with the same ``--workdir`` reuses the data and every finished fold (``train.py --resume``).

Steps, all in this process with the harness's own functions:

1. phantom data (``tools/phantom.py``'s ``generate``), ``--n-train`` training and ``--n-test`` test images;
2. a small, diverse library: each configuration trained on every fold with ``train.py -c CFG --folds all``
   (``data.n_folds`` = ``--folds``), which also writes each fold's out-of-fold validation cache;
3. ``tools/fit_ensemble.py --select <runs>``: greedy forward selection with replacement on those
   out-of-fold predictions (validation images = the whole training set), YAML written;
4. on the test images (never seen by training or selection): every configuration alone (the mean of its
   fold models, as an ensemble member predicts), the equal-weight average of all configurations, and the
   selected ensemble, each through ``inference.py --ensemble`` (no TTA) and scored with ``tools/score.py``'s
   scorer (mean Dice over images and classes).

"Best single" is the configuration with the best out-of-fold validation Dice — the one a user would
pick without test labels; the best single on test is printed as well.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # train.py, from any folder

import engine  # noqa: E402,F401  (offline environment first)

IMAGE_SIZE = 64  # every configuration's training size
# name, model, lr, training seed (added to --seed): two decoders, two encoders, two learning rates, and a
# second seed of one configuration (members of equal quality that differ only by chance)
LIBRARY = [
    ("fpn_r10t", "smp:fpn/tu-resnet10t", 5e-3, 0),
    ("unet_r10t", "smp:unet/tu-resnet10t", 5e-3, 0),
    ("unet_r10t_s1", "smp:unet/tu-resnet10t", 5e-3, 1),
    ("unet_r18", "smp:unet/resnet18", 2e-3, 0),
]


def write_config(path: Path, data: Path, runs: Path, name: str, model: str, lr: float, seed: int, args) -> Path:
    path.write_text(yaml.safe_dump({
        "task": "segmentation", "name": name,
        "data": {"root": str(data / "train"), "test_root": str(data / "test"), "image_size": IMAGE_SIZE,
                 "n_folds": args.folds, "cache_dir": str(runs.parent / "cache")},
        "model": {"name": model},
        "loss": {"weights": {"bce": 1.0, "dice": 1.0}},
        "train": {"epochs": args.epochs, "batch_size": 4, "lr": lr, "warmup_epochs": 1, "seed": args.seed + seed,
                  "val_every": 4},
        "augment": {"rotate": 10, "scale": 0.1},
        "logging": {"out_dir": str(runs), "progress": False}}))
    return path


def test_dice(ensemble: dict, out_dir: Path, gt: Path) -> float:
    """Test Dice of an ensemble mapping (members on the fly, no TTA)."""
    import inference
    from tasks.scoring import score_submission

    path = out_dir / f"{ensemble['name']}.yaml"
    path.write_text(yaml.safe_dump(ensemble, sort_keys=False))
    csv = out_dir / f"{ensemble['name']}.csv"
    with contextlib.redirect_stdout(io.StringIO()):
        if inference.main(["--ensemble", str(path), "-o", str(csv)]) != 0:
            raise RuntimeError(f"inference.py --ensemble {path} failed")
    return float(score_submission(csv, gt)["score"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", help="where data, runs and CSVs go (default: a temporary folder)")
    parser.add_argument("--n-train", type=int, default=40)
    parser.add_argument("--n-test", type=int, default=16)
    parser.add_argument("--size", type=int, default=128, help="phantom image side")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="threshold of the fused probabilities, for the selection and every ensemble scored")
    parser.add_argument("--patience", type=int, default=0, help="selection: additions allowed past the best ensemble")
    parser.add_argument("--json", help="also write the figures here (e.g. benchmarks/results/ensemble_selection.json)")
    args = parser.parse_args(argv)

    import train
    from ensembles.fit import write_json
    from ensembles.select import find_candidates, library_config, select_ensemble, selection_report
    from phantom import generate

    work = Path(args.workdir or tempfile.mkdtemp(prefix="ensemble_selection_"))
    data = work / "phantom"
    if not (data / "handbones").is_dir():
        generate(data, n_train=args.n_train, n_test=args.n_test, size=args.size, seed=args.seed, workers=2)
    hb = data / "handbones"
    runs = work / "runs"
    t0 = time.perf_counter()
    for name, model, lr, seed in LIBRARY:
        cfg = write_config(work / f"{name}.yaml", hb, runs, name, model, lr, seed, args)
        resume = ["--resume"] if (runs / "segmentation" / f"{name}-f0").is_dir() else []
        if train.main(["-c", str(cfg), "--folds", "all", *resume]) != 0:
            return 2
    train_s = time.perf_counter() - t0
    seg_runs = runs / "segmentation"
    record = select_ensemble(seg_runs, name="selected", patience=args.patience, threshold=args.threshold,
                             progress=False)
    print(selection_report(record))
    _, candidates, _ = find_candidates(seg_runs)
    out = work / "test"
    out.mkdir(exist_ok=True)
    thresholds = {"thresholds": args.threshold}
    gt = hb / "test_gt"
    results = {}
    for k, c in enumerate(candidates):
        single = library_config("segmentation", candidates, seg_runs, f"single_{c.label}",
                                [int(j == k) for j in range(len(candidates))], thresholds)
        results[c.label] = test_dice(single, out, gt)
    average = library_config("segmentation", candidates, seg_runs, "average", extra=thresholds)
    results["average of all"] = test_dice(average, out, gt)
    selected = yaml.safe_load(Path(record["yaml"]).read_text())
    selected["name"] = "selection"
    results["selection"] = test_dice(selected, out, gt)
    best_val = record["best_single"]
    best_test = max((c.label for c in candidates), key=results.get)
    print(f"\nphantom: {args.n_train} train / {args.n_test} test images at {args.size} px, {len(candidates)} configurations "
          f"x {args.folds} folds, {args.epochs} epochs; training {train_s:.0f}s; data and runs in {work}")
    print(f"{'':<28} {'val Dice (OOF)':>14} {'test Dice':>10}")
    for c in candidates:
        mark = "  <- best single on validation" if c.label == best_val else ""
        print(f"{c.label:<28} {record['singles'][c.label]:>14.4f} {results[c.label]:>10.4f}{mark}")
    print(f"{'average of all':<28} {record['average']:>14.4f} {results['average of all']:>10.4f}")
    weights = ", ".join(f"{k} {v:.2f}" for k, v in record["weights"].items())
    print(f"{'selection (' + weights + ')':<28} {record['val']['in_sample']:>14.4f} {results['selection']:>10.4f}")
    if record["cross_fitted"]:
        cf = record["cross_fitted"]
        print(f"cross-fitted validation: selection {cf['selection']:.4f}, best single {cf['best_single']:.4f}, "
              f"average {cf['average']:.4f}")
    deltas = {"selection_minus_best_single_by_val": results["selection"] - results[best_val],
              "selection_minus_best_single_on_test": results["selection"] - results[best_test],
              "selection_minus_average": results["selection"] - results["average of all"]}
    print(f"test: selection - best single (by validation, {best_val}) = "
          f"{deltas['selection_minus_best_single_by_val']:+.4f}; selection - best single on test ({best_test}) = "
          f"{deltas['selection_minus_best_single_on_test']:+.4f}; selection - average = "
          f"{deltas['selection_minus_average']:+.4f}")
    if args.json:
        write_json(args.json, {
            "command": "python benchmarks/ensemble_selection.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "phantom": {"n_train": args.n_train, "n_test": args.n_test, "size": args.size, "seed": args.seed},
            "library": [{"name": n, "model": m, "lr": lr, "seed": args.seed + sd} for n, m, lr, sd in LIBRARY], "image_size": IMAGE_SIZE,
            "folds": args.folds, "epochs": args.epochs, "patience": args.patience,
            "threshold": args.threshold, "train_seconds": round(train_s),
            "validation": "out-of-fold predictions of the training images", "test": "phantom handbones/test",
            "val_dice": {**record["singles"], "average of all": record["average"],
                         "selection": record["val"]["in_sample"]},
            "cross_fitted_val_dice": record["cross_fitted"], "selection": {"weights": record["weights"],
                                                                           "history": record["history"]},
            "best_single_by_val": best_val, "best_single_on_test": best_test,
            "test_dice": {k: round(v, 6) for k, v in results.items()},
            "deltas": {k: round(v, 6) for k, v in deltas.items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
