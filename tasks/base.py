"""The torch side of a task: what the trainer and the one predictor (:mod:`engine.predictor`) call.

Training: :meth:`Task.datasets`, :meth:`Task.forward`, :meth:`Task.loss`, :meth:`Task.evaluate`.

Prediction, one image or batch at a time, whatever the mode (a run, an ensemble member, TTA views,
sliding-window tiles, an ROI crop):

1. :meth:`Task.samples` — the images of a split (each has a ``name``: its row in the CSV and the cache);
2. :meth:`Task.batches` — the model inputs of a list of samples at a model's input size, as dicts of
   tensors plus whatever the decoding needs (original sizes, letterboxes);
3. per TTA view: ``model(*task.model_inputs(batch, view).values())``, then :meth:`Task.invert` maps the output
   back to the frame of the un-augmented input and :meth:`Task.activate` makes it probabilities (maps,
   heatmaps, class probabilities) or values (normalised ages); the views are averaged there;
4. :meth:`Task.writer` — decodes those outputs (masks, points, ages, labels) and writes the submission
   CSV and the prediction cache.

What the task is (metric, classes, losses, schema) is its :class:`tasks.spec.TaskSpec`, ``Task.spec``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from tasks.spec import MODE_RESIZE, TaskSpec
from tasks.tta import View


def precision(autocast: Callable[[], AbstractContextManager] | None) -> AbstractContextManager:
    """The context a forward pass runs in: ``autocast()`` (the engine's mixed precision for the run's device,
    ``engine.device.autocast``) or full precision when none is given."""
    return autocast() if autocast is not None else nullcontext()


class PredictionWriter(AbstractContextManager):
    """Takes the averaged outputs of every batch (:meth:`add`) and, on a clean exit, has written the
    submission CSV (atomic; none when ``out_csv`` is None) and, when asked, the prediction cache. ``images``
    counts the images taken. A task whose predictions are values per image (points, ages, class
    probabilities) also gives them back: :meth:`result`, what its ensembles fuse."""

    images: int = 0

    @abstractmethod
    def add(self, batch: dict, outputs: torch.Tensor) -> None:
        """Decode and keep (or stream out) one batch of averaged, activated outputs."""

    def result(self) -> tuple[list[str], Any]:
        """The image names and the values taken so far (tasks of values per image)."""
        raise NotImplementedError(f"{type(self).__name__} streams its rows; it keeps no values")


class Task(ABC):
    """One object per task and config: datasets, targets, loss and metrics for the trainer, and the
    prediction hooks (see the module docstring)."""

    spec: ClassVar[TaskSpec]

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    @property
    @abstractmethod
    def num_outputs(self) -> int:
        """Channels of the model output."""

    @property
    def in_channels(self) -> int:
        return 1

    # ------------------------------------------------------------------------------------------ training

    @abstractmethod
    def datasets(self) -> tuple[Dataset, Dataset]:
        """Training and validation datasets of the configured fold."""

    def forward(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return model(*self.model_inputs(batch).values())

    @abstractmethod
    def loss(self, output: torch.Tensor, batch: dict) -> torch.Tensor:
        """Scalar training loss."""

    @abstractmethod
    def evaluate(self, model: nn.Module, dataset: Dataset, device: torch.device, autocast=None,
                 batch_size: int = 4) -> dict:
        """Validation: ``{"score": float, "per_item": {name: float}, "loss": float, ...}``."""

    @property
    def validation_tile(self) -> int | None:
        """The tile side in which validation sees whole images at their original size (a run that trains on
        patches: the trainer hands :meth:`evaluate` the model applied in overlapping tiles,
        ``engine.sliding_window.TiledModel``); None: the model sees the validation inputs as they are."""
        return None

    # ---------------------------------------------------------------------------------------- prediction

    @abstractmethod
    def samples(self, split: str) -> list[Any]:
        """The images of ``split``: ``train``/``val`` (the configured fold of ``data.root``) or ``test``."""

    @abstractmethod
    def batches(self, samples: Sequence[Any], size: int | tuple[int, int], batch_size: int) -> Iterator[dict]:
        """Model inputs of ``samples`` at input ``size`` (``data.image_size``: one side, or ``(height, width)``),
        ``batch_size`` at a time: dicts with ``image`` ``(B, C, H, W)``, the task's other inputs, and ``samples``
        (the samples of the batch)."""

    def model_inputs(self, batch: dict, view: View = View(), model: nn.Module | None = None) -> dict[str, torch.Tensor]:
        """The model's named inputs for ``batch`` under ``view``, in call order (the image only, by default).

        Without ``model`` they are what the batch holds (the predictor calls ``model(*inputs.values())``); with
        it, every input that model takes, an input the batch lacks made neutral: what an exported model's
        inputs are and what a FLOP count feeds it."""
        return {"image": view.apply(batch["image"])}

    def activate(self, output: torch.Tensor) -> torch.Tensor:
        """Raw model output → what views and members average (probabilities; identity by default)."""
        return output

    def invert(self, output: torch.Tensor, view: View, batch: dict) -> torch.Tensor:
        """The output of ``view`` of ``batch`` in the frame of the un-augmented input (identity by default:
        an output that does not depend on where things are in the image)."""
        return output

    @property
    def frame(self) -> tuple:
        """What the outputs of two runs must share to be averaged before decoding (an ensemble's ``soft``
        method): the input size, by default."""
        return (self.cfg.data.image_size,)

    @abstractmethod
    def writer(self, out_csv: str | Path, cache: Any | None, *, views: Sequence[View], workers: int,
               mode: str = MODE_RESIZE) -> PredictionWriter:
        """The writer of this task's submission CSV and prediction cache (``cache``: an ``core.cli.Output``
        for the cache folder, or None); ``mode`` says how the outputs were made (a dense task's cache records it),
        ``workers`` how many threads may decode (a task without post-processing ignores it)."""
