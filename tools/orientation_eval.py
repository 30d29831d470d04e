#!/usr/bin/env python
"""Accuracy of the orientation methods of preprocessing: rotation, side, uncertain sides, 12-class confusion.

  python tools/orientation_eval.py ../shared/data/real/shs_net_orientation              # heuristic (hands, marker)
  python tools/orientation_eval.py DIR --model runs/orientation/<run>/best.pt            # + learned side fallback
  python tools/orientation_eval.py DIR --model runs/orientation/<run>/best.pt --method learned   # the run alone
  python tools/orientation_eval.py --phantom 20 [--dihedral]                             # rendered phantom hands

DIR holds ``labels.csv`` (img_id,label) and ``images/``. Labels (SHS_NET): 12 classes = 4 x side (0 two
hands, 1 left, 2 right) + rotation needed to stand the fingers up (0 upright, 1 90 degrees clockwise,
2 180, 3 90 counter-clockwise). An uncertain side counts as wrong and is counted on its own.
``--phantom N`` renders N phantom patients (a left hand, a right hand, both side by side) and tests
them in their four turns; ``--dihedral`` adds every image's turns and mirrors with the labels they imply.
The learned classifier is an orientation run like any task's (``train.py -c configs/orientation/*.yaml``,
cross-validated with ``--folds all``); evaluate a fold's run only on the films it did not train on.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # first: before tools/, whose phantom.py shadows the package

import engine  # noqa: E402, F401  (offline environment first)

from core.cli import run_main  # noqa: E402
from phantom.orientation import orientation_phantoms  # noqa: E402
from core.atomic import write_text  # noqa: E402
from tasks.orientation.heuristic import (SIDES, Orientation, detect_orientation, dihedral, dihedral_orientation,  # noqa: E402
                               dihedral_view, evaluate, labelled_folder)


def class_name(label: int) -> str:
    return f"{label:>2} {SIDES[label // 4][:2]}{90 * (label % 4):>3}"


def format_report(result: dict, title: str = "") -> str:
    lines = [f"{title}images {result['images']}  rotation {100 * result['rotation_acc']:.1f}%  side "
             f"{100 * result['side_acc']:.1f}%  label {100 * result['label_acc']:.1f}%  uncertain {result['uncertain']}"
             f"  (side from: {', '.join(f'{k} {v}' for k, v in sorted(result['side_sources'].items()))})",
             "confusion (rows: true, columns: predicted; class = side + clockwise degrees needed):",
             "         " + " ".join(f"{c:>3}" for c in range(12))]
    for t, row in enumerate(result["confusion"]):
        lines.append(f"{class_name(t)} " + " ".join(f"{v:>3}" if v else "  ." for v in row))
    for e in result["errors"]:
        pred = "uncertain" if e["pred"] is None else e["pred"]
        lines.append(f"  wrong: {e['image']}: true {e['true']} predicted {pred} (side from {e['side_source']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", help="folder with labels.csv and images/")
    parser.add_argument("--phantom", type=int, metavar="N", help="evaluate on N rendered phantom patients instead")
    parser.add_argument("--dihedral", action="store_true", help="also every rotation/mirror of each image")
    parser.add_argument("--method", choices=("heuristic", "learned"), default="heuristic",
                        help="heuristic: hands, marker, then --model's side; learned: --model alone")
    parser.add_argument("--model", metavar="CKPT", help="a trained orientation run (runs/orientation/<run>/best.pt)")
    parser.add_argument("--json", help="write the result (accuracies, confusion, errors) to this file")
    args = parser.parse_args(argv)
    if bool(args.folder) == (args.phantom is not None):
        parser.error("give a labelled folder or --phantom N (one of them)")
    if args.method == "learned" and not args.model:
        parser.error("--method learned needs --model CKPT")
    if args.phantom is not None:
        items = [(name, dihedral_view(image, k, False), dihedral_orientation(Orientation.from_label(label), k, False))
                 for name, image, label in orientation_phantoms(args.phantom, seed=1000) for k in range(4)]
    else:
        items = list(labelled_folder(Path(args.folder)))
    classifier = None
    if args.model:
        from engine.predictor import load_classifier

        classifier = load_classifier(args.model)
    predict = classifier if args.method == "learned" else (lambda image: detect_orientation(image, classifier=classifier))
    results = evaluate(dihedral(items) if args.dihedral else items, predict)
    print(format_report(results))
    if args.json:
        write_text(args.json, json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
