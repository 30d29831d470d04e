"""Fusion of submission CSVs of any task (``tools/fuse.py``); the task is read from the CSV headers.

- tasks of maps (segmentation, ``image_name,class,rle``): ``soft | hard | weighted``, streamed image by image
  over the RLE runs (:func:`ensembles.hard.fuse_csvs`);
- tasks of values (keypoints ``image_name,<lm>_x...,<lm>_y...``, bone age ``id,boneage``, ...): ``mean |
  median | weighted`` per value, or ``hard`` per point where the task's members vote on points
  (:func:`ensembles.hard.vote_points`: at least ``min_votes`` submissions within ``radius`` of one of them,
  else the median). The task's ensemble side reads and writes its CSVs.

Value CSVs are read whole (a few numbers an image). Every submission must cover the same ids (and the same
landmarks); the output keeps the first CSV's id order, id column and landmark order. Fused numbers are
written with :data:`FUSED_DECIMALS` decimals, trailing zeros dropped: a fused value with at most that many
decimals is written exactly (the mean of a +2 px and a -2 px copy of a 3-decimal truth is the truth's own
text); any other is rounded to 1e-6 px or month, far below what a metric sees. Standard library and numpy
only: no torch, pandas or OpenCV.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ensembles.hard import fuse_csvs, resolve_min_votes, vote_points, votes_for_threshold
from ensembles.config import tasks_with
from ensembles.weighted import fuse
from tasks.formats import FormatError
from tasks.formats.submissions import check_same_ids
from tasks.scoring import sniff_task
from tasks.spec import TaskSpec, task_spec

FUSED_DECIMALS = 6
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class Fused:
    """What a fusion wrote: the task, the number of images (rows) and the submissions fused."""

    task: str
    images: int
    members: int


def csv_methods(spec: TaskSpec) -> tuple[str, ...]:
    """How a task's CSVs fuse: its ensemble methods, less ``soft`` for values (it averages model outputs)."""
    side = spec.ensemble_side()
    return tuple(m for m in spec.fusion if side.output == "maps" or m != "soft")


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
    spec = task_spec(task)
    side = spec.ensemble_side()
    methods = csv_methods(spec)
    unit = getattr(side, "radius_unit", None)
    if method not in methods:
        raise ValueError(f"method {method!r}: {task} submissions fuse by {', '.join(methods)}")
    if method == "weighted" and weights is None:
        raise ValueError("weighted needs --weights (one per CSV)")
    if method != "weighted" and weights is not None:
        raise ValueError(f"--weights is for 'weighted', not {method!r}")
    if method != "hard" and min_votes is not None:
        hint = "uses --threshold" if side.output == "maps" else "takes every submission"
        raise ValueError(f"--min-votes is for 'hard'; {method} {hint}")
    if method == "hard" and unit is not None and radius is None:
        raise ValueError(f"{task} hard needs --radius: how many {unit} apart two submissions' points may be "
                         "and still agree")
    if radius is not None and (method != "hard" or unit is None):
        raise ValueError(f"--radius is for {tasks_with(lambda s: s.ensemble_side().radius_unit is not None)} "
                         f"'hard', not {task} {method!r}")
    if side.output != "maps" and any(v is not None for v in (threshold, images, size)):
        raise ValueError(f"--threshold, --images and --size are for {tasks_with(lambda s: s.ensemble_side().output == 'maps')}, "
                         f"not {task}")


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


def _image_sizes(side, images: str | os.PathLike | None, size: tuple[int, int] | None
                 ) -> tuple[Callable[[str], tuple[int, int]] | None, list[str] | None]:
    """``(sizes(name) -> (H, W), image order)`` from a test root, or every image ``size``; else Nones."""
    if images is not None:
        sizes = side.image_sizes(images)
        return (lambda name: sizes[name]), list(sizes)
    if size is not None:
        return (lambda name: size), None
    return None, None


def fuse_value_csvs(spec: TaskSpec, paths: Sequence[str | os.PathLike], out: str | os.PathLike, method: str = "mean",
                    *, weights: Sequence[float] | np.ndarray | None = None, min_votes: int | None = None,
                    radius: float | None = None, report: Callable[[str], None] | None = None) -> int:
    """Fuse value submissions of one task into ``out`` (atomic); returns the number of images.

    ``mean``/``median``/``weighted``: per value (``weights`` ``(M,)``, or ``(M, C)`` per channel such as a
    landmark); ``hard``: :func:`ensembles.hard.vote_points` with ``radius`` and ``min_votes`` (default majority).
    """
    side = spec.ensemble_side()
    labels = [str(p) for p in paths]
    subs = [side.read_submission(p) for p in paths]
    first = subs[0][2]
    tables = [(ids, side.align_layout(path, values, layout, first, paths[0]))
              for path, (ids, values, layout) in zip(paths, subs)]
    ids, stack = _aligned(paths, tables)
    if method == "hard":
        fused, agreed = vote_points(stack, radius, min_votes, members=labels)
        if report is not None:
            k = resolve_min_votes(min_votes, len(paths))
            report(f"hard: {int(agreed.sum())} of {agreed.size} points had at least {k} of {len(paths)} submissions "
                   f"within {radius:g} {side.radius_unit} (their mean); {int((~agreed).sum())} fell back to the median")
    else:
        fused = fuse(list(stack), "median" if method == "median" else "mean", weights, members=labels,
                     channel_axis=side.channel_axis)
    side.write_submission(out, ids, fused, first, FUSED_DECIMALS)
    return len(ids)


def fuse_submissions(paths: Sequence[str | os.PathLike], out: str | os.PathLike, method: str, *,
                     weights: Sequence[float] | np.ndarray | None = None, min_votes: int | None = None,
                     radius: float | None = None, threshold: float | None = None,
                     images: str | os.PathLike | None = None, size: tuple[int, int] | None = None,
                     report: Callable[[str], None] | None = None) -> Fused:
    """Fuse submissions of one task into ``out`` with ``method`` (:func:`csv_methods`); ``report`` receives
    the voting rule and, for a keypoint hard vote, how many points agreed.

    Options for masks: ``threshold`` (soft/weighted, default 0.5); ``images`` (the test root holding
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
    spec = task_spec(task)
    if spec.ensemble_side().output == "maps":
        threshold = DEFAULT_THRESHOLD if threshold is None else threshold
        sizes, order = _image_sizes(spec.ensemble_side(), images, size)
        if report is not None and method == "soft":
            report(f"soft: mean of {n} masks > {threshold:g} means at least {votes_for_threshold(threshold, n)} "
                   f"of {n} votes")
        elif report is not None and method == "hard":
            report(f"hard: at least {resolve_min_votes(min_votes, n)} of {n} votes")
        count = fuse_csvs(paths, out, method, min_votes=min_votes, weights=weights, threshold=threshold,
                          sizes=sizes, order=order, classes=spec.classes)
    else:
        count = fuse_value_csvs(spec, paths, out, method, weights=weights, min_votes=min_votes, radius=radius,
                                report=report)
    return Fused(task, count, n)
