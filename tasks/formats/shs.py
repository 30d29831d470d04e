"""The SHS_NET joint layout: a wide CSV ``img_id,<lm>_x...,<lm>_y...`` (pixels of the image frame).

The 15 joints, in column (= heatmap channel) order: IP, PIP2-PIP5, MP, MCP2-MCP5, W1-W5. The same
wide layout, with any landmark names, is the keypoint submission format; the id column may be called
``img_id`` or ``image_name``.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tasks.formats import FormatError
from tasks.formats.atomic import write_text
from tasks.formats.tables import finite_number, new_id, read_table

SHS15_NAMES: tuple[str, ...] = ("IP", "PIP2", "PIP3", "PIP4", "PIP5", "MP", "MCP2", "MCP3", "MCP4", "MCP5",
                                "W1", "W2", "W3", "W4", "W5")
ID_COLUMNS: tuple[str, ...] = ("img_id", "image_name")


def coord_columns(names: Sequence[str]) -> list[str]:
    """``<lm>_x`` for every name, then ``<lm>_y`` for every name."""
    return [f"{n}_x" for n in names] + [f"{n}_y" for n in names]


def read_coords(csv_path: str | os.PathLike, names: Sequence[str] = SHS15_NAMES) -> tuple[list[str], np.ndarray]:
    """Ids (file order) and coordinates ``(N, K, 2)`` float64 ``(x, y)`` from a wide landmark CSV.

    Checked: an id column (``img_id`` or ``image_name``) and every ``<lm>_x``/``<lm>_y`` column exist;
    ids are non-empty and unique; every coordinate is a finite number. Errors name file, line, column.
    """
    path = Path(csv_path)
    df = read_table(path)
    id_col = next((c for c in ID_COLUMNS if c in df.columns), None)
    if id_col is None:
        raise FormatError(f"{path}: missing id column (one of {', '.join(ID_COLUMNS)}); columns: {', '.join(df.columns)}")
    cols = coord_columns(names)
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise FormatError(f"{path}: missing column(s) {', '.join(missing)}")
    ids: list[str] = []
    first: dict[str, int] = {}
    for i, raw in enumerate(df[id_col].tolist()):
        ids.append(new_id(raw, f"{path}: line {i + 2}, column {id_col!r}", i + 2, first))
    k = len(names)
    coords = np.empty((len(df), k, 2), dtype=np.float64)
    for j, col in enumerate(cols):
        values = df[col].tolist()
        for i, raw in enumerate(values):
            coords[i, j % k, j // k] = finite_number(raw, f"{path}: line {i + 2}, column {col!r}")
    return ids, coords


def _fmt(v: float, decimals: int | None) -> str:
    if decimals is None:
        return repr(float(v))
    s = f"{float(v):.{decimals}f}"
    return s.rstrip("0").rstrip(".") if "." in s else s


def write_coords(path: str | os.PathLike, ids: Sequence[str], coords: np.ndarray,
                 names: Sequence[str] = SHS15_NAMES, id_column: str = "img_id", decimals: int | None = 3) -> None:
    """Write the wide layout atomically. ``decimals=None`` writes the shortest exact float text."""
    path = Path(path)
    coords = np.asarray(coords, dtype=np.float64)
    if coords.shape != (len(ids), len(names), 2):
        raise FormatError(f"{path}: coords shape {coords.shape} does not match {len(ids)} ids x {len(names)} landmarks x 2")
    if not np.isfinite(coords).all():
        i = int(np.argwhere(~np.isfinite(coords))[0][0])
        raise FormatError(f"{path}: NaN/Inf coordinate for id {ids[i]!r}")
    if len(set(ids)) != len(ids):
        raise FormatError(f"{path}: duplicate ids")
    lines = [",".join([id_column, *coord_columns(names)])]
    for rid, c in zip(ids, coords):
        vals = [_fmt(v, decimals) for v in c[:, 0]] + [_fmt(v, decimals) for v in c[:, 1]]
        lines.append(",".join([str(rid), *vals]))
    write_text(path, "\n".join(lines) + "\n")
