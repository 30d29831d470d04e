"""Files of tensors (checkpoints, state dicts), read with ``torch.load(weights_only=True)`` and nothing else.

A file that holds pickled Python objects besides tensors and primitives (an ultralytics ``.pt`` keeps a
whole pickled module) is refused with :class:`PickledFileError` before any of its objects is built:
unpickling runs whatever code the file names, so the harness never does it with a file it loads.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from tasks.formats import FormatError


class PickledFileError(FormatError):
    """A file that would need full unpickling (arbitrary objects, so arbitrary code) to load."""


def read_tensors(path: str | os.PathLike, what: str = "file of tensors", *, mmap: bool = False) -> Any:
    """The content of ``path`` (tensors, dicts, lists and primitives) on the CPU.

    ``mmap``: the tensors are memory-mapped from the file (pages are read when a tensor is first used), so
    holding the content costs the page cache, not process memory.

    Raises FileNotFoundError when there is no file, :class:`PickledFileError` when it holds other pickled
    objects, and :class:`FormatError` ("not a readable <what>") when it is no torch file at all.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        if is_pickle(path):
            raise PickledFileError(f"{path}: holds pickled Python objects, not only tensors; refused, since loading "
                                   "it would run code named in the file") from None
        raise FormatError(f"{path}: not a readable {what} (neither a torch archive nor a pickle)") from None
    except Exception as err:  # torch raises many types for corrupt or foreign files
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise FormatError(f"{path}: not a readable {what} ({type(err).__name__}: {first})") from None


def is_pickle(path: Path) -> bool:
    """Whether ``path`` is a torch archive (a zip whose ``data.pkl`` is a pickle) or a raw pickle (protocol 2
    or later, which starts with the PROTO opcode 0x80), rather than some other file."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        return f.read(1) == pickle.PROTO
