"""Run-length encoding in the competition convention: row-major, 1-indexed ``start length`` pairs.

An empty mask encodes as the empty string. Decoding accepts a run that ends on the last pixel (the
crash in much competition code) and rejects runs out of bounds, unsorted or overlapping.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from tasks.formats import FormatError

if TYPE_CHECKING:
    import torch

# No start or length beyond this (2^62, far beyond any image): their sum stays inside int64.
MAX_RLE_VALUE = 1 << 62


def _runs_from_positions(fg: np.ndarray) -> np.ndarray:
    """``[start0, len0, ...]`` (1-indexed) from the sorted 0-based indices of foreground pixels."""
    breaks = np.flatnonzero(np.diff(fg) != 1) + 1
    starts = fg[np.concatenate(([0], breaks))]
    ends = fg[np.concatenate((breaks - 1, [fg.size - 1]))] + 1
    out = np.empty(starts.size * 2, np.int64)
    out[0::2] = starts + 1
    out[1::2] = ends - starts
    return out


def _runs(flat: np.ndarray) -> np.ndarray:
    """``[start0, len0, start1, len1, ...]`` (1-indexed) of a flat 0/1 uint8 array.

    Bones cover a few percent of a radiograph, so the foreground is found through a uint64 view
    (8 pixels per element) and only the non-empty words are expanded to pixel positions; a dense
    mask takes the plain transition scan instead.
    """
    n = flat.size
    head = n - n % 8
    words = np.flatnonzero(flat[:head].view(np.uint64) != 0) if head else np.empty(0, np.int64)
    tail = np.flatnonzero(flat[head:]) + head
    if words.size * 8 < n // 4:
        block = flat[:head].reshape(-1, 8)[words]
        fg = (words[:, None] * 8 + np.arange(8))[block != 0]
        fg = np.concatenate((fg, tail)) if tail.size else fg
        return _runs_from_positions(fg) if fg.size else np.empty(0, np.int64)
    mask = flat.astype(bool)
    edges = np.flatnonzero(mask[1:] != mask[:-1]) + 1
    bounds = np.concatenate(([0] if mask[0] else [], edges, [n] if mask[-1] else [])).astype(np.int64)
    out = np.empty(bounds.size, np.int64)
    out[0::2] = bounds[0::2] + 1
    out[1::2] = bounds[1::2] - bounds[0::2]
    return out


def encode(mask: np.ndarray) -> str:
    """RLE string of a 2-D binary mask (any dtype; nonzero is foreground)."""
    if mask.dtype == np.uint8 or mask.dtype == np.bool_:
        flat = np.ascontiguousarray(mask).reshape(-1).view(np.uint8)
    else:
        flat = np.ascontiguousarray(mask != 0).reshape(-1).view(np.uint8)
    return " ".join(map(str, _runs(flat).tolist()))


def format_runs(runs: np.ndarray) -> str:
    """The RLE string of ``[start, length, ...]`` pairs (1-indexed), e.g. from :func:`runs_torch`."""
    return " ".join(map(str, runs.tolist()))


def runs_torch(masks: "torch.Tensor") -> list[np.ndarray]:
    """RLE runs of a ``(C, H, W)`` bool tensor, computed where it lives (e.g. on the GPU).

    Only the run boundaries cross to the host, not the masks: one transfer of a few KB per image
    instead of 29 x H x W bytes.
    """
    import torch

    c = masks.shape[0]
    flat = masks.reshape(c, -1)
    pad = torch.zeros((c, 1), dtype=torch.bool, device=flat.device)
    edges = torch.cat((pad, flat, pad), 1)
    cls, pos = torch.nonzero(edges[:, 1:] != edges[:, :-1], as_tuple=True)
    cls, pos = cls.cpu().numpy(), pos.cpu().numpy().astype(np.int64)
    out = []
    for chunk in np.split(pos, np.searchsorted(cls, np.arange(1, c))):
        runs = chunk.copy()
        runs[1::2] -= runs[0::2]
        runs[0::2] += 1
        out.append(runs)
    return out


def encode_many(masks: np.ndarray) -> list[str]:
    """RLE strings of a ``(C, H, W)`` stack of binary masks."""
    return [encode(m) for m in masks]


def parse_runs(rle: str, n_pixels: int | None = None, where: str = "RLE") -> tuple[np.ndarray, np.ndarray]:
    """0-indexed ``(starts, ends)`` of an RLE string, checked: tokens, order, overlap and bounds.

    ``n_pixels`` (``H * W``) adds the bounds check; a run may end exactly on the last pixel.
    """
    text = rle.strip() if isinstance(rle, str) else ""
    if not text:
        empty = np.empty(0, np.int64)
        return empty, empty
    try:
        values = np.array(text.split(), dtype=np.int64)
    except ValueError:
        raise FormatError(f"{where}: RLE holds a non-integer token") from None
    except OverflowError:
        raise FormatError(f"{where}: RLE holds a number beyond any image") from None
    if values.size % 2:
        raise FormatError(f"{where}: RLE has an odd number of values ({values.size})")
    starts, lengths = values[0::2] - 1, values[1::2]
    if (starts < 0).any() or (lengths < 1).any():
        raise FormatError(f"{where}: RLE starts must be >= 1 and lengths >= 1")
    if (values > MAX_RLE_VALUE).any():   # start + length must not wrap around in int64
        raise FormatError(f"{where}: RLE holds a number beyond any image ({int(values.max())})")
    ends = starts + lengths
    if (starts[1:] < ends[:-1]).any():
        raise FormatError(f"{where}: RLE runs are unsorted or overlapping")
    if n_pixels is not None and ends[-1] > n_pixels:
        raise FormatError(f"{where}: RLE run ends at pixel {int(ends[-1])} beyond the image ({n_pixels} pixels)")
    return starts, ends


def runs_to_flat(starts: np.ndarray, ends: np.ndarray, n_pixels: int) -> np.ndarray:
    """Flat uint8 mask of checked 0-indexed runs in O(runs + foreground) work.

    ``np.zeros`` comes from calloc (untouched pages cost nothing), so an empty mask is almost free;
    each run is one slice fill. Only when runs are so many that the Python loop would dominate (a
    noisy mask) does one vectorised coverage pass over the pixels take over.
    """
    flat = np.zeros(n_pixels, np.uint8)
    if starts.size > max(1024, n_pixels // 256):
        delta = np.zeros(n_pixels + 1, np.int8)
        delta[starts] += 1
        delta[ends] -= 1
        np.cumsum(delta[:-1], dtype=np.int8, out=flat.view(np.int8))
        return flat
    for start, end in zip(starts.tolist(), ends.tolist()):
        flat[start:end] = 1
    return flat


def decode(rle: str, height: int, width: int, where: str = "RLE") -> np.ndarray:
    """``(H, W)`` uint8 mask of an RLE string; ``where`` names the source in errors (file, row)."""
    n = height * width
    starts, ends = parse_runs(rle, n, f"{where} ({width}x{height} image)")
    return runs_to_flat(starts, ends, n).reshape(height, width)
