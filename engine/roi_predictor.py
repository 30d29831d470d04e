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

from pathlib import Path

import cv2
import numpy as np
import torch

from engine.config import Config
from engine.predictor import LoadedModel, ProbabilitySource, load_model, split_samples, write_predictions
from engine.tta import View, tta_predict
from tasks.roi import Box, RoiConfig, box_from_probs, crop, paste, scale_box
from tasks.segmentation import resolve_thresholds


def map_shape(shape: tuple[int, int], box: Box, crop_size: int, stage1_size: int) -> tuple[int, int]:
    """``shape`` halved as often as the map keeps at least the crop's pixels per image pixel inside
    ``box`` and stage 1's elsewhere (never above ``shape``)."""
    height, width = shape
    need = min(1.0, max(crop_size / (box[2] - box[0]), stage1_size / min(height, width)))
    factor = 1
    while need * factor * 2 <= 1.0:
        factor *= 2
    return max(1, round(height / factor)), max(1, round(width / factor))


def quantize(prob: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(prob * 255), 0, 255).astype(np.uint8)


class TwoStageSource:
    """``image -> (29, h, w)`` uint8 probabilities: stage 1 everywhere, stage 2 pasted in the wrist box."""

    def __init__(self, stage1: ProbabilitySource, stage1_thresholds: np.ndarray, stage2: LoadedModel,
                 views: list[View], device: torch.device, amp: torch.dtype | None = None) -> None:
        roi: RoiConfig = stage2.cfg.data.roi
        self.stage1 = stage1
        self.roi = roi
        self.box_thresholds = np.asarray(stage1_thresholds, np.float32)[roi.box_indices]
        self.stage2 = stage2
        self.views = views
        self.device = device
        self.amp = amp

    @torch.no_grad()
    def predict_crop(self, image: np.ndarray, box: Box) -> np.ndarray:
        """Stage-2 probabilities ``(K, s, s)`` of the crop of ``image`` at ``box``."""
        size = self.stage2.image_size
        x = torch.from_numpy(crop(image, box, size).astype(np.float32)).div_(255)[None, None].to(self.device)
        ctx = torch.autocast(self.device.type, dtype=self.amp) if self.amp else torch.autocast("cpu", enabled=False)
        with ctx:
            prob = tta_predict(self.stage2.model, x, self.views)[0]
        return prob.float().cpu().numpy()

    def __call__(self, image: np.ndarray) -> np.ndarray:
        shape = image.shape[:2]
        p1 = self.stage1(image)
        box = box_from_probs(p1[self.roi.box_indices], self.box_thresholds, self.roi.margin, shape)
        out_shape = map_shape(shape, box, self.stage2.image_size, p1.shape[-1])
        out = np.empty((p1.shape[0], *out_shape), np.uint8)
        for c, prob in enumerate(p1):
            if prob.shape != out_shape:
                prob = cv2.resize(prob, (out_shape[1], out_shape[0]), interpolation=cv2.INTER_LINEAR)
            out[c] = quantize(prob)
        p2 = quantize(self.predict_crop(image, box))
        out_box = scale_box(box, shape, out_shape)
        for k, c in enumerate(self.roi.class_indices):
            paste(out[c:c + 1], p2[k:k + 1], out_box)
        return out


def check_stages(stage1: LoadedModel, stage2: LoadedModel, split: str) -> None:
    """Stage 2 is a ``data.roi`` run, stage 1 an ordinary segmentation run; for ``--split val`` both hold
    out the same images (else stage 1 would be scored on images it trained on)."""
    if stage2.cfg.task != "segmentation" or stage2.cfg.data.roi is None:
        raise ValueError(f"{stage2.source}: not a stage-2 wrist-ROI run (its config has no data.roi)")
    if stage1.cfg.task != "segmentation" or stage1.cfg.data.roi is not None:
        raise ValueError(f"{stage1.source}: --stage1 needs an ordinary segmentation run (whole images, 29 classes)")
    if split == "val":
        a, b = stage1.cfg.data, stage2.cfg.data
        if (a.root, a.n_folds, a.fold) != (b.root, b.n_folds, b.fold):
            raise ValueError(f"{stage1.source}: --split val needs stage 1 and stage 2 on the same folds "
                             f"(stage 1: {a.root} fold {a.fold}/{a.n_folds}, stage 2: {b.root} fold {b.fold}/{b.n_folds})")


def predict_two_stage(cfg: Config | None, ckpt: str | Path, *, stage1: str | Path, out_csv: str | Path,
                      split: str = "test", tta: bool = False, save_probs_dir: str | Path | None = None,
                      device: str = "auto", workers: int | None = None, progress: bool = True) -> dict:
    """Predict stage 1 + the stage-2 run ``ckpt``; returns ``{"images", "seconds", "images_per_s", "csv"}``.
    The stage-2 run's config says where the images are and the thresholds of the final map."""
    from engine.device import amp_dtype, pick_device, post_workers
    from engine.tta import views_from_config

    dev = pick_device(device)
    second = load_model(ckpt, dev, cfg)
    first = load_model(stage1, dev)
    check_stages(first, second, split)
    cfg = second.cfg
    samples = split_samples(cfg, split)
    source1 = ProbabilitySource([first], views_from_config(first.cfg.inference.tta, enabled=tta), dev,
                                amp=amp_dtype(first.cfg.train.amp, dev))
    views = views_from_config(cfg.inference.tta, enabled=tta)
    source = TwoStageSource(source1, resolve_thresholds(first.cfg.inference.threshold), second, views, dev,
                            amp=amp_dtype(cfg.train.amp, dev))
    return write_predictions(cfg, ckpt, samples, source, out_csv=out_csv, split=split, save_probs_dir=save_probs_dir,
                             workers=post_workers(cfg.inference.post_workers if workers is None else workers, dev),
                             progress=progress, speed_key="images_per_s_tta" if tta and len(views) > 1 else "images_per_s",
                             stage1=str(Path(stage1).parent))
