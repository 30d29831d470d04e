import numpy as np
import pytest

from tasks.metrics import dice_per_class
from tasks.segmentation.masks import probs_to_masks, resolve_thresholds


def test_dice_hand_computed():
    pred = np.zeros((3, 4, 4), np.uint8)
    gt = np.zeros((3, 4, 4), np.uint8)
    pred[0, :2, :2] = 1          # 4 px
    gt[0, :2, :] = 1             # 8 px, overlap 4 -> 2*4/12
    gt[1, 0, 0] = 1              # class 1: empty prediction, non-empty truth -> 0
    # class 2: empty/empty -> 1
    np.testing.assert_allclose(dice_per_class(pred, gt), [8 / 12, 0.0, 1.0])


def test_dice_batched_and_shape_mismatch():
    a = np.ones((2, 1, 3, 3), np.uint8)
    b = np.zeros((2, 1, 3, 3), np.uint8)
    b[1] = 1
    np.testing.assert_allclose(dice_per_class(a, b), [[0.0], [1.0]])
    with pytest.raises(ValueError, match="shape"):
        dice_per_class(a, b[:, :, :2])


def test_thresholds_forms():
    assert resolve_thresholds(0.3).shape == (29,)
    t = resolve_thresholds({"Radius": 0.7})
    assert t[27] == pytest.approx(0.7) and t[0] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown"):
        resolve_thresholds({"Radus": 0.7})
    with pytest.raises(ValueError, match="29"):
        resolve_thresholds([0.5, 0.5])


def test_probs_to_masks_upsamples_and_thresholds_per_class():
    probs = np.zeros((2, 2, 2), np.float32)
    probs[0] = [[0.9, 0.1], [0.9, 0.1]]
    probs[1] = 0.6
    masks = probs_to_masks(probs, (4, 4), np.array([0.5, 0.7], np.float32))
    assert masks.shape == (2, 4, 4)
    np.testing.assert_array_equal(masks[0, :, 0], 1)
    np.testing.assert_array_equal(masks[0, :, 3], 0)
    assert masks[1].sum() == 0
    q = probs_to_masks((probs * 255).round().astype(np.uint8), (4, 4), np.array([0.5, 0.5], np.float32))
    assert q[1].all()
