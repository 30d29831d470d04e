"""Per-class post-processing: each operation on constructed masks, the fit on constructed predictions, and the
fitted operations through fit.json into the ensemble's CSV."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ensembles.postprocess import MARGIN, candidate_ops, choose, fit_postprocess
from tasks.postprocess import apply_ops, check_postprocess, fill_holes, largest_component, min_area, parse_op


def _mask(shape, *boxes) -> np.ndarray:
    m = np.zeros(shape, bool)
    for r0, r1, c0, c1 in boxes:
        m[r0:r1, c0:c1] = True
    return m


def test_largest_component_keeps_the_8_connected_largest():
    m = _mask((12, 12), (1, 6, 1, 6), (9, 11, 9, 11))  # 25 px square, 4 px blob
    m[6, 6] = True  # touches the square diagonally: same component
    expected = _mask((12, 12), (1, 6, 1, 6))
    expected[6, 6] = True
    np.testing.assert_array_equal(largest_component(m), expected)
    assert not largest_component(np.zeros((4, 4), bool)).any()


def test_fill_holes_fills_enclosed_background_only():
    ring = _mask((12, 12), (1, 8, 1, 8))
    ring[3:6, 3:6] = False  # 3x3 hole
    np.testing.assert_array_equal(fill_holes(ring), _mask((12, 12), (1, 8, 1, 8)))
    cup = _mask((12, 12), (1, 8, 1, 8))
    cup[3:6, 3:8] = False  # open to the right: no hole
    np.testing.assert_array_equal(fill_holes(cup), cup)
    diag = _mask((9, 9), (2, 7, 2, 7))
    diag[3:6, 3:6] = False
    diag[2, 2] = False  # a diagonal gap: background is 4-connected, so the inside stays a hole
    diag[3, 3] = True
    expected = _mask((9, 9), (2, 7, 2, 7))
    expected[2, 2] = False
    np.testing.assert_array_equal(fill_holes(diag), expected)
    edge = _mask((6, 6), (0, 6, 0, 6))
    edge[0:3, 2:4] = False  # a notch opening on the image border is not a hole
    np.testing.assert_array_equal(fill_holes(edge), edge)


def test_min_area_drops_small_components_only():
    m = _mask((12, 12), (1, 6, 1, 6), (8, 10, 8, 10), (11, 12, 0, 1))  # 25, 4 and 1 px
    np.testing.assert_array_equal(min_area(m, 4), _mask((12, 12), (1, 6, 1, 6), (8, 10, 8, 10)))
    np.testing.assert_array_equal(min_area(m, 5), _mask((12, 12), (1, 6, 1, 6)))
    np.testing.assert_array_equal(apply_ops(m, ["min_area:2", "largest_component"]), _mask((12, 12), (1, 6, 1, 6)))


@pytest.mark.parametrize("op, message", [("largest", "did you mean 'largest_component'"),
                                         ("min_area:0", "whole number of pixels"), ("min_area", "whole number"),
                                         ("fill_holes:3", "takes no value")])
def test_bad_operations_are_named(op, message):
    with pytest.raises(ValueError, match=message):
        parse_op(op)
    with pytest.raises(ValueError, match="unknown class 'Radus'; did you mean 'Radius'"):
        check_postprocess({"Radus": ["fill_holes"]}, ["Radius", "Ulna"])


def _items(n_images: int = 6, size: int = 32):
    """Class a: the bone plus a spurious blob; b: exact; c: the bone with a hole. Crops are the whole image."""
    for i in range(n_images):
        gt = np.stack([_mask((size, size), (4 + i, 14 + i, 4, 14))] * 3)
        pred_a = gt[0] | _mask((size, size), (26, 29, 26, 29))
        pred_c = gt[2].copy()
        pred_c[7 + i:10 + i, 7:10] = False
        yield [(pred_a, 0, 0), (gt[1].copy(), 0, 0), (pred_c, 0, 0)], gt, f"ID{i // 2:03d}"


def test_fit_picks_largest_component_for_a_spurious_blob_and_none_for_a_clean_class():
    fit = fit_postprocess(_items(), ["a", "b", "c"], folds=3)
    assert fit.ops == {"a": ["largest_component"], "c": ["fill_holes"]}
    assert fit.after > fit.before and fit.cross_fitted == pytest.approx(fit.after)
    assert fit.n_items == 6 and fit.n_folds == 3
    assert set(fit.per_class_gain) == {"a", "c"} and all(g > MARGIN for g in fit.per_class_gain.values())


def test_an_operation_is_kept_only_above_the_margin():
    mean = np.array([[0.90, 0.9005, 0.89], [0.80, 0.85, 0.85], [1.0, 1.0, 1.0]])
    np.testing.assert_array_equal(choose(mean), [0, 1, 0])  # ties go to the earlier candidate
    assert candidate_ops(2048 * 2048)[3:] == [("min_area:1049",), ("min_area:4194",), ("min_area:16777",)]


def _seg_runs(tmp_path: Path, size: int = 32):
    """A labelled training set of 4 patients (Radius and Ulna squares), 2 test images, and a 2-fold member whose
    cached probabilities are the truth plus a spurious Radius blob (validation and test alike)."""
    from engine.config import build_config, save_config
    from tasks.segmentation.cache import save_probs
    from tasks.formats.handbones import CLASSES, list_samples, read_masks, split_folds, write_polygons
    from tasks.formats.images import write_png

    def square(x0, y0, side):
        return [np.array([[x0, y0], [x0 + side, y0], [x0 + side, y0 + side], [x0, y0 + side]], float)]

    def probs(gt):
        p = gt.astype(np.float32) * 0.9
        p[CLASSES.index("Radius"), 25:29, 25:29] = 0.9
        return p

    root, test_root = tmp_path / "train", tmp_path / "test"
    for i in range(4):
        name = f"image{i:013d}"
        write_png(root / "DCM" / f"ID{i:03d}" / f"{name}.png", np.zeros((size, size), np.uint8))
        write_polygons(root / "outputs_json" / f"ID{i:03d}" / f"{name}.json",
                       {"Radius": square(2 + i, 3, 8), "Ulna": square(14, 2 + i, 6)})
    test_gt = {}
    for i in range(2):
        name = f"image{100 + i:013d}.png"
        write_png(test_root / "DCM" / f"ID{100 + i:03d}" / name, np.zeros((size, size), np.uint8))
        gt = np.zeros((len(CLASSES), size, size), np.uint8)
        gt[CLASSES.index("Radius"), 4 + i:12 + i, 3:11] = 1
        test_gt[name] = gt
    samples = list_samples(root)
    runs = []
    for fold in (0, 1):
        run = tmp_path / "runs" / f"m-f{fold}"
        cfg = build_config({"task": "segmentation", "data": {"root": str(root), "test_root": str(test_root),
                                                             "image_size": size, "n_folds": 2, "fold": fold}})
        save_config(cfg, run / "config.yaml")
        for k in split_folds(samples, 2, fold)[1]:
            gt = read_masks(samples[k].label_path, size, size)
            save_probs(run / "preds" / "val" / f"{samples[k].name}.npz", probs(gt), (size, size))
        for name, gt in test_gt.items():
            save_probs(run / "preds" / "test" / f"{name}.npz", probs(gt), (size, size))
        runs.append(run)
    return runs, test_gt


def test_fitted_operations_round_trip_through_fit_json_into_the_csv(tmp_path):
    from ensembles.config import load_ensemble_config
    from ensembles.fit import fit_ensemble
    from ensembles.runner import predict_ensemble
    from tasks.formats.handbones import CLASSES
    from tasks.rle import decode
    from tasks.submission import iter_images

    runs, test_gt = _seg_runs(tmp_path)
    body = (f"task: segmentation\nmethod: soft\nmembers:\n  - {{name: m, runs: [{runs[0]}, {runs[1]}]}}\n"
            f"out_dir: {tmp_path / 'out'}\nfit: {{folds: 2}}\n")
    (tmp_path / "pp.yaml").write_text(body + "postprocess: fit\n")
    (tmp_path / "plain.yaml").write_text(body)
    ens = load_ensemble_config(tmp_path / "pp.yaml")
    record = fit_ensemble(ens, progress=False)
    assert record["postprocess"] == {"Radius": ["largest_component"]}
    assert record["postprocess_fit"]["after"] > record["postprocess_fit"]["before"]
    assert json.loads(ens.fit_path.read_text())["postprocess"] == {"Radius": ["largest_component"]}
    summary = json.loads((ens.run_dir / "summary.json").read_text())
    assert summary["ensemble"]["postprocess"] == {"Radius": ["largest_component"]}

    rows = {}
    for name in ("pp", "plain"):
        out = tmp_path / f"{name}.csv"
        predict_ensemble(load_ensemble_config(tmp_path / f"{name}.yaml"), out_csv=out, from_cache=True, progress=False)
        rows[name] = dict(iter_images(out))
    radius = CLASSES.index("Radius")
    for image, gt in test_gt.items():
        pp = np.stack([decode(r, 32, 32) for r in rows["pp"][image]])
        plain = np.stack([decode(r, 32, 32) for r in rows["plain"][image]])
        np.testing.assert_array_equal(pp, gt)  # the blob is gone, the bone intact
        blob = np.zeros_like(gt[radius])
        blob[25:29, 25:29] = 1
        np.testing.assert_array_equal(plain[radius], gt[radius] | blob)
        np.testing.assert_array_equal(np.delete(plain, radius, 0), np.delete(pp, radius, 0))


def test_ensemble_postprocess_config_is_checked(tmp_path):
    from engine.config import ConfigError
    from ensembles.config import load_ensemble_config

    path = tmp_path / "bad.yaml"
    path.write_text("task: segmentation\nmethod: soft\nmembers: [{run: r}]\npostprocess: {Radius: [min_area:-4]}\n")
    with pytest.raises(ConfigError, match="postprocess.*min_area:-4.*whole number"):
        load_ensemble_config(path)
    path.write_text("task: boneage\nmethod: mean\nmembers: [{run: r}]\npostprocess: {Radius: [fill_holes]}\n")
    with pytest.raises(ConfigError, match="postprocess is for segmentation"):
        load_ensemble_config(path)
