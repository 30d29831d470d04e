#!/usr/bin/env python
"""Convert the competition data into other tools' formats.

  python tools/convert.py yolo --root data/phantom/handbones/train --out data/yolo/f0 --fold 0 --n-folds 5

``yolo``: boostcamp polygons → ultralytics segment labels, one ``<cls> x1 y1 x2 y2 ...`` line per polygon
with coordinates normalised to [0, 1], so overlapping bones stay separate instances. Train/val follow
the patient-grouped fold of the smp runs (``tasks.segmentation.split_folds``, same ``fold``/``n_folds``).
The output holds ``images/{train,val}/`` (symbolic links to the originals, or copies with ``--copy``),
``labels/{train,val}/``, ``dataset.yaml`` (29 class names) and ``manifest.json`` (source, fold, the
source images of each split and a signature of the inputs). The YOLO plugin calls :func:`yolo_dataset`,
which converts once into a cache folder and reuses it while the inputs are unchanged.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import engine  # noqa: F401  (offline environment first)

import numpy as np
import yaml

from tasks.formats import FormatError
from tasks.formats.handbones import CLASS_INDEX, CLASSES, HandboneSample, list_samples, read_polygons
from tasks.formats.images import image_size
from tasks.segmentation import split_folds

FORMAT_VERSION = 1
SPLITS = ("train", "val")


def yolo_label_lines(polygons: dict[str, list[np.ndarray]], height: int, width: int) -> list[str]:
    """One ``<class index> x1 y1 ...`` line per polygon, ``x/width`` and ``y/height`` clipped to [0, 1]."""
    lines = []
    for label in CLASSES:
        for pts in polygons.get(label, []):
            norm = np.clip(np.asarray(pts, np.float64) / (width, height), 0.0, 1.0)
            lines.append(f"{CLASS_INDEX[label]} " + " ".join(f"{v:.6f}" for v in norm.reshape(-1)))
    return lines


def read_yolo_labels(path: str | os.PathLike, height: int, width: int) -> dict[str, list[np.ndarray]]:
    """Polygons per class name, in pixels, from an ultralytics segment label file (the inverse of the above)."""
    path = Path(path)
    polygons: dict[str, list[np.ndarray]] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            cls, coords = int(fields[0]), np.asarray(fields[1:], np.float64)
        except ValueError:
            raise FormatError(f"{path}:{number}: expected '<class> x1 y1 x2 y2 ...' numbers") from None
        if not 0 <= cls < len(CLASSES):
            raise FormatError(f"{path}:{number}: class index {cls} outside 0..{len(CLASSES) - 1}")
        if len(coords) < 6 or len(coords) % 2:
            raise FormatError(f"{path}:{number}: a polygon needs at least 3 x y pairs, got {len(coords)} numbers")
        polygons.setdefault(CLASSES[cls], []).append(coords.reshape(-1, 2) * (width, height))
    return polygons


def converted_name(sample: HandboneSample, root: Path) -> str:
    """``IDxxx__image123_L.png``: unique per source image even when names repeat across patients."""
    rel = sample.image_path.relative_to(root / "DCM")
    return "__".join(rel.with_suffix("").parts) + sample.image_path.suffix.lower()


def _signature(samples: list[HandboneSample], fold: int, n_folds: int, copy: bool) -> str:
    """Changes when any image or label file is added, removed or rewritten, or the fold or image mode changes."""
    digest = hashlib.sha256(f"v{FORMAT_VERSION}|{fold}|{n_folds}|{copy}".encode())
    for s in samples:
        for path in (s.image_path, s.label_path):
            stat = path.stat()
            digest.update(f"|{path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def _place_image(source: Path, target: Path, copy: bool) -> None:
    if not copy:
        try:
            target.symlink_to(source.resolve())
            return
        except OSError:  # no symlinks on this filesystem / platform: copy instead
            pass
    shutil.copyfile(source, target)


def _write_tree(out: Path, final: Path, root: Path, samples: list[HandboneSample], splits: dict[str, list[int]],
                signature: str, fold: int, n_folds: int, copy: bool) -> None:
    """Write the conversion into ``out``; the dataset YAML points at ``final``, where ``out`` is renamed to."""
    manifest: dict = {"format": "ultralytics-segment", "version": FORMAT_VERSION, "root": str(root.resolve()),
                      "fold": fold, "n_folds": n_folds, "signature": signature}
    for split, indices in splits.items():
        (out / "images" / split).mkdir(parents=True)
        (out / "labels" / split).mkdir(parents=True)
        for i in indices:
            s = samples[i]
            name = converted_name(s, root)
            height, width = image_size(s.image_path)
            lines = yolo_label_lines(read_polygons(s.label_path, height, width), height, width)
            (out / "labels" / split / name).with_suffix(".txt").write_text("".join(line + "\n" for line in lines))
            _place_image(s.image_path, out / "images" / split / name, copy)
        manifest[split] = [str(samples[i].image_path.relative_to(root)) for i in indices]
    dataset = {"path": str(final.resolve()), "train": "images/train", "val": "images/val", "nc": len(CLASSES),
               "names": dict(enumerate(CLASSES)), "channels": 3}
    (out / "dataset.yaml").write_text(yaml.safe_dump(dataset, sort_keys=False))
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))


def read_manifest(out: str | os.PathLike) -> dict | None:
    """The manifest of a finished conversion in ``out``, or None."""
    path = Path(out) / "manifest.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def convert_yolo(root: str | os.PathLike, out: str | os.PathLike, fold: int = 0, n_folds: int = 5,
                 copy: bool = False) -> Path:
    """Convert ``root`` (``DCM/`` + ``outputs_json/``) into an ultralytics dataset at ``out``; returns its YAML.

    Built in a temporary sibling folder and renamed into place, so ``out`` is never half-written. An
    existing ``out`` is replaced only when it is an earlier conversion (it has a ``manifest.json``).
    Unchanged inputs (same signature) are not converted again.
    """
    root, out = Path(root), Path(out)
    samples = list_samples(root)
    unlabelled = [s for s in samples if s.label_path is None]
    if unlabelled:
        raise FormatError(f"{root}: conversion needs labels (outputs_json/); none for {unlabelled[0].image_path}")
    train_idx, val_idx = split_folds(samples, n_folds, fold)
    signature = _signature(samples, fold, n_folds, copy)
    existing = read_manifest(out)
    if existing is not None and existing.get("signature") == signature:
        return out / "dataset.yaml"
    if out.exists() and existing is None and any(out.iterdir()):
        raise FileExistsError(f"{out}: exists and is not a YOLO conversion (no manifest.json); choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_tree(tmp, out, root, samples, {"train": train_idx, "val": val_idx}, signature, fold, n_folds, copy)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except OSError:
        done = read_manifest(out)
        if done is None or done.get("signature") != signature:  # not a concurrent conversion that won the race
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out / "dataset.yaml"


def yolo_dataset(root: str | os.PathLike, cache_root: str | os.PathLike, fold: int, n_folds: int) -> Path:
    """The cached conversion of ``root`` for this fold (converted on first use); returns its dataset YAML."""
    resolved = Path(root).resolve()
    key = hashlib.sha256(f"{resolved}|{fold}|{n_folds}".encode()).hexdigest()[:12]
    name = f"{resolved.parent.name}-{resolved.name}-f{fold}of{n_folds}-{key}"
    return convert_yolo(resolved, Path(cache_root) / "yolo" / name, fold, n_folds)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="format", required=True)
    yolo = sub.add_parser("yolo", help="ultralytics segment labels + dataset YAML for one fold")
    yolo.add_argument("--root", required=True, help="training folder holding DCM/ and outputs_json/")
    yolo.add_argument("--out", required=True, help="output folder (replaced if it is an earlier conversion)")
    yolo.add_argument("--fold", type=int, default=0)
    yolo.add_argument("--n-folds", type=int, default=5)
    yolo.add_argument("--copy", action="store_true", help="copy images instead of linking to them")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        data_yaml = convert_yolo(args.root, args.out, args.fold, args.n_folds, copy=args.copy)
    except (FormatError, ValueError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    manifest = read_manifest(data_yaml.parent) or {}
    print(f"wrote {data_yaml}: {len(manifest.get('train', []))} train, {len(manifest.get('val', []))} val images "
          f"(fold {args.fold} of {args.n_folds})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
