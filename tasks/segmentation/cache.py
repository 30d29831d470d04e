"""The segmentation prediction cache: one ``<run>/preds/<split>/<image>.npz`` per image with uint8 probabilities
``p * 255`` at the size they were predicted at, the original image size, how they were made (``mode``:
:data:`tasks.spec.MODE_RESIZE` at the model's input size, :data:`tasks.spec.MODE_SLIDING` at the original
size) and the TTA views averaged. Written by the predictor, read by ensembles, fitting and selection, so
weighted ensembles and threshold fitting re-run without the models. Numpy only.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from tasks.formats import FormatError
from core.atomic import atomic_write
from tasks.formats.tables import check_finite
from tasks.spec import MODE_RESIZE


def save_probs(path: Path, probs: np.ndarray, size: tuple[int, int], mode: str = MODE_RESIZE,
               tta: str = "identity") -> None:
    """Write one cache entry (atomic): ``probs`` quantised to uint8 (p*255) unless already uint8, the original
    ``size``, ``mode`` and ``tta`` (the views averaged, :func:`tasks.tta.views_name`)."""
    q = probs if probs.dtype == np.uint8 else np.clip(np.rint(probs * 255), 0, 255).astype(np.uint8)
    with atomic_write(path, "wb") as f:
        np.savez(f, probs=q, orig_size=np.asarray(size, np.int64), mode=np.asarray(mode), tta=np.asarray(tta))


def cache_path(run_dir: Path, split: str, name: str) -> Path:
    return run_dir / "preds" / split / f"{name}.npz"


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Arrays of an uncompressed ``.npz`` (what ``np.savez`` writes), read straight from their offsets.

    Large arrays are memory-mapped, small ones read: no ``zipfile`` CRC pass and no copies (the cache
    is written atomically by this harness, and a short file still fails); a compressed archive goes
    through ``np.load``.
    """
    out = {}
    size = Path(path).stat().st_size
    with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
        for info in archive.infolist():
            key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if info.compress_type != zipfile.ZIP_STORED:
                with np.load(path) as f:
                    return {k: f[k] for k in f.files}
            raw.seek(info.header_offset)
            local = raw.read(30)
            if local[:4] != b"PK\x03\x04":
                raise ValueError(f"bad local header for {info.filename}")
            name_len, extra_len = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
            raw.seek(info.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(raw)
            shape, fortran, dtype = np.lib.format._read_array_header(raw, version)
            count = int(np.prod(shape))
            start = raw.tell()
            if start + count * dtype.itemsize > size:
                raise ValueError(f"{info.filename} is truncated")
            if count * dtype.itemsize < 1 << 16:
                out[key] = np.fromfile(raw, dtype=dtype, count=count).reshape(shape, order="F" if fortran else "C")
            else:  # mapped: read once, by whatever touches it first (no copy into this process)
                out[key] = np.memmap(path, dtype=dtype, mode="r", offset=start, shape=shape,
                                     order="F" if fortran else "C")
    return out


def load_cached(path: Path, where: str, mode: str | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """A cache entry (``probs`` uint8 or float ``(C, h, w)``, ``orig_size``), checked; errors name ``where``, the file.

    ``mode``: how the member predicts now (``resize`` or ``sliding_window``, see :func:`predict_mode`); an
    entry made the other way is refused (an entry without a mode was made by whole-image resizing).
    """
    try:
        arrays = read_npz(path)
        probs, size = arrays["probs"], tuple(int(v) for v in arrays["orig_size"])
        made = str(arrays["mode"][()]) if "mode" in arrays else MODE_RESIZE
    except FileNotFoundError:
        raise FormatError(f"{where}: cached prediction {path} is missing") from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise FormatError(f"{where}: {path} is not a prediction cache entry ({err})") from None
    if mode is not None and made != mode:
        raise FormatError(f"{where}: {path} was predicted with {made}, the run's config asks for {mode} "
                          f"(inference.sliding_window); write the cache again with `inference.py --save-probs`")
    if probs.ndim != 3:
        raise FormatError(f"{where}: {path} holds probs of shape {probs.shape}, expected (classes, h, w)")
    if probs.dtype != np.uint8:
        try:
            check_finite(probs, f"{where}: {path}")
        except ValueError as err:
            raise FormatError(str(err)) from None
    return probs, size


def cache_tta(run_dir: Path, split: str) -> str | None:
    """The TTA views of a run's cached ``split`` predictions (its first entry); None where there is no entry or
    the cache was written before it recorded them."""
    folder = run_dir / "preds" / split
    for path in sorted(folder.glob("*.npz")) if folder.is_dir() else []:
        try:
            arrays = read_npz(path)
        except (OSError, ValueError, zipfile.BadZipFile):
            return None
        return str(arrays["tta"][()]) if "tta" in arrays else None
    return None
