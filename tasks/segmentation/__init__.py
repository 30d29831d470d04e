"""Hand-bone segmentation: 29 overlapping bones, one sigmoid per class (multilabel, never softmax).

Data: the boostcamp layout (``DCM/IDxxx/*.png`` + ``outputs_json/IDxxx/*.json``, :mod:`tasks.formats.handbones`),
folds grouped by patient. Metric: Dice per class per image at the ORIGINAL image size, empty/empty = 1,
mean over images then over classes. Submission: ``image_name,class,rle``. This module is the task's spec
(torch-free); the torch side is :mod:`tasks.segmentation.task`, the ensemble side
:mod:`tasks.segmentation.ensemble`.
"""
from __future__ import annotations

from tasks.formats.handbones import CLASSES
from tasks.roi import RoiConfig
from tasks.schema import DataBase
from tasks.spec import SubmissionFormat, TaskSpec


class SegmentationData(DataBase):
    root: str = "data/phantom/handbones/train"
    test_root: str | None = "data/phantom/handbones/test"
    val_at_train_size: bool = False
    cache_dir: str | None = None
    roi: RoiConfig | None = None   # set: a stage-2 wrist-ROI run (crops at image_size; tasks.roi)


SPEC = TaskSpec(
    name="segmentation",
    title="29 hand bones, overlapping masks (sigmoid per class)",
    data=SegmentationData,
    metric="dice",
    mode="max",
    metric_label="Dice",
    default_loss={"bce": 1.0, "dice": 1.0},
    implementation="tasks.segmentation.task:SegmentationTask",
    ensemble="tasks.segmentation.ensemble:SIDE",
    pseudo="tasks.segmentation.pseudo:SIDE",
    submission=SubmissionFormat(
        columns="image_name,class,rle",
        matches=lambda header: header == ["image_name", "class", "rle"],
        score="tasks.segmentation.scoring:score",
        validate="tasks.segmentation.scoring:validate",
    ),
    classes=CLASSES,
    per_item=("class", "Dice"),
    fusion=("soft", "hard", "weighted"),
    thresholded=True,
    postprocess=True,
    sigmoid_outputs=True,
    modes=frozenset({"resize", "sliding_window", "roi"}),
    order=0,
)
