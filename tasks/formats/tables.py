"""Reading label CSVs as text, so every reader checks values itself and names file, line and column."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from tasks.formats import FormatError


def read_table(path: Path) -> pd.DataFrame:
    """All cells as stripped-header strings (no NaN guessing); a missing or unparsable file is a FormatError."""
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


def new_id(raw: object, where: str, line: int, first: dict[str, int]) -> str:
    """``raw`` (stripped) as a row id not seen before: an empty or repeated id is a FormatError starting with
    ``where`` (file, line and column). Records ``first[id] = line``."""
    rid = str(raw).strip()
    if not rid:
        raise FormatError(f"{where}: empty id")
    if rid in first:
        raise FormatError(f"{where}: duplicate id {rid!r} (first on line {first[rid]})")
    first[rid] = line
    return rid
