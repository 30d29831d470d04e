"""Hand-bone segmentation: 29 overlapping bones, one sigmoid per class (multilabel, never softmax).

Data: the boostcamp layout (``DCM/IDxxx/*.png`` + ``outputs_json/IDxxx/*.json``, :mod:`tasks.formats.handbones`),
folds grouped by patient. Metric: Dice per class per image at the ORIGINAL image size, empty/empty = 1,
mean over images then over classes. Submission: ``image_name,class,rle``. This module is the task's spec
(torch-free); the torch side is :mod:`tasks.segmentation.task`, the ensemble side
:mod:`tasks.segmentation.ensemble`.
"""
from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator

from tasks.formats.handbones import CLASSES
from tasks.roi import RoiConfig
from tasks.schema import MIN_IMAGE_SIZE, DataBase, image_hw, size_text
from tasks.spec import SubmissionFormat, TaskSpec


class SegmentationData(DataBase):
    root: str = "data/phantom/handbones/train"
    test_root: str | None = "data/phantom/handbones/test"
    val_at_train_size: bool = False
    cache_dir: str | None = None
    roi: RoiConfig | None = None   # set: a stage-2 wrist-ROI run (crops at image_size; tasks.roi)
    # set: train on random crops of this side from the full-size image (tasks.segmentation.patches), validate and
    # predict in tiles of it at the original size (inference.sliding_window: true); image_size then plays no part
    patch_size: int | None = Field(None, ge=MIN_IMAGE_SIZE)
    patch_foreground: float = Field(0.33, ge=0, le=1)  # share of the crops centred on a foreground pixel

    @field_validator("patch_size")
    @classmethod
    def _patches_alone(cls, patch: int | None, info: ValidationInfo) -> int | None:
        if patch is not None and info.data.get("roi") is not None:
            raise ValueError("a stage-2 wrist-ROI run (data.roi) trains on its ROI crops; patches are for whole hands")
        if patch is not None and info.data.get("val_at_train_size"):
            raise ValueError("a patch-trained run validates in tiles at the original size; leave "
                             "data.val_at_train_size false")
        return patch

    @property
    def trains_on_patches(self) -> bool:
        return self.patch_size is not None

    @property
    def input_size(self) -> int | tuple[int, int]:
        return self.patch_size or self.image_size

    @field_validator("roi")
    @classmethod
    def _square_roi(cls, roi: RoiConfig | None, info: ValidationInfo) -> RoiConfig | None:
        """A stage-2 wrist-ROI run crops square boxes around the wrist: its input is square."""
        size = info.data.get("image_size")
        if roi is not None and size is not None and len(set(image_hw(size))) > 1:
            raise ValueError(f"a stage-2 wrist-ROI run crops square boxes, so data.image_size is one side, not "
                             f"{size_text(size)} (height x width); e.g. {max(image_hw(size))}")
        return roi


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
