"""What every task provides to the engine, and the strict base for config sections."""
from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from torch import nn
from torch.utils.data import Dataset


class Section(BaseModel):
    """A config section: unknown keys are errors (the loader names the nearest valid key); no value is NaN
    or infinite."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# Smallest training/input size. What a model needs beyond it (a multiple of its encoder's stride) is checked
# when training starts (``engine.trainer.check_image_size``); runs that only hold cached predictions go this small.
MIN_IMAGE_SIZE = 8


class DataBase(Section):
    """Data keys every task shares; each task extends it with its own (``Task.Data``)."""

    root: str
    test_root: str | None = None
    image_size: int = Field(256, ge=MIN_IMAGE_SIZE)
    n_folds: int = Field(5, ge=2)       # a validation fold needs at least two folds (scikit-learn's K-fold too)
    fold: int = Field(0, ge=0)
    cache: bool = True
    num_workers: int = Field(0, ge=0)

    @field_validator("fold")
    @classmethod
    def _fold_in_range(cls, fold: int, info: ValidationInfo) -> int:
        n_folds = info.data.get("n_folds")
        if n_folds is not None and fold >= n_folds:
            raise ValueError(f"fold {fold} does not exist with data.n_folds={n_folds} (folds are 0..{n_folds - 1})")
        return fold


Threshold = float | list[float] | dict[str, float]


def check_thresholds(value: float | Sequence[float] | Mapping[str, float], classes: Sequence[str] = ()) -> None:
    """A threshold setting: one float, one per class (a list in class order) or ``{class: t}``; every value
    lies in (0, 1). With ``classes`` known, a list has one value per class and a dict names only classes.
    A fault is a ValueError saying what is wrong."""
    if isinstance(value, Mapping):
        values = list(value.values())
    elif isinstance(value, (int, float)):
        values = [value]
    else:
        values = list(value)
    bad = [v for v in values if not 0 < float(v) < 1]
    if bad:
        raise ValueError(f"threshold {float(bad[0]):g} is outside (0, 1)")
    if not classes:
        return
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(classes))
        if unknown:
            near = difflib.get_close_matches(unknown[0], list(classes), n=1)
            raise ValueError(f"threshold for unknown class {unknown[0]!r}" + (f"; did you mean {near[0]!r}?" if near else "")
                             + f" ({len(classes)} classes: {classes[0]} ... {classes[-1]})")
    elif len(values) != len(classes) and not isinstance(value, (int, float)):
        raise ValueError(f"{len(values)} thresholds for {len(classes)} classes (give one per class, in class order, "
                         "a single number, or {class: threshold})")


class Task(ABC):
    """One object per task: datasets, targets, loss, metrics, decoding and submissions.

    The trainer only calls :meth:`datasets`, :meth:`forward`, :meth:`loss` and :meth:`evaluate`;
    ``metric``/``mode`` say what "better" means for early stopping and the leaderboard.
    """

    name: ClassVar[str]
    Data: ClassVar[type[DataBase]] = DataBase
    # Named output classes that a threshold setting may name (empty: the task has none).
    classes: ClassVar[tuple[str, ...]] = ()
    metric: ClassVar[str]
    mode: ClassVar[Literal["max", "min"]]
    # One sigmoid per output channel (multilabel): the trainer starts the output bias at model.output_prior.
    sigmoid_outputs: ClassVar[bool] = False
    # loss.weights when the config has none.
    default_loss: ClassVar[dict[str, float]]
    regression: ClassVar[bool] = False  # evaluate reports ``pred_spread`` (``train.select_min_spread`` reads it)

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    @property
    @abstractmethod
    def num_outputs(self) -> int:
        """Channels of the model output."""

    @property
    def in_channels(self) -> int:
        return 1

    @abstractmethod
    def datasets(self) -> tuple[Dataset, Dataset]:
        """Training and validation datasets of the configured fold."""

    def forward(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return model(batch["image"])

    def model_inputs(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        """The named inputs ``model`` takes at inference, in call order, from ``batch`` (at least its ``image``):
        what an exported model's inputs are and what a FLOP count feeds it. An input the batch lacks is neutral."""
        return {"image": batch["image"]}

    @abstractmethod
    def loss(self, output: torch.Tensor, batch: dict) -> torch.Tensor:
        """Scalar training loss."""

    @abstractmethod
    def evaluate(self, model: nn.Module, dataset: Dataset, device: torch.device) -> dict:
        """Validation: ``{"score": float, "per_item": {name: float}, "loss": float, ...}``."""

