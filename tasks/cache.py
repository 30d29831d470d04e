"""Decoded samples cached once at the training size, so an epoch never decodes full-size PNGs again.

An entry is one file of ``.npy`` records back to back: the array names, then each array. Reading it is
one ``open`` and one read per array straight into its buffer (no zip archive, no CRC pass). Entries are
keyed by the format version, the source files' paths, sizes and mtimes and the target size; a changed
source re-decodes, and a new ``FORMAT`` leaves every older entry unread. Written atomically, so a killed
run never leaves a torn entry; an unreadable one is made again.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np

from tasks.formats.atomic import atomic_write

DEFAULT_CACHE = Path(os.environ.get("BONEHARNESS_CACHE", Path(__file__).resolve().parent.parent / ".cache")) / "samples"
# Part of every key: change it when the entry layout changes (version 1 was a ``.npz`` archive per entry).
FORMAT = "npy-records-2"
SUFFIX = ".arrays"


def _key(sources: list[Path], tag: str) -> str:
    h = hashlib.sha1(f"{FORMAT}|{tag}".encode())
    for src in sources:
        st = src.stat()
        h.update(f"{src.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()


def write_arrays(f: BinaryIO, arrays: dict[str, np.ndarray]) -> None:
    """``arrays`` as ``.npy`` records: first the names (a unicode array), then each array in that order."""
    np.save(f, np.array(list(arrays), dtype=str), allow_pickle=False)
    for value in arrays.values():
        np.save(f, np.asarray(value), allow_pickle=False)


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    """What :func:`write_arrays` wrote (writable arrays); a short, padded or foreign file is a ValueError."""
    with open(path, "rb") as f:
        names = np.load(f, allow_pickle=False)
        arrays = {str(name): np.load(f, allow_pickle=False) for name in names}
        if f.read(1):
            raise ValueError(f"{path}: data after the last array")
    return arrays


class SampleCache:
    """``get(sources, tag, make)`` returns ``make()``'s dict of arrays, from disk when already made."""

    def __init__(self, root: str | os.PathLike | None = None, enabled: bool = True) -> None:
        self.root = Path(root) if root else DEFAULT_CACHE
        self.enabled = enabled

    def get(self, sources: list[Path], tag: str, make: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        if not self.enabled:
            return make()
        key = _key(sources, tag)
        path = self.root / key[:2] / f"{key}{SUFFIX}"
        try:
            return read_arrays(path)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, EOFError):
            path.unlink(missing_ok=True)
        arrays = make()
        with atomic_write(path, "wb") as f:
            write_arrays(f, arrays)
        return arrays
