"""Two-stage wrist ROI inference: stage 1 on the whole image, stage 2 on the wrist crop, one 29-class map.

Stage 1 (any segmentation run) predicts every class; the crop box comes from its probabilities of the
stage-2 run's ``data.roi.box_classes`` (the fallback box when none passes its threshold, see
:mod:`tasks.roi`); stage 2 predicts its ROI classes on the crop; their probabilities are pasted back
inside the box, and everything else — other classes, and ROI classes outside the box — stays stage 1.

The result is an ordinary prediction: the same CSV, TTA (each stage under its own ``inference.tta``
views), and ``--save-probs`` cache, written into the stage-2 run's ``preds/<split>/``, so that run
folder is an ensemble member (``--from-cache``) and ``tools/score.py --run`` scores it.

The map has the original size divided by the largest power of two that keeps both stages' detail (the
crop's resolution inside the box, stage 1's elsewhere): stage 2's crops exist to keep small bones at a
higher resolution than stage 1, and a map at stage 1's size would throw that away before the CSV. It is
uint8 ``p * 255``, the cache's form: 29 MB an image at 1024², 121 MB at 2048² when the crop needs full
resolution.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

from engine.config import Config
from engine.predictor import LoadedModel, Predictor, load_model, predict_run, to_device
from tasks.roi import Box, RoiConfig, box_from_probs, crop, paste, scale_box
from tasks.spec import MODE_RESIZE
from tasks.tta import views_from_config


def map_shape(shape: tuple[int, int], box: Box, crop_size: int, stage1_shape: tuple[int, int]) -> tuple[int, int]:
    """``shape`` halved as often as the map keeps at least the crop's pixels per image pixel inside
    ``box`` and stage 1's (its map's ``(height, width)``: square, or not) along either axis elsewhere (never above
    ``shape``)."""
    height, width = shape
    need = min(1.0, max(crop_size / (box[2] - box[0]), stage1_shape[0] / height, stage1_shape[1] / width))
    factor = 1
    while need * factor * 2 <= 1.0:
        factor *= 2
    return max(1, round(height / factor)), max(1, round(width / factor))


def quantize(prob: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(prob * 255), 0, 255).astype(np.uint8)


class TwoStagePredictor:
    """A batch of one image → ``(1, 29, h, w)`` uint8 probabilities: stage 1 everywhere, stage 2 pasted in the
    wrist box. ``stage1`` and ``stage2`` are predictors of the two runs, each under its own TTA views."""

    mode = MODE_RESIZE

    def __init__(self, stage1: Predictor, stage2: Predictor) -> None:
        self.stage1, self.stage2 = stage1, stage2
        roi: RoiConfig = stage2.member.cfg.data.roi
        self.roi = roi
        self.box_thresholds = np.asarray(stage1.task.thresholds, np.float32)[roi.box_indices]
        self.task = stage2.task

    def predict_crop(self, image: np.ndarray, box: Box) -> np.ndarray:
        """Stage-2 probabilities ``(K, s, s)`` of the crop of ``image`` at ``box``."""
        size = self.stage2.member.image_size
        batch = to_device(self.task.image_batch(crop(image, box, size), None), self.stage2.device)
        return self.stage2(batch)[0].float().cpu().numpy()

    def __call__(self, batch: dict) -> np.ndarray:
        image = batch["raw"][0]
        shape = image.shape[:2]
        p1 = self.stage1(batch)[0].float().cpu().numpy()
        box = box_from_probs(p1[self.roi.box_indices], self.box_thresholds, self.roi.margin, shape)
        out_shape = map_shape(shape, box, self.stage2.member.image_size, p1.shape[-2:])
        out = np.empty((p1.shape[0], *out_shape), np.uint8)
        for c, prob in enumerate(p1):
            if prob.shape != out_shape:
                prob = cv2.resize(prob, (out_shape[1], out_shape[0]), interpolation=cv2.INTER_LINEAR)
            out[c] = quantize(prob)
        p2 = quantize(self.predict_crop(image, box))
        out_box = scale_box(box, shape, out_shape)
        for k, c in enumerate(self.roi.class_indices):
            paste(out[c:c + 1], p2[k:k + 1], out_box)
        return out[None]

    def batches(self, samples: Sequence[Any], progress: bool = False) -> Iterator[tuple[dict, np.ndarray]]:
        for batch in tqdm(self.task.batches(samples, self.stage1.member.image_size), total=len(samples),
                          desc="predict", disable=not progress, dynamic_ncols=True):
            batch = to_device(batch, self.stage1.device)
            yield batch, self(batch)


def check_stages(stage1: LoadedModel, stage2: LoadedModel, split: str) -> None:
    """Stage 2 is a ``data.roi`` run, stage 1 an ordinary segmentation run; for ``--split val`` both hold
    out the same images (else stage 1 would be scored on images it trained on)."""
    if "roi" not in stage2.cfg.spec.modes or stage2.cfg.data.roi is None:
        raise ValueError(f"{stage2.source}: not a stage-2 wrist-ROI run (its config has no data.roi)")
    if stage1.cfg.task != stage2.cfg.task or stage1.cfg.data.roi is not None:
        raise ValueError(f"{stage1.source}: --stage1 needs an ordinary segmentation run (whole images, 29 classes)")
    if split == "val":
        a, b = stage1.cfg.data, stage2.cfg.data
        if (a.root, a.n_folds, a.fold) != (b.root, b.n_folds, b.fold):
            raise ValueError(f"{stage1.source}: --split val needs stage 1 and stage 2 on the same folds "
                             f"(stage 1: {a.root} fold {a.fold}/{a.n_folds}, stage 2: {b.root} fold {b.fold}/{b.n_folds})")


def two_stage(stage1: LoadedModel, stage2: LoadedModel, tta: bool, device: torch.device, split: str
              ) -> TwoStagePredictor:
    """The two-stage predictor of a stage-1 and a stage-2 run (checked), each under its own ``inference.tta``."""
    check_stages(stage1, stage2, split)
    return TwoStagePredictor(Predictor(stage1, views_from_config(stage1.cfg.inference.tta, enabled=tta), device),
                             Predictor(stage2, views_from_config(stage2.cfg.inference.tta, enabled=tta), device))


def predict_two_stage(cfg: Config | None, ckpt: str | os.PathLike, *, stage1: str | os.PathLike, out_csv: str | Path,
                      split: str = "test", tta: bool = False, save_probs_dir: str | Path | None = None,
                      device: str = "auto", workers: int | None = None, progress: bool = True) -> dict:
    """Predict stage 1 + the stage-2 run ``ckpt`` (``inference.py --stage1``) like any run; returns images,
    seconds, images/s and the CSV. The stage-2 run's config says where the images are and the thresholds of the
    final map; its summary.json records the stage 1 it was predicted with."""
    return predict_run(cfg, ckpt, out_csv=out_csv, split=split, tta=tta, save_probs_dir=save_probs_dir, device=device,
                       workers=workers, progress=progress, stage1=str(Path(stage1).parent),
                       make_predictor=lambda member, dev: two_stage(load_model(stage1, dev), member, tta, dev, split))
