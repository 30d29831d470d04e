"""Bone age: months from a hand radiograph and the patient's sex (RSNA 2017 format).

Data: ``id,boneage,male`` CSVs and ``<images>/<id>.png`` (:mod:`tasks.formats.rsna`), each image preprocessed
(:mod:`tasks.preprocess`) and letterboxed to ``image_size``. Metric: MAE in months. Submission: ``id,boneage``.
This module is the task's spec (torch-free); the torch side is :mod:`tasks.boneage.task`, the ensemble side
:mod:`tasks.boneage.ensemble`.
"""
from __future__ import annotations

from pydantic import Field

from tasks.schema import ResizeMode
from tasks.schema import PreprocessConfig
from tasks.schema import DataBase
from tasks.spec import SubmissionFormat, TaskSpec


class BoneAgeData(DataBase):
    """``data`` of a bone-age run. CSV and image paths are relative to ``root`` (test ones to
    ``test_root``, default ``root``) unless absolute."""

    root: str = "data/phantom/boneage"
    train_csv: str = "boneage-training-dataset.csv"
    train_images: str = "boneage-training-dataset"
    test_csv: str = "boneage-test-dataset.csv"
    test_images: str = "boneage-test-dataset"
    resize: ResizeMode = "letterbox"
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    # Age normalisation (months); defaults: the RSNA 2017 training set (12,611 hands). Phantom ages are
    # uniform over 1-228 months (mean 114.5, sd 65.8).
    target_mean: float = 127.3
    target_std: float = Field(41.2, gt=0)
    stratify: bool = True
    cache_dir: str | None = None


SPEC = TaskSpec(
    name="boneage",
    title="bone age in months from a hand radiograph and the sex (RSNA 2017)",
    data=BoneAgeData,
    metric="mae_months",
    mode="min",
    metric_label="MAE (months)",
    default_loss={"l1": 1.0},
    implementation="tasks.boneage.task:BoneAgeTask",
    ensemble="tasks.boneage.ensemble:SIDE",
    pseudo="tasks.boneage.pseudo:SIDE",
    submission=SubmissionFormat(
        columns="id,boneage",
        matches=lambda header: header[:2] == ["id", "boneage"],
        score="tasks.boneage.scoring:score",
    ),
    per_item=("age band", "MAE months"),
    regression=True,
    order=2,
)
