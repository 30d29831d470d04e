"""Reading label CSVs as text, so every reader checks values itself and names file, line and column.

:func:`read_rows` uses the standard ``csv`` module only (the CSV-level tools read submissions without
loading pandas); :func:`read_table` gives a DataFrame to the label readers that want one. Every text file
the harness reads is decoded as :data:`TEXT_ENCODING`: UTF-8, with the byte-order mark that spreadsheet
programs put at its start accepted (and dropped).
"""
from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from core.cli import lazy_module
from tasks.formats import FormatError
from tasks.formats.names import check_name

np = lazy_module("numpy")  # the task specs and the CSV sniffing read headers without it

if TYPE_CHECKING:
    import pandas as pd

TEXT_ENCODING = "utf-8-sig"

# The run-length code of one 2048² mask can pass csv's default field limit of 131072 characters (a speckled or
# striped mask has hundreds of thousands of runs: up to 2048²/2 runs of about 16 characters). Every reader of the
# project's CSVs imports this module, so the limit is raised here, once per process, to the most a C long holds
# on every platform.
CSV_FIELD_LIMIT = 2**31 - 1
csv.field_size_limit(CSV_FIELD_LIMIT)


def first_row(path: str | os.PathLike, what: str = "CSV") -> list[str]:
    """The stripped cells of a CSV's first row (``[]`` for an empty file); a file that cannot be opened or
    decoded raises :class:`FormatError` naming it (``what``: the kind of file, for the message)."""
    try:
        with open(path, newline="", encoding=TEXT_ENCODING) as f:
            return [h.strip() for h in next(csv.reader(f), [])]
    except OSError as err:
        raise FormatError(f"{path}: cannot open {what} ({err.strerror or err})") from None
    except (UnicodeDecodeError, csv.Error) as err:
        raise FormatError(f"{path}: not a readable {what} ({err})") from None


def read_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The stripped header and every data row as ``(line number, stripped cells)``; blank lines are skipped.

    A missing, empty or undecodable file, and a row whose cell count differs from the header's, raise
    :class:`FormatError` naming the file (and line).
    """
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: CSV file not found")
    rows: list[tuple[int, list[str]]] = []
    try:
        with path.open(newline="", encoding=TEXT_ENCODING) as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            for row in reader:
                if not any(c.strip() for c in row):
                    continue
                if len(row) != len(header):
                    raise FormatError(f"{path}: line {reader.line_num}: {len(row)} values, the header has {len(header)}")
                rows.append((reader.line_num, [c.strip() for c in row]))
    except (UnicodeDecodeError, csv.Error) as err:
        raise FormatError(f"{path}: not a readable CSV ({err})") from None
    if not header:
        raise FormatError(f"{path}: empty file")
    return header, rows


def format_number(value: float, decimals: int | None) -> str:
    """``value`` with ``decimals`` places, trailing zeros dropped (``2.5``, ``3``); ``None``: the shortest text
    that reads back as the same float (``repr``)."""
    if decimals is None:
        return repr(float(value))
    s = f"{float(value):.{decimals}f}"
    return s.rstrip("0").rstrip(".") if "." in s else s


def read_table(path: Path) -> pd.DataFrame:
    """All cells as stripped-header strings (no NaN guessing); a missing or unparsable file is a FormatError."""
    import pandas as pd

    if not path.is_file():
        raise FormatError(f"{path}: CSV file not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise FormatError(f"{path}: not a readable CSV ({err})") from None
    df.columns = [str(c).strip() for c in df.columns]
    return df


def finite_number(raw: object, where: str) -> float:
    """``raw`` (stripped) as a finite float; an empty value, a non-number or NaN/Inf is a FormatError
    starting with ``where`` (the file, line and column or value position)."""
    s = str(raw).strip()
    if s == "":
        raise FormatError(f"{where}: empty value")
    try:
        v = float(s)
    except ValueError:
        raise FormatError(f"{where}: not a number: {s!r}") from None
    if not math.isfinite(v):
        raise FormatError(f"{where}: NaN or infinite")
    return v


def finite_numbers(cells: Sequence[Sequence[str]], n_columns: int, where: Callable[[int, int], str]) -> np.ndarray:
    """Rows of number strings as a ``(rows, n_columns)`` float64 array, converted at once by numpy; where that
    fails, cell by cell, so the first bad cell (row-major) raises :func:`finite_number`'s error with
    ``where(row, column)`` (the message is built only then)."""
    try:
        values = np.array(cells, dtype=np.float64).reshape(len(cells), n_columns)
        if np.isfinite(values).all():
            return values
    except ValueError:
        pass
    return np.array([[finite_number(raw, where(i, j)) for j, raw in enumerate(row)] for i, row in enumerate(cells)],
                    np.float64).reshape(len(cells), n_columns)


def new_id(raw: object, where: str, line: int, first: dict[str, int]) -> str:
    """``raw`` (stripped) as a row id not seen before: an empty or repeated id, or one that is not a single
    file name (``../x``: ids name image files, :mod:`tasks.formats.names`), is a FormatError starting with
    ``where`` (file, line and column). Records ``first[id] = line``."""
    rid = str(raw).strip()
    if not rid:
        raise FormatError(f"{where}: empty id")
    check_name(rid, where)
    if rid in first:
        raise FormatError(f"{where}: duplicate id {rid!r} (first on line {first[rid]})")
    first[rid] = line
    return rid


def check_finite(pred: np.ndarray, where: str) -> None:
    """Raise ``ValueError`` naming ``where`` when a prediction holds NaN or infinity."""
    if pred.dtype.kind == "f" and not np.isfinite(pred).all():
        n_bad = int((~np.isfinite(pred)).sum())
        raise ValueError(f"{where}: {n_bad} NaN/infinite values in the prediction")
