"""Radiograph preprocessing: intensity steps, hand mask, crop, ROI boxes, mosaic, pipeline, CLI."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from core.cli import run_main
from tasks.formats.dha import read_all
from tasks.formats.images import read_grey
from tasks.formats.shs import read_coords
from tasks.handmask import hand_mask, minmax
from tasks.preprocess import (ROI_NAMES, Preprocess, PreprocessConfig, clahe, crop_to_hand, letterbox, mask_box,
                              remove_background, roi_boxes, roi_mosaic)

# Digital Hand Atlas landmark order (tasks/formats/dha.py; Payer et al.) and the ROI each one must fall in.
DHA37 = ("ULNA_PHYSIS_MED", "ULNA_STYLOID", "ULNA_PHYSIS_LAT", "RADIUS_PHYSIS_MED", "RADIUS_PHYSIS_LAT",
         "RADIAL_STYLOID", "TRIQUETRUM_HAMATE", "RADIUS_LUNATE", "RADIUS_SCAPHOID", "HAMATE_LUNATE", "CAPITATE_LUNATE",
         "SCAPHOID_TRAPEZOID", "SCAPHOID_TRAPEZIUM", "CMC5", "CMC4", "CMC3", "CMC2", "CMC1", "MCP1", "IP1", "TIP1",
         "MCP2", "PIP2", "DIP2", "TIP2", "MCP3", "PIP3", "DIP3", "TIP3", "MCP4", "PIP4", "DIP4", "TIP4", "MCP5",
         "PIP5", "DIP5", "TIP5")
ROI_LANDMARKS = {
    "mcp": ("MCP2", "MCP3", "MCP4", "MCP5"),
    "middle_finger": ("MCP3", "PIP3", "DIP3"),
    "thumb": ("MCP1", "IP1", "TIP1"),
    "carpus": ("CMC2", "CMC3", "CMC4", "CMC5", "HAMATE_LUNATE", "CAPITATE_LUNATE", "SCAPHOID_TRAPEZOID",
               "RADIUS_LUNATE", "ULNA_STYLOID"),
}


def synthetic_hand(size: int = 200, background: int = 20, plate: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A bright palm + forearm + five fingers on a dark (optionally plate-lit) film; returns image and truth."""
    truth = np.zeros((size, size), np.uint8)
    cv2.ellipse(truth, (100, 120), (38, 42), 0, 0, 360, 1, -1)
    cv2.rectangle(truth, (80, 150), (120, 199), 1, -1)
    for x0, top in ((66, 40), (84, 25), (102, 22), (120, 35)):
        cv2.rectangle(truth, (x0, top), (x0 + 12, 110), 1, -1)
    cv2.line(truth, (135, 125), (170, 90), 1, 12)
    image = np.full((size, size), background, np.uint8)
    if plate is not None:
        image[10:190, 10:190] = plate
    image[truth.astype(bool)] = 150
    rng = np.random.default_rng(0)
    noisy = image.astype(np.int16) + rng.integers(-4, 5, image.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8), truth.astype(bool)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_minmax_matches_hand_computed_values():
    image = np.array([[10, 20], [30, 50]], np.uint8)
    assert minmax(image).tolist() == [[0, 64], [128, 255]]   # (v - 10) * 255 / 40, rounded
    flat = np.full((4, 4), 7, np.uint8)
    assert not minmax(flat).any()
    mask = np.array([[False, True], [True, False]])
    assert minmax(image, mask=mask).tolist() == [[0, 0], [255, 255]]   # range of the masked pixels 20..30


def test_clahe_raises_local_contrast():
    rng = np.random.default_rng(1)
    image = (100 + 10 * rng.standard_normal((128, 128))).clip(0, 255).astype(np.uint8)
    out = clahe(image, clip_limit=4.0)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert out.std() > 1.5 * image.std()


@pytest.mark.parametrize("plate", [None, 70])
def test_hand_mask_finds_the_hand_on_dark_film_and_on_a_plate(plate):
    image, truth = synthetic_hand(plate=plate)
    mask = hand_mask(image)
    assert iou(mask, truth) > 0.9


def test_hand_mask_ignores_saturated_border_artifacts():
    image, truth = synthetic_hand()
    image[:, 185:] = 255                       # a white film edge along the right border
    cv2.fillPoly(image, [np.array([[0, 0], [60, 0], [0, 60]])], 255)   # a collimator corner
    assert iou(hand_mask(image), truth) > 0.9


def test_crop_and_background_removal():
    image, truth = synthetic_hand()
    mask = hand_mask(image)
    cropped, box = crop_to_hand(image, mask, margin=0.05, background=False)
    x0, y0, x1, y1 = box
    ys, xs = np.nonzero(truth)
    assert x0 <= xs.min() and y0 <= ys.min() and x1 > xs.max() and y1 > ys.max()
    assert cropped.shape == (y1 - y0, x1 - x0)
    blank = remove_background(image, mask, grow_by=0.0)
    assert not blank[~mask].any() and (blank[mask] == image[mask]).all()
    assert mask_box(np.zeros((5, 7), bool)) == (0, 0, 7, 5)


def test_letterbox_and_mosaic_shapes():
    image = np.full((30, 10), 200, np.uint8)
    out = letterbox(image, 60)
    assert out.shape == (60, 60) and out[:, :20].max() == 0 and out[:, 20:40].min() == 200
    boxes = {name: (0, 0, 10, 10 + 5 * k) for k, name in enumerate(ROI_NAMES)}
    mosaic = roi_mosaic(np.full((40, 40), 9, np.uint8), boxes, tile=32)
    assert mosaic.shape == (64, 64)


def test_pipeline_config_is_strict_and_tagged():
    with pytest.raises(ValidationError):
        PreprocessConfig.model_validate({"clahe_clipp": 2})
    with pytest.raises(ValidationError):
        PreprocessConfig.model_validate({"orientation": "sideways"})
    a, b = Preprocess({"clahe": True}), Preprocess({"clahe": True, "clahe_clip": 3.0})
    assert a.tag != b.tag and a.tag == Preprocess({"clahe": True}).tag
    image, _ = synthetic_hand()
    assert Preprocess().identity and np.array_equal(Preprocess()(image), image)


def test_real_landmarks_fall_inside_the_mask_and_the_crop(real_data):
    """Every SHS_NET joint and every DHA landmark lies in the crop; in the mask, all SHS_NET joints and all
    but the faintest DHA fingertips (within 2% of the image size of it)."""
    shs = real_data / "shs_net_joints15"
    ids, coords = read_coords(shs / "coord_list.csv")
    for name, xy in zip(ids, coords):
        image = read_grey(shs / "images" / name)
        mask = hand_mask(image)
        x0, y0, x1, y1 = mask_box(mask, 0.05)
        p = np.round(xy).astype(int)
        assert mask[p[:, 1], p[:, 0]].all(), name
        assert ((xy[:, 0] >= x0) & (xy[:, 0] < x1) & (xy[:, 1] >= y0) & (xy[:, 1] < y1)).all(), name
    dha = real_data / "dha_hand_landmarks37"
    ids, coords = read_all(dha / "all.csv")
    outside = 0
    for path in sorted((dha / "images").glob("*.png")):
        xy = coords[ids.index(path.stem)]
        image = read_grey(path)
        mask = hand_mask(image)
        x0, y0, x1, y1 = mask_box(mask, 0.05)
        assert ((xy[:, 0] >= x0) & (xy[:, 0] < x1) & (xy[:, 1] >= y0) & (xy[:, 1] < y1)).all(), path.name
        p = np.round(xy).astype(int)
        gap = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, 3)[p[:, 1], p[:, 0]]
        assert gap.max() <= 0.02 * max(image.shape), path.name
        outside += int((gap > 0).sum())
    assert outside <= 4   # of 6 x 37 = 222 landmarks


def test_roi_boxes_hold_their_landmarks_on_real_hands(real_data):
    dha = real_data / "dha_hand_landmarks37"
    ids, coords = read_all(dha / "all.csv")
    misses = []
    for path in sorted((dha / "images").glob("*.png")):
        xy = coords[ids.index(path.stem)]
        boxes = roi_boxes(hand_mask(read_grey(path)))
        for roi, names in ROI_LANDMARKS.items():
            x0, y0, x1, y1 = boxes[roi]
            for n in names:
                x, y = xy[DHA37.index(n)]
                if not (x0 <= x < x1 and y0 <= y < y1):
                    misses.append((path.stem, roi, n))
    assert not misses   # 6 hands x 19 landmark-in-box checks


def test_pipeline_on_real_rsna_images_including_palette(real_data):
    images = sorted((real_data / "rsna_boneage" / "images").glob("*.png"))
    from PIL import Image

    palette = [p for p in images if Image.open(p).mode == "P"]
    assert palette, "the shared RSNA set holds palette PNGs"
    pre = Preprocess({"crop_to_hand": True, "remove_background": True, "minmax": True, "clahe": True})
    for path in palette + images[:2]:
        image = read_grey(path)
        out = pre.run(image)
        x0, y0, x1, y1 = out.box
        assert out.image.shape == (y1 - y0, x1 - x0)
        assert 0.3 < out.image.shape[0] * out.image.shape[1] / image.size <= 1.0   # a hand, not a speck
        assert out.image.max() == 255
    mosaic = Preprocess({"roi_mosaic": True, "mosaic_tile": 64})(read_grey(images[0]))
    assert mosaic.shape == (128, 128)


def test_cli_writes_images_table_and_sheet(tmp_path):
    from tools.preprocess import main

    src = tmp_path / "in"
    src.mkdir()
    image, _ = synthetic_hand()
    cv2.imwrite(str(src / "a.png"), image)
    cv2.imwrite(str(src / "b.png"), image[:, ::-1])
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    out = tmp_path / "out"
    rc = main([str(src), str(out), "--crop-to-hand", "--minmax", "--size", "64", "--contact-sheet",
               str(tmp_path / "sheet.png")])
    assert rc == 1   # the broken file is reported and skipped
    assert read_grey(out / "a.png").shape == (64, 64)
    table = (out / "preprocess.csv").read_text().splitlines()
    assert len(table) == 3 and table[0].startswith("image,output")
    assert read_grey(tmp_path / "sheet.png").shape[0] > 0
    assert run_main(main, [str(tmp_path / "missing"), str(out)]) == 2
