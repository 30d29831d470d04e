"""Decoded samples cached once at the training size, so an epoch never decodes full-size PNGs again.

An entry is one raw file: a magic string, a JSON list of its arrays (name, dtype, shape, offset) and their
bytes, each aligned to 64 bytes. Reading it is one ``open`` and one read into a buffer the arrays are
views of (writable; no zip archive, no CRC pass, no pickle). Entries are keyed by the format, the source
files' paths, sizes and mtimes and the target size; a changed source re-decodes in the next process that
reads it (a key is worked out once per process), and a new ``FORMAT`` leaves every older entry unread.
Written atomically, so a killed run never leaves a torn entry; an unreadable one is made again.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np

from core.atomic import atomic_write

DEFAULT_CACHE = Path(os.environ.get("BONEHARNESS_CACHE", Path(__file__).resolve().parent.parent / ".cache")) / "samples"
# Part of every key: change it when the entry layout changes (version 1 was a ``.npz`` archive per entry).
FORMAT = "raw-2"
SUFFIX = ".arrays"
MAGIC = b"BONEHARNESS-ARRAYS\n"
ALIGN = 64


def _key(sources: list[Path], tag: str) -> str:
    h = hashlib.sha1(f"{FORMAT}|{tag}".encode())
    for src in sources:
        st = src.stat()
        h.update(f"{src.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def write_arrays(f: BinaryIO, arrays: dict[str, np.ndarray]) -> None:
    """``arrays`` (plain dtypes, no objects) as one entry: header, then each array's bytes at its offset."""
    values = {name: np.asarray(value, order="C") for name, value in arrays.items()}
    entries, offset = [], 0
    for name, value in values.items():
        if value.dtype.hasobject:
            raise ValueError(f"cache entry: array {name!r} holds Python objects")
        entries.append([name, value.dtype.str, list(value.shape), offset])
        offset = _aligned(offset + value.nbytes)
    header = json.dumps(entries).encode()
    start = _aligned(len(MAGIC) + 4 + len(header))
    f.write(MAGIC + len(header).to_bytes(4, "little") + header + bytes(start - len(MAGIC) - 4 - len(header)))
    written = 0
    for (_, _, _, at), value in zip(entries, values.values()):
        f.write(bytes(at - written))
        f.write(value.data)
        written = at + value.nbytes


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    """What :func:`write_arrays` wrote; a short, padded or foreign file is a ValueError."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        buffer = bytearray(size)
        if f.readinto(buffer) != size:
            raise ValueError(f"{path}: changed while read")
    head = len(MAGIC) + 4
    if buffer[:len(MAGIC)] != MAGIC or size < head:
        raise ValueError(f"{path}: not a cache entry")
    length = int.from_bytes(buffer[len(MAGIC):head], "little")
    start = _aligned(head + length)
    arrays, end = {}, start
    for name, dtype, shape, offset in json.loads(buffer[head:head + length]):
        dtype = np.dtype(dtype)
        count = math.prod(shape)
        end = start + offset + count * dtype.itemsize
        if end > size:
            raise ValueError(f"{path}: cut short")
        arrays[name] = np.frombuffer(buffer, dtype, count, start + offset).reshape(shape)
    if end != size:
        raise ValueError(f"{path}: data after the last array")
    return arrays


class SampleCache:
    """``get(sources, tag, make)`` returns ``make()``'s dict of arrays, from disk when already made."""

    def __init__(self, root: str | os.PathLike | None = None, enabled: bool = True) -> None:
        self.root = Path(root) if root else DEFAULT_CACHE
        self.enabled = enabled
        self._paths: dict[tuple, Path] = {}

    def path(self, sources: list[Path], tag: str) -> Path:
        """The entry of ``sources`` at ``tag`` (its key worked out the first time only: no stat per item)."""
        memo = (tuple(sources), tag)
        if memo not in self._paths:
            key = _key(sources, tag)
            self._paths[memo] = self.root / key[:2] / f"{key}{SUFFIX}"
        return self._paths[memo]

    def get(self, sources: list[Path], tag: str, make: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        if not self.enabled:
            return make()
        path = self.path(sources, tag)
        try:
            return read_arrays(path)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, KeyError):
            path.unlink(missing_ok=True)
        arrays = make()
        with atomic_write(path, "wb") as f:
            write_arrays(f, arrays)
        return arrays
