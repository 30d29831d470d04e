"""Names that become paths stay inside their folder: one path component, checked in one place.

A run name, an ensemble's or a sweep's name, an image id of a label or submission CSV, an AASCE file
list entry and every file name found in a data folder ends up joined to a folder (``runs/<task>/<name>``,
``<images>/<id>.png``, ``preds/<split>/<image>.npz``). Each must be a single, plain component: not empty,
no ``/`` or ``\\``, not ``.`` or ``..``, no drive (``C:``), no control character, and text that is valid
UTF-8 (a file name in another encoding reaches Python as lone surrogates, which no CSV or JSON can hold).
Messages show the name with ``repr``, so a control character or an undecodable byte prints as an escape.
"""
from __future__ import annotations

import unicodedata
from pathlib import PureWindowsPath

from tasks.formats import FormatError


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot be one path component inside a folder; None when it can."""
    if not isinstance(name, str):
        return f"{name!r} is not a name (text expected)"
    if not name.strip():
        return "empty name"
    if "/" in name or "\\" in name:
        return f"{name!r} holds a path separator; a name is one file or folder name, not a path"
    if name in (".", ".."):
        return f"{name!r} names a folder itself, not a file or folder inside it"
    if PureWindowsPath(name).drive:
        return f"{name!r} is a drive (an absolute path), not a name"
    categories = {unicodedata.category(c) for c in name}
    if "Cs" in categories:
        return f"{name!r} is not valid UTF-8 (a file name written in another encoding); rename it"
    if "Cc" in categories:
        return f"{name!r} holds a control character"
    return None


def check_name(name: object, where: str) -> str:
    """``name`` when it is one path component; else :class:`FormatError` ``<where>: <what is wrong>``."""
    problem = name_problem(name)
    if problem is not None:
        raise FormatError(f"{where}: {problem}")
    return str(name)
