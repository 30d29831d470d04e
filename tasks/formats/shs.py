"""The SHS_NET joint layout: a wide CSV ``img_id,<lm>_x...,<lm>_y...`` (pixels of the image frame).

The 15 joints, in column (= heatmap channel) order: IP, PIP2-PIP5, MP, MCP2-MCP5, W1-W5. The same
wide layout, with any landmark names, is the keypoint submission format; the id column may be called
``img_id`` or ``image_name``.
"""
from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tasks.formats import FormatError
from tasks.formats.atomic import write_text
from tasks.formats.images import stem
from tasks.formats.tables import finite_numbers, format_number, new_id, read_rows

SHS15_NAMES: tuple[str, ...] = ("IP", "PIP2", "PIP3", "PIP4", "PIP5", "MP", "MCP2", "MCP3", "MCP4", "MCP5",
                                "W1", "W2", "W3", "W4", "W5")
ID_COLUMNS: tuple[str, ...] = ("img_id", "image_name")


def patient_of(name: str) -> str:
    """The patient of an SHS_NET image: the two sides of one film (``test_img5_L``, ``test_img5_R``) are one."""
    return re.sub(r"_[LR]$", "", stem(name))


def coord_columns(names: Sequence[str]) -> list[str]:
    """``<lm>_x`` for every name, then ``<lm>_y`` for every name."""
    return [f"{n}_x" for n in names] + [f"{n}_y" for n in names]


def read_coords(csv_path: str | os.PathLike, names: Sequence[str] = SHS15_NAMES) -> tuple[list[str], np.ndarray]:
    """Ids (file order) and coordinates ``(N, K, 2)`` float64 ``(x, y)`` from a wide landmark CSV.

    Checked: an id column (``img_id`` or ``image_name``) and every ``<lm>_x``/``<lm>_y`` column exist;
    ids are non-empty and unique; every coordinate is a finite number. Errors name file, line, column.
    Standard library and numpy only (no pandas).
    """
    path = Path(csv_path)
    header, rows = read_rows(path)
    return _coords(path, header, rows, names)


def read_submission(csv_path: str | os.PathLike) -> tuple[str, list[str], list[str], np.ndarray]:
    """A keypoint submission, with its landmarks read from its own header: ``(id column, landmark names in
    column order, ids, (N, K, 2) coordinates)``.

    Strict: the first column is an id column, every other column is ``<lm>_x`` or ``<lm>_y``, each
    landmark has both, and every value is checked as in :func:`read_coords`.
    """
    path = Path(csv_path)
    header, rows = read_rows(path)
    if header[0] not in ID_COLUMNS:
        raise FormatError(f"{path}: the first column must be {' or '.join(ID_COLUMNS)}, got {header[0]!r}")
    other = [c for c in header[1:] if not c.endswith(("_x", "_y"))]
    if other:
        raise FormatError(f"{path}: column {other[0]!r} is neither <landmark>_x nor <landmark>_y")
    xs = [c[:-2] for c in header[1:] if c.endswith("_x")]
    ys = [c[:-2] for c in header[1:] if c.endswith("_y")]
    if len(set(header)) != len(header):
        raise FormatError(f"{path}: a column appears twice in the header")
    for have, other_axis, axis in ((xs, set(ys), "y"), (ys, set(xs), "x")):
        alone = [n for n in have if n not in other_axis]
        if alone:
            raise FormatError(f"{path}: landmark {alone[0]} has no {alone[0]}_{axis} column")
    if not xs:
        raise FormatError(f"{path}: no <landmark>_x/<landmark>_y columns")
    ids, coords = _coords(path, header, rows, xs)
    return header[0], xs, ids, coords


def _coords(path: Path, header: list[str], rows: list[tuple[int, list[str]]], names: Sequence[str]
            ) -> tuple[list[str], np.ndarray]:
    id_col = next((c for c in ID_COLUMNS if c in header), None)
    if id_col is None:
        raise FormatError(f"{path}: missing id column (one of {', '.join(ID_COLUMNS)}); columns: {', '.join(header)}")
    cols = coord_columns(names)
    missing = [c for c in cols if c not in header]
    if missing:
        raise FormatError(f"{path}: missing column(s) {', '.join(missing)}")
    id_at = header.index(id_col)
    at = [header.index(c) for c in cols]
    ids: list[str] = []
    first: dict[str, int] = {}
    for line, row in rows:
        ids.append(new_id(row[id_at], f"{path}: line {line}, column {id_col!r}", line, first))
    values = finite_numbers([[row[c] for c in at] for _, row in rows], len(cols),
                            lambda i, j: f"{path}: line {rows[i][0]}, column {cols[j]!r}")
    return ids, np.ascontiguousarray(values.reshape(len(rows), 2, len(names)).transpose(0, 2, 1))


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
        vals = [format_number(v, decimals) for v in c[:, 0]] + [format_number(v, decimals) for v in c[:, 1]]
        lines.append(",".join([str(rid), *vals]))
    write_text(path, "\n".join(lines) + "\n")
