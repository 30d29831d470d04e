"""Fusion of submission CSVs of any task (``tools/fuse.py``); the task is read from the CSV headers.

- segmentation (``image_name,class,rle``): ``soft | hard | weighted``, streamed image by image over the
  RLE runs (:func:`ensembles.hard.fuse_csvs`);
- keypoints (``image_name,<lm>_x...,<lm>_y...``): ``mean | median | weighted`` per coordinate, or
  ``hard`` per point (:func:`ensembles.hard.vote_points`: at least ``min_votes`` submissions within
  ``radius`` px of one of them, else the median);
- bone age (``id,boneage``): ``mean | median | weighted``.

Keypoint and age CSVs are read whole (a few numbers an image). Every submission must cover the same ids
(and the same landmarks); the output keeps the first CSV's id order, id column and landmark order.
Fused numbers are written with :data:`FUSED_DECIMALS` decimals, trailing zeros dropped: a fused value
with at most that many decimals is written exactly (the mean of a +2 px and a -2 px copy of a 3-decimal
truth is the truth's own text); any other is rounded to 1e-6 px or month, far below what a metric sees.
Standard library and numpy only: no torch, pandas or OpenCV.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ensembles.hard import fuse_csvs, resolve_min_votes, vote_points, votes_for_threshold
from ensembles.weighted import fuse
from tasks.formats import FormatError
from tasks.formats.shs import read_submission, write_coords
from tasks.formats.submissions import check_same_ids, read_ages, sniff_task, write_ages

METHODS: dict[str, tuple[str, ...]] = {
    "segmentation": ("soft", "hard", "weighted"),
    "keypoints": ("mean", "median", "weighted", "hard"),
    "boneage": ("mean", "median", "weighted"),
}
FUSED_DECIMALS = 6
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class Fused:
    """What a fusion wrote: the task, the number of images (rows) and the submissions fused."""

    task: str
    images: int
    members: int


def common_task(paths: Sequence[str | os.PathLike]) -> str:
    """The task of every submission (sniffed from its header); a mixture names the odd file."""
    tasks = [sniff_task(p) for p in paths]
    for p, task in zip(paths, tasks):
        if task != tasks[0]:
            raise FormatError(f"{p}: a {task} submission, but {paths[0]} is a {tasks[0]} one; "
                              "fuse submissions of one task")
    return tasks[0]


def check_options(task: str, method: str, *, weights: object = None, min_votes: int | None = None,
                  radius: float | None = None, threshold: float | None = None, images: object = None,
                  size: object = None) -> None:
    """Reject a method the task has not, and an option the method does not use (named as on the command line)."""
    if method not in METHODS[task]:
        raise ValueError(f"method {method!r}: {task} submissions fuse by {', '.join(METHODS[task])}")
    if method == "weighted" and weights is None:
        raise ValueError("weighted needs --weights (one per CSV)")
    if method != "weighted" and weights is not None:
        raise ValueError(f"--weights is for 'weighted', not {method!r}")
    if method != "hard" and min_votes is not None:
        hint = "uses --threshold" if task == "segmentation" else "takes every submission"
        raise ValueError(f"--min-votes is for 'hard'; {method} {hint}")
    if task == "keypoints" and method == "hard" and radius is None:
        raise ValueError("keypoints hard needs --radius: how many pixels apart two submissions' points may be "
                         "and still agree")
    if radius is not None and (task, method) != ("keypoints", "hard"):
        raise ValueError(f"--radius is for keypoints 'hard', not {task} {method!r}")
    if task != "segmentation" and any(v is not None for v in (threshold, images, size)):
        raise ValueError(f"--threshold, --images and --size are for segmentation, not {task}")


def _aligned(paths: Sequence[str | os.PathLike], tables: Sequence[tuple[list[str], np.ndarray]]
             ) -> tuple[list[str], np.ndarray]:
    """The first table's ids and ``(M, N, ...)`` values of every table in that order (same id sets)."""
    ids = tables[0][0]
    stack = []
    for path, (have, values) in zip(paths, tables):
        row = {name: i for i, name in enumerate(have)}
        check_same_ids(path, row, ids)
        stack.append(values[[row[name] for name in ids]])
    return ids, np.stack(stack)


def _image_sizes(images: str | os.PathLike | None, size: tuple[int, int] | None
                 ) -> tuple[Callable[[str], tuple[int, int]] | None, list[str] | None]:
    """``(sizes(name) -> (H, W), image order)`` from a hand-bone test root, or every image ``size``; else Nones."""
    if images is not None:
        from tasks.formats.handbones import list_samples
        from tasks.formats.images import image_size

        paths = {s.name: s.image_path for s in list_samples(images, labels=None)}
        return (lambda name: image_size(paths[name])), list(paths)
    if size is not None:
        return (lambda name: size), None
    return None, None


def fuse_keypoint_csvs(paths: Sequence[str | os.PathLike], out: str | os.PathLike, method: str = "mean", *,
                       weights: Sequence[float] | np.ndarray | None = None, min_votes: int | None = None,
                       radius: float | None = None, report: Callable[[str], None] | None = None) -> int:
    """Fuse wide keypoint submissions into ``out`` (atomic); returns the number of images.

    ``mean``/``median``/``weighted``: per coordinate (``weights`` ``(M,)`` or ``(M, K)`` per landmark);
    ``hard``: :func:`ensembles.hard.vote_points` with ``radius`` px and ``min_votes`` (default majority).
    """
    labels = [str(p) for p in paths]
    subs = [read_submission(p) for p in paths]
    id_column, names = subs[0][0], subs[0][1]
    tables = []
    for path, (_, have, ids, coords) in zip(paths, subs):
        if have != names:
            if set(have) != set(names):
                missing, extra = sorted(set(names) - set(have)), sorted(set(have) - set(names))
                raise FormatError(f"{path}: landmarks differ from {paths[0]}'s: "
                                  + "; ".join(f"{what} {', '.join(n)}" for what, n in
                                              (("missing", missing), ("extra", extra)) if n))
            coords = coords[:, [have.index(n) for n in names]]
        tables.append((ids, coords))
    ids, stack = _aligned(paths, tables)
    if method == "hard":
        if radius is None:
            raise ValueError("keypoints hard needs a radius (px)")
        fused, agreed = vote_points(stack, radius, min_votes, members=labels)
        if report is not None:
            k = resolve_min_votes(min_votes, len(paths))
            report(f"hard: {int(agreed.sum())} of {agreed.size} points had at least {k} of {len(paths)} submissions "
                   f"within {radius:g} px (their mean); {int((~agreed).sum())} fell back to the median")
    else:
        fused = fuse(list(stack), "median" if method == "median" else "mean", weights, members=labels,
                     channel_axis=1)
    write_coords(out, ids, fused, names, id_column=id_column, decimals=FUSED_DECIMALS)
    return len(ids)


def fuse_age_csvs(paths: Sequence[str | os.PathLike], out: str | os.PathLike, method: str = "mean", *,
                  weights: Sequence[float] | np.ndarray | None = None) -> int:
    """Fuse ``id,boneage`` submissions (mean, median, or weighted mean) into ``out`` (atomic); returns the rows."""
    ids, stack = _aligned(paths, [read_ages(p) for p in paths])
    fused = fuse(list(stack), "median" if method == "median" else "mean", weights, members=[str(p) for p in paths])
    write_ages(out, ids, fused, decimals=FUSED_DECIMALS)
    return len(ids)


def fuse_submissions(paths: Sequence[str | os.PathLike], out: str | os.PathLike, method: str, *,
                     weights: Sequence[float] | np.ndarray | None = None, min_votes: int | None = None,
                     radius: float | None = None, threshold: float | None = None,
                     images: str | os.PathLike | None = None, size: tuple[int, int] | None = None,
                     report: Callable[[str], None] | None = None) -> Fused:
    """Fuse submissions of one task into ``out`` with ``method`` (see :data:`METHODS`); ``report`` receives
    the voting rule and, for a keypoint hard vote, how many points agreed.

    Segmentation options: ``threshold`` (soft/weighted, default 0.5); ``images`` (the test root holding
    ``DCM/``: output order and every RLE checked against its image's size) or ``size`` (``(H, W)`` of
    every image, for the check). Bad input raises ``ValueError``/:class:`FormatError` naming the file;
    nothing is written then.
    """
    if len(paths) < 2:
        raise ValueError("fusing needs at least two submissions")
    task = common_task(paths)
    check_options(task, method, weights=weights, min_votes=min_votes, radius=radius, threshold=threshold,
                  images=images, size=size)
    n = len(paths)
    if task == "segmentation":
        threshold = DEFAULT_THRESHOLD if threshold is None else threshold
        sizes, order = _image_sizes(images, size)
        if report is not None and method == "soft":
            report(f"soft: mean of {n} masks > {threshold:g} means at least {votes_for_threshold(threshold, n)} "
                   f"of {n} votes")
        elif report is not None and method == "hard":
            report(f"hard: at least {resolve_min_votes(min_votes, n)} of {n} votes")
        count = fuse_csvs(paths, out, method, min_votes=min_votes, weights=weights, threshold=threshold,
                           sizes=sizes, order=order)
    elif task == "keypoints":
        count = fuse_keypoint_csvs(paths, out, method, weights=weights, min_votes=min_votes, radius=radius,
                                    report=report)
    else:
        count = fuse_age_csvs(paths, out, method, weights=weights)
    return Fused(task, count, n)
