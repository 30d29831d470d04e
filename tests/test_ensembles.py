"""Ensembles over arrays (soft, hard, weighted, median), fitting, config, and the cached-ensemble runner."""
from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from engine.config import ConfigError, build_config, save_config
from tasks.segmentation.cache import save_probs
from ensembles.config import EnsembleConfig, load_ensemble_config, weight_table
from ensembles.fit import ScoreTable, candidate_weights, fit_maps, fit_weights, gain_error, patient_folds, simplex_grid
from ensembles.fit import select as select_config
from ensembles.hard import hard_vote, majority, resolve_min_votes, vote_maps, votes_for_threshold
from ensembles.runner import Fuser, predict_ensemble, stream
from ensembles.members import Member
from ensembles.soft import fuse_maps, soft_mean, soft_median
from ensembles.weighted import normalize_weights, threshold, weighted_mean, weighted_median
from tasks.formats import FormatError
from tasks.formats.handbones import CLASSES
from tasks.formats.images import write_png
from tasks.rle import decode
from tasks.submission import iter_images

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- soft / weighted / median on arrays

def test_soft_mean_and_median_known_values():
    a, b, c = np.array([0.0, 0.2, 1.0]), np.array([0.5, 0.2, 0.0]), np.array([1.0, 0.8, 0.0])
    np.testing.assert_allclose(soft_mean([a, b, c]), [0.5, 0.4, 1 / 3])
    np.testing.assert_allclose(soft_median([a, b, c]), [0.5, 0.2, 0.0])
    # even count: the two middle values are averaged, as np.median does
    np.testing.assert_allclose(soft_median([a, b, c, np.array([0.9, 0.9, 0.9])]), [0.7, 0.5, 0.45])


def test_weights_are_normalised_global_and_per_class():
    preds = [np.array([[0.0, 0.0]]), np.array([[1.0, 1.0]]), np.array([[1.0, 1.0]])]
    # [2, 1, 1] means [0.5, 0.25, 0.25]; an unnormalised sum would give 2.0
    np.testing.assert_allclose(weighted_mean(preds, [2, 1, 1]), [[0.5, 0.5]])
    np.testing.assert_allclose(weighted_mean(preds, [20, 10, 10]), [[0.5, 0.5]])
    two_channel = [np.array([0.0, 10.0]), np.array([4.0, 20.0])]
    np.testing.assert_allclose(weighted_mean(two_channel, [[3, 1], [1, 1]]), [1.0, 15.0])
    w = normalize_weights([[3, 0], [1, 2]], 2, 2)
    np.testing.assert_allclose(w, [[0.75, 0.0], [0.25, 1.0]])


def test_keypoint_coordinates_and_ages_fuse_with_mean_and_median():
    coords = [np.array([[10.0, 20.0], [5.0, 5.0]]), np.array([[12.0, 22.0], [5.0, 7.0]]),
              np.array([[100.0, 20.0], [6.0, 6.0]])]
    np.testing.assert_allclose(weighted_median(coords), [[12.0, 20.0], [5.0, 6.0]])
    np.testing.assert_allclose(weighted_mean(coords, [1, 1, 0]), [[11.0, 21.0], [5.0, 6.0]])
    # per-keypoint weights (M, K): keypoint 0 from member 2 only
    np.testing.assert_allclose(weighted_mean(coords, [[0, 1], [0, 1], [1, 1]]), [[100.0, 20.0], [16 / 3, 6.0]])
    ages = [120.0, 130.0, 200.0]
    assert weighted_mean(ages) == pytest.approx(150.0)
    assert weighted_median(ages) == pytest.approx(130.0)
    assert weighted_median(ages, [1, 1, 3]) == pytest.approx(200.0)
    assert weighted_median(ages, [1, 1, 2]) == pytest.approx(165.0)  # cumulative weight hits 1/2 exactly at 130


@pytest.mark.parametrize("weights, message", [
    ([1, 1], "2 members|shape"),
    ([1, -1, 1], "member 1.*negative"),
    ([0, 0, 0], "all weights are zero"),
    ([1, float("nan"), 1], "member 1"),
    ([[1, 0], [1, 0], [1, 0]], "all weights of channel 1 are zero"),
])
def test_bad_weights_are_named(weights, message):
    with pytest.raises(ValueError, match=message):
        normalize_weights(weights, 3, 2)


def test_nan_prediction_names_the_member():
    with pytest.raises(ValueError, match="fpn: 1 NaN"):
        weighted_mean([np.zeros(3), np.array([0, np.nan, 0])], members=["unet", "fpn"])
    with pytest.raises(ValueError, match="b: 2 NaN"):
        fuse_maps([np.zeros((2, 4, 4), np.float32), np.full((2, 4, 4), np.nan, np.float32)[:, :1, :1]],
                  members=["a", "b"])


def test_hard_vote_min_votes_and_ties():
    m = [np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0]), np.array([1, 1, 1, 0])]
    np.testing.assert_array_equal(hard_vote(m), [1, 1, 1, 0])           # majority: 2 of 3
    np.testing.assert_array_equal(hard_vote(m, 3), [1, 0, 0, 0])
    np.testing.assert_array_equal(hard_vote(m, 1), [1, 1, 1, 0])
    # an even ensemble: a 1-1 tie is background under the default strict majority (2 of 2)
    np.testing.assert_array_equal(hard_vote(m[:2]), [1, 0, 0, 0])
    assert [majority(n) for n in (1, 2, 3, 4, 5)] == [1, 2, 2, 3, 3]
    for bad in (0, 4, 1.5, True):
        with pytest.raises(ValueError, match="min_votes"):
            resolve_min_votes(bad, 3)


def test_a_fractional_threshold_is_spelled_out_as_votes():
    # "> 0.6" over 5 members is 4 votes, not 3: the mean of 3 votes is exactly 0.6, which is not > 0.6
    assert votes_for_threshold(0.6, 5) == 4
    assert votes_for_threshold(0.5, 5) == 3
    assert votes_for_threshold(0.5, 4) == 3
    masks = [np.array([1]), np.array([1]), np.array([1]), np.array([0]), np.array([0])]
    assert threshold(weighted_mean(masks), 0.6)[0] == 0
    assert threshold(weighted_mean(masks + [np.array([1])]), 0.6)[0] == 1
    # 1/3 + 1/3 of equal weights vs a 2/3 threshold: a tie, background, despite float rounding
    assert threshold(weighted_mean([np.array([1]), np.array([1]), np.array([0])]), 2 / 3)[0] == 0


def test_fuse_maps_mixed_sizes_uint8_and_source_selection():
    small = np.zeros((2, 2, 2), np.uint8)
    small[0] = 255
    big = np.full((2, 4, 4), 0.5, np.float32)
    fused = fuse_maps([small, big])
    assert fused.shape == (2, 4, 4) and fused.dtype == np.float32
    np.testing.assert_allclose(fused[0], 0.75)
    np.testing.assert_allclose(fused[1], 0.25)
    # one-hot per-class weights: class 0 from member 0 only, class 1 from member 1 only
    selected = fuse_maps([small, big], [[1, 0], [0, 1]])
    np.testing.assert_allclose(selected[0], 1.0)
    np.testing.assert_allclose(selected[1], 0.5)
    with pytest.raises(ValueError, match="3 channels.*different class lists"):
        fuse_maps([big, np.zeros((3, 4, 4), np.float32)])


def test_vote_maps_thresholds_each_member_then_counts():
    a = np.array([[[0.9, 0.2], [0.6, 0.1]]], np.float32)
    b = np.array([[[0.8, 0.7], [0.4, 0.1]]], np.float32)
    c = np.array([[[0.1, 0.9], [0.45, 0.1]]], np.float32)
    out = vote_maps([a, b, c], (2, 2), thresholds=[[0.5], [0.5], [0.4]], min_votes=2)
    np.testing.assert_array_equal(out[0], [[1, 1], [1, 0]])


# ---------------------------------------------------------------- fitting

def test_simplex_grid_and_candidates():
    grid = simplex_grid(3, 0.5)
    assert len(grid) == 6 and np.allclose(grid.sum(1), 1)
    cands = candidate_weights(3, 0.1)
    np.testing.assert_allclose(cands[0], [1 / 3] * 3)
    np.testing.assert_allclose(cands[1:4], np.eye(3))
    assert len(cands) == 66 + 1  # grid (66) + the equal vector
    assert len(candidate_weights(6, 0.1, max_candidates=50)) == 50


def _two_experts(n_images: int = 12, n_pixels: int = 2000, seed: int = 0):
    """Member 0 is informative about class 0 and noise on class 1; member 1 the other way round.

    Any weight on the noise adds variance to the fused map, so one-hot weights are the unique optimum.
    """
    rng = np.random.default_rng(seed)
    items, groups = [], []
    for i in range(n_images):
        gt = rng.random((2, n_pixels)) < 0.3
        good = np.clip(gt * 0.2 + 0.4 + rng.normal(0, 0.1, gt.shape), 0, 1)
        noise = rng.random(gt.shape)
        maps = np.stack([np.stack([good[0], noise[1]]), np.stack([noise[0], good[1]])]).astype(np.float32)
        items.append((maps, gt, f"ID{i // 2:03d}"))
        groups.append(f"ID{i // 2:03d}")
    return items, groups


def test_fit_recovers_known_best_per_class_weights():
    items, groups = _two_experts()
    result = fit_maps(iter(items), 2, 2, groups=groups, folds=3)
    assert result.config.startswith("class_weights")
    np.testing.assert_allclose(result.weights, [[1, 0], [0, 1]])
    assert result.after > result.before + 0.2
    assert 0.45 <= result.thresholds.min() and result.thresholds.max() <= 0.55
    assert result.cross_fitted[result.config] > result.cross_fitted["defaults"]


def test_fit_thresholds_find_a_shifted_operating_point():
    rng = np.random.default_rng(1)
    items, groups = [], []
    for i in range(10):
        gt = rng.random((1, 400)) < 0.4
        p = np.where(gt, 0.35, 0.15) + rng.normal(0, 0.02, gt.shape)  # everything below 0.5: defaults find nothing
        items.append((np.stack([p, p]).astype(np.float32), gt, f"ID{i}"))
        groups.append(f"ID{i}")
    result = fit_maps(iter(items), 2, 1, method="soft", groups=groups, folds=5)
    assert result.config == "thresholds"
    assert 0.2 <= result.thresholds[0] <= 0.3
    assert result.before == pytest.approx(0.0)
    assert result.after == pytest.approx(1.0)


def test_fit_keeps_defaults_when_nothing_beats_them_out_of_sample():
    items, groups = _two_experts(n_images=2)
    groups = ["ID000", "ID000"]  # one patient: no held-out group to check a fit against
    result = fit_maps(iter(items), 2, 2, groups=groups)
    assert result.config == "defaults"
    np.testing.assert_allclose(result.weights, 0.5)
    assert result.thresholds.tolist() == [0.5, 0.5]
    assert "cannot cross-fit" in result.notes[0]


def _one_threshold_table(scores_at_03: list[float]) -> ScoreTable:
    """One member, one class, five held-out groups of one image: Dice 0.5 at the default threshold 0.5 in every
    group, ``scores_at_03`` at 0.3."""
    sums = np.zeros((1, 5, 1, 2))
    sums[0, :, 0, 0] = 0.5
    sums[0, :, 0, 1] = scores_at_03
    return ScoreTable(sums=sums, counts=np.ones(5), candidates=np.ones((1, 1)), thresholds=np.array([0.5, 0.3]),
                      default_t=np.array([0]))


def test_a_fitted_threshold_is_kept_only_beyond_one_standard_error_of_its_held_out_gain():
    # 0.3 wins every training split, so each group's held-out gain is its own score minus 0.5
    noisy = select_config(_one_threshold_table([0.95, 0.95, 0.95, 0.1, 0.1]), ["defaults", "thresholds"])
    assert noisy.cross_fitted["thresholds"] == pytest.approx(0.61) and noisy.cross_fitted["defaults"] == 0.5
    # gains .45 .45 .45 -.4 -.4: mean .11, standard error sqrt(((3 x .34² + 2 x .51²) / 4) / 5) = .2082
    assert gain_error([0.95, 0.95, 0.95, 0.1, 0.1], [0.5] * 5) == pytest.approx(0.20821, abs=1e-5)
    assert noisy.config == "defaults" and noisy.thresholds.tolist() == [0.5]
    assert "within one standard error" in noisy.notes[0] and "(0.2082)" in noisy.notes[0]
    steady = select_config(_one_threshold_table([0.95, 0.95, 0.95, 0.6, 0.6]), ["defaults", "thresholds"])
    assert steady.config == "thresholds" and steady.thresholds.tolist() == [0.3] and not steady.notes
    assert gain_error([0.5], [0.4]) == float("inf")


def test_fit_weights_for_regression_prefers_the_exact_member():
    rng = np.random.default_rng(0)
    y = rng.normal(120, 30, 40)
    preds = np.stack([y + rng.normal(0, 1, 40), y + rng.normal(0, 25, 40), y + 30])
    result = fit_weights(preds, y, lambda f, t: np.abs(f - t))
    assert result.config == "weights"
    assert result.weights[0, 0] >= 0.9
    assert result.after < result.before


def test_patient_folds_keep_patients_together():
    groups = ["a", "a", "b", "c", "c", "d"]
    folds = patient_folds(groups, 3)
    assert folds[0] == folds[1] and folds[3] == folds[4]
    assert set(folds) == {0, 1, 2}


# ---------------------------------------------------------------- config

def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_config_weight_table_with_class_groups(tmp_path):
    ens = load_ensemble_config(ROOT / "configs/ensembles/seg_wrist_from_roi.yaml")
    table = weight_table(ens, CLASSES)
    assert table.shape == (3, 29)
    np.testing.assert_array_equal(table[:, 0], [1, 1, 0])
    np.testing.assert_array_equal(table[:, CLASSES.index("Scaphoid")], [0, 0, 1])
    np.testing.assert_array_equal(table[:, CLASSES.index("Radius")], [1, 1, 0])
    for name in ("seg_soft", "seg_hard", "seg_weighted"):
        assert load_ensemble_config(ROOT / f"configs/ensembles/{name}.yaml").labels == ["unet", "fpn", "unet3plus"]


@pytest.mark.parametrize("body, message", [
    ("method: weighted\nweights: [1, 2]\n", "2 values for 3 members"),
    ("method: weighted\nclass_weights: {wrist: {fnp: 1}}\n", "did you mean 'fpn'"),
    ("method: hard\nmin_votes: 4\n", "between 1 and 3"),
    ("method: weighted\nweights: [1, -1, 1]\n", "must be >= 0"),
    ("method: weighted\nweights: [0, 0, 0]\n", "all zero"),
    ("method: soft\nweights: [1, 1, 1]\n", "for method 'weighted'"),
    ("method: soft\nthreshold: 0.4\n", "did you mean 'thresholds'"),
    ("task: segmentation\nmethod: median\n", "valid: soft, hard, weighted"),
    ("task: keypoints\nmethod: hard\n", "needs 'radius'"),
    ("task: keypoints\nmethod: mean\nradius: 2\n", "radius is for keypoints method 'hard'"),
    ("task: keypoints\nmethod: soft\nthresholds: 0.4\n", "thresholds are for segmentation"),
    ("task: boneage\nmethod: soft\n", "valid: mean, median, weighted"),
    ("task: boneage\nmethod: mean\nweights: [1, 2, 1]\n", "are for method 'weighted'"),
])
def test_bad_ensemble_configs_are_named(tmp_path, body, message):
    task = "" if body.startswith("task:") else "task: segmentation\n"
    members = "members: [{run: r/a}, {run: r/fpn}, {run: r/c}]\n"
    with pytest.raises(ConfigError, match=message):
        load_ensemble_config(_write(tmp_path / "e.yaml", task + members + body))


# ---------------------------------------------------------------- runner (from the prediction cache)

def _fake_runs(tmp_path: Path, n_images: int = 3, size: int = 16, members: int = 3, seed: int = 0):
    """Test images (DCM) and run folders whose preds/test/ caches hold random probabilities."""
    rng = np.random.default_rng(seed)
    test_root = tmp_path / "test"
    names = []
    for i in range(n_images):
        name = f"image{i:013d}.png"
        write_png(test_root / "DCM" / f"ID{i:03d}" / name, np.zeros((size, size), np.uint8))
        names.append(name)
    runs, maps = [], {}
    for m in range(members):
        run = tmp_path / "runs" / f"m{m}"
        cfg = build_config({"task": "segmentation", "data": {"root": str(tmp_path / "train"), "test_root": str(test_root),
                                                             "image_size": size // 2}})
        save_config(cfg, run / "config.yaml")
        for name in names:
            p = rng.random((29, size // 2, size // 2)).astype(np.float32)
            save_probs(run / "preds" / "test" / f"{name}.npz", p, (size, size))
            maps[(m, name)] = np.rint(p * 255).astype(np.uint8)
        runs.append(run)
    return test_root, runs, names, maps


def _ens(runs, method: str, tmp_path: Path, **extra) -> EnsembleConfig:
    return EnsembleConfig.model_validate({"task": "segmentation", "method": method, "name": f"e_{method}",
                                          "members": [{"run": str(r)} for r in runs], "out_dir": str(tmp_path / "out"),
                                          **extra})


@pytest.mark.parametrize("method, extra", [("soft", {"thresholds": 0.4}), ("hard", {"min_votes": 2}),
                                           ("weighted", {"weights": [3, 1, 0], "class_weights": {"wrist": {"m2": 1}}})])
def test_cached_ensemble_matches_array_fusion(tmp_path, method, extra):
    test_root, runs, names, maps = _fake_runs(tmp_path)
    ens = _ens(runs, method, tmp_path, **extra)
    out = tmp_path / "ens.csv"
    stats = predict_ensemble(ens, out_csv=out, from_cache=True, progress=False)
    assert stats["images"] == 3
    rows = dict(iter_images(out))
    assert list(rows) == names
    for name in names:
        member_maps = [maps[(m, name)] for m in range(3)]
        if method == "hard":
            expected = vote_maps(member_maps, (16, 16), 0.5, 2)
        else:
            import cv2

            w = weight_table(ens, CLASSES) if method == "weighted" else None
            fused = fuse_maps(member_maps, w)
            t = 0.4 if method == "soft" else 0.5
            expected = np.stack([cv2.resize(f, (16, 16), interpolation=cv2.INTER_LINEAR) > t for f in fused])
        got = np.stack([decode(r, 16, 16) for r in rows[name]])
        np.testing.assert_array_equal(got, expected)
    summary = __import__("json").loads((tmp_path / "out/segmentation" / f"e_{method}" / "summary.json").read_text())
    assert summary["kind"] == "ensemble" and summary["members"] == ["m0", "m1", "m2"]
    row = _leaderboard_rows(tmp_path / "out", "segmentation")[f"e_{method}"]
    assert row["kind"] == "ensemble" and row["n_members"] == "3" and row["metric"] == "dice"
    assert summary["ensemble"]["method"] == method


def test_cached_ensemble_bad_inputs_are_named(tmp_path):
    test_root, runs, names, _ = _fake_runs(tmp_path)
    ens = _ens(runs, "soft", tmp_path)
    (runs[1] / "preds/test" / f"{names[2]}.npz").unlink()
    with pytest.raises(FormatError, match=r"member m1: .* lacks 1 of 3 images .*--save-probs"):
        predict_ensemble(ens, out_csv=tmp_path / "x.csv", from_cache=True, progress=False)
    assert not (tmp_path / "x.csv").exists() and not list(tmp_path.glob("*.tmp"))

    test_root, runs, names, _ = _fake_runs(tmp_path / "b")
    bad = np.full((29, 8, 8), 0.5, np.float32)
    bad[3, 2, 2] = np.nan
    np.savez(runs[2] / "preds/test" / f"{names[0]}.npz", probs=bad, orig_size=np.array([16, 16]))
    with pytest.raises(FormatError, match=r"member m2: .*image0000000000000.png.npz: 1 NaN"):
        predict_ensemble(_ens(runs, "soft", tmp_path / "b"), out_csv=tmp_path / "y.csv", from_cache=True, progress=False)

    test_root, runs, names, _ = _fake_runs(tmp_path / "c")
    save_probs(runs[0] / "preds/test" / f"{names[1]}.npz", np.zeros((29, 8, 8), np.float32), (20, 16))
    with pytest.raises(FormatError, match="size"):
        predict_ensemble(_ens(runs, "soft", tmp_path / "c"), out_csv=tmp_path / "z.csv", from_cache=True, progress=False)

    test_root, runs, names, _ = _fake_runs(tmp_path / "d")
    save_probs(runs[2] / "preds/test" / "other.png.npz", np.zeros((29, 8, 8), np.float32), (16, 16))
    with pytest.raises(FormatError, match="member m2: .*1 images that are not in the test set"):
        predict_ensemble(_ens(runs, "soft", tmp_path / "d"), out_csv=tmp_path / "w.csv", from_cache=True, progress=False)

    test_root, runs, names, _ = _fake_runs(tmp_path / "t")
    path = runs[0] / "preds/test" / f"{names[1]}.npz"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(FormatError, match=r"member m0: .*image0000000000001.png.npz is not a prediction cache entry"):
        predict_ensemble(_ens(runs, "soft", tmp_path / "t"), out_csv=tmp_path / "u.csv", from_cache=True, progress=False)

    test_root, runs, names, _ = _fake_runs(tmp_path / "e")
    save_probs(runs[1] / "preds/test" / f"{names[0]}.npz", np.zeros((28, 8, 8), np.float32), (16, 16))
    with pytest.raises(FormatError, match=r"member m1: .*image0000000000000.png.npz holds 28 classes, the run "
                                          r"predicts 29$"):
        predict_ensemble(_ens(runs, "soft", tmp_path / "e"), out_csv=tmp_path / "v.csv", from_cache=True, progress=False)


CACHE_MISFITS = [
    ("probs", np.zeros((29, 8, 2), np.uint8), [16, 16], "resize",
     "holds probs of shape (29, 8, 2) for a 16x16 image (its orig_size); the run predicts 8x8 maps, at the model's "
     "8 px input (whole image resized)"),
    ("probs", np.zeros((29, 16, 16), np.uint8), [16, 16], "resize",
     "holds probs of shape (29, 16, 16) for a 16x16 image (its orig_size); the run predicts 8x8 maps"),
    ("probs", np.zeros((29, 8, 8), np.uint8), [16, 16], "sliding_window",
     "was predicted with sliding_window, the run's config asks for resize"),
    ("probs", np.zeros((29, 8, 8), np.int64), [16, 16], "resize", "holds probs of dtype int64"),
    ("probs", np.full((29, 8, 8), 255.0, np.float32), [16, 16], "resize", "holds float probs in [255, 255], not in [0, 1]"),
    ("probs", np.zeros((29, 8, 8), np.uint8), [16, 16, 1], "resize", "holds orig_size [16, 16, 1], not an image"),
    ("probs", np.zeros((29, 8, 8), np.uint8), [0, 16], "resize", "holds orig_size [0, 16], not an image"),
    ("probs", np.zeros((29, 8, 8), object), [16, 16], "resize", "is not a prediction cache entry (probs.npy holds Python "
                                                                 "objects)"),
]


@pytest.mark.parametrize("key, probs, orig, mode, message", CACHE_MISFITS, ids=[m[:40] for *_, m in CACHE_MISFITS])
def test_a_cache_entry_that_does_not_fit_its_run_is_refused_naming_the_file(tmp_path, capsys, key, probs, orig, mode,
                                                                            message):
    """An entry is checked against what it says (orig_size, mode) and what its run says (29 classes, the model's
    input size for whole-image resizing): one line naming the member and the file, never a map stretched to fit."""
    import inference

    test_root, runs, names, _ = _fake_runs(tmp_path)  # 16 px images, runs of image_size 8
    path = runs[1] / "preds" / "test" / f"{names[2]}.npz"
    np.savez(path, **{key: probs}, orig_size=np.asarray(orig), mode=np.asarray(mode), tta=np.asarray("identity"))
    ens_yaml = tmp_path / "ens.yaml"
    ens_yaml.write_text(yaml.safe_dump({"task": "segmentation", "method": "soft", "name": "e", "thresholds": 0.5,
                                        "out_dir": str(tmp_path / "out"), "members": [{"run": str(r)} for r in runs]}))
    assert inference.main(["--ensemble", str(ens_yaml), "--from-cache", "-o", str(tmp_path / "e.csv")]) == 2
    last = capsys.readouterr().err.rstrip("\n").split("\n")[-1]  # after the progress bar
    assert last.startswith(f"error: member m1: {path} {message}"), last
    assert not (tmp_path / "e.csv").exists()


@pytest.mark.slow
def test_fusion_memory_does_not_grow_with_images(tmp_path):
    """A fake member yields 1000 images through the fusion pipeline (pool, in-flight bound, CSV writer)."""
    from tasks.submission import AtomicCSVWriter

    classes = ("c0", "c1", "c2")  # few classes keep the traced run short; the path is the 29-class one
    ens = EnsembleConfig.model_validate({"task": "segmentation", "method": "weighted", "weights": [2, 1, 1],
                                         "members": [{"run": "a"}, {"run": "b"}, {"run": "c"}]})
    members = [Member(n, [Path(n)], [], "best.pt", np.full(3, 0.5, np.float32)) for n in ("a", "b", "c")]
    fuser = Fuser(ens, members, classes=classes)

    def fake_member(n):
        rng = np.random.default_rng(0)
        for i in range(n):
            maps = [(rng.random((3, 16, 16)) * 255).astype(np.uint8) for _ in range(3)]
            yield lambda i=i, maps=maps: (f"img{i}.png", fuser(maps, (32, 32)))

    peaks = []
    for n in (100, 1000):
        tracemalloc.start()
        with AtomicCSVWriter(tmp_path / f"s{n}.csv") as writer:
            written = 0
            for name, rles in stream(fake_member(n), workers=2):
                writer.write_image(name, rles, classes)
                written += 1
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert written == n
    assert peaks[1] < 2 * 1024 * 1024
    assert peaks[1] < 1.5 * peaks[0]


def _blobs(rng, channels: int, size: int, shared_seed: int = 0) -> np.ndarray:
    """uint8 probabilities (p * 255) of one blurred blob per channel (every 4th channel empty).

    Blob centres and radii are shared by members (``shared_seed``), jittered per member by ``rng``.
    """
    import cv2

    place = np.random.default_rng(shared_seed)
    out = np.zeros((channels, size, size), np.uint8)
    for c in range(channels):
        cx, cy, r = place.uniform(0.2, 0.8), place.uniform(0.2, 0.8), place.uniform(0.1, 0.25)
        if c % 4 == 3:
            continue
        centre = (int((cx + rng.uniform(-0.05, 0.05)) * size), int((cy + rng.uniform(-0.05, 0.05)) * size))
        cv2.circle(out[c], centre, max(1, int(r * size)), 255, -1)
        out[c] = cv2.GaussianBlur(out[c], (0, 0), 1.5)
    return out


@pytest.mark.parametrize("sizes, out", [((16, 16, 16), (64, 64)), ((16, 8, 32), (64, 64)), ((16, 16, 16), (16, 16)),
                                        ((16, 16, 16), (60, 60)), ((12, 16, 16), (64, 64))])
@pytest.mark.parametrize("method", ["soft", "weighted", "hard"])
def test_cropped_fusion_equals_full_image_fusion(method, sizes, out):
    import cv2

    from tasks.rle import encode

    rng = np.random.default_rng(sum(sizes) + out[0])
    classes = tuple(f"c{k}" for k in range(8))
    maps = [_blobs(rng, len(classes), s) for s in sizes]
    extra = {"weights": [3, 1, 2]} if method == "weighted" else {"min_votes": 2} if method == "hard" else {}
    ens = EnsembleConfig.model_validate({"task": "segmentation", "method": method, "thresholds": 0.3,
                                         "members": [{"run": r} for r in "abc"], **extra})
    members = [Member(n, [Path(n)], [], "best.pt", np.full(len(classes), 0.4, np.float32)) for n in "abc"]
    got = Fuser(ens, members, classes=classes)(maps, out)
    if method == "hard":
        expected = vote_maps(maps, out, 0.4, 2)
    else:
        fused = fuse_maps(maps, [3, 1, 2] if method == "weighted" else None)
        expected = np.stack([cv2.resize(f, out[::-1], interpolation=cv2.INTER_LINEAR) > 0.3 for f in fused])
    assert any(expected[k].any() for k in range(len(classes)))
    assert got == [encode(m) for m in expected]


def test_per_keypoint_weights_on_a_batch_use_channel_axis():
    batch = [np.zeros((4, 2, 2)), np.ones((4, 2, 2))]  # (N images, K keypoints, xy)
    w = [[1, 0], [1, 1]]  # keypoint 0: equal; keypoint 1: member 1 only
    fused = weighted_mean(batch, w, channel_axis=1)
    np.testing.assert_allclose(fused[:, 0], 0.5)
    np.testing.assert_allclose(fused[:, 1], 1.0)
    np.testing.assert_allclose(weighted_median(batch, w, channel_axis=1)[:, 1], 1.0)
    with pytest.raises(ValueError, match="2 columns, the predictions have 4 channels"):
        weighted_mean(batch, w)  # channel_axis 0 is the image axis here


def _labelled_runs(tmp_path: Path, members: dict[str, list[int]], n_patients: int = 4, size: int = 16,
                   cache_size: int | None = None):
    """A labelled training set (one square bone per image) and fold runs whose preds/val hold
    ``p = 0.9`` on the bone for member "good" and uniform noise for the others (cached at ``cache_size``,
    by default the image's)."""
    import cv2

    from tasks.formats.handbones import list_samples, read_masks, write_polygons
    from tasks.formats.handbones import split_folds

    root = tmp_path / "train"
    for i in range(n_patients):
        name = f"image{i:013d}"
        write_png(root / "DCM" / f"ID{i:03d}" / f"{name}.png", np.zeros((size, size), np.uint8))
        x0 = 2 + i
        write_polygons(root / "outputs_json" / f"ID{i:03d}" / f"{name}.json",
                       {"Radius": [np.array([[x0, 3], [x0 + 6, 3], [x0 + 6, 9], [x0, 9]], float)]})
    samples = list_samples(root)
    rng = np.random.default_rng(0)
    runs = {}
    for label, folds in members.items():
        runs[label] = []
        for fold in folds:
            run = tmp_path / "runs" / f"{label}-f{fold}"
            cfg = build_config({"task": "segmentation", "data": {"root": str(root), "test_root": None, "image_size": cache_size or size,
                                                                 "n_folds": 2, "fold": fold}})
            save_config(cfg, run / "config.yaml")
            _, val_idx = split_folds(samples, 2, fold)
            for k in val_idx:
                gt = read_masks(samples[k].label_path, size, size).astype(np.float32)
                p = gt * 0.9 if label == "good" else rng.random(gt.shape).astype(np.float32)
                if cache_size:
                    p = np.stack([cv2.resize(c, (cache_size, cache_size), interpolation=cv2.INTER_AREA) for c in p])
                save_probs(run / "preds" / "val" / f"{samples[k].name}.npz", p, (size, size))
            runs[label].append(run)
    return runs


def test_fit_ensemble_on_out_of_fold_caches(tmp_path):
    import json

    from ensembles.fit import fit_ensemble

    runs = _labelled_runs(tmp_path, {"good": [0, 1], "noise": [0, 1]})
    ens = EnsembleConfig.model_validate({
        "task": "segmentation", "method": "weighted", "name": "fitted", "weights": "fit", "thresholds": "fit",
        "members": [{"name": k, "runs": [str(r) for r in v]} for k, v in runs.items()],
        "out_dir": str(tmp_path / "out"), "fit": {"folds": 2, "per_class": False}})
    record = fit_ensemble(ens, progress=False)
    assert record["images"] == 4 and record["folds"] == 2  # out-of-fold: both folds' validation images
    assert record["members"] == ["good", "noise"]
    assert record["config"] != "defaults"
    column = np.asarray(record["weights"])[:, 0]
    assert column[0] > column[1]
    assert record["after"] > record["before"]
    summary = json.loads((tmp_path / "out/segmentation/fitted/summary.json").read_text())
    assert summary["kind"] == "ensemble" and summary["val"]["score"] == record["val"]["score"]
    assert json.loads(ens.fit_path.read_text())["thresholds"] == record["thresholds"]


@pytest.mark.parametrize("fit_size, side", [(256, 16), (8, 8)])
def test_fit_maps_are_at_the_images_size_not_the_caches(tmp_path, fit_size, side):
    """Inference upsamples a cache to the image and thresholds it there, and the competition scores there: the
    fit does too (capped at fit_size), against the true masks of that size, not masks shrunk to the cache."""
    import cv2

    from ensembles.fit import validation_items
    from ensembles.members import resolve_members
    from ensembles.runner import ensemble_samples
    from tasks.formats.handbones import read_masks

    runs = _labelled_runs(tmp_path, {"good": [0, 1]}, size=16, cache_size=8)
    ens = EnsembleConfig.model_validate({
        "task": "segmentation", "method": "soft", "thresholds": "fit", "out_dir": str(tmp_path / "out"),
        "members": [{"name": "good", "runs": [str(r) for r in runs["good"]]}]})
    members = resolve_members(ens, need_models=False)
    samples = ensemble_samples(ens, members, "val")
    items = list(validation_items(members, samples, fit_size))
    assert len(items) == len(samples) == 4
    for (maps, gt, _), sample in zip(items, samples):
        assert maps.shape == (1, len(CLASSES), side * side) and gt.shape == (len(CLASSES), side * side)
        truth = read_masks(sample.label_path, 16, 16).astype(np.float32)
        if side < 16:
            truth = np.stack([cv2.resize(c, (side, side), interpolation=cv2.INTER_AREA) for c in truth])
        assert np.array_equal(gt, truth.reshape(len(CLASSES), -1) >= 0.5)


def test_members_on_different_single_folds_share_no_validation_image(tmp_path):
    from ensembles.fit import fit_ensemble

    runs = _labelled_runs(tmp_path, {"good": [0], "noise": [1]})
    ens = EnsembleConfig.model_validate({
        "task": "segmentation", "method": "soft", "thresholds": "fit", "out_dir": str(tmp_path / "out"),
        "members": [{"name": k, "run": str(v[0])} for k, v in runs.items()]})
    with pytest.raises(ConfigError, match="share no image.*out-of-fold"):
        fit_ensemble(ens, progress=False)


def test_on_the_fly_rows_equal_cached_rows_and_reject_nan(tmp_path):
    from ensembles.runner import cache_rows, ensemble_samples, live_rows
    from ensembles.members import resolve_members

    test_root, runs, names, maps = _fake_runs(tmp_path)
    ens = _ens(runs, "weighted", tmp_path, weights=[1, 2, 3])
    members = resolve_members(ens)
    samples = ensemble_samples(ens, members, "test")
    fuser = Fuser(ens, members)
    by_path = {s.image_path: s.name for s in samples}
    calls = []

    def predict(member: int, run: int, image: np.ndarray) -> np.ndarray:
        calls.append((member, run))
        return maps[(member, current[0])].astype(np.float32) / 255

    current = [None]

    def read(path):
        current[0] = by_path[path]
        return np.zeros((16, 16), np.uint8)

    live = list(live_rows(members, samples, fuser, predict, workers=2, progress=False, read=read))
    cached = list(cache_rows(members, samples, fuser, "test", workers=2, progress=False))
    assert live == cached and len(live) == 3
    assert len(calls) == 9  # each image through each member once

    def bad_predict(member: int, run: int, image: np.ndarray) -> np.ndarray:
        out = np.zeros((29, 8, 8), np.float32)
        out[0, 0, 0] = np.nan if member == 1 else 0
        return out

    with pytest.raises(ValueError, match="member m1: image0000000000000.png: 1 NaN"):
        list(live_rows(members, samples, fuser, bad_predict, workers=1, progress=False, read=read))


def test_in_flight_images_fit_the_memory_budget():
    from ensembles.runner import in_flight

    mb = 2**20
    assert in_flight(1024, 150 * mb, workers=2) == 4          # 5 x 150 MB fit: the usual 2 x workers
    assert in_flight(1024, 300 * mb, workers=2) == 2          # 3 x 300 MB
    assert in_flight(1024, 610 * mb, workers=2) == 0          # 5 members at 2048 px: fused inline
    done = []

    def jobs():
        for i in range(5):
            assert len(done) == i  # inline (limit 0): image i is made only after image i - 1 was fused
            yield lambda i=i: (done.append(i), (f"img{i}", []))[1]

    assert [name for name, _ in stream(jobs(), workers=2, limit=lambda: 0)] == [f"img{i}" for i in range(5)]


def test_on_the_fly_member_with_fold_runs_averages_them():
    from ensembles.runner import live_rows
    from tasks.formats.handbones import HandboneSample

    classes = ("c0",)
    ens = EnsembleConfig.model_validate({"task": "segmentation", "method": "soft", "thresholds": 0.5,
                                         "members": [{"runs": ["a-f0", "a-f1"]}]})
    member = Member("a", [Path("a-f0"), Path("a-f1")], [], "best.pt", np.full(1, 0.5, np.float32),
                    sources={"x.png": [0, 1]})
    fold_maps = [np.array([[[0.2, 0.9]]], np.float32), np.array([[[0.9, 0.2]]], np.float32)]
    rows = list(live_rows([member], [HandboneSample(Path("x.png"), None, "ID0")], Fuser(ens, [member], classes),
                          lambda k, r, image: fold_maps[r].copy(), workers=1, progress=False,
                          read=lambda path: np.zeros((1, 2), np.uint8)))
    assert rows == [("x.png", ["1 2"])]  # the fold mean is 0.55 on both pixels; either fold alone keeps one


def test_read_npz_matches_np_load_for_small_large_and_compressed(tmp_path):
    from tasks.segmentation.cache import read_npz

    rng = np.random.default_rng(0)
    big = (rng.random((3, 200, 150)) * 255).astype(np.uint8)  # above the memory-mapping size
    small = rng.random((2, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "a.npz", probs=big, orig_size=np.array([400, 300]))
    np.savez_compressed(tmp_path / "b.npz", probs=small, orig_size=np.array([8, 8]))
    for name in ("a.npz", "b.npz"):
        got = read_npz(tmp_path / name)
        with np.load(tmp_path / name) as ref:
            assert set(got) == set(ref.files)
            for key in ref.files:
                np.testing.assert_array_equal(got[key], ref[key])


# --------------------------------------------------------------------------------------------------
# Keypoint and bone-age ensembles: exactness on constructed inputs, then end to end on the phantom
# --------------------------------------------------------------------------------------------------

def test_keypoint_mean_of_symmetric_members_is_the_truth_and_weighted_follows_weights():
    from ensembles.values import fuse_values

    truth = np.array([[[30.0, 40.0], [5.5, 7.25]]])                      # (N=1, K=2, 2)
    preds = np.stack([truth + 2, truth - 2])                             # +2 px and -2 px members
    np.testing.assert_array_equal(fuse_values(preds, "mean"), truth)
    np.testing.assert_array_equal(fuse_values(preds, "median"), truth)
    np.testing.assert_array_equal(fuse_values(preds, "weighted", np.array([3.0, 1.0]), channel_axis=1), truth + 1)
    per_landmark = np.array([[1.0, 0.0], [0.0, 1.0]])                    # landmark 0 from member 0, 1 from 1
    np.testing.assert_array_equal(fuse_values(preds, "weighted", per_landmark, channel_axis=1),
                                  np.stack([truth[:, 0] + 2, truth[:, 1] - 2], axis=1))


def test_keypoint_hard_vote_keeps_agreeing_points_and_falls_back_to_the_median():
    from ensembles.hard import vote_points
    from ensembles.values import fuse_values

    # landmark 0: two members agree (2 px apart), one outlier; landmark 1: nobody within 4 px of anybody
    preds = np.array([[[[10.0, 10.0], [0.0, 0.0]]],
                      [[[12.0, 10.0], [10.0, 0.0]]],
                      [[[50.0, 50.0], [30.0, 0.0]]]])                    # (M=3, N=1, K=2, 2)
    fused = fuse_values(preds, "hard", radius=4.0)                       # min_votes: majority, 2 of 3
    assert fused[0, 0].tolist() == [11.0, 10.0]                          # midpoint of the agreeing pair
    assert fused[0, 1].tolist() == [10.0, 0.0]                           # median fallback
    assert fuse_values(preds, "median")[0, 0].tolist() == [12.0, 10.0]   # the median alone is pulled
    assert vote_points(preds, 4.0, min_votes=3)[0][0, 0].tolist() == [12.0, 10.0]   # 2 < 3 votes: median
    assert np.allclose(vote_points(preds, 60.0, min_votes=3)[0][0, 0], [24.0, 70 / 3])  # all agree: their mean
    # two groups of two (4 members): the tighter group wins the tie
    tie = np.array([[[[0.0, 0.0]]], [[[3.0, 0.0]]], [[[20.0, 0.0]]], [[[21.0, 0.0]]]])
    assert vote_points(tie, 4.0, min_votes=2)[0][0, 0].tolist() == [20.5, 0.0]
    with pytest.raises(ValueError, match="min_votes must be an integer between 1 and 3"):
        vote_points(preds, 4.0, min_votes=4)



def _leaderboard_rows(root: Path, task: str) -> dict[str, dict]:
    """The leaderboard's rows of ``task`` under ``root``, by run name (via the command's CSV export)."""
    import csv

    from tools import leaderboard

    out = root.parent / f"lb_{task}.csv"
    assert leaderboard.main([str(root), "--task", task, "--csv", str(out), "--quiet"]) == 0
    with open(out, newline="") as f:
        return {row["name"]: row for row in csv.DictReader(f)}


def _write_yaml(path: Path, task: str, method: str, runs: list[Path], out_dir: Path, extra: str = "") -> Path:
    members = ", ".join(f"{{name: m{i}, run: {r}}}" for i, r in enumerate(runs))
    path.write_text(f"task: {task}\nmethod: {method}\nout_dir: {out_dir}\nmembers: [{members}]\n{extra}")
    return path


@pytest.mark.slow
def test_keypoint_ensembles_end_to_end(phantom, tmp_path):
    import json

    import inference
    from engine.config import load_config
    from tasks.keypoints.cache import load_cache
    from engine.trainer import train
    from ensembles.hard import vote_points
    from tasks.keypoint_labels import read_wide
    from tools import fit_ensemble, score

    runs = tmp_path / "runs"
    members = []
    for name, size in (("kpa", 64), ("kpb", 96)):   # different input sizes: fused in the original frame
        cfg = load_config(None, {
            "task": "keypoints", "name": name,
            "data": {"root": str(phantom / "joints"), "landmarks": "shs15", "image_size": size, "sigma": 2.0,
                     "n_folds": 3, "cache": False},
            "model": {"name": "shsnet:unet", "options": {"base_channels": 8, "depth": 3, "out_stride": 2}},
            "loss": {"weights": {"awing": 1.0}},
            "train": {"epochs": 1, "batch_size": 4, "lr": 3e-3, "warmup_epochs": 0, "max_steps_per_epoch": 2},
            "inference": {"batch_size": 8, "tta": {"hflip": True, "scales": [1.0]}},
            "logging": {"out_dir": str(runs), "progress": False}})
        train(cfg)
        for split in ("test", "val"):
            assert inference.main(["--ckpt", str(cfg.run_dir / "best.pt"), "--split", split, "--save-probs",
                                   "-o", str(tmp_path / f"{name}-{split}.csv")]) == 0
        members.append(cfg.run_dir)
    caches = [load_cache(r / "preds" / "test" / "keypoints.npz") for r in members]
    names = caches[0][0]
    preds = np.stack([c[1] for c in caches])

    mean_yaml = _write_yaml(tmp_path / "kp_mean.yaml", "keypoints", "mean", members, runs)
    assert inference.main(["--ensemble", str(mean_yaml), "--from-cache", "-o", str(tmp_path / "mean.csv")]) == 0
    got_names, got, _ = read_wide(tmp_path / "mean.csv")
    assert got_names == names and np.abs(got - preds.mean(0)).max() <= 5e-4   # 3 decimals in the CSV

    hard_yaml = _write_yaml(tmp_path / "kp_hard.yaml", "keypoints", "hard", members, runs, "radius: 3.0\n")
    assert inference.main(["--ensemble", str(hard_yaml), "--from-cache", "-o", str(tmp_path / "hard.csv")]) == 0
    assert np.abs(read_wide(tmp_path / "hard.csv")[1] - vote_points(preds, 3.0)[0]).max() <= 5e-4

    soft_yaml = _write_yaml(tmp_path / "kp_soft.yaml", "keypoints", "soft", members, runs)
    assert inference.main(["--ensemble", str(soft_yaml), "--tta", "-o", str(tmp_path / "soft.csv")]) == 0
    soft = read_wide(tmp_path / "soft.csv")[1]
    assert soft.shape == preds.shape[1:] and np.isfinite(soft).all() and (soft >= 0).all() and (soft <= 127).all()
    assert inference.main(["--ensemble", str(soft_yaml), "--from-cache", "-o", str(tmp_path / "x.csv")]) == 2

    fit_yaml = _write_yaml(tmp_path / "kp_fit.yaml", "keypoints", "weighted", members, runs,
                           "weights: fit\nfit: {per_class: true, folds: 3}\n")
    assert fit_ensemble.main([str(fit_yaml), "--quiet"]) == 0
    fit = json.loads((runs / "keypoints" / "kp_fit" / "fit.json").read_text())
    assert np.array(fit["weights"]).shape == (2, 15) and fit["guard"] == "cross-fitting"
    assert inference.main(["--ensemble", str(fit_yaml), "--from-cache", "-o", str(tmp_path / "fit.csv")]) == 0
    w = np.array(fit["weights"])
    expected = (preds * (w / w.sum(0))[:, None, :, None]).sum(0)
    assert np.abs(read_wide(tmp_path / "fit.csv")[1] - expected).max() <= 5e-4
    assert score.main([str(tmp_path / "fit.csv"), "--gt", str(phantom / "joints"), "--quiet",
                       "--run", str(runs / "keypoints" / "kp_fit")]) == 0

    rows = _leaderboard_rows(runs, "keypoints")
    assert {"kpa-f0", "kpb-f0", "kp_mean", "kp_hard", "kp_soft", "kp_fit"} <= set(rows)
    assert rows["kp_hard"]["kind"] == "ensemble" and rows["kp_hard"]["n_members"] == "2"
    assert float(rows["kp_fit"]["val_score"]) == pytest.approx(fit["val"]["score"])
    assert float(rows["kp_fit"]["test_score"]) > 0
    summary = json.loads((runs / "keypoints" / "kp_hard" / "summary.json").read_text())
    assert summary["metric"] == "mre_px" and summary["ensemble"]["radius_px"] == 3.0


@pytest.mark.slow
def test_boneage_ensembles_end_to_end(phantom, tmp_path):
    import json

    import inference
    from engine.config import load_config
    from engine.trainer import train
    from tasks.formats.rsna import read_submission
    from tools import fit_ensemble

    root = Path(__file__).resolve().parents[1]
    runs = tmp_path / "runs"
    members = []
    for name, size in (("baa", 64), ("bab", 48)):
        cfg = load_config(root / "configs" / "boneage" / "phantom_cpu_resnet10t.yaml",
                          [f"--logging.run_name={name}", f"--data.root={phantom / 'boneage'}", f"--data.image_size={size}",
                           "--train.epochs=1", "--train.device=cpu", "--data.cache=false", "--train.batch_size=8",
                           "--train.max_steps_per_epoch=2", f"--logging.out_dir={runs}", "--logging.progress=false"])
        train(cfg)
        for split in ("test", "val"):
            assert inference.main(["--ckpt", str(cfg.run_dir / "best.pt"), "--split", split, "--save-probs",
                                   "--device", "cpu", "-o", str(tmp_path / f"{name}-{split}.csv")]) == 0
        assert inference.main(["--ckpt", str(cfg.run_dir / "best.pt"), "--tta", "--device", "cpu",
                               "-o", str(tmp_path / f"{name}-tta.csv")]) == 0
        members.append(cfg.run_dir)

    def ages(path: Path) -> pd.Series:
        return read_submission(path).set_index("id")["boneage"]

    mean_yaml = _write_yaml(tmp_path / "ba_mean.yaml", "boneage", "mean", members, runs)
    # on the fly, each member with its own TTA: the mean of the members' own --tta predictions
    assert inference.main(["--ensemble", str(mean_yaml), "--tta", "--device", "cpu",
                           "-o", str(tmp_path / "mean.csv")]) == 0
    expected = (ages(tmp_path / "baa-tta.csv") + ages(tmp_path / "bab-tta.csv")) / 2
    got = ages(tmp_path / "mean.csv")
    assert np.abs(got - expected.loc[got.index]).max() <= 1e-3

    median_yaml = _write_yaml(tmp_path / "ba_median.yaml", "boneage", "median", members, runs)
    assert inference.main(["--ensemble", str(median_yaml), "--from-cache", "-o", str(tmp_path / "median.csv")]) == 0
    plain = (ages(tmp_path / "baa-test.csv") + ages(tmp_path / "bab-test.csv")) / 2   # median of two = mean
    assert np.abs(ages(tmp_path / "median.csv") - plain.loc[ages(tmp_path / "median.csv").index]).max() <= 1e-3

    fit_yaml = _write_yaml(tmp_path / "ba_fit.yaml", "boneage", "weighted", members, runs, "weights: fit\n")
    assert fit_ensemble.main([str(fit_yaml), "--quiet"]) == 0
    fit = json.loads((runs / "boneage" / "ba_fit" / "fit.json").read_text())
    assert fit["metric"] == "mae_months" and np.array(fit["weights"]).shape == (2, 1)
    assert fit["val"]["score"] <= fit["cross_fitted"]["defaults"] + 1e-9   # the guard keeps the best held out
    assert inference.main(["--ensemble", str(fit_yaml), "--from-cache", "-o", str(tmp_path / "fit.csv")]) == 0
    w = np.array(fit["weights"])[:, 0] / np.sum(fit["weights"])
    weighted = w[0] * ages(tmp_path / "baa-test.csv") + w[1] * ages(tmp_path / "bab-test.csv")
    assert np.abs(ages(tmp_path / "fit.csv") - weighted.loc[ages(tmp_path / "fit.csv").index]).max() <= 1e-3

    rows = _leaderboard_rows(runs, "boneage")
    assert {"baa-f0", "bab-f0", "ba_mean", "ba_median", "ba_fit"} <= set(rows)
    assert rows["ba_fit"]["kind"] == "ensemble" and float(rows["ba_fit"]["val_score"]) == pytest.approx(fit["val"]["score"])
    assert rows["ba_mean"]["images_per_s_tta"] != ""


def test_fit_warns_when_validation_and_test_caches_used_other_tta_views(tmp_path, capsys):
    """Weights and thresholds fitted on plain validation maps do not carry over to hflip-averaged test maps
    (the demo's fitted ensemble lost to its best member that way): the cache records its views and the fit
    and the from-cache ensemble name the member whose two caches differ."""
    from tasks.segmentation.cache import save_probs
    from ensembles.fit import fit_ensemble
    from tasks.segmentation.cache import CacheSpec, cache_tta
    from ensembles.members import resolve_members
    from ensembles.runner import warn_tta_mismatch

    runs = _labelled_runs(tmp_path, {"good": [0, 1], "noise": [0, 1]})
    for label, tta in (("good", "identity,hflip"), ("noise", "identity")):
        for run in runs[label]:
            save_probs(run / "preds" / "test" / "x.png.npz", np.zeros((29, 16, 16), np.float32), (16, 16), tta=tta)
    spec = CacheSpec(29, "resize", 16)
    assert cache_tta(runs["good"][0], "test", spec) == "identity,hflip"
    assert cache_tta(runs["good"][0], "val", spec) == "identity"
    assert cache_tta(runs["good"][0], "missing", spec) is None
    ens = EnsembleConfig.model_validate({
        "task": "segmentation", "method": "weighted", "name": "fitted", "weights": "fit", "thresholds": "fit",
        "members": [{"name": k, "runs": [str(r) for r in v]} for k, v in runs.items()],
        "out_dir": str(tmp_path / "out"), "fit": {"folds": 2, "per_class": False}})
    fit_ensemble(ens, progress=False)
    err = capsys.readouterr().err
    assert err.count("warning: member good:") == 2 and "member noise" not in err
    assert "--split val --tta --save-probs" in err
    for run in runs["good"]:   # the validation maps written again the test maps' way: no warning
        for path in (run / "preds" / "val").glob("*.npz"):
            with np.load(path) as f:
                save_probs(path, f["probs"], tuple(f["orig_size"]), tta="identity,hflip")
    assert warn_tta_mismatch(resolve_members(ens)) == []


def _kp_cache(path: Path, **change) -> Path:
    """A valid two-image ``keypoints.npz`` of the 15 SHS_NET joints, with ``change`` applied."""
    arrays = {"names": np.asarray(["a.png", "b.png"]), "coords": np.zeros((2, 15, 2), np.float32),
              "confidence": np.ones((2, 15), np.float32), "landmarks": np.asarray("shs15")}
    arrays.update(change)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("change, message", [
    ({"coords": np.zeros((2, 14, 2), np.float32)},
     "coords of shape (2, 14, 2) (float32), expected (2, 15, 2) floats: 2 images x 15 landmarks of shs15"),
    ({"coords": np.zeros((2, 15, 2), np.int64)}, "coords of shape (2, 15, 2) (int64), expected (2, 15, 2) floats"),
    ({"confidence": np.ones((3, 15), np.float32)}, "confidence of shape (3, 15) (float32), expected (2, 15) floats"),
    ({"coords": np.full((2, 15, 2), np.nan, np.float32)}, "coords holds 60 NaN/infinite values"),
    ({"names": np.asarray(["a.png", "a.png"])}, "names must be 2 distinct image names"),
    ({"landmarks": np.asarray("dha37")}, "holds landmark set dha37, the run predicts shs15"),
    ({"landmarks": np.asarray("shs16")}, "unknown landmark set 'shs16'"),
    ({"names": np.asarray([object(), object()], dtype=object)}, "not a keypoint prediction cache (Object arrays cannot be loaded"),
])
def test_a_keypoint_cache_that_does_not_fit_its_run_is_refused_naming_the_file(tmp_path, change, message):
    from tasks.keypoints.cache import load_cache

    good = _kp_cache(tmp_path / "good" / "keypoints.npz")
    names, coords, conf, lmset = load_cache(good, "shs15")
    assert names == ["a.png", "b.png"] and coords.shape == (2, 15, 2) and conf.shape == (2, 15) and lmset == "shs15"
    bad = _kp_cache(tmp_path / "bad" / "keypoints.npz", **change)
    with pytest.raises(FormatError) as err:
        load_cache(bad, None if "unknown landmark set" in message else "shs15")  # a set of no run (select)
    assert str(err.value).startswith(f"{bad}: {message}"), str(err.value)


@pytest.mark.parametrize("text, message", [
    ("id,boneage\n1,30\n2,5000\n", "id '2' has age 5000, outside [-240, 480] months: not a bone-age prediction"),
    ("id,boneage\n1,30\n1,40\n", "duplicate"),
    ("id,boneage\n1,nan\n", "NaN"),
    ("id,age\n1,30\n", "missing column 'boneage'"),
])
def test_a_boneage_cache_that_is_no_prediction_in_months_is_refused_naming_the_file(tmp_path, text, message):
    from tasks.boneage.cache import load_cache

    path = tmp_path / "boneage.csv"
    path.write_text("id,boneage\n1,30\n2,-3.5\n")
    assert load_cache(path) == (["1", "2"], pytest.approx(np.array([30.0, -3.5])))
    path.write_text(text)
    with pytest.raises(FormatError) as err:
        load_cache(path)
    assert str(err.value).startswith(f"{path}:") and message in str(err.value), str(err.value)
