"""One spec per task: everything the harness does differently for a task, declared in one place.

A task is a package under ``tasks/`` whose ``__init__`` defines ``SPEC``, a :class:`TaskSpec`, and nothing
heavy: the spec and what it names directly (the ``data`` schema, the submission layout, its reader, writer
and scorer) import neither torch nor a model, so the CSV tools (score, validate, fuse, leaderboard) and the
config loader use it without them. The parts that need torch or pandas are named by ``"module:attribute"``
paths inside the task's own package and imported on first use:

- ``implementation``: the :class:`tasks.base.Task` subclass — datasets, targets, loss, metrics for the
  trainer, and the prediction hooks the one predictor (:mod:`engine.predictor`) calls: inputs, activation,
  TTA inverses, decoding, the submission and cache writer;
- ``ensemble``: the ensemble side — how a run's prediction cache is read and how predictions of several
  members are fused, scored and fitted, for :mod:`ensembles` (numpy only: fusing from caches never
  imports torch);
- ``pseudo``: the pseudo-label side (optional) — which confidence threshold keeps an ensemble's test
  predictions, fitted on out-of-fold validation predictions, how the kept ones are written as a training
  folder and how training reads that folder back (``data.pseudo_roots``), for :mod:`ensembles.pseudo`
  (numpy only).

Generic code reaches a task only through :func:`task_spec`; it never names a task. ``tasks/__init__``
imports every task package (the plugin import, as timm's ``models/__init__``); this module imports none
of them back.
"""
from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal

from tasks.schema import DataBase

# How a prediction was made (recorded in a dense task's prediction cache): the whole image resized to the
# model's input size, or tiles at the original resolution.
MODE_RESIZE = "resize"
MODE_SLIDING = "sliding_window"


@dataclass(frozen=True)
class SubmissionFormat:
    """A task's leaderboard CSV: how to recognise it, score it and validate it.

    ``matches(header)`` tells this task's CSVs by their header; ``score`` is ``"module:function"`` of
    ``fn(csv, gt, images, **options) -> dict`` (keys ``score``, ``public``, ``private``, ``per_item``,
    ``images``, ``metric`` and any other metric); ``validate`` of ``fn(csv, images) -> int``, which checks
    one against the test images. Both torch-free.
    """

    columns: str
    matches: Callable[[list[str]], bool]
    score: str
    validate: str | None = None

    def scorer(self) -> Callable[..., dict]:
        return load(self.score)

    def validator(self) -> Callable[..., int] | None:
        return load(self.validate) if self.validate else None


@dataclass(frozen=True)
class TaskSpec:
    """Everything a task declares (see the module docstring)."""

    name: str
    title: str                                   # one line: what the task predicts
    data: type[DataBase]                         # the config's ``data`` schema
    metric: str                                  # headline metric key (summary.json, leaderboard)
    mode: Literal["max", "min"]                  # what "better" means for ``metric``
    metric_label: str                            # the metric in reports ("Dice", "MRE (px)", ...)
    default_loss: Mapping[str, float]            # ``loss.weights`` when a config gives none
    implementation: str                          # "module:Class" of the torch Task
    ensemble: str                                # "module:attribute" of the torch-free ensemble side
    submission: SubmissionFormat
    pseudo: str | None = None                    # "module:attribute" of the pseudo-label side (None: none)
    classes: tuple[str, ...] = ()                # output names a threshold setting may name (empty: none)
    per_item: tuple[str, str] = ("item", "score")  # the per-item breakdown: what an item is, what its value is
    fusion: tuple[str, ...] = ("mean", "median", "weighted")  # ensemble methods (inference.py --ensemble)
    thresholded: bool = False                    # fused probabilities are thresholded (per class)
    postprocess: bool = False                    # per-class mask post-processing applies
    sigmoid_outputs: bool = False                # one sigmoid per output channel: model.output_prior applies
    regression: bool = False                     # evaluate reports ``pred_spread`` (train.select_min_spread)
    modes: frozenset[str] = frozenset({MODE_RESIZE})  # prediction modes: resize, sliding_window, roi
    clicks: bool = False                         # interactive click refinement applies (engine.interactive)
    order: int = 100                             # position in listings and on the leaderboard
    extra: Mapping[str, Any] = field(default_factory=dict)

    def task_class(self) -> type:
        """The torch implementation, a :class:`tasks.base.Task` subclass (imports torch)."""
        return load(self.implementation)

    def ensemble_side(self) -> Any:
        """The torch-free ensemble side (see :mod:`ensembles.sides`)."""
        return load(self.ensemble)

    def pseudo_side(self) -> Any:
        """The torch-free pseudo-label side (:mod:`ensembles.pseudo`); a ValueError when the task has none."""
        if self.pseudo is None:
            with_side = ", ".join(s.name for s in specs() if s.pseudo is not None) or "none"
            raise ValueError(f"task {self.name} has no pseudo-labels (tasks with them: {with_side})")
        return load(self.pseudo)

    def better(self, a: float, b: float) -> bool:
        """``a`` is strictly better than ``b`` by this task's metric."""
        return a > b if self.mode == "max" else a < b


_SPECS: dict[str, TaskSpec] = {}


def register(spec: TaskSpec) -> TaskSpec:
    """Add a task (called by ``tasks/__init__`` for every task package's ``SPEC``)."""
    if spec.name in _SPECS and _SPECS[spec.name] is not spec:
        raise ValueError(f"task {spec.name!r} registered twice")
    _SPECS[spec.name] = spec
    return spec


def task_names() -> tuple[str, ...]:
    """Every registered task, in listing order."""
    return tuple(sorted(_SPECS, key=lambda n: (_SPECS[n].order, n)))


def specs() -> tuple[TaskSpec, ...]:
    return tuple(_SPECS[n] for n in task_names())


def task_spec(name: object) -> TaskSpec:
    """The spec of task ``name``; an unknown name is a ValueError listing the valid ones and the closest."""
    if isinstance(name, str) and name in _SPECS:
        return _SPECS[name]
    near = difflib.get_close_matches(str(name), list(_SPECS), n=1)
    raise ValueError(f"unknown task {name!r}" + (f"; did you mean {near[0]!r}?" if near else "")
                     + f" (valid: {', '.join(task_names())})")


def task_of_header(header: list[str]) -> str | None:
    """The task whose submission layout has this header (None: no task's)."""
    for spec in specs():
        if spec.submission.matches(header):
            return spec.name
    return None


@cache
def load(path: str) -> Any:
    """``"package.module:attribute"`` (or a plain module path) → the object, imported on first use."""
    module, _, attr = path.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split(".") if attr else ():
        obj = getattr(obj, part)
    return obj
