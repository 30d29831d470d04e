"""The shape prior replaces only grossly wrong landmarks, by the point the other landmarks imply."""
from __future__ import annotations

import numpy as np
import pytest

from tasks.shape_prior import ShapeModel


def _hands(n: int, seed: int = 0) -> np.ndarray:
    """``(n, 12, 2)`` toy hands: a base shape bent by two modes, then scaled, rotated and moved."""
    rng = np.random.default_rng(seed)
    base = np.array([[x, y] for x in (0.0, 1.0, 2.0, 3.0) for y in (0.0, 2.0, 4.0)])
    spread = np.array([[x - 1.5, y] for x, y in zip((0.0, 1.0, 2.0, 3.0), (0.5, 0.0, 0.0, -0.5)) for _ in range(3)])
    length = np.zeros_like(base)
    length[:, 1] = base[:, 1] / 4
    out = []
    for _ in range(n):
        shape = base + rng.normal(0, 0.3) * spread + rng.normal(0, 0.4) * length
        a, s = rng.uniform(-0.5, 0.5), rng.uniform(50, 120)
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        out.append(s * shape @ rot.T + rng.uniform(100, 400, 2))
    return np.stack(out)


def test_a_far_point_is_replaced_and_the_others_stay_exactly():
    model = ShapeModel.fit(_hands(60), n_modes=4)
    truth = _hands(1, seed=99)[0]
    noisy = truth + np.random.default_rng(1).normal(0, 0.5, truth.shape)       # a model's small errors
    wrong = noisy.copy()
    wrong[7] += [180.0, -140.0]                                                 # one point on the wrong "finger"
    fixed, replaced = model.correct(wrong)
    assert replaced.tolist() == [k == 7 for k in range(12)]
    assert np.array_equal(fixed[~replaced], wrong[~replaced])
    assert np.linalg.norm(fixed[7] - truth[7]) < 3.0 < np.linalg.norm(wrong[7] - truth[7]) / 50


def test_small_errors_move_nothing():
    model = ShapeModel.fit(_hands(60), n_modes=4)
    for seed in range(5):
        truth = _hands(1, seed=200 + seed)[0]
        noisy = truth + np.random.default_rng(seed).normal(0, 1.0, truth.shape)
        fixed, replaced = model.correct(noisy)
        assert not replaced.any() and np.array_equal(fixed, noisy)


def test_a_prediction_unlike_any_hand_is_left_alone():
    model = ShapeModel.fit(_hands(60), n_modes=4)
    scrambled = np.random.default_rng(3).uniform(0, 500, (12, 2))
    fixed, replaced = model.correct(scrambled)
    assert not replaced.any() and np.array_equal(fixed, scrambled)


def test_batches_and_bad_inputs():
    model = ShapeModel.fit(_hands(20), n_modes=3)
    assert model.modes.shape == (3, 24) and model.scatter.shape == (12,) and model.n_shapes == 20
    points = _hands(3, seed=7)
    fixed, replaced = model.correct_all(points)
    assert fixed.shape == (3, 12, 2) and replaced.shape == (3, 12)
    with pytest.raises(ValueError, match="at least 2 shapes"):
        ShapeModel.fit(_hands(1))
    with pytest.raises(ValueError, match="NaN"):
        ShapeModel.fit(np.full((3, 12, 2), np.nan))
    with pytest.raises(ValueError, match="12 points"):
        model.correct(np.zeros((11, 2)))
