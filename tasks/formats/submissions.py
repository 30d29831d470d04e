"""Submission CSVs: a header read (each task's spec tells its own layout by it) and the bone-age layout
``id,boneage`` (months) read and written. The segmentation layout ``image_name,class,rle`` lives in
``tasks.submission``, the keypoint one ``image_name,<lm>_x...,<lm>_y...`` in ``tasks.formats.shs``.

Standard library and numpy only: the CSV-level tools (fuse, score, validate) import this without torch
or pandas.
"""
from __future__ import annotations

import csv
import os
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np

from tasks.formats import FormatError
from core.atomic import atomic_write
from tasks.formats.tables import finite_numbers, format_number, new_id, read_rows

AGE_HEADER = ("id", "boneage")
MAX_AGE_MONTHS = 240.0  # the oldest age of the RSNA answers (20 years)


def read_ages(csv_path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """Ids (file order) and ages ``(N,)`` float64 months of an ``id,boneage`` file (a submission, or answers).

    Checked: both columns exist, ids are non-empty and unique, every age is a finite number (no range
    check: predictions may stray). Other columns (``male``) are ignored. Errors name file, line, column.
    """
    path = Path(csv_path)
    header, rows = read_rows(path)
    missing = [c for c in AGE_HEADER if c not in header]
    if missing:
        raise FormatError(f"{path}: missing column {missing[0]!r} (columns: {', '.join(header)})")
    id_at, age_at = header.index("id"), header.index("boneage")
    ids: list[str] = []
    first: dict[str, int] = {}
    for line, row in rows:
        ids.append(new_id(row[id_at], f"{path}: line {line}, column 'id'", line, first))
    ages = finite_numbers([[row[age_at]] for _, row in rows], 1, lambda i, _: f"{path}: line {rows[i][0]}, column 'boneage'")
    return ids, ages[:, 0]


def write_ages(path: str | os.PathLike, ids: Sequence[str], ages: Sequence[float] | np.ndarray,
               decimals: int | None = 4) -> None:
    """Write ``id,boneage`` atomically, ages with ``decimals`` places (trailing zeros dropped; None: the
    shortest exact text). Duplicate ids, NaN/Inf or a count that does not match raise :class:`FormatError`."""
    path = Path(path)
    ages = np.asarray(ages, np.float64)
    if ages.shape != (len(ids),):
        raise FormatError(f"{path}: {ages.size} ages for {len(ids)} ids")
    seen: set[str] = set()
    for rid in ids:
        if str(rid) in seen:
            raise FormatError(f"{path}: duplicate id {rid!r} in predictions")
        seen.add(str(rid))
    bad = ~np.isfinite(ages)
    if bad.any():
        raise FormatError(f"{path}: prediction for id {ids[int(np.argmax(bad))]!r} is NaN/Inf or not a number")
    with atomic_write(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(AGE_HEADER)
        writer.writerows((rid, format_number(a, decimals)) for rid, a in zip(ids, ages))


def check_same_ids(path: str | os.PathLike, have: Collection[str], wanted: Sequence[str]) -> None:
    """Raise :class:`FormatError` naming ``path`` when its ids ``have`` are not exactly ``wanted`` (the
    ids of the other submissions)."""
    missing = [n for n in wanted if n not in have]
    if missing:
        raise FormatError(f"{path}: no rows for {len(missing)} image(s) the others have, e.g. {missing[0]}")
    extra = sorted(set(have) - set(wanted))
    if extra:
        raise FormatError(f"{path}: {len(extra)} image(s) the others lack, e.g. {extra[0]}")
