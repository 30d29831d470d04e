"""Orientation of a hand radiograph: which hand(s) it shows and the quarter turn that stands the fingers up.

The 12 SHS_NET classes ``4 * side + rotation`` (side 0 two hands, 1 left, 2 right; rotation 0 upright, 1 needs
90 degrees clockwise, 2 needs 180, 3 needs 90 counter-clockwise). Data: a labelled folder ``labels.csv``
(``img_id,label`` [``,patient``]) + ``images/`` (the real SHS_NET orientation films, the phantom's
``orientation/train``), plus labelled folders used for training only (``data.extra_train``: phantoms beside
real films). Metric: accuracy of the 12-class label. Submission: ``img_id,label``. This module is the task's
spec (torch-free); the torch side is :mod:`tasks.orientation.task`, the weight-free heuristic
:mod:`tasks.orientation.heuristic`, which preprocessing asks first and falls back from to a trained run.
"""
from __future__ import annotations

from pydantic import Field, field_validator

from tasks.schema import DataBase, ImageSize
from tasks.spec import SubmissionFormat, TaskSpec

SIDES = ("two", "left", "right")
# Class k: SIDES[k // 4], needing (k % 4) * 90 degrees clockwise to stand upright.
CLASS_NAMES: tuple[str, ...] = tuple(f"{side}_{90 * r}" for side in SIDES for r in range(4))


class OrientationData(DataBase):
    root: str = "data/phantom/orientation/train"
    test_root: str | None = "data/phantom/orientation/test"
    image_size: ImageSize = 96
    labels: str = "labels.csv"
    images: str = "images"
    extra_train: list[str] = Field(default_factory=list)  # labelled folders added to every training fold, never validated
    crop: float = Field(0.8, gt=0, le=1)      # training crops keep 80-100 % of each side (the film's framing varies)
    min_side_prob: float = Field(0.5, gt=0, lt=1)  # as a fallback the side is "uncertain" below this probability
    cache_dir: str | None = None

    @field_validator("extra_train")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("a folder is listed twice")
        return value


SPEC = TaskSpec(
    name="orientation",
    title="which hand(s) and the quarter turn to stand it up (SHS_NET's 12 classes)",
    data=OrientationData,
    metric="accuracy",
    mode="max",
    metric_label="accuracy",
    default_loss={"ce": 1.0},
    implementation="tasks.orientation.task:OrientationTask",
    ensemble="tasks.orientation.ensemble:SIDE",
    submission=SubmissionFormat(
        columns="img_id,label",
        matches=lambda header: header[:2] == ["img_id", "label"],
        score="tasks.orientation.scoring:score",
    ),
    per_item=("class", "accuracy"),
    fusion=("mean", "median", "weighted"),
    order=3,
)
