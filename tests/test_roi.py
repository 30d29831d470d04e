"""Two-stage wrist ROI: crop box, crop/paste geometry, the stage-2 dataset and two-stage inference."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from tasks.formats.handbones import CLASSES, WRIST_CLASSES
from tasks.roi import (ROI_CLASSES, RoiConfig, box_from_masks, box_from_probs, crop, crop_masks, fallback_box, paste,
                       scale_box, square_box)


def roundtrip(image: np.ndarray, box, size: int, fill: float = -1.0) -> np.ndarray:
    out = np.full((1, *image.shape), fill, np.float32)
    return paste(out, crop(image, box, size)[None], box)[0]


def test_scale_one_crop_then_paste_is_exact_inside_and_untouched_outside():
    rng = np.random.default_rng(0)
    image = rng.random((100, 120)).astype(np.float32)
    box = (30, 36, 94, 100)
    back = roundtrip(image, box, 64)
    inside = np.zeros_like(image, bool)
    inside[36:100, 30:94] = True
    np.testing.assert_array_equal(back[inside], image[inside])
    assert (back[~inside] == -1).all()


@pytest.mark.parametrize("factor", [2, 4])
def test_integer_scale_roundtrip_keeps_constants_exactly_and_linear_ramps_inside(factor):
    const = np.full((256, 256), 0.625, np.float32)
    box = (64, 96, 64 + 32 * factor, 96 + 32 * factor)
    back = roundtrip(const, box, 32)
    x0, y0, x1, y1 = box
    np.testing.assert_array_equal(back[y0:y1, x0:x1], 0.625)
    assert (back[:y0] == -1).all() and (back[y1:] == -1).all()
    assert (back[:, :x0] == -1).all() and (back[:, x1:] == -1).all()
    ramp = np.tile(np.arange(256, dtype=np.float32) / 256, (256, 1))
    back = roundtrip(ramp, box, 32)
    inner = (slice(y0 + factor, y1 - factor), slice(x0 + factor, x1 - factor))  # borders clamp, as cv2 does
    np.testing.assert_allclose(back[inner], ramp[inner], atol=1e-5)


def test_box_from_masks_is_square_with_margin_and_centred():
    masks = np.zeros((2, 200, 200), np.uint8)
    masks[0, 80:100, 60:100] = 1   # 40 wide, 20 high
    masks[1, 100:110, 90:100] = 1  # union: x 60..100, y 80..110
    box = box_from_masks(masks, margin=0.25)
    x0, y0, x1, y1 = box
    assert x1 - x0 == y1 - y0 == 60  # longest side 40 x (1 + 2 * 0.25)
    assert (x0 + x1) / 2 == 80 and (y0 + y1) / 2 == 95


def test_boxes_at_image_borders_move_inside_and_stay_square():
    masks = np.zeros((1, 100, 150), np.uint8)
    masks[0, 90:100, 140:150] = 1  # bottom-right corner
    x0, y0, x1, y1 = box_from_masks(masks, margin=1.0)
    assert (x1 - x0, y1 - y0) == (30, 30) and (x1, y1) == (150, 100)
    masks[0] = 0
    masks[0, 0:5, 0:5] = 1
    assert box_from_masks(masks, margin=0.4) == (0, 0, 9, 9)
    # larger than the shorter side: shrunk to it, still inside
    assert square_box((-50, -50, 400, 300), 0.0, (100, 150)) in [(x, 0, x + 100, 100) for x in range(51)]
    # a crop of a border box has the full crop size and its masks come back
    crop_m = crop_masks(masks, (0, 0, 9, 9), 18)
    assert crop_m.shape == (1, 18, 18) and crop_m[0, :10, :10].all() and not crop_m[0, 10:, 10:].any()


def test_empty_stage1_gives_the_fallback_box_without_crashing():
    shape = (300, 200)
    for probs in (np.zeros((8, 64, 64), np.float32), np.full((8, 64, 64), 0.4, np.float32),
                  np.zeros((8, 64, 64), np.uint8)):
        box = box_from_probs(probs, np.full(8, 0.5), 0.2, shape)
        assert box == fallback_box(shape) == (50, 200, 150, 300)  # lower centre, half the shorter side
    assert box_from_masks(np.zeros((3, 20, 20), bool), 0.2) is None


def test_box_from_probs_matches_the_masks_box_and_scales_from_a_smaller_map():
    masks = np.zeros((2, 256, 256), np.uint8)
    masks[0, 120:160, 100:140] = 1
    probs = masks.astype(np.float32) * 0.9
    assert box_from_probs(probs, np.array([0.5, 0.5]), 0.2, (256, 256)) == box_from_masks(masks, 0.2)
    small = probs[:, ::4, ::4]  # the same bone on a 64 px map of the 256 px image
    assert box_from_probs(small, np.array([0.5, 0.5]), 0.2, (256, 256)) == box_from_masks(masks, 0.2)
    # uint8 probabilities (the cache's p*255) against per-class thresholds
    q = (probs * 255).astype(np.uint8)
    assert box_from_probs(q, np.array([0.95, 0.5]), 0.0, (256, 256)) == fallback_box((256, 256))


def test_scale_box_maps_edges():
    assert scale_box((100, 200, 300, 400), (1000, 1000), (500, 500)) == (50, 100, 150, 200)
    assert scale_box((3, 3, 4, 4), (10, 10), (2, 2)) == (1, 1, 2, 2)  # never empty
    assert scale_box((9, 8, 10, 10), (10, 10), (2, 2)) == (1, 1, 2, 2)  # never outside


def test_roi_config_defaults_and_errors():
    roi = RoiConfig()
    assert tuple(roi.classes) == ROI_CLASSES and tuple(roi.box_classes) == WRIST_CLASSES
    assert roi.class_indices == list(range(19, 29))
    with pytest.raises(ValueError, match="unknown class 'Scaphiod'"):
        RoiConfig(classes=["Scaphiod"])
    with pytest.raises(ValueError, match="twice"):
        RoiConfig(classes=["Radius", "Radius"])


def test_roi_dataset_crops_the_ground_truth_box(phantom, tmp_path):
    from tasks.cache import SampleCache
    from tasks.formats.handbones import list_samples, read_masks
    from tasks.roi_dataset import RoiDataset

    samples = list_samples(phantom / "handbones" / "train")[:6]
    roi = RoiConfig(margin=0.2, jitter=0.2)
    ds = RoiDataset(samples, 32, roi, cache=SampleCache(tmp_path), jitter=False)
    jittered = RoiDataset(samples, 32, roi, cache=SampleCache(tmp_path), seed=3, jitter=True)
    for i, s in enumerate(samples):
        item = ds[i]
        assert item["image"].shape == (1, 32, 32) and item["masks"].shape == (10, 32, 32)
        full = read_masks(s.label_path, 128, 128)
        box = box_from_masks(full[roi.box_indices], 0.2) or fallback_box((128, 128))
        assert tuple(item["box"].tolist()) == box
        np.testing.assert_array_equal(item["masks"].numpy(), crop_masks(full[roi.class_indices], box, 32))
        x0, y0, x1, y1 = jittered[i]["box"].tolist()
        assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128 and x1 - x0 == y1 - y0
    jittered.set_epoch(1)
    assert any(jittered[i]["box"].tolist() != ds[i]["box"].tolist() for i in range(len(samples)))


class Constant(torch.nn.Module):
    """A "model" whose logits are fixed per channel (input ignored, output at the input size)."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.logits = torch.tensor(logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.view(1, -1, 1, 1).expand(x.shape[0], -1, *x.shape[-2:]).clone()


def two_stage(stage1_logits: list[float], roi: RoiConfig, size1: int = 32, size2: int = 32):
    from engine.config import load_config
    from engine.predictor import LoadedModel, Predictor
    from engine.roi_predictor import TwoStagePredictor
    from tasks.tta import View

    base = {"task": "segmentation", "data": {"root": "x", "image_size": size1}}
    cfg1 = load_config(None, base)
    cfg2 = load_config(None, {**base, "data": {"root": "x", "image_size": size2, "roi": roi.model_dump()}})
    first = LoadedModel(Constant(stage1_logits), cfg1, "s1")
    second = LoadedModel(Constant([3.0] * len(roi.classes)), cfg2, "s2")
    cpu = torch.device("cpu")
    predictor = TwoStagePredictor(Predictor(first, [View()], cpu), Predictor(second, [View()], cpu))
    return lambda image: predictor(second.task.image_batch(image, size1))[0]


def test_two_stage_pastes_roi_classes_in_the_box_and_keeps_stage1_elsewhere():
    roi = RoiConfig(classes=["Capitate", "Radius"], box_classes=["Capitate"], margin=0.0)
    logits = [-3.0] * 29
    logits[CLASSES.index("Capitate")] = 2.0  # stage 1 sees the capitate everywhere: the box is the whole image
    source = two_stage(logits, roi, size2=64)  # crop resolution = image resolution: the map at full size
    out = source(np.zeros((64, 64), np.uint8))
    assert out.dtype == np.uint8 and out.shape == (29, 64, 64)
    p2, p1_low, p1_cap = round(255 / (1 + np.exp(-3))), round(255 / (1 + np.exp(3))), round(255 / (1 + np.exp(-2)))
    assert (out[CLASSES.index("Capitate")] == p2).all() and (out[CLASSES.index("Radius")] == p2).all()
    others = [c for c in range(29) if CLASSES[c] not in ("Capitate", "Radius")]
    assert (out[others] == p1_low).all()
    assert p1_cap != p2


def test_two_stage_with_empty_stage1_uses_the_fallback_box_only():
    roi = RoiConfig(classes=["Lunate"], box_classes=["Lunate"])
    source = two_stage([-3.0] * 29, roi)  # stage 1 finds nothing
    image = np.zeros((64, 96), np.uint8)
    out = source(image)
    lunate = out[CLASSES.index("Lunate")]
    x0, y0, x1, y1 = fallback_box(image.shape)
    inside = np.zeros(image.shape, bool)
    inside[y0:y1, x0:x1] = True
    assert out.shape[1:] == image.shape
    assert (lunate[inside] == round(255 / (1 + np.exp(-3)))).all()
    assert (lunate[~inside] == round(255 / (1 + np.exp(3)))).all()


def test_map_shape_keeps_the_finer_of_both_stages():
    from engine.roi_predictor import map_shape

    assert map_shape((2048, 2048), (0, 0, 600, 600), 512, (512, 512)) == (2048, 2048)   # crop finer than 1/2
    assert map_shape((2048, 2048), (0, 0, 1600, 1600), 256, (512, 512)) == (512, 512)   # both coarse: 1/4
    assert map_shape((1024, 768), (0, 0, 700, 700), 256, (256, 256)) == (512, 384)


@pytest.mark.slow
def test_two_stage_inference_end_to_end(tiny_run, phantom, tmp_path):
    """A stage-2 run trains from data.roi; inference --stage1 writes a 29-class CSV and the cache; the stage-2
    run alone and as a live ensemble member is refused with the command that works."""
    import yaml

    from engine.config import load_config
    from engine.trainer import train
    from inference import main as infer

    cfg = load_config(None, {
        "task": "segmentation", "name": "roi",
        "data": {"root": str(phantom / "handbones" / "train"), "test_root": str(phantom / "handbones" / "test"),
                 "image_size": 32, "n_folds": 3, "cache_dir": str(tmp_path / "cache"), "roi": {"margin": 0.3}},
        "model": {"name": "smp:fpn/resnet18"},
        "train": {"epochs": 1, "batch_size": 4, "max_steps_per_epoch": 2},
        "logging": {"out_dir": str(tmp_path / "runs"), "progress": False},
    })
    train(cfg)
    summary = yaml.safe_load((cfg.run_dir / "summary.json").read_text())
    assert list(summary["val"]["per_item"]) == list(ROI_CLASSES)
    out = tmp_path / "two.csv"
    assert infer(["--ckpt", str(cfg.run_dir / "best.pt"), "--stage1", str(tiny_run / "best.pt"), "-o", str(out),
                  "--save-probs"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 8 * 29 and [r["class"] for r in rows[:29]] == list(CLASSES)
    cached = sorted((cfg.run_dir / "preds" / "test").glob("*.npz"))
    assert len(cached) == 8
    with np.load(cached[0]) as f:
        # the 128 px image at 1/2^k, never coarser than stage 1 (64 px)
        assert f["probs"].shape in ((29, 128, 128), (29, 64, 64)) and f["probs"].dtype == np.uint8
    assert infer(["--ckpt", str(cfg.run_dir / "best.pt"), "-o", str(tmp_path / "one.csv")]) == 2
    assert infer(["--ckpt", str(tiny_run / "best.pt"), "--stage1", str(cfg.run_dir / "best.pt"),
                  "-o", str(tmp_path / "swapped.csv")]) == 2
    assert not (tmp_path / "swapped.csv").exists()
    ens = tmp_path / "ens.yaml"
    ens.write_text(yaml.safe_dump({"task": "segmentation", "method": "weighted", "out_dir": str(tmp_path / "ens"),
                                   "members": [{"name": "a", "run": str(tiny_run)}, {"name": "roi", "run": str(cfg.run_dir)}],
                                   "weights": {"a": 1, "roi": 0}, "class_weights": {"wrist": {"roi": 1}}}))
    assert infer(["--ensemble", str(ens), "-o", str(tmp_path / "live.csv")]) == 2
