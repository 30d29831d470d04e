"""The segmentation prediction cache: one ``<run>/preds/<split>/<image>.npz`` per image with uint8 probabilities
``p * 255`` at the size they were predicted at, the original image size, how they were made (``mode``:
:data:`tasks.spec.MODE_RESIZE` at the model's input size, :data:`tasks.spec.MODE_SLIDING` at the original
size) and the TTA views averaged. Written by the predictor, read by ensembles, fitting and selection, so
weighted ensembles and threshold fitting re-run without the models. Numpy only.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.formats import FormatError
from core.atomic import atomic_write
from tasks.formats.tables import check_finite
from tasks.formats.handbones import CLASSES
from tasks.schema import image_hw, size_text
from tasks.spec import MODE_RESIZE, MODE_SLIDING


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
    through ``np.load``. An array of Python objects is refused (it would need unpickling). A missing file raises
    FileNotFoundError, a damaged one ValueError (zipfile and numpy's header parser raise many types:
    BadZipFile, NotImplementedError, tokenize.TokenError, ...).
    """
    try:
        return _read_npz(path)
    except (FileNotFoundError, ValueError):
        raise
    except Exception as err:
        raise ValueError(f"{type(err).__name__}: {err}") from None


def _read_npz(path: Path) -> dict[str, np.ndarray]:
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
            if dtype.hasobject:
                raise ValueError(f"{info.filename} holds Python objects")
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


@dataclass(frozen=True)
class CacheSpec:
    """What a run's cache entries must hold: ``classes`` maps made by ``mode`` (``resize``: at the model's
    ``image_size``, ``(height, width)`` when it is not square; ``sliding_window``: at the original size; ``two_stage``, a wrist-ROI run's map: the original
    size divided by a power of two, :func:`engine.roi_predictor.map_shape`)."""

    classes: int
    mode: str
    image_size: int | tuple[int, int]
    two_stage: bool = False

    @classmethod
    def of(cls, cfg) -> CacheSpec:
        """The spec of the run whose config is ``cfg`` (an ``engine.config.Config``)."""
        return cls(len(CLASSES), cfg.prediction_mode, cfg.data.image_size, getattr(cfg.data, "roi", None) is not None)

    def shape(self, orig: tuple[int, int], got: tuple[int, int]) -> str | None:
        """Why maps of size ``got`` do not fit an image of size ``orig`` (None: they fit)."""
        if self.two_stage:
            factor = 1
            while factor <= max(orig):
                if (max(1, round(orig[0] / factor)), max(1, round(orig[1] / factor))) == got:
                    return None
                factor *= 2
            return "the run's two-stage maps are the image size divided by a power of two"
        want = orig if self.mode == MODE_SLIDING else image_hw(self.image_size)
        if got == want:
            return None
        how = "at the original size (sliding window)" if self.mode == MODE_SLIDING else \
            f"at the model's {size_text(self.image_size)} px input (whole image resized)"
        return f"the run predicts {want[0]}x{want[1]} maps, {how}"


@dataclass(frozen=True)
class CacheEntry:
    """One image's cached prediction: probabilities ``(C, h, w)`` (uint8 ``p * 255`` or float in [0, 1]), the
    original image size, and how they were made (``mode``, the TTA views)."""

    probs: np.ndarray
    size: tuple[int, int]
    mode: str
    tta: str | None


def load_cached(path: Path, where: str, spec: CacheSpec) -> CacheEntry:
    """The one reader of a segmentation cache entry (:func:`save_probs` writes them), checked against what it
    says and what its run says (``spec``): ``orig_size`` two positive integers, ``probs`` of ``spec.classes``
    classes, uint8 or float in [0, 1] and finite, made by the run's ``mode`` at the size that mode gives. A fault
    is a :class:`FormatError` naming ``where`` and the file; nothing is stretched to fit. (An entry without a
    mode was made by whole-image resizing.)
    """
    try:
        arrays = read_npz(path)
        probs, orig = arrays["probs"], np.asarray(arrays["orig_size"])
        made = str(arrays["mode"][()]) if "mode" in arrays else MODE_RESIZE
        tta = str(arrays["tta"][()]) if "tta" in arrays else None
    except FileNotFoundError:
        raise FormatError(f"{where}: cached prediction {path} is missing") from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise FormatError(f"{where}: {path} is not a prediction cache entry ({err})") from None
    if made != spec.mode:
        raise FormatError(f"{where}: {path} was predicted with {made}, the run's config asks for {spec.mode} "
                          f"(inference.sliding_window); write the cache again with `inference.py --save-probs`")
    if orig.shape != (2,) or orig.dtype.kind not in "iu" or (orig < 1).any():
        raise FormatError(f"{where}: {path} holds orig_size {orig.tolist()}, not an image height and width")
    size = (int(orig[0]), int(orig[1]))
    if probs.ndim != 3:
        raise FormatError(f"{where}: {path} holds probs of shape {probs.shape}, expected (classes, h, w)")
    if probs.shape[0] != spec.classes:
        raise FormatError(f"{where}: {path} holds {probs.shape[0]} classes, the run predicts {spec.classes}")
    problem = spec.shape(size, tuple(probs.shape[1:]))
    if problem:
        raise FormatError(f"{where}: {path} holds probs of shape {tuple(probs.shape)} for a {size[0]}x{size[1]} image "
                          f"(its orig_size); {problem}: written by another run or another version of it? write the "
                          "cache again with `inference.py --save-probs`")
    if probs.dtype != np.uint8 and probs.dtype.kind != "f":
        raise FormatError(f"{where}: {path} holds probs of dtype {probs.dtype}; the cache holds uint8 p*255 (or "
                          "floats in [0, 1])")
    if probs.dtype.kind == "f":
        try:
            check_finite(probs, f"{where}: {path}")
        except ValueError as err:
            raise FormatError(str(err)) from None
        if probs.min() < 0 or probs.max() > 1:
            raise FormatError(f"{where}: {path} holds float probs in [{probs.min():g}, {probs.max():g}], not in [0, 1]")
    return CacheEntry(probs, size, made, tta)


def cache_tta(run_dir: Path, split: str, spec: CacheSpec) -> str | None:
    """The TTA views of a run's cached ``split`` predictions (its first entry); None where there is no readable
    entry or the cache was written before it recorded them."""
    folder = run_dir / "preds" / split
    for path in sorted(folder.glob("*.npz")) if folder.is_dir() else []:
        try:
            return load_cached(path, str(run_dir), spec).tta
        except FormatError:
            return None
    return None
