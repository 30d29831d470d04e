"""Decoded samples cached once at the training size, so an epoch never decodes full-size PNGs again.

Entries are ``.npz`` files keyed by the source files' paths, sizes and mtimes and the target size;
a changed source re-decodes. Written atomically, so a killed run never leaves a torn entry.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import numpy as np

from core.atomic import atomic_write

DEFAULT_CACHE = Path(os.environ.get("BONEHARNESS_CACHE", Path(__file__).resolve().parent.parent / ".cache")) / "samples"


def _key(sources: list[Path], tag: str) -> str:
    h = hashlib.sha1(tag.encode())
    for src in sources:
        st = src.stat()
        h.update(f"{src.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()


class SampleCache:
    """``get(sources, tag, make)`` returns ``make()``'s dict of arrays, from disk when already made."""

    def __init__(self, root: str | os.PathLike | None = None, enabled: bool = True) -> None:
        self.root = Path(root) if root else DEFAULT_CACHE
        self.enabled = enabled

    def get(self, sources: list[Path], tag: str, make: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        if not self.enabled:
            return make()
        key = _key(sources, tag)
        path = self.root / key[:2] / f"{key}.npz"
        if path.is_file():
            try:
                with np.load(path) as f:
                    return {k: f[k] for k in f.files}
            except (OSError, ValueError, EOFError):
                path.unlink(missing_ok=True)
        arrays = make()
        with atomic_write(path, "wb") as f:
            np.savez(f, **arrays)
        return arrays
