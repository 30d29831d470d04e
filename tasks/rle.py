"""Run-length encoding in the competition convention: row-major, 1-indexed ``start length`` pairs.

An empty mask encodes as the empty string. Decoding accepts a run that ends on the last pixel (the
crash in much competition code) and rejects runs out of bounds, unsorted or overlapping.
"""
from __future__ import annotations

import numpy as np

from tasks.formats import FormatError


def _runs(flat: np.ndarray) -> np.ndarray:
    """``[start0, len0, start1, len1, ...]`` (1-indexed) of a flat 0/1 uint8 array."""
    n = flat.size
    # Find the span holding any foreground cheaply: a uint64 view looks at 8 pixels per element.
    head = n - n % 8
    words = np.flatnonzero(flat[:head].view(np.uint64)) if head else np.empty(0, np.int64)
    tail_fg = np.flatnonzero(flat[head:])
    if words.size == 0 and tail_fg.size == 0:
        return np.empty(0, np.int64)
    lo = int(words[0]) * 8 if words.size else head
    hi = head + int(tail_fg[-1]) + 1 if tail_fg.size else (int(words[-1]) + 1) * 8
    span = flat[lo:hi].astype(bool)
    edges = np.flatnonzero(span[1:] != span[:-1]) + 1
    bounds = np.concatenate(([0], edges, [span.size])) if span[0] else np.concatenate((edges, [span.size]))
    if not span[-1]:
        bounds = bounds[:-1]
    starts = bounds[0::2]
    lengths = bounds[1::2] - starts
    out = np.empty(starts.size * 2, np.int64)
    out[0::2] = starts + lo + 1
    out[1::2] = lengths
    return out


def encode(mask: np.ndarray) -> str:
    """RLE string of a 2-D binary mask (any dtype; nonzero is foreground)."""
    flat = np.ascontiguousarray(mask, dtype=np.uint8).reshape(-1)
    if mask.dtype != np.uint8 or flat.max(initial=0) > 1:
        flat = (flat != 0).view(np.uint8)
    return " ".join(map(str, _runs(flat).tolist()))


def encode_many(masks: np.ndarray) -> list[str]:
    """RLE strings of a ``(C, H, W)`` stack of binary masks."""
    return [encode(m) for m in masks]


def decode(rle: str, height: int, width: int, where: str = "RLE") -> np.ndarray:
    """``(H, W)`` uint8 mask of an RLE string; ``where`` names the source in errors (file, row)."""
    n = height * width
    text = rle.strip() if isinstance(rle, str) else ""
    if not text:
        return np.zeros((height, width), np.uint8)
    try:
        values = np.array(text.split(), dtype=np.int64)
    except ValueError:
        raise FormatError(f"{where}: RLE holds a non-integer token") from None
    if values.size % 2:
        raise FormatError(f"{where}: RLE has an odd number of values ({values.size})")
    starts, lengths = values[0::2] - 1, values[1::2]
    if (starts < 0).any() or (lengths < 1).any():
        raise FormatError(f"{where}: RLE starts must be >= 1 and lengths >= 1")
    ends = starts + lengths
    if ends[-1] > n or (ends > n).any():
        raise FormatError(f"{where}: RLE run ends at pixel {int(ends.max())} beyond the {width}x{height} image ({n} pixels)")
    if (starts[1:] < ends[:-1]).any():
        raise FormatError(f"{where}: RLE runs are unsorted or overlapping")
    delta = np.zeros(n + 1, np.int8)
    delta[starts] += 1
    delta[ends] -= 1
    return np.cumsum(delta[:-1], dtype=np.int8).view(np.uint8).reshape(height, width)
