#!/usr/bin/env python
"""Does one pseudo-label round raise the test Dice of a small segmentation cycle? Measured on phantoms, over seeds.

  python benchmarks/pseudo_labels.py --json benchmarks/results/pseudo_labels.json   # 3 seeds, ~1 h a seed on 2 busy cores
  python benchmarks/pseudo_labels.py --seeds 0 --n-train 8 --n-test 4 --epochs 1 --size 64 --image-size 64   # smoke run

Per seed (the phantom data and the training seed both follow it), all in this process with the harness's own
functions, one training at a time:

1. phantom hand-bone data (``tools/phantom.py``'s ``generate``): ``--n-train`` labelled and ``--n-test`` test
   images at ``--size`` px;
2. the cycle without pseudo-labels (*base*): each model of :data:`MODELS` trained on every fold
   (``train.py --folds all``, which writes the out-of-fold validation caches), its test cache written
   (as ``inference.py --split test --save-probs``: no TTA, as the validation caches), a soft ensemble of the models
   with per-class thresholds fitted on the out-of-fold caches (``tools/fit_ensemble.py``), fused from the caches
   and scored on the test answers (mean Dice over images and classes);
3. one pseudo-label round: ``tools/pseudo_label.py`` on that ensemble (``--precision``), then the same models and
   folds trained again from scratch with ``data.pseudo_roots`` (the kept test predictions join every fold's
   training images, uncertain pixels ignored by the loss), and the same ensemble fitted and scored (*pseudo*).
   Two arms by default (``--pseudo-epochs``): *steps*, as many optimiser steps as the base arm (its epochs scaled
   down by its larger training set), so a difference is the data's, not more training's; and *same*, the base
   arm's epochs (more steps, as a user who just adds the folder would run it);
4. *base_long* (``--base-long``, on by default with *same*): the base arm again, without pseudo-labels, for as many
   optimiser steps as *same* (its epochs scaled up by the same ratio), so that *same* is also compared at equal
   training.

The test images the pseudo-labels come from are the images scored: that is the transductive use competitions make
of them (the answers are never read before scoring). Validation Dice stays out of fold in both arms.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # train.py, from any folder

import engine  # noqa: E402,F401  (offline environment first)

# name, model, learning rate: two small decoders on one small encoder
MODELS = [("unet", "smp:unet/tu-resnet10t", 5e-3), ("fpn", "smp:fpn/tu-resnet10t", 5e-3)]


def write_config(path: Path, hb: Path, runs: Path, name: str, model: str, lr: float, seed: int, epochs: int,
                 args, pseudo: Path | None = None) -> Path:
    data = {"root": str(hb / "train"), "test_root": str(hb / "test"), "image_size": args.image_size,
            "n_folds": args.folds, "cache_dir": str(runs.parent / "cache")}
    if pseudo is not None:
        data["pseudo_roots"] = [str(pseudo)]
    path.write_text(yaml.safe_dump({
        "task": "segmentation", "name": name, "data": data, "model": {"name": model},
        "loss": {"weights": {"bce": 1.0, "dice": 1.0}},
        "train": {"epochs": epochs, "batch_size": 4, "lr": lr, "warmup_epochs": 1, "seed": seed, "device": "cpu"},
        "augment": {"rotate": 10, "scale": 0.1, "brightness_contrast": 0.2},
        "inference": {"tta": {"hflip": False, "scales": [1.0]}},
        "logging": {"out_dir": str(runs), "progress": False}}))
    return path


def quiet(fn, *args, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


def train_arm(work: Path, hb: Path, runs: Path, suffix: str, seed: int, epochs: int, args,
              pseudo: Path | None = None) -> tuple[dict[str, list[Path]], float, int]:
    """Every model on every fold (out-of-fold caches) and its test cache; returns the fold runs per model, the
    seconds and the training images of fold 0 (an epoch's worth of samples)."""
    import train
    from engine.config import load_config
    from engine.folds import fold_images
    from engine.predictor import predict_run

    t0 = time.perf_counter()
    members, images = {}, 0
    for name, model, lr in MODELS:
        cfg = write_config(work / f"{name}{suffix}.yaml", hb, runs, f"{name}{suffix}", model, lr, seed, epochs, args,
                           pseudo)
        first = runs / "segmentation" / f"{name}{suffix}-f0"
        if quiet(train.main, ["-c", str(cfg), "--folds", "all", *(["--resume"] if first.is_dir() else [])]) != 0:
            raise SystemExit(f"training {cfg} failed")
        members[name] = [runs / "segmentation" / f"{name}{suffix}-f{f}" for f in range(args.folds)]
        for run in members[name]:
            if not (run / "preds" / "test").is_dir():   # as the out-of-fold caches: no TTA
                predict_run(load_config(run / "config.yaml"), run / "best.pt", out_csv=run / "test.csv", split="test",
                            save_probs_dir="auto", device="cpu", progress=False)
        images = images or len(fold_images(load_config(members[name][0] / "config.yaml"))["train"])
    return members, time.perf_counter() - t0, images


def ensemble(members: dict[str, list[Path]], out_dir: Path, name: str, fit: bool = True):
    from ensembles.config import EnsembleConfig

    return EnsembleConfig.model_validate({
        "task": "segmentation", "method": "soft", "name": name, "thresholds": "fit" if fit else 0.5,
        "members": [{"name": k, "runs": [str(r) for r in v]} for k, v in members.items()],
        "out_dir": str(out_dir), "fit": {"folds": 2}})


def score(ens, gt: Path, out: Path, fit: bool = True) -> dict:
    """Fit (thresholds) and fuse ``ens`` from the caches; its test Dice and cross-fitted validation Dice."""
    from ensembles.api import fit_ensemble, predict_ensemble
    from tasks.scoring import score_submission

    val = fit_ensemble(ens, progress=False)["val"]["score"] if fit else None
    csv = out / f"{ens.run_name}.csv"
    predict_ensemble(ens, out_csv=csv, from_cache=True, progress=False)
    return {"test_dice": round(float(score_submission(csv, gt)["score"]), 6),
            "val_dice": None if val is None else round(float(val), 6)}


def arm_scores(members: dict[str, list[Path]], runs: Path, gt: Path, out: Path, tag: str) -> dict:
    result = {"ensemble": score(ensemble(members, runs, f"soft_{tag}"), gt, out)}
    for name, fold_runs in members.items():
        result[name] = score(ensemble({name: fold_runs}, runs, f"{name}_{tag}", fit=False), gt, out, fit=False)
    return result


def run_seed(seed: int, work: Path, args) -> dict:
    from ensembles.pseudo import pseudo_label
    from phantom import generate

    data = work / "phantom"
    if not (data / "handbones").is_dir():
        generate(data, n_train=args.n_train, n_test=args.n_test, size=args.size, seed=seed, workers=2)
    hb, runs, out = data / "handbones", work / "runs", work / "csv"
    out.mkdir(parents=True, exist_ok=True)
    gt = hb / "test_gt"
    base, base_s, base_images = train_arm(work, hb, runs, "", seed, args.epochs, args)
    result = {"seed": seed, "base": arm_scores(base, runs, gt, out, "base")}
    result["base"].update(train_seconds=round(base_s), train_images=base_images, epochs=args.epochs)
    pseudo_dir = work / "pseudo_r1"
    if not (pseudo_dir / "pseudo.json").is_file():
        quiet(pseudo_label, ensemble(base, runs, "soft_base"), pseudo_dir, precision=args.precision, progress=False)
    manifest = json.loads((pseudo_dir / "pseudo.json").read_text())
    result["pseudo_labels"] = {"validation": {k: v for k, v in manifest["validation"].items() if k != "kept_per_class"},
                               "test": {k: v for k, v in manifest["test"].items() if k != "kept_per_class"}}
    written = manifest["test"]["written"]
    if args.base_long and "same" in args.pseudo_epochs:
        epochs = max(1, round(args.epochs * (base_images + written) / base_images))
        long, long_s, _ = train_arm(work, hb, runs, f"_b{epochs}", seed, epochs, args)
        result["base_long"] = arm_scores(long, runs, gt, out, f"b{epochs}")
        result["base_long"].update(train_seconds=round(long_s), train_images=base_images, epochs=epochs)
    for how in args.pseudo_epochs:
        epochs = args.epochs if how == "same" else max(1, round(args.epochs * base_images / (base_images + written)))
        pl, pl_s, pl_images = train_arm(work, hb, runs, f"_pl{epochs}", seed, epochs, args, pseudo=pseudo_dir)
        result[f"pseudo_{how}"] = arm_scores(pl, runs, gt, out, f"pl{epochs}")
        result[f"pseudo_{how}"].update(train_seconds=round(pl_s), train_images=pl_images, epochs=epochs)
    return result


def mean_sd(values: list[float]) -> dict:
    return {"mean": round(statistics.mean(values), 4),
            "sd": round(statistics.stdev(values), 4) if len(values) > 1 else None, "values": values}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", help="data, runs and CSVs, one folder a seed (default: a temporary folder); a "
                        "rerun reuses finished folds and pseudo-label folders")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n-train", type=int, default=32, help="labelled images (two per patient)")
    parser.add_argument("--n-test", type=int, default=16, help="test images, pseudo-labelled and scored")
    parser.add_argument("--size", type=int, default=128, help="phantom image side")
    parser.add_argument("--image-size", type=int, default=128, help="training input size")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--precision", type=float, default=0.99)
    parser.add_argument("--pseudo-epochs", choices=("steps", "same"), nargs="+", default=["steps", "same"],
                        help="the pseudo round's epochs, one arm each: as many optimiser steps as the base arm, and/or "
                             "the base arm's epochs (default: both)")
    parser.add_argument("--base-long", action=argparse.BooleanOptionalAction, default=True,
                        help="with the 'same' arm: also train the base arm for as many steps (default: on)")
    parser.add_argument("--json", help="write the figures here (e.g. benchmarks/results/pseudo_labels.json)")
    args = parser.parse_args(argv)
    from ensembles.fit import write_json

    work = Path(args.workdir or tempfile.mkdtemp(prefix="pseudo_labels_"))
    seeds = []
    for seed in args.seeds:
        t0 = time.perf_counter()
        seeds.append(run_seed(seed, work / f"seed{seed}", args))
        r = seeds[-1]
        arms = ["base", *(["base_long"] if "base_long" in r else []), *(f"pseudo_{how}" for how in args.pseudo_epochs)]
        cells = ", ".join(f"{arm} {r[arm]['ensemble']['test_dice']:.4f} ({r[arm]['epochs']} epochs)" for arm in arms)
        print(f"seed {seed}: test Dice {cells}; kept {100 * r['pseudo_labels']['test']['kept']:.1f}% of the test "
              f"labels ({time.perf_counter() - t0:.0f}s)", flush=True)
    summary = {arm: {who: mean_sd([r[arm][who]["test_dice"] for r in seeds]) for who in ["ensemble", *(n for n, _, _ in MODELS)]}
               for arm in arms}
    pairs = [(arm, "base") for arm in arms[1:]] + ([("pseudo_same", "base_long")] if {"pseudo_same", "base_long"} <= set(arms) else [])
    deltas = {f"{arm} - {ref}": mean_sd([round(r[arm]["ensemble"]["test_dice"] - r[ref]["ensemble"]["test_dice"], 6)
                                         for r in seeds]) for arm, ref in pairs}
    print(f"\n{len(seeds)} seed(s), phantom {args.n_train} train / {args.n_test} test at {args.size} px, "
          f"{len(MODELS)} models x {args.folds} folds, {args.epochs} epochs, precision {args.precision}")
    for arm in arms:
        cells = ", ".join(f"{who} {v['mean']:.4f} ± {v['sd'] if v['sd'] is not None else 0:.4f}"
                          for who, v in summary[arm].items())
        print(f"  {arm:<14} test Dice: {cells}")
    for arm, delta in deltas.items():
        print(f"  {arm} (ensemble): {delta['mean']:+.4f} ± {delta['sd'] or 0:.4f}")
    if args.json:
        write_json(args.json, {
            "command": "python benchmarks/pseudo_labels.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "phantom": {"n_train": args.n_train, "n_test": args.n_test, "size": args.size},
            "models": [{"name": n, "model": m, "lr": lr} for n, m, lr in MODELS], "image_size": args.image_size,
            "folds": args.folds, "epochs": args.epochs, "pseudo_epochs": args.pseudo_epochs,
            "precision": args.precision,
            "ensemble": "soft mean of the models (each the mean of its fold models), per-class thresholds fitted on "
                        "out-of-fold validation caches; no TTA",
            "metric": "test Dice: mean over test images and the 29 classes (tasks.scoring)",
            "machine": "CPU, 2 cores (scores do not depend on the load; seconds do)",
            "summary": summary, "differences": deltas, "seeds": seeds})
    return 0


if __name__ == "__main__":
    sys.exit(main())
