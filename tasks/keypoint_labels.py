"""Keypoint label files and folders, read without torch: the wide submission layout (SHS_NET
``coord_list.csv``), DHA ``all.csv``, AASCE CSV/``.mat`` labels, ``spacing.csv`` and ``split.csv``.

The training task (``tasks.keypoints``) and the local scorer (``tasks.scoring``) both read through here.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.formats import FormatError
from tasks.formats.images import IMAGE_SUFFIXES, image_size
from tasks.formats.images import stem as stem  # re-exported: the keypoint readers and the scorer match ids with it
from tasks.formats.names import check_name
from tasks.formats.tables import first_row, read_rows
from tasks.keypoint_sets import LANDMARK_SETS, LandmarkSet, set_for_columns
from tasks.keypoints import LabelFormat

ID_COLUMNS = ("image_name", "img_id")
# A labelled point may sit up to a pixel beyond the border pixel centres (annotation tools round); further
# out it is off the image.
EDGE_TOLERANCE = 1.0


@dataclass(frozen=True)
class KeypointSample:
    """One image: its label id (the submission's ``image_name``), path, ``(K, 2)`` coordinates (None
    for an unlabelled test image) and physical pixel size (None when unknown)."""

    name: str
    image_path: Path
    coords: np.ndarray | None
    spacing_mm: float | None = None


def _check_coords(path: Path, ids: Sequence[str], coords: np.ndarray, lmset: LandmarkSet) -> None:
    if coords.ndim != 3 or coords.shape[1:] != (len(lmset), 2):
        raise FormatError(f"{path}: expected {len(lmset)} landmarks of set {lmset.name}, got array {coords.shape}")
    bad = ~np.isfinite(coords)
    if bad.any():
        i, k, c = np.argwhere(bad)[0]
        raise FormatError(f"{path}: image {ids[i]}: {lmset.names[k]}_{'xy'[c]} is {coords[i, k, c]} "
                          f"({int(bad.any(-1).sum())} NaN/missing coordinates in all)")
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            raise FormatError(f"{path}: image {i} appears twice")
        seen.add(i)


def read_wide(path: str | os.PathLike, lmset: LandmarkSet | None = None) -> tuple[list[str], np.ndarray, LandmarkSet]:
    """A wide CSV (``image_name`` or ``img_id``, then ``<lm>_x`` ... ``<lm>_y`` ...; SHS_NET's
    ``coord_list.csv`` is one). ``lmset`` None infers the set from the header. Returns ids, ``(N, K, 2)``
    float64 coordinates and the set; missing columns, non-numbers and NaN raise :class:`FormatError`
    naming the file, line and column (``tasks.formats.shs.read_coords``)."""
    from tasks.formats.shs import read_coords

    path = Path(path)
    if lmset is None:
        header = first_row(path, "landmark CSV")
        lmset = set_for_columns(header[1:])
        if lmset is None:
            raise FormatError(f"{path}: columns {header[:4]}... hold no complete landmark set "
                              f"({', '.join(LANDMARK_SETS)}: <lm>_x and <lm>_y for every landmark)")
    ids, coords = read_coords(path, lmset.names)
    _check_coords(path, ids, coords, lmset)
    return ids, coords, lmset


def write_wide(path: str | os.PathLike, names: Sequence[str], coords: np.ndarray, lmset: LandmarkSet) -> None:
    """Write the submission layout atomically: ``image_name,<lm>_x...,<lm>_y...`` (3 decimals).
    NaN/infinite coordinates or a shape that does not match the names raise :class:`FormatError`."""
    from tasks.formats.shs import write_coords

    write_coords(path, list(names), coords, lmset.names, id_column="image_name", decimals=3)


def sniff_label_format(path: Path, n_landmarks: int | None = None) -> str:
    """``mat`` for a folder (AASCE ``.mat`` files); ``wide`` when the first row is a header starting with an
    id column; ``aasce`` when it is ``2 * n_landmarks`` numbers (normalised x then y, no id); else ``dha``."""
    if path.is_dir():
        return "mat"
    first = first_row(path, "label file")
    if first and first[0] in ID_COLUMNS:
        return "wide"
    try:
        [float(v) for v in first]
    except ValueError:
        return "dha"
    return "aasce" if n_landmarks is None or len(first) == 2 * n_landmarks else "dha"


def read_labels(path: str | os.PathLike, lmset: LandmarkSet, fmt: LabelFormat = "auto",
                image_dir: str | os.PathLike | None = None) -> tuple[list[str], np.ndarray]:
    """Ids and ``(N, K, 2)`` original-pixel coordinates from a wide CSV (SHS_NET), a DHA ``all.csv``, an
    AASCE ``landmarks.csv`` (its ``filenames.csv`` beside it) or an AASCE ``.mat`` folder. The AASCE
    layouts need ``image_dir``: the CSV is normalised by each image's size, the ``.mat`` files are named
    after the images."""
    from tasks.formats import aasce
    from tasks.formats.dha import read_all

    path = Path(path)
    if not path.exists():
        raise FormatError(f"{path}: label file not found")
    if fmt == "auto":
        fmt = sniff_label_format(path, len(lmset))
    if fmt in ("aasce", "mat"):
        if image_dir is None or not Path(image_dir).is_dir():
            raise FormatError(f"{path}: AASCE labels need the image folder (CSV values are normalised by image size, "
                              f".mat files are named after the images); got {image_dir}")
        images = {check_name(p.name, str(image_dir)): p for p in sorted(Path(image_dir).iterdir())
                  if p.suffix.lower() in IMAGE_SUFFIXES}
        if fmt == "aasce":
            ids, coords = aasce.read_csv_labels(path.parent, {n: image_size(p) for n, p in images.items()}, len(lmset),
                                                landmarks=path.name)
        else:
            ids, coords = aasce.read_mat_labels(path, list(images), len(lmset))
        if not ids:
            raise FormatError(f"{path}: no labels for any image in {image_dir}")
    elif fmt == "wide":
        ids, coords, _ = read_wide(path, lmset)
    elif fmt == "dha":
        ids, coords = read_all(path, len(lmset))
    else:
        raise ValueError(f"unknown label format {fmt!r}; valid: auto, wide, dha, aasce, mat")
    ids = [str(i) for i in ids]
    coords = np.asarray(coords, np.float64)
    _check_coords(path, ids, coords, lmset)
    return ids, coords


def read_spacing_file(path: Path) -> dict[str, float]:
    """``{stem: spacing_mm}`` from a ``spacing.csv`` (``id,spacing_mm``)."""
    from tasks.formats.dha import read_spacing

    return {stem(str(k)): float(v) for k, v in read_spacing(path).items()}


def read_split_file(path: Path) -> dict[str, str]:
    """``{stem: split}`` from ``split.csv`` (``img_id,split``); a row of another length names its line."""
    header, rows = read_rows(path)
    if not {"img_id", "split"} <= set(header):
        raise FormatError(f"{path}: split file needs columns img_id,split, got {','.join(header)}")
    at, split_at = header.index("img_id"), header.index("split")
    return {stem(row[at]): row[split_at] for _, row in rows}


def check_inside(path: Path, sample: KeypointSample, lmset: LandmarkSet, height: int, width: int) -> None:
    """A labelled point must lie on its image (at most ``EDGE_TOLERANCE`` px beyond the border pixel centres)."""
    xy = sample.coords
    off = ((xy[:, 0] < -EDGE_TOLERANCE) | (xy[:, 0] > width - 1 + EDGE_TOLERANCE)
           | (xy[:, 1] < -EDGE_TOLERANCE) | (xy[:, 1] > height - 1 + EDGE_TOLERANCE))
    if off.any():
        k = int(np.flatnonzero(off)[0])
        raise FormatError(f"{path}: image {sample.name}: {lmset.names[k]} at ({xy[k, 0]:.1f}, {xy[k, 1]:.1f}) lies "
                          f"outside the {width}x{height} image ({int(off.sum())} points off the image)")


def rows_without_images(root: str | os.PathLike, lmset: LandmarkSet, *, labels: str | None = None,
                        label_format: LabelFormat = "auto", images: str = "images") -> np.ndarray:
    """``(M, K, 2)`` coordinates of the label rows whose image is not in ``root/images`` (DHA's ``all.csv``
    holds the whole atlas: 901 more hands than the shared images); ``(0, K, 2)`` when there are none."""
    root = Path(root)
    image_dir = root / images
    names = {stem(p.name) for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES} if image_dir.is_dir() else set()
    label_path = root / (labels or lmset.label_file)
    if not label_path.exists():
        return np.zeros((0, len(lmset), 2))
    ids, coords = read_labels(label_path, lmset, label_format, image_dir)
    keep = [k for k, i in enumerate(ids) if stem(i) not in names]
    return coords[keep].reshape(len(keep), len(lmset), 2)


def list_keypoint_samples(root: str | os.PathLike, lmset: LandmarkSet, *, labels: str | None = None,
                          label_format: LabelFormat = "auto", images: str = "images",
                          spacing: str | None = "spacing.csv", split_file: str | None = "split.csv",
                          split: str | None = None, require_labels: bool = True) -> list[KeypointSample]:
    """Samples of a keypoint folder, sorted by name; ids match images by stem (``10001`` = ``10001.png``).

    ``split`` keeps the images whose ``split_file`` row has that split (when the file exists). Label
    rows without an image are skipped (DHA's ``all.csv`` covers the whole atlas); with
    ``require_labels`` every kept image needs a label row, and every labelled point must lie on its image.
    """
    root = Path(root)
    image_dir = root / images
    if not image_dir.is_dir():
        raise FormatError(f"{root}: no image folder '{images}/'")
    files = {check_name(p.name, str(image_dir)): p for p in sorted(image_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    if not files:
        raise FormatError(f"{image_dir}: no images")
    by_stem = {stem(n): p for n, p in files.items()}
    if len(by_stem) != len(files):
        dup = sorted(n for n in files if sum(stem(m) == stem(n) for m in files) > 1)
        raise FormatError(f"{image_dir}: images {dup[:2]} share a name; ids could not tell them apart")
    label_path = root / (labels or lmset.label_file)
    coords_by_stem: dict[str, tuple[str, np.ndarray]] = {}
    if label_path.exists():
        ids, coords = read_labels(label_path, lmset, label_format, image_dir)
        coords_by_stem = {stem(i): (i, c) for i, c in zip(ids, coords) if stem(i) in by_stem}
    elif require_labels:
        raise FormatError(f"{label_path}: label file not found (landmark set {lmset.name} reads "
                          f"{lmset.label_file}; set data.labels for another file)")
    keep = list(by_stem)
    if split is not None and split_file and (root / split_file).is_file():
        splits = read_split_file(root / split_file)
        keep = [s for s in keep if splits.get(s) == split]
        if not keep:
            raise FormatError(f"{root / split_file}: no images of split {split!r}")
    if require_labels:
        unlabelled = [s for s in keep if s not in coords_by_stem]
        if unlabelled:
            raise FormatError(f"{label_path}: no label row for image {by_stem[unlabelled[0]].name} "
                              f"({len(unlabelled)} images unlabelled)")
    spacings = read_spacing_file(root / spacing) if spacing and (root / spacing).is_file() else {}
    samples = []
    for s in sorted(keep):
        name, xy = coords_by_stem.get(s, (by_stem[s].name, None))
        sample = KeypointSample(name, by_stem[s], xy, spacings.get(s))
        if xy is not None:
            check_inside(label_path, sample, lmset, *image_size(by_stem[s]))
        samples.append(sample)
    return samples
