"""Config schema pieces tasks share, free of torch and numpy: the strict section base, the data keys every task
has, the threshold setting, how an image meets the input size and the radiograph preprocessing steps. Each
task's own ``data`` schema (in its spec package) extends :class:`DataBase`; ``engine.config`` builds the whole
config from these without importing a model, and the task specs load without numpy (the CSV tools start fast).
"""
from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator


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
    # Pseudo-labelled folders (tools/pseudo_label.py): their samples join the TRAINING images of every fold,
    # never a validation fold (tasks whose spec has a pseudo side; the config refuses the key elsewhere).
    pseudo_roots: list[str] = Field(default_factory=list)

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


# How an image of any aspect meets the square input: letterboxed (aspect kept, padded) or stretched
# (``tasks.letterbox``).
ResizeMode = Literal["letterbox", "stretch"]


class PreprocessConfig(Section):
    """``data.preprocess``: which steps run, in this order: orientation, background removal, crop,
    min-max, CLAHE, ROI mosaic. All off by default (the image is used as read)."""

    orientation: Literal["off", "rotate", "rotate_mirror"] = "off"
    remove_background: bool = False
    crop_to_hand: bool = False
    crop_margin: float = Field(0.05, ge=0.0, le=0.5)
    minmax: bool = False
    minmax_percentiles: tuple[float, float] = (0.5, 99.5)
    clahe: bool = False
    clahe_clip: float = Field(2.0, gt=0)
    clahe_tiles: int = Field(8, ge=1, le=64)
    roi_mosaic: bool = False
    mosaic_tile: int = Field(256, ge=16)
    mask_work_size: int = Field(384, ge=64)

    @field_validator("minmax_percentiles")
    @classmethod
    def _percentiles(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= value[0] < value[1] <= 100:
            raise ValueError("needs 0 <= low < high <= 100")
        return value

    @property
    def needs_mask(self) -> bool:
        return self.remove_background or self.crop_to_hand or self.roi_mosaic or self.minmax
