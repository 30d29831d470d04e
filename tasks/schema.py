"""Config schema pieces tasks share, free of torch and numpy: the strict section base, the data keys every task
has, the threshold setting, how an image meets the input size and the radiograph preprocessing steps. Each
task's own ``data`` schema (in its spec package) extends :class:`DataBase`; ``engine.config`` builds the whole
config from these without importing a model, and the task specs load without numpy (the CSV tools start fast).
"""
from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator


class Section(BaseModel):
    """A config section: unknown keys are errors (the loader names the nearest valid key); no value is NaN
    or infinite."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# ``data.fold`` of a run that trains on every image of ``data.root`` (nnU-Net's "all" fold): no validation split.
FOLD_ALL = "all"

# Smallest training/input side. What a model needs beyond it (a multiple of its encoder's stride, a square) is
# checked when training starts (``engine.trainer.check_image_size``); runs that only hold cached predictions go this
# small.
MIN_IMAGE_SIZE = 8


def _side(value: Any) -> int:
    """One side of ``data.image_size``: an integer (``512``, ``512.0``, ``"512"``), not a bool."""
    if isinstance(value, bool):
        raise ValueError("Input should be a valid integer")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int):
        raise ValueError("Input should be a valid integer, or [height, width]")
    return value


def _image_size(value: Any) -> int | tuple[int, int]:
    """``data.image_size``: one side (a square input, as always) or ``[height, width]``; a square pair is its side,
    so ``[512, 512]`` and ``512`` are one size everywhere (cache keys, ensembles' frames, the leaderboard)."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"[height, width] takes two sides, got {len(value)}")
        height, width = _side(value[0]), _side(value[1])
        if min(height, width) < MIN_IMAGE_SIZE:
            raise ValueError(f"each side should be greater than or equal to {MIN_IMAGE_SIZE}")
        return height if height == width else (height, width)
    side = _side(value)
    if side < MIN_IMAGE_SIZE:
        raise ValueError(f"Input should be greater than or equal to {MIN_IMAGE_SIZE}")
    return side


# ``data.image_size``: an int (a square, ``512``) or ``(height, width)`` (``[800, 1000]`` in YAML; saved as a list).
ImageSize = Annotated[int | tuple[int, int], BeforeValidator(_image_size)]


def image_hw(size: int | Sequence[int]) -> tuple[int, int]:
    """``data.image_size`` (one side, or ``[height, width]``) as ``(height, width)``: the one reading of it."""
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def size_text(size: int | Sequence[int]) -> str:
    """How an input size reads in messages, cache keys and tables: ``512`` for a square, ``800x1000`` (height x
    width) otherwise."""
    height, width = image_hw(size)
    return str(height) if height == width else f"{height}x{width}"


def quarter_turn_problem(size: int | Sequence[int]) -> str | None:
    """Why TTA quarter turns (``tta.rot90``) do not fit inputs of ``size`` (None: a square, they fit): a turned
    ``H x W`` input is ``W x H``, a shape the model was never trained on, and its map would not turn back onto the
    input's frame."""
    height, width = image_hw(size)
    if height == width:
        return None
    return (f"quarter turns need a square input; data.image_size is {height}x{width} (height x width), a turned view "
            f"would be {width}x{height}: set rot90: false (flips and scales still apply) or give one side")


class DataBase(Section):
    """Data keys every task shares; each task extends it with its own (``Task.Data``)."""

    root: str
    test_root: str | None = None
    image_size: ImageSize = 256
    n_folds: int = Field(5, ge=2)       # a validation fold needs at least two folds (scikit-learn's K-fold too)
    fold: int | Literal["all"] = 0  # "all": every image trains, none validates
    cache: bool = True
    num_workers: int = Field(0, ge=0)
    # Pseudo-labelled folders (tools/pseudo_label.py): their samples join the TRAINING images of every fold,
    # never a validation fold (tasks whose spec has a pseudo side; the config refuses the key elsewhere).
    pseudo_roots: list[str] = Field(default_factory=list)

    @field_validator("fold", mode="before")
    @classmethod
    def _fold_value(cls, value: object) -> object:
        """A fold number (also written as text) or ``all``, one message for anything else."""
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
        if value == FOLD_ALL or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            return value
        raise ValueError(f"a fold number (0..data.n_folds-1) or {FOLD_ALL!r} (every image, no validation)")

    @field_validator("fold")
    @classmethod
    def _fold_in_range(cls, fold: int | str, info: ValidationInfo) -> int | str:
        n_folds = info.data.get("n_folds")
        if fold != FOLD_ALL and n_folds is not None and fold >= n_folds:
            raise ValueError(f"fold {fold} does not exist with data.n_folds={n_folds} (folds are 0..{n_folds - 1}, "
                             f"or {FOLD_ALL}: every image, no validation)")
        return fold

    @property
    def has_validation(self) -> bool:
        """False for ``fold: all``: the run trains on every image of ``root`` and holds none out."""
        return self.fold != FOLD_ALL

    @property
    def trains_on_patches(self) -> bool:
        """True where the model trains on crops at the original resolution (and so validates and predicts in tiles);
        False by default: the whole image resized."""
        return False

    @property
    def input_size(self) -> int | tuple[int, int]:
        """The input the model sees in training (one side, or ``(height, width)``): the whole image resized to
        ``image_size`` (a task that trains on square crops at the original resolution says its crop's side)."""
        return self.image_size

    def fold_indices(self, n_samples: int, split: Callable[[], tuple[list[int], list[int]]]
                     ) -> tuple[list[int], list[int]]:
        """Training and validation indices of the configured fold among ``n_samples``: ``split()``, the task's own
        cross-validation split, for a fold number; every index and no validation for ``fold: all``."""
        return (list(range(n_samples)), []) if self.fold == FOLD_ALL else split()


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
