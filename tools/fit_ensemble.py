#!/usr/bin/env python
"""Fit an ensemble's weights (and per-class thresholds / per-landmark weights) on its members' VALIDATION predictions.

  python inference.py --ckpt runs/<task>/<run>/best.pt --split val --save-probs   # once per member run
  python tools/fit_ensemble.py configs/ensembles/seg_weighted.yaml
  python tools/fit_ensemble.py --select runs/segmentation        # choose members + weights (Caruana), write the YAML
  python tools/fit_ensemble.py --select runs/keypoints           # (any task: runs/keypoints, runs/boneage)

Every task: segmentation fits weights (per member or per class) and per-class thresholds (maximising
Dice), keypoints member or per-landmark weights of the coordinate mean (minimising the radial error,
px), bone age member weights (minimising the MAE, months).

Reads ``<run>/preds/val/`` of every member (out-of-fold when a member lists all its fold runs) and the
labels of the training set, fits what the config marks ``fit`` (``weights: fit``, ``thresholds: fit``,
``postprocess: fit``: per-class largest component / hole filling / minimum area, segmentation),
chooses between the defaults and the fitted variants by cross-fitting over patients (see
ensembles/fit.py), and writes ``<out_dir>/<task>/<name>/fit.json`` and the ensemble's summary.json.
Prints the fitted values and the validation score before and after (in sample and cross-fitted).

``--select RUNS_DIR`` chooses the members and their weights from every finished run of one task's folder by
greedy forward selection with replacement on the runs' out-of-fold validation predictions (Dice for
segmentation, MRE for keypoints, MAE for bone age; ensembles/select.py) and writes the ensemble YAML.
"""
from __future__ import annotations

import argparse
import sys

import engine  # noqa: F401  (offline environment first)
from core.cli import run_main


def report(record: dict) -> str:
    """Human-readable fit report."""
    metric = record.get("metric", "Dice")
    lines = [f"members: {', '.join(record['members'])}",
             f"validation images: {record['images']} in {record['folds']} cross-fitting fold(s) (by patient)",
             f"cross-fitted {metric} per configuration (held-out patients):"]
    for name, value in record["cross_fitted"].items():
        mark = "  <- chosen" if name == record["config"] else ""
        lines.append(f"  {name:<26} {value:.4f}{mark}")
    lines += [f"validation {metric} before (defaults): {record['before']:.4f}",
              f"validation {metric} after  (in sample): {record['after']:.4f}",
              f"validation {metric} after  (cross-fitted): {record['val']['score']:.4f}"]
    weights, classes = record["weights"], record["classes"]
    columns = list(zip(*weights))
    if all(col == columns[0] for col in columns):
        lines.append("weights: " + ", ".join(f"{m}={w:.2f}" for m, w in zip(record["members"], columns[0])))
    else:
        lines.append("weights per class:")
        for c, col in zip(classes, columns):
            lines.append(f"  {c:<12} " + " ".join(f"{w:.2f}" for w in col))
    if record["thresholds"] is not None:
        t = record["thresholds"]
        lines.append(f"thresholds: {t[0]:.2f} (all classes)" if len(set(t)) == 1 else
                     "thresholds: " + ", ".join(f"{c}={v:.2f}" for c, v in zip(classes, t)))
    if "postprocess_fit" in record:
        pp = record["postprocess_fit"]
        lines.append(f"post-processing: {metric} {pp['before']:.4f} -> {pp['after']:.4f} in sample, "
                     f"{pp['cross_fitted']:.4f} cross-fitted")
        lines += [f"  {c:<12} {' + '.join(ops)} (+{pp['gain'][c]:.4f})" for c, ops in record["postprocess"].items()]
        if not record["postprocess"]:
            lines.append(f"  none kept (no operation raised a class's {metric} by more than {pp['margin']})")
    lines += [f"note: {n}" for n in record["notes"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", help="ensemble config (configs/ensembles/*.yaml)")
    parser.add_argument("--out-dir", help="runs folder (default: the config's out_dir)")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--select", metavar="RUNS_DIR", help="instead of a config: choose the ensemble from every finished "
                        "run of RUNS_DIR (runs/segmentation, runs/keypoints, runs/boneage) by greedy selection with replacement on out-of-fold "
                        "validation predictions (ensembles/select.py) and write its YAML")
    parser.add_argument("--name", default="selected", help="--select: ensemble name (folder <RUNS_DIR>/<name>/)")
    parser.add_argument("-o", "--out", help="--select: YAML to write (default <RUNS_DIR>/<name>/selection.yaml)")
    parser.add_argument("--max-steps", type=int, default=20, help="--select: additions at most")
    parser.add_argument("--init", type=int, default=0, help="--select: start from the N best runs (0: empty)")
    parser.add_argument("--threshold", type=float, default=0.5, help="--select, segmentation: the threshold of the "
                        "fused probabilities the ensembles are scored at (and the YAML's thresholds)")
    parser.add_argument("--patience", type=int, default=0, help="--select: additions allowed past the best ensemble "
                        "before stopping; the best one is kept (0: stop at the first addition that does not improve)")
    args = parser.parse_args(argv)
    if bool(args.config) == bool(args.select):
        parser.error("give an ensemble config or --select RUNS_DIR")
    from ensembles.api import fit_ensemble
    from ensembles.config import load_ensemble_config

    if args.select:
        from ensembles.select import select_ensemble, selection_report

        record = select_ensemble(args.select, name=args.name, out=args.out, max_steps=args.max_steps,
                                     init=args.init, patience=args.patience, threshold=args.threshold,
                                     progress=not args.quiet)
        print(selection_report(record))
        return 0
    ens = load_ensemble_config(args.config, {"out_dir": args.out_dir} if args.out_dir else None)
    record = fit_ensemble(ens, progress=not args.quiet)
    print(report(record))
    print(f"wrote {ens.fit_path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
