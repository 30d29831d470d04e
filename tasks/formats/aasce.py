"""The AASCE 2019 spine layout (SpineWeb dataset 16): 68 vertebra corners a radiograph.

- ``filenames.csv``: one image name a line, no header; names contain spaces (``"sunhl-... 162 A AP.jpg"``).
- ``landmarks.csv``: no header; line ``i`` belongs to name ``i``: 68 x then 68 y, **normalised to [0, 1]**
  by the image width and height (so ``x_px = x * width``).
- ``angles.csv``: no header; three Cobb angles (degrees) a line.
- ``labels_mat/<image name>.mat``: MATLAB v5, key ``p2``: ``(68, 2)`` absolute ``(x, y)`` pixels (read by
  :mod:`tasks.formats.mat5`, which checks every size in the file; scipy's reader crashes on some corrupt ones).

The corners come vertebra by vertebra (T1..L5), each as top-left, top-right, bottom-left, bottom-right
(the ``aasce68`` landmark set). Every reader checks counts and values and names the file and line.
"""
from __future__ import annotations

import csv
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tasks.formats import FormatError
from core.atomic import atomic_write, write_text
from tasks.formats.images import stem
from tasks.formats.mat5 import read_mat5
from tasks.formats.names import check_name
from tasks.formats.tables import TEXT_ENCODING, finite_number

N_LANDMARKS = 68
MAT_KEY = "p2"
# The views of one patient: "sunhl-1th-03-Jan-2017-165 A AP" and "sunhl-1th-04-Jan-2017-165 B AP" (patient 165).
_PATIENT_VIEW = re.compile(r"-(\d+) [A-Z] (AP|PA|LAT)$")


def patient_of(name: str) -> str:
    """The patient of an AASCE image: the number before its view letter (``patient-165``), else the image itself."""
    view = _PATIENT_VIEW.search(stem(name))
    return f"patient-{view.group(1)}" if view else stem(name)


def read_filenames(path: str | os.PathLike) -> list[str]:
    """Image names, one a line (surrounding whitespace and blank lines dropped; inner spaces kept); each must be
    a single file name (``labels_mat/<name>.mat`` is read from it)."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: file list not found")
    try:
        lines = path.read_text(encoding=TEXT_ENCODING).splitlines()
    except UnicodeDecodeError as err:
        raise FormatError(f"{path}: not a text file ({err})") from None
    names = [line.strip().strip('"') for line in lines if line.strip()]
    if not names:
        raise FormatError(f"{path}: no image names")
    seen: dict[str, int] = {}
    for i, n in enumerate(names, start=1):
        check_name(n, f"{path}: line {i}")
        if n in seen:
            raise FormatError(f"{path}: line {i}: image {n!r} listed twice (first on line {seen[n]})")
        seen[n] = i
    return names


def _numeric_rows(path: Path, width: int, what: str) -> np.ndarray:
    """``(N, width)`` float64 from a header-less numeric CSV; a wrong count or a non-finite value names the line."""
    if not path.is_file():
        raise FormatError(f"{path}: {what} file not found")
    rows: list[list[float]] = []
    try:
        with path.open(newline="", encoding=TEXT_ENCODING) as fh:
            for line_no, row in enumerate(csv.reader(fh), start=1):
                if not row or all(not v.strip() for v in row):
                    continue
                if len(row) != width:
                    raise FormatError(f"{path}: line {line_no}: {len(row)} values, expected {width} ({what})")
                rows.append([finite_number(raw, f"{path}: line {line_no}, value {j}") for j, raw in enumerate(row, start=1)])
    except (UnicodeDecodeError, csv.Error) as err:
        raise FormatError(f"{path}: not a text CSV ({err})") from None
    if not rows:
        raise FormatError(f"{path}: no rows")
    return np.asarray(rows, np.float64)


def read_landmarks(path: str | os.PathLike, n_landmarks: int = N_LANDMARKS) -> np.ndarray:
    """``(N, n_landmarks, 2)`` normalised ``(x, y)`` from ``landmarks.csv`` (all x, then all y, a line).

    Values must lie in [0, 1] (a small rounding margin allowed): pixel values here mean the wrong file.
    """
    path = Path(path)
    flat = _numeric_rows(path, 2 * n_landmarks, f"{n_landmarks} x then {n_landmarks} y, normalised")
    off = (flat < -0.01) | (flat > 1.01)
    if off.any():
        i, j = np.argwhere(off)[0]
        raise FormatError(f"{path}: line {i + 1}, value {j + 1}: {flat[i, j]:g} is not a normalised coordinate in [0, 1]")
    return np.stack([flat[:, :n_landmarks], flat[:, n_landmarks:]], -1)


def read_angles(path: str | os.PathLike) -> np.ndarray:
    """``(N, 3)`` Cobb angles in degrees from ``angles.csv``."""
    return _numeric_rows(Path(path), 3, "three Cobb angles")


def read_mat(path: str | os.PathLike, n_landmarks: int = N_LANDMARKS) -> np.ndarray:
    """``(n_landmarks, 2)`` absolute ``(x, y)`` pixels from one ``.mat`` label file (key ``p2``)."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: .mat label file not found")
    content = read_mat5(path)
    if MAT_KEY not in content:
        raise FormatError(f"{path}: no key {MAT_KEY!r} (keys: {', '.join(content) or 'none'})")
    xy = content[MAT_KEY]
    if xy is None:
        raise FormatError(f"{path}: {MAT_KEY} is not a real numeric matrix")
    if xy.shape != (n_landmarks, 2):
        raise FormatError(f"{path}: {MAT_KEY} has shape {xy.shape}, expected ({n_landmarks}, 2)")
    if not np.isfinite(xy).all():
        raise FormatError(f"{path}: {MAT_KEY} holds NaN or infinite coordinates")
    return xy


def read_csv_labels(root: str | os.PathLike, sizes: dict[str, tuple[int, int]], n_landmarks: int = N_LANDMARKS,
                    landmarks: str = "landmarks.csv", filenames: str = "filenames.csv") -> tuple[list[str], np.ndarray]:
    """Names and absolute-pixel ``(N, K, 2)`` coordinates from ``filenames.csv`` + ``landmarks.csv``.

    ``sizes`` maps image names to ``(height, width)``; the normalised values are scaled by them. Names
    without a size (no image here) are skipped, as DHA's ``all.csv`` rows without an image are.
    """
    root = Path(root)
    names = read_filenames(root / filenames)
    norm = read_landmarks(root / landmarks, n_landmarks)
    if len(names) != len(norm):
        raise FormatError(f"{root / landmarks}: {len(norm)} rows but {root / filenames} lists {len(names)} images; "
                          "row i belongs to name i")
    keep = [i for i, n in enumerate(names) if n in sizes]
    coords = np.stack([norm[i] * np.array([sizes[names[i]][1], sizes[names[i]][0]], np.float64) for i in keep]) \
        if keep else np.zeros((0, n_landmarks, 2))
    return [names[i] for i in keep], coords


def read_mat_labels(folder: str | os.PathLike, names: Sequence[str], n_landmarks: int = N_LANDMARKS) -> tuple[list[str], np.ndarray]:
    """Names and ``(N, K, 2)`` pixels from ``<folder>/<name>.mat`` for each of ``names`` that has one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FormatError(f"{folder}: .mat label folder not found")
    keep = [n for n in names if (folder / f"{n}.mat").is_file()]
    coords = np.stack([read_mat(folder / f"{n}.mat", n_landmarks) for n in keep]) if keep else np.zeros((0, n_landmarks, 2))
    return keep, coords


def write_csv_labels(root: str | os.PathLike, names: Sequence[str], coords: np.ndarray,
                     sizes: Sequence[tuple[int, int]]) -> None:
    """Write ``filenames.csv`` and ``landmarks.csv`` (normalised by each ``(height, width)``), atomically."""
    root = Path(root)
    coords = np.asarray(coords, np.float64)
    if coords.ndim != 3 or coords.shape[0] != len(names) or len(sizes) != len(names):
        raise FormatError(f"{root}: coords {coords.shape}, {len(names)} names and {len(sizes)} sizes do not match")
    lines = []
    for xy, (h, w) in zip(coords, sizes):
        norm = xy / np.array([w, h], np.float64)
        lines.append(",".join(f"{v:.6g}" for v in np.concatenate([norm[:, 0], norm[:, 1]])))
    write_text(root / "filenames.csv", "\n".join(names) + "\n")
    write_text(root / "landmarks.csv", "\n".join(lines) + "\n")


def write_mat(path: str | os.PathLike, coords: np.ndarray) -> None:
    """Write one ``.mat`` label file (key ``p2``), atomically."""
    from scipy.io import savemat

    path = Path(path)
    with atomic_write(path, "wb") as fh:
        savemat(fh, {MAT_KEY: np.asarray(coords, np.float64)})
