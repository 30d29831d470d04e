"""The RSNA Pediatric Bone Age layout: ``id,boneage,male`` CSVs and ``<images_dir>/<id>.png``.

``boneage`` is the bone age in **months**; ``male`` is written ``True``/``False``. A test CSV may come
as ``id,male`` only: :func:`read_labels` then returns a ``boneage`` column of NaN (the column is always
present in the returned frame; ``require_age=True`` turns a missing or empty age into an error).
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.formats import FormatError
from tasks.formats.tables import TEXT_ENCODING, finite_number, new_id, read_table
from tasks.formats.images import IMAGE_SUFFIXES
from tasks.formats.submissions import MAX_AGE_MONTHS, read_ages, write_ages

SUBMISSION_HEADER: tuple[str, str] = ("id", "boneage")
_TRUE = {"true", "1", "m", "male", "yes", "t"}
_FALSE = {"false", "0", "f", "female", "no"}


def patient_of(image_id: str) -> str:
    """The patient of an RSNA image: its id (one hand a patient)."""
    return str(image_id)


def parse_male(value, where: str) -> bool:
    """``True``/``False`` (any case), ``1``/``0``, ``M``/``F`` or a bool -> bool; anything else fails."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    s = str(value).strip().lower()
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    raise FormatError(f"{where}: cannot read sex {value!r} (expected True/False)")


def read_labels(csv_path: str | os.PathLike, require_age: bool = False) -> pd.DataFrame:
    """Read an RSNA label CSV into a frame with columns ``id`` (str), ``boneage`` (float months, NaN
    when absent) and ``male`` (bool), in file order.

    Checked: the ``id`` and ``male`` columns exist; ids are non-empty and unique; ages are finite numbers in
    [0, 240] months; sex parses. Errors name the file, line and column.
    """
    path = Path(csv_path)
    df = read_table(path)
    for col in ("id", "male"):
        if col not in df.columns:
            raise FormatError(f"{path}: missing column {col!r} (columns: {', '.join(df.columns)})")
    if require_age and "boneage" not in df.columns:
        raise FormatError(f"{path}: missing column 'boneage' (columns: {', '.join(df.columns)})")
    ids, ages, males = [], [], []
    first_line: dict[str, int] = {}
    has_age = "boneage" in df.columns
    id_values = df["id"].tolist()
    male_values = df["male"].tolist()
    age_values = df["boneage"].tolist() if has_age else [""] * len(df)
    for i, (raw_id, raw_age, raw_male) in enumerate(zip(id_values, age_values, male_values)):
        line = i + 2
        rid = new_id(raw_id, f"{path}: line {line}, column 'id'", line, first_line)
        age = math.nan
        raw = str(raw_age).strip()
        if raw == "" or raw.lower() == "nan":
            if require_age:
                raise FormatError(f"{path}: line {line}, column 'boneage': " + ("missing age" if raw == "" else "age is NaN"))
        else:
            try:
                age = float(raw)
            except ValueError:
                raise FormatError(f"{path}: line {line}, column 'boneage': not a number: {raw!r}") from None
            if not math.isfinite(age):
                raise FormatError(f"{path}: line {line}, column 'boneage': age {raw} is not a finite number")
            if age < 0 or age > MAX_AGE_MONTHS:
                raise FormatError(f"{path}: line {line}, column 'boneage': age {raw} months outside "
                                  f"[0, {MAX_AGE_MONTHS:g}]")
        male = parse_male(raw_male, f"{path}: line {line}, column 'male'")
        ids.append(rid)
        ages.append(age)
        males.append(male)
    return pd.DataFrame({"id": pd.Series(ids, dtype=object), "boneage": np.asarray(ages, dtype=np.float64),
                         "male": np.asarray(males, dtype=bool)})


def image_path(images_dir: str | os.PathLike, image_id: str) -> Path:
    """``<images_dir>/<id>.png`` (or another image suffix); FormatError naming the path when missing."""
    base = Path(images_dir)
    for suffix in IMAGE_SUFFIXES:
        p = base / f"{image_id}{suffix}"
        if p.is_file():
            return p
    raise FormatError(f"{base / (str(image_id) + '.png')}: image for id {image_id!r} not found")


def write_predictions(path: str | os.PathLike, df: pd.DataFrame) -> None:
    """Write ``id,boneage`` (months, 4 decimals) atomically. Rejects missing columns, duplicate ids, NaN/Inf."""
    path = Path(path)
    for col in ("id", "boneage"):
        if col not in df.columns:
            raise FormatError(f"{path}: predictions lack column {col!r}")
    ages = pd.to_numeric(df["boneage"], errors="coerce").to_numpy(dtype=np.float64)
    write_ages(path, df["id"].astype(str).tolist(), ages, decimals=4)


def read_predictions(csv_path: str | os.PathLike) -> pd.DataFrame:
    """Read an ``id,boneage`` file (a submission, or the phantom's ``boneage-test-answers.csv``).

    Returns columns ``id`` (str) and ``boneage`` (float months); checked as in
    :func:`tasks.formats.submissions.read_ages`.
    """
    ids, ages = read_ages(csv_path)
    return pd.DataFrame({"id": pd.Series(ids, dtype=object), "boneage": ages})


def read_submission(path: str | os.PathLike, *, answers: bool = False) -> pd.DataFrame:
    """``id,boneage`` CSV (a submission or, ``answers=True``, the ground truth) → frame of id (str) and
    boneage (float months). Checked: header, non-empty unique ids, finite numbers; answers also lie in
    [0, 240] months. A ``male`` column, when present, is kept (as bool)."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: CSV file not found")
    try:
        with path.open(newline="", encoding=TEXT_ENCODING) as f:
            rows = list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error) as err:
        raise FormatError(f"{path}: not a readable CSV ({err})") from None
    if not rows:
        raise FormatError(f"{path}: empty file")
    header = [h.strip() for h in rows[0]]
    if header[:2] != list(SUBMISSION_HEADER):
        raise FormatError(f"{path}: header must start with id,boneage, got {','.join(header)}")
    if answers and "male" in header:
        df = read_labels(path, require_age=True)
        return df[["id", "boneage", "male"]]
    ids, ages, seen = [], [], {}
    for line, row in enumerate(rows[1:], start=2):
        if not row or not any(c.strip() for c in row):
            continue
        if len(row) < 2:
            raise FormatError(f"{path}: line {line}: expected id,boneage, got {row}")
        rid = new_id(row[0], f"{path}: line {line}", line, seen)
        value = finite_number(row[1], f"{path}: line {line}, column 'boneage'")
        if answers and not 0 <= value <= MAX_AGE_MONTHS:
            raise FormatError(f"{path}: line {line}, column 'boneage': age {row[1].strip()} months outside [0, {MAX_AGE_MONTHS:g}]")
        ids.append(rid)
        ages.append(value)
    if not ids:
        raise FormatError(f"{path}: no rows")
    return pd.DataFrame({"id": pd.Series(ids, dtype=object), "boneage": np.asarray(ages, np.float64)})
