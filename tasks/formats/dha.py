"""The Digital Hand Atlas landmark layout (Payer et al.): ``all.csv`` and ``spacing.csv``.

``all.csv`` has **no header**: each line is an id, then 37 ``x,y`` pairs in pixels (75 values).
``spacing.csv`` is ``id,spacing_mm`` (isotropic pixel size). Lines are checked one by one with the
csv module, so a wrong value count names its line number.
"""
from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from tasks.formats import FormatError
from core.atomic import write_text
from tasks.formats.images import stem
from tasks.formats.tables import TEXT_ENCODING, finite_number, new_id, read_table

N_LANDMARKS = 37


def patient_of(name: str) -> str:
    """The patient of a Digital Hand Atlas image: its id (one hand a patient)."""
    return stem(name)


def read_all(csv_path: str | os.PathLike, n_landmarks: int = N_LANDMARKS) -> tuple[list[str], np.ndarray]:
    """Ids (file order) and ``(N, n_landmarks, 2)`` float64 ``(x, y)`` pixel coordinates.

    Checked: each non-empty line has exactly ``1 + 2 * n_landmarks`` values; ids are unique and
    non-empty; every coordinate is a finite number. Errors name the file, line and value position.
    """
    path = Path(csv_path)
    if not path.is_file():
        raise FormatError(f"{path}: CSV file not found")
    want = 1 + 2 * n_landmarks
    ids: list[str] = []
    rows: list[list[float]] = []
    first: dict[str, int] = {}
    try:
        with path.open(newline="", encoding=TEXT_ENCODING) as fh:
            for line_no, row in enumerate(csv.reader(fh), start=1):
                if not row or all(not v.strip() for v in row):
                    continue
                if len(row) != want:
                    raise FormatError(f"{path}: line {line_no}: {len(row)} values, expected {want} "
                                      f"(id + {n_landmarks} x,y pairs)")
                ids.append(new_id(row[0], f"{path}: line {line_no}", line_no, first))
                rows.append([finite_number(raw, f"{path}: line {line_no}, value {j}") for j, raw in enumerate(row[1:], start=2)])
    except (UnicodeDecodeError, csv.Error) as err:
        raise FormatError(f"{path}: not a text CSV ({err})") from None
    if not ids:
        raise FormatError(f"{path}: no landmark rows")
    return ids, np.asarray(rows, dtype=np.float64).reshape(len(ids), n_landmarks, 2)


def read_spacing(csv_path: str | os.PathLike) -> dict[str, float]:
    """``{id: spacing_mm}`` from ``id,spacing_mm``. Checked: columns, unique ids, positive numbers."""
    path = Path(csv_path)
    df = read_table(path)
    for col in ("id", "spacing_mm"):
        if col not in df.columns:
            raise FormatError(f"{path}: missing column {col!r} (columns: {', '.join(df.columns)})")
    out: dict[str, float] = {}
    first: dict[str, int] = {}
    for i, (raw_id, raw) in enumerate(zip(df["id"].tolist(), df["spacing_mm"].tolist())):
        line = i + 2
        rid = new_id(raw_id, f"{path}: line {line}, column 'id'", line, first)
        v = finite_number(raw, f"{path}: line {line}, column 'spacing_mm'")
        if v <= 0:
            raise FormatError(f"{path}: line {line}, column 'spacing_mm': spacing must be a positive number, got {raw!r}")
        out[rid] = v
    return out


def _fmt(v: float, decimals: int | None) -> str:
    if decimals is None:
        return repr(float(v))
    s = f"{float(v):.{decimals}f}"
    return s.rstrip("0").rstrip(".") if "." in s else s


def write_all(path: str | os.PathLike, ids: Sequence[str], coords: np.ndarray, decimals: int | None = 3) -> None:
    """Write ``all.csv`` (no header, id + x,y pairs) atomically; ``decimals=None``: exact float text."""
    path = Path(path)
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim != 3 or coords.shape[0] != len(ids) or coords.shape[2] != 2:
        raise FormatError(f"{path}: coords shape {coords.shape} does not match {len(ids)} ids x K x 2")
    if not np.isfinite(coords).all():
        i = int(np.argwhere(~np.isfinite(coords))[0][0])
        raise FormatError(f"{path}: NaN/Inf coordinate for id {ids[i]!r}")
    if len(set(ids)) != len(ids):
        raise FormatError(f"{path}: duplicate ids")
    lines = [",".join([str(rid), *(_fmt(v, decimals) for v in c.reshape(-1))]) for rid, c in zip(ids, coords)]
    write_text(path, "\n".join(lines) + "\n")


def write_spacing(path: str | os.PathLike, spacing: Mapping[str, float], decimals: int = 6) -> None:
    """Write ``id,spacing_mm`` atomically."""
    path = Path(path)
    lines = ["id,spacing_mm"]
    for rid, v in spacing.items():
        if not (math.isfinite(float(v)) and float(v) > 0):
            raise FormatError(f"{path}: spacing for id {rid!r} must be positive, got {v!r}")
        lines.append(f"{rid},{float(v):.{decimals}f}")
    write_text(path, "\n".join(lines) + "\n")
