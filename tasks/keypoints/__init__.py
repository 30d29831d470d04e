"""Joint and landmark detection: Gaussian heatmaps, sub-pixel decoding, MRE/SDR in the original frame.

Data: a folder with ``images/`` and a label file (SHS_NET ``coord_list.csv``, DHA ``all.csv``, AASCE
``landmarks.csv``/``labels_mat/``, or a wide CSV for any landmark set: :mod:`tasks.keypoint_labels`), an
optional ``spacing.csv`` (errors in mm) and ``split.csv``. Metric: mean radial error in pixels of the
original image. Submission: the wide ``image_name,<lm>_x...,<lm>_y...`` layout. This module is the task's
spec (torch-free); the torch side is :mod:`tasks.keypoints.task`, the ensemble side
:mod:`tasks.keypoints.ensemble`.
"""
from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import Field, field_validator

from tasks.schema import ResizeMode
from tasks.schema import DataBase, Section
from tasks.spec import SubmissionFormat, TaskSpec

# How heatmaps become coordinates (tasks.heatmaps.decode_heatmaps).
DecodeMethod = Literal["dark", "softargmax", "argmax"]
# The label file's layout (tasks.keypoint_labels; auto: told from the file).
LabelFormat = Literal["auto", "wide", "dha", "aasce", "mat"]


class ClickSettings(Section):
    """``data.clicks``: how training simulates the user of a hinted model (``hint:`` models only)."""

    train_clicks: int = Field(3, ge=0)        # up to this many simulated corrections before the loss pass (uniform 0..N)
    worst_of: int = Field(10, ge=1)           # each correction picks one of the N worst points at random (1: the worst)
    initial_hints: int = Field(0, ge=0)       # up to this many random true points given as hints before the first pass
    hint_sigma: float | None = Field(None, gt=0)  # Gaussian of a hint in input pixels (None: data.sigma)
    eval_clicks: int = Field(10, ge=0)        # clicks of the evaluation protocol (tools/interactive_eval.py)


class ShapePriorSettings(Section):
    """``data.shape_prior``: replace grossly wrong landmarks by a point distribution model's estimate
    (:mod:`tasks.shape_prior`), fitted on the training fold's labels when a model is trained or loaded."""

    enabled: bool = False
    modes: int = Field(8, ge=0)              # principal modes of the shape model (at most training shapes - 1)
    factor: float = Field(5.0, gt=1)         # outlier: farther than factor x the point's training scatter
    rows_without_images: bool = True         # also fit on label rows whose image is absent (DHA all.csv: the atlas)


class KeypointData(DataBase):
    root: str = "data/phantom/joints"
    test_root: str | None = None
    landmarks: str = "shs15"
    labels: str | None = None
    label_format: LabelFormat = "auto"
    images: str = "images"
    spacing: str | None = "spacing.csv"
    split_file: str | None = "split.csv"
    resize: ResizeMode = "letterbox"
    sigma: float = Field(2.0, gt=0)
    decode: DecodeMethod = "dark"
    # DARK's modulation: Gaussian sigma (heatmap pixels) smoothing the heatmaps before the sub-pixel step.
    # "auto": the target's own sigma at the model's output stride (sigma / stride); 0 or null: no blur.
    decode_blur: Literal["auto"] | float | None = "auto"
    # SDR radii of the validation metrics; None: the landmark set's (tasks.keypoint_sets), which tools/score.py
    # also uses unless given --sdr / --sdr-mm.
    sdr_radii_px: list[Annotated[float, Field(gt=0)]] | None = None
    sdr_radii_mm: list[Annotated[float, Field(gt=0)]] | None = None
    cache_dir: str | None = None
    clicks: ClickSettings = Field(default_factory=ClickSettings)
    shape_prior: ShapePriorSettings = Field(default_factory=ShapePriorSettings)

    @field_validator("decode_blur", mode="before")
    @classmethod
    def _blur_setting(cls, value: object) -> object:
        if value is None or value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError("should be 'auto' (the target's sigma), a Gaussian sigma >= 0 in heatmap pixels, "
                             "or 0 for no blur")
        if value < 0:
            raise ValueError("Input should be greater than or equal to 0")
        return float(value)


def _is_wide_keypoints(header: list[str]) -> bool:
    return bool(header) and header[0] in ("image_name", "img_id", "id") and any(h.endswith("_x") for h in header)


SPEC = TaskSpec(
    name="keypoints",
    title="hand joints and landmarks (SHS_NET 15, DHA 37, AASCE 68): heatmaps, sub-pixel points",
    data=KeypointData,
    metric="mre_px",
    mode="min",
    metric_label="MRE (px)",
    default_loss={"kl": 1.0},
    implementation="tasks.keypoints.task:KeypointTask",
    ensemble="tasks.keypoints.ensemble:SIDE",
    pseudo="tasks.keypoints.pseudo:SIDE",
    submission=SubmissionFormat(
        columns="image_name,<lm>_x...,<lm>_y...",
        matches=_is_wide_keypoints,
        score="tasks.keypoints.scoring:score",
    ),
    per_item=("landmark", "MRE px"),
    fusion=("soft", "mean", "median", "weighted", "hard"),
    clicks=True,
    order=1,
)
