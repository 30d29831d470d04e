"""What every task provides to the engine, and the strict base for config sections."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn
from torch.utils.data import Dataset


class Section(BaseModel):
    """A config section: unknown keys are errors (the loader names the nearest valid key)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataBase(Section):
    """Data keys every task shares; each task extends it with its own (``Task.Data``)."""

    root: str
    test_root: str | None = None
    image_size: int = 256
    fold: int = 0
    n_folds: int = 5
    cache: bool = True
    num_workers: int = 0


class Task(ABC):
    """One object per task: datasets, targets, loss, metrics, decoding and submissions.

    The trainer only calls :meth:`datasets`, :meth:`forward`, :meth:`loss` and :meth:`evaluate`;
    ``metric``/``mode`` say what "better" means for early stopping and the leaderboard.
    """

    name: ClassVar[str]
    Data: ClassVar[type[DataBase]] = DataBase
    metric: ClassVar[str]
    mode: ClassVar[Literal["max", "min"]]

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

    @abstractmethod
    def loss(self, output: torch.Tensor, batch: dict) -> torch.Tensor:
        """Scalar training loss."""

    @abstractmethod
    def evaluate(self, model: nn.Module, dataset: Dataset, device: torch.device) -> dict:
        """Validation: ``{"score": float, "per_item": {name: float}, "loss": float, ...}``."""

    def better(self, a: float, b: float | None) -> bool:
        """Is score ``a`` better than ``b`` (None: nothing yet)?"""
        if b is None:
            return True
        return a > b if self.mode == "max" else a < b
