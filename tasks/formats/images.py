"""Reading radiographs of any mode (8/16-bit grey, RGB, palette) as 8-bit grey, with clear errors.

An image whose header claims more than :func:`max_image_pixels` pixels (default 8192 x 8192; the
environment variable ``BONEHARNESS_MAX_IMAGE_PIXELS`` sets another limit) is refused from its header,
before a byte of it is decoded: a small file can claim 20000 x 20000 pixels and take gigabytes to decode.
"""
from __future__ import annotations

import os
import re
import sys
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from core.atomic import write_bytes
from core.cli import lazy_module
from tasks.formats import FormatError

np = lazy_module("numpy")  # the task specs list image names without it

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MAX_PIXELS_ENV = "BONEHARNESS_MAX_IMAGE_PIXELS"
DEFAULT_MAX_PIXELS = 8192 * 8192
# PIL warns about an image above its own limit while opening it; open_image refuses such an image itself,
# by the harness's limit (which PIL's is raised to where it is lower), with one line naming the file.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def max_image_pixels() -> int:
    """The most pixels an image may have: ``BONEHARNESS_MAX_IMAGE_PIXELS``, else :data:`DEFAULT_MAX_PIXELS`."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if limit < 1:
        raise FormatError(f"{MAX_PIXELS_ENV}={raw!r}: not a positive whole number of pixels")
    return limit


def _too_large(path: Path, pixels: int, limit: int, size: str = "") -> FormatError:
    return FormatError(f"{path}: {size}{pixels} pixels, above the limit of {limit} (a decompression bomb?); refused "
                       f"before decoding; a genuine image this large needs {MAX_PIXELS_ENV}={pixels}")


def stem(name: str) -> str:
    """``"10001.png"`` and ``"10001"`` name the same image (SHS ids carry the suffix, DHA and RSNA ids do not)."""
    p = Path(name)
    return p.stem if p.suffix.lower() in IMAGE_SUFFIXES else name


def open_image(path: Path) -> Image.Image:
    """PIL's own ``Image.open`` (which reads the header only), refusing an image of more than
    :func:`max_image_pixels` pixels. Importing ultralytics replaces ``Image.open`` process-wide with a
    wrapper that, for a file PIL cannot identify, tries to install and import pi-heif instead of raising, so
    a corrupt image would end in a ModuleNotFoundError rather than our one-line error."""
    opener = Image.open
    if opener.__module__.startswith("ultralytics"):
        opener = getattr(sys.modules[opener.__module__], "_image_open", opener)
    limit = max_image_pixels()
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < limit:
        Image.MAX_IMAGE_PIXELS = limit
    try:
        im = opener(path)
    except Image.DecompressionBombError as err:   # above twice PIL's limit: PIL refuses before we see the size
        found = re.search(r"\((\d+) pixels\)", str(err))
        raise _too_large(path, int(found.group(1)) if found else 2 * Image.MAX_IMAGE_PIXELS, limit) from None
    width, height = im.size
    if width * height > limit:
        im.close()
        raise _too_large(path, width * height, limit, f"{width}x{height} = ")
    return im


def read_grey(path: str | os.PathLike) -> np.ndarray:
    """Return the image at ``path`` as a ``(H, W)`` uint8 array.

    Palette and RGB images are converted through PIL (OpenCV ignores palettes); 16-bit images are
    min-max scaled to 8 bits. A missing, truncated or undecodable file raises :class:`FormatError`.
    """
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: image file not found")
    try:
        with open_image(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                arr = np.asarray(im, dtype=np.float32)
                lo, hi = float(arr.min()), float(arr.max())
                scale = 255.0 / (hi - lo) if hi > lo else 0.0
                return ((arr - lo) * scale).round().astype(np.uint8)
            if im.mode != "L":
                im = im.convert("L")
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise FormatError(f"{path}: unreadable or truncated image ({err})") from None
    if arr.ndim != 2 or arr.size == 0:
        raise FormatError(f"{path}: expected a 2-D image, got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(height, width)`` of an image without decoding its pixels."""
    path = Path(path)
    try:
        with open_image(path) as im:
            width, height = im.size
    except (UnidentifiedImageError, OSError, FileNotFoundError) as err:
        raise FormatError(f"{path}: unreadable image ({err})") from None
    return height, width


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write a PNG atomically (temp file + rename)."""
    import cv2  # here, not at the top: the CSV tools list image sizes without loading OpenCV

    path = Path(path)
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    write_bytes(path, buf.tobytes())


def resize_grey(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize with area interpolation when shrinking, linear when enlarging."""
    import cv2

    if image.shape[:2] == (height, width):
        return image
    shrink = height * width < image.shape[0] * image.shape[1]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interp)
