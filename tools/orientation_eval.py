#!/usr/bin/env python
"""Accuracy of the orientation detector (tasks/orientation.py): rotation, side, 12-class confusion matrix.

  python tools/orientation_eval.py ../shared/data/real/shs_net_orientation      # DIR/images/*.png + DIR/labels.csv
  python tools/orientation_eval.py --phantom data/phantom                        # phantom hands, all 12 classes
  python tools/orientation_eval.py DIR --dihedral                                # also the 8 rotations/mirrors of each

Labels (SHS_NET): ``img_id,label`` with 12 classes = 4 x side (0 two hands, 1 left, 2 right) + rotation
needed to stand the fingers up (0 upright, 1 90 degrees clockwise, 2 180, 3 90 counter-clockwise).
``--phantom`` builds the set from a phantom dataset's hand-bone images (``handbones/*/DCM/IDxxx/*_{L,R}.png``,
upright): each single hand in its four rotations, and each patient's two hands side by side (left hand
on the image's left, thumbs inward) in four rotations. ``--dihedral`` adds, for every labelled image,
its rotations by 90/180/270 degrees and their mirror images with the labels they imply.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import engine  # noqa: F401  (offline environment first)
import numpy as np
import pandas as pd

from engine.cli import run_main  # noqa: E402

from tasks.formats import FormatError  # noqa: E402
from tasks.formats.atomic import write_text  # noqa: E402
from tasks.formats.images import read_grey  # noqa: E402
from tasks.orientation import SIDES, Orientation, detect_orientation, rotate_quarters  # noqa: E402

MIRROR_SIDE = {"two": "two", "left": "right", "right": "left"}


def labelled_folder(root: Path) -> Iterator[tuple[str, np.ndarray, Orientation]]:
    """``(name, image, truth)`` of a folder with ``labels.csv`` (img_id,label) and ``images/``."""
    table = root / "labels.csv"
    if not table.is_file():
        raise FormatError(f"{table}: labels file not found (expected img_id,label)")
    df = pd.read_csv(table, dtype=str)
    if list(df.columns[:2]) != ["img_id", "label"]:
        raise FormatError(f"{table}: header must be img_id,label, got {','.join(df.columns)}")
    for line, (img_id, label) in enumerate(zip(df["img_id"], df["label"]), start=2):
        try:
            truth = Orientation.from_label(int(label))
        except ValueError:
            raise FormatError(f"{table}: line {line}: label {label!r} is not a class 0-11") from None
        path = root / "images" / img_id
        if not path.suffix:
            path = path.with_suffix(".png")
        yield img_id, read_grey(path), truth


def phantom_set(root: Path) -> Iterator[tuple[str, np.ndarray, Orientation]]:
    """The 12-class set from upright phantom hands (single hands and side-by-side pairs, four rotations)."""
    files = sorted(root.glob("handbones/*/DCM/*/*_[LR].png"))
    if not files:
        raise FormatError(f"{root}: no phantom hand-bone images (handbones/*/DCM/IDxxx/*_L.png)")
    by_patient: dict[Path, dict[str, Path]] = {}
    for f in files:
        by_patient.setdefault(f.parent, {})[f.stem[-1]] = f
    for f in files:
        image = read_grey(f)
        side = "left" if f.stem.endswith("_L") else "right"
        for k in range(4):
            yield f"{f.stem}@{90 * k}", rotate_quarters(image, k), Orientation((-k) % 4, side)
    for folder, pair in sorted(by_patient.items()):
        if set(pair) != {"L", "R"}:
            continue
        left, right = read_grey(pair["L"]), read_grey(pair["R"])
        h = max(left.shape[0], right.shape[0])
        both = np.hstack([np.pad(left, ((0, h - left.shape[0]), (0, 0))), np.pad(right, ((0, h - right.shape[0]), (0, 0)))])
        for k in range(4):
            yield f"{folder.name}-pair@{90 * k}", rotate_quarters(both, k), Orientation((-k) % 4, "two")


def dihedral(items: Iterator[tuple[str, np.ndarray, Orientation]]) -> Iterator[tuple[str, np.ndarray, Orientation]]:
    """Each image in its 4 rotations x {as is, mirrored}, with the implied labels."""
    for name, image, truth in items:
        for k in range(4):
            turned = rotate_quarters(image, k)
            rot = (truth.rotation - k) % 4
            yield f"{name}@{90 * k}", turned, Orientation(rot, truth.side)
            yield f"{name}@{90 * k}m", np.ascontiguousarray(turned[:, ::-1]), Orientation((-rot) % 4, MIRROR_SIDE[truth.side])


def evaluate(items: Iterator[tuple[str, np.ndarray, Orientation]]) -> dict:
    """Accuracies, the 12x12 confusion matrix (rows: true label, columns: predicted) and the errors."""
    confusion = np.zeros((12, 12), np.int64)
    errors = []
    n = rot_ok = side_ok = 0
    for name, image, truth in items:
        pred = detect_orientation(image)
        confusion[truth.label, pred.label] += 1
        n += 1
        rot_ok += pred.rotation == truth.rotation
        side_ok += pred.side == truth.side
        if pred.label != truth.label:
            errors.append({"image": name, "true": truth.label, "pred": pred.label, "confident": pred.confident})
    if n == 0:
        raise FormatError("no images to evaluate")
    return {"images": n, "rotation_acc": rot_ok / n, "side_acc": side_ok / n,
            "label_acc": float(np.trace(confusion)) / n, "confusion": confusion.tolist(), "errors": errors}


def class_name(label: int) -> str:
    return f"{label:>2} {SIDES[label // 4][:2]}{90 * (label % 4):>3}"


def format_report(result: dict) -> str:
    lines = [f"images {result['images']}  rotation {100 * result['rotation_acc']:.1f}%  side {100 * result['side_acc']:.1f}%"
             f"  label {100 * result['label_acc']:.1f}%",
             "confusion (rows: true, columns: predicted; class = side + clockwise degrees needed):",
             "         " + " ".join(f"{c:>3}" for c in range(12))]
    for t, row in enumerate(result["confusion"]):
        lines.append(f"{class_name(t)} " + " ".join(f"{v:>3}" if v else "  ." for v in row))
    for e in result["errors"]:
        lines.append(f"  wrong: {e['image']}: true {e['true']} predicted {e['pred']}"
                     + ("" if e["confident"] else " (not confident)"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", help="folder with labels.csv and images/")
    parser.add_argument("--phantom", help="phantom dataset root (python tools/phantom.py --out ...)")
    parser.add_argument("--dihedral", action="store_true", help="also every rotation/mirror of each image")
    parser.add_argument("--json", help="write the result (accuracies, confusion, errors) to this file")
    args = parser.parse_args(argv)
    if bool(args.folder) == bool(args.phantom):
        parser.error("give a labelled folder or --phantom DIR (one of them)")
    items = phantom_set(Path(args.phantom)) if args.phantom else labelled_folder(Path(args.folder))
    result = evaluate(dihedral(items) if args.dihedral else items)
    print(format_report(result))
    if args.json:
        write_text(args.json, json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
