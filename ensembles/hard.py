"""Hard fusion: votes of binary masks (from arrays or straight from RLEs) and of points, with an explicit
``min_votes``.

A pixel is foreground when at least ``min_votes`` of the ``M`` members mark it (default: a strict
majority, ``M // 2 + 1``; a tie of an even ensemble is background). Nothing converts a fraction into a
vote count behind the user's back: ``min_votes`` is an integer in ``1..M``.

The RLE path never builds a pixel array. Each member's runs become +1/-1 events at their start and
end; sorting the events of all members and taking a running sum gives the vote count on every
interval between events, and the intervals with enough votes are the fused runs. Cost grows with the
number of runs, not with the 4 M pixels of a 2048² class mask; a run ending on the last pixel is
just an event at ``H * W``. Weighted votes are the same sweep with the member's weight as the step.

Points (keypoints) vote by agreement within a radius: :func:`vote_points`.
"""
from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ensembles.weighted import TIE_EPS, member_names, normalize_weights, weighted_median
from tasks.formats import FormatError
from tasks.formats.submissions import check_same_ids
from tasks.rle import parse_runs
from tasks.submission import HEADER, AtomicCSVWriter


def majority(n_members: int) -> int:
    """Votes of a strict majority: 2 of 2, 2 of 3, 3 of 4, 3 of 5."""
    return n_members // 2 + 1


def resolve_min_votes(min_votes: int | None, n_members: int) -> int:
    """``min_votes`` checked against ``1..M`` (None: strict majority)."""
    if min_votes is None:
        return majority(n_members)
    if isinstance(min_votes, bool) or not isinstance(min_votes, (int, np.integer)) or not 1 <= min_votes <= n_members:
        raise ValueError(f"min_votes must be an integer between 1 and {n_members} (the number of members), "
                         f"got {min_votes!r}")
    return int(min_votes)


def votes_for_threshold(threshold: float, n_members: int) -> int:
    """Equal-weight votes that ``mean > threshold`` needs: 0.5 of 5 → 3, 0.6 of 5 → 4 (3/5 = 0.6 is not > 0.6)."""
    return int(np.floor(threshold * n_members + TIE_EPS)) + 1


def hard_vote(masks: Sequence[np.ndarray], min_votes: int | None = None, *,
              members: Sequence[str] | None = None) -> np.ndarray:
    """uint8 mask (the members' shape, e.g. ``(C, H, W)``): 1 where at least ``min_votes`` members are nonzero."""
    if len(masks) == 0:
        raise ValueError("nothing to vote on: no member masks")
    names = member_names(len(masks), members)
    k = resolve_min_votes(min_votes, len(masks))
    counts = np.zeros(np.shape(masks[0]), np.uint16)
    for name, m in zip(names, masks):
        m = np.asarray(m)
        if m.shape != counts.shape:
            raise ValueError(f"{name}: mask of shape {m.shape} differs from {names[0]}'s {counts.shape}")
        counts += m != 0
    return (counts >= k).astype(np.uint8)


def vote_channel(maps: Sequence[np.ndarray], thresholds: np.ndarray, channel: int, size: tuple[int, int],
                 min_votes: int) -> np.ndarray:
    """uint8 ``(H, W)`` votes of one channel: member ``m`` votes where its probability (resized to ``size``)
    exceeds ``thresholds[m]``; foreground where at least ``min_votes`` members vote."""
    import cv2  # here, not at the top: CSV-level fusion (tools/fuse.py) never resizes

    height, width = size
    counts = np.zeros((height, width), np.uint8)
    for t, m in zip(thresholds, maps):
        prob = m[channel]
        limit = t * 255 if prob.dtype == np.uint8 else t
        if prob.shape != (height, width):
            prob = cv2.resize(prob.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
        counts += prob > limit
    return (counts >= min_votes).view(np.uint8)


def vote_maps(maps: Sequence[np.ndarray], size: tuple[int, int], thresholds: np.ndarray | float = 0.5,
              min_votes: int | None = None, *, members: Sequence[str] | None = None) -> np.ndarray:
    """Hard vote of ``(C, h_m, w_m)`` probability maps (float or uint8 ``p * 255``) at ``size``: uint8 ``(C, H, W)``.

    Each member's map is resized to ``size`` and thresholded with its own ``thresholds`` (scalar,
    ``(M,)`` or ``(M, C)``), exactly as that member's submission would be, then the votes are counted.
    """
    from ensembles.soft import check_maps

    names = check_maps(maps, members)
    k = resolve_min_votes(min_votes, len(maps))
    n_channels = maps[0].shape[0]
    t = np.broadcast_to(np.asarray(thresholds, np.float64).reshape(-1, 1) if np.ndim(thresholds) == 1
                        else np.asarray(thresholds, np.float64), (len(names), n_channels))
    return np.stack([vote_channel(maps, t[:, c], c, size, k) for c in range(n_channels)])


def vote_points(points: Sequence[np.ndarray] | np.ndarray, radius: float, min_votes: int | None = None, *,
                members: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Hard vote of ``M`` members' points ``(M, ..., 2)`` (x, y pixels): ``(fused (..., 2), agreed (...))``.

    For every point (an image's landmark) the group of member ``i`` is every member whose point lies
    within ``radius`` px of member ``i``'s (Euclidean distance at most ``radius``, ``i`` included). The
    largest group wins; among equally large groups, the one whose points lie closest to their member
    ``i`` (smallest sum of distances), then the lowest ``i``. When the winning group holds at least
    ``min_votes`` members (default: a strict majority) the members agree and the fused point is the
    mean of the group's points (outliers dropped); otherwise it is the per-coordinate median of all
    ``M`` points. ``agreed`` says which.
    """
    names = member_names(len(points), members)
    k = resolve_min_votes(min_votes, len(points))
    if not np.isfinite(radius) or radius < 0:
        raise ValueError(f"radius must be a finite number of pixels >= 0, got {radius}")
    median = weighted_median(points, members=names)  # checks shapes and NaN
    p = np.stack([np.asarray(m, np.float64) for m in points])
    if p.shape[-1] != 2:
        raise ValueError(f"points must end in an (x, y) axis of 2, got shape {p.shape[1:]}")
    dist = np.sqrt(((p[:, None] - p[None]) ** 2).sum(axis=-1))  # (M, M, ...): member i to member j
    near = dist <= radius + TIE_EPS
    support = near.sum(axis=1)
    best = support.max(axis=0)
    spread = np.where(near, dist, 0.0).sum(axis=1)
    centre = np.argmin(np.where(support == best, spread, np.inf), axis=0)
    group = np.take_along_axis(near, centre[None, None], axis=0)[0]  # (M, ...): member j is in the group
    mean = (p * group[..., None]).sum(axis=0) / group.sum(axis=0)[..., None]
    agreed = best >= k
    return np.where(agreed[..., None], mean, median), agreed


def runs_to_rle(starts: np.ndarray, ends: np.ndarray) -> str:
    """RLE string (1-indexed ``start length`` pairs) of sorted, disjoint 0-indexed runs."""
    if starts.size == 0:
        return ""
    pairs = np.empty(starts.size * 2, np.int64)
    pairs[0::2] = starts + 1
    pairs[1::2] = ends - starts
    return " ".join(map(str, pairs.tolist()))


def region_runs(mask: np.ndarray, row0: int, col0: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """0-indexed ``(starts, ends)`` in a ``width``-wide image of a mask crop placed at ``(row0, col0)``.

    Runs of a crop row are runs of the image row; runs meeting across rows (a crop spanning the full
    width) are merged, as the row-major RLE of the whole image has them.
    """
    h, w = mask.shape
    if h == 0 or w == 0:
        empty = np.empty(0, np.int64)
        return empty, empty
    padded = np.zeros((h, w + 2), np.int8)
    padded[:, 1:-1] = mask != 0
    edges = np.diff(padded.reshape(-1))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    def to_image(idx: np.ndarray) -> np.ndarray:
        row, col = np.divmod(idx, w + 2)
        return (row0 + row) * width + col0 + col
    starts, ends = to_image(starts), to_image(ends)
    if starts.size > 1:
        joined = starts[1:] == ends[:-1]
        if joined.any():
            starts = starts[np.concatenate(([True], ~joined))]
            ends = ends[np.concatenate((~joined, [True]))]
    return starts, ends


def _sweep(runs: Sequence[tuple[np.ndarray, np.ndarray]], steps: Sequence[float | int], foreground) -> str:
    """Fused RLE of member runs: each member adds ``steps[m]`` on its runs; ``foreground(level)`` decides."""
    positions = np.concatenate([np.concatenate((s, e)) for s, e in runs])
    if positions.size == 0:
        return ""
    deltas = np.concatenate([np.concatenate((np.full(s.size, float(step)), np.full(e.size, -float(step))))
                             for (s, e), step in zip(runs, steps)])
    points, inverse = np.unique(positions, return_inverse=True)
    summed = np.bincount(inverse, weights=deltas, minlength=points.size)
    if all(isinstance(x, (int, np.integer)) for x in steps):
        summed = summed.round().astype(np.int64)
    level = np.cumsum(summed)
    fg = foreground(level[:-1])
    if not fg.any():
        return ""
    edges = np.diff(np.concatenate(([False], fg, [False])).astype(np.int8))
    first = np.flatnonzero(edges == 1)
    last = np.flatnonzero(edges == -1)
    return runs_to_rle(points[first], points[last])


def vote_rles(rles: Sequence[str], min_votes: int | None = None, n_pixels: int | None = None, *,
              members: Sequence[str] | None = None, where: str = "") -> str:
    """RLE of the pixels covered by at least ``min_votes`` of the member RLEs (one class of one image).

    Equals ``encode(hard_vote([decode(r) for r in rles], min_votes))`` without decoding.
    """
    names = member_names(len(rles), members)
    k = resolve_min_votes(min_votes, len(rles))
    runs = [parse_runs(r, n_pixels, f"{name}{': ' + where if where else ''}") for name, r in zip(names, rles)]
    return _sweep(runs, [1] * len(runs), lambda level: level >= k)


def weighted_vote_rles(rles: Sequence[str], weights: Sequence[float] | np.ndarray, threshold: float = 0.5,
                       n_pixels: int | None = None, *, members: Sequence[str] | None = None, where: str = "") -> str:
    """RLE of the pixels where the normalised weights of the members covering them sum to more than ``threshold``.

    Equals ``encode(weighted_mean(masks, weights) > threshold)`` (ties within ``TIE_EPS`` are background).
    """
    names = member_names(len(rles), members)
    w = normalize_weights(weights, len(rles), members=names, where="weights")[:, 0]
    runs = [parse_runs(r, n_pixels, f"{name}{': ' + where if where else ''}") for name, r in zip(names, rles)]
    keep = [i for i in range(len(runs)) if w[i] > 0]
    return _sweep([runs[i] for i in keep], [float(w[i]) for i in keep], lambda level: level > threshold + TIE_EPS)


class IndexedCSV:
    """A segmentation submission indexed by image: byte offset of each image's first row, in file order.

    Indexing reads each line once without parsing RLEs; :meth:`read` then seeks to one image's rows and
    checks them (29 rows in canonical class order). Memory: one offset and one line number per image.
    """

    def __init__(self, path: str | os.PathLike, classes: Sequence[str]) -> None:
        self.path = Path(path)
        self.classes = tuple(classes)
        self.offsets: dict[str, int] = {}
        self.lines: dict[str, int] = {}  # line number (1 = header) of each image's first row
        try:
            self.file = self.path.open("rb")
        except OSError as err:
            raise FormatError(f"{self.path}: cannot open submission ({err})") from None
        header = self.file.readline().decode("utf-8", "replace").strip()
        if [h.strip() for h in header.split(",")] != list(HEADER):
            raise FormatError(f"{self.path}: header must be {','.join(HEADER)}, got {header[:80]!r}")
        current, count, line_no = None, 0, 1
        while True:
            offset = self.file.tell()
            line = self.file.readline()
            if not line:
                break
            line_no += 1
            if not line.strip():
                continue
            name = line.split(b",", 1)[0].decode("utf-8", "replace").strip('"')
            if name != current:
                if current is not None and count != len(self.classes):
                    raise FormatError(f"{self.path}:{line_no}: image {current} has {count} rows, expected "
                                      f"{len(self.classes)} (missing or duplicated rows)")
                if name in self.offsets:
                    raise FormatError(f"{self.path}:{line_no}: rows of image {name} are not contiguous (or duplicated)")
                self.offsets[name] = offset
                self.lines[name] = line_no
                current, count = name, 0
            count += 1
        if current is None:
            raise FormatError(f"{self.path}: no rows")
        if count != len(self.classes):
            raise FormatError(f"{self.path}: image {current} has {count} rows, expected {len(self.classes)}")

    def read(self, name: str) -> list[str]:
        """The RLE of every class of image ``name``, checking names and class order."""
        self.file.seek(self.offsets[name])
        lines = [self.file.readline().decode("utf-8") for _ in self.classes]
        rles = []
        for k, row in enumerate(csv.reader(lines)):
            if len(row) != 3 or row[0] != name or row[1] != self.classes[k]:
                raise FormatError(f"{self.path}: image {name}, row {k + 1}: expected {name},{self.classes[k]},<rle>, "
                                  f"got {','.join(row)[:80]!r}")
            rles.append(row[2])
        return rles

    def where(self, name: str, k: int) -> str:
        """``<file>:<line>`` of image ``name``'s row of class ``k``, for error messages."""
        return f"{self.path}:{self.lines[name] + k}"

    def close(self) -> None:
        self.file.close()


def aligned_csvs(paths: Sequence[str | os.PathLike], classes: Sequence[str], order: Sequence[str] | None = None
                 ) -> tuple[list[IndexedCSV], list[str]]:
    """Index every CSV and check they cover the same images; the image order is ``order`` or the first CSV's."""
    csvs: list[IndexedCSV] = []
    try:
        for p in paths:
            csvs.append(IndexedCSV(p, classes))
        names = list(order) if order is not None else list(csvs[0].offsets)
        for c in csvs:
            check_same_ids(c.path, c.offsets, names)
    except BaseException:
        for c in csvs:
            c.close()
        raise
    return csvs, names


def fuse_csvs(paths: Sequence[str | os.PathLike], out: str | os.PathLike, method: str = "hard", *,
              min_votes: int | None = None, weights: Sequence[float] | np.ndarray | None = None,
              threshold: float = 0.5, sizes: Callable[[str], tuple[int, int]] | None = None,
              order: Sequence[str] | None = None, classes: Sequence[str]) -> int:
    """Fuse ``image_name,class,rle`` submissions image by image into ``out`` (atomic); returns the number of
    images. ``classes``: the task's classes, in the order of each image's rows.

    ``hard``: at least ``min_votes`` (default majority) masks; ``soft``: mean of the masks > ``threshold``
    (the same as ``votes_for_threshold(threshold, M)`` votes); ``weighted``: normalised ``weights``
    (``(M,)`` or ``(M, C)``) of the covering masks sum to > ``threshold``. ``sizes(name)`` gives
    ``(H, W)`` for the RLE bounds check of every member's RLE, outvoted or not (an error names the
    member's file and line). Without ``sizes`` nothing can be checked, so a fusion in which one member
    alone puts pixels in the output (``min_votes`` 1, a weight above ``threshold``) is refused: it would
    copy an out-of-bounds run into the submission unseen.
    """
    if len(paths) < 2:
        raise ValueError("fusing needs at least two submissions")
    labels = [str(p) for p in paths]
    if method == "weighted":
        table = normalize_weights(weights, len(paths), len(classes), members=labels, channels=classes)
        table = np.broadcast_to(table, (len(paths), len(classes)))
    elif weights is not None:
        raise ValueError(f"weights are for method 'weighted', not {method!r}")
    if method == "soft":
        min_votes = votes_for_threshold(threshold, len(paths))
        if min_votes > len(paths):
            raise ValueError(f"threshold {threshold} > 1 - 1/{len(paths)}: no pixel can pass")
    elif method == "hard":
        min_votes = resolve_min_votes(min_votes, len(paths))
    elif method != "weighted":
        raise ValueError(f"unknown method {method!r}; valid: soft, hard, weighted")
    if sizes is None:
        alone = ("a weight above the threshold" if method == "weighted" and (table > threshold + TIE_EPS).any()
                 else "min_votes 1" if method != "weighted" and min_votes == 1 else None)
        if alone:
            raise ValueError(f"{out}: with {alone} one submission alone puts pixels in the output, so an "
                             "out-of-bounds RLE would reach it unchecked; give the image sizes "
                             "(tools/fuse.py --images or --size)")
    csvs, names = aligned_csvs(paths, classes, order)
    try:
        with AtomicCSVWriter(out) as writer:
            for name in names:
                per_member = [c.read(name) for c in csvs]
                n_pixels = None
                if sizes is not None:
                    h, w = sizes(name)
                    n_pixels = h * w
                fused = []
                for k, cls in enumerate(classes):
                    rles = [m[k] for m in per_member]
                    rows = [c.where(name, k) for c in csvs]
                    if method == "weighted":
                        fused.append(weighted_vote_rles(rles, table[:, k], threshold, n_pixels, members=rows,
                                                        where=f"{name} {cls}"))
                    else:
                        fused.append(vote_rles(rles, min_votes, n_pixels, members=rows, where=f"{name} {cls}"))
                writer.write_image(name, fused, tuple(classes))
    finally:
        for c in csvs:
            c.close()
    return len(names)
