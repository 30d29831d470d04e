"""Pseudo-labels: thresholds fitted on validation (hand-computed), the written folders read back through each task's
training reader, ignored pixels out of the loss, pseudo samples never in a validation fold, and bad input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from core.cli import run_main
from engine.config import ConfigError, build_config, save_config
from ensembles.config import EnsembleConfig
from ensembles.pseudo import pseudo_label
from tasks.formats import FormatError
from tasks.formats.handbones import CLASS_INDEX, CLASSES, list_samples, read_masks, split_folds, write_polygons
from tasks.formats.images import write_png
from tasks.pseudo import check_precision, fit_spread, member_spread, write_manifest
from tasks.segmentation.cache import save_probs
from tasks.segmentation.pseudo import SIDE as SEG_SIDE
from tasks.segmentation.pseudo import fit_band, read_ignore

RADIUS = CLASS_INDEX["Radius"]


# ------------------------------------------------------------------------------------ thresholds by hand

def test_spread_threshold_keeps_the_most_items_that_meet_the_precision():
    # ordered by spread: 0.1 right, 0.2 right, 0.3 wrong, 0.4 right -> kept-set rates 1, 1, 2/3, 3/4
    spread, right = np.array([0.4, 0.1, 0.3, 0.2]), np.array([True, True, False, True])
    assert fit_spread(spread, right, 0.75) == 0.4
    assert fit_spread(spread, right, 0.8) == 0.2
    assert fit_spread(spread, right, 0.99) == 0.2
    assert fit_spread(spread, ~right, 0.5) is None            # the most certain item is wrong: keep nothing
    # equal spreads are kept together: {0.1, 0.1} is right half the time, {0.1, 0.1, 0.2} two thirds
    assert fit_spread(np.array([0.1, 0.1, 0.2]), np.array([True, False, True]), 0.6) == 0.2
    assert fit_spread(np.array([0.1, 0.1, 0.2]), np.array([True, False, True]), 0.7) is None


def test_member_spread_is_the_rms_distance_from_the_members_mean():
    points = np.array([[[[0.0, 0.0]]], [[[6.0, 8.0]]]])        # (M=2, N=1, K=1, 2): 5 px each from the mean
    np.testing.assert_allclose(member_spread(points), [[5.0]])
    ages = np.array([[100.0, 50.0], [110.0, 50.0], [120.0, 50.0]])[..., None]   # sd 8.165, 0
    np.testing.assert_allclose(member_spread(ages), [np.sqrt(200 / 3), 0.0])


def test_band_levels_by_hand():
    fg, bg = np.zeros((4, 256)), np.zeros((4, 256))
    bg[0, [0, 100, 200]] = [96, 3, 1]
    fg[0, [0, 100, 200]] = [1, 9, 40]
    fg[2, 255], bg[2, 0] = 50, 500                             # a perfect class
    fg[3, [0, 255]], bg[3, 0] = [20, 80], 1000                 # a fifth of the bone at level 0
    lo, hi = fit_band(fg, bg, 0.95)
    # class 0: at or above 101: 40 of 41 foreground (0.976); at or above 1: 49 of 53 (0.925) -> hi 101;
    # at or below 99: 1 of the 50 foreground pixels (0.02 <= 0.05); at or below 100: 10 (0.2) -> lo 99
    assert (lo[0], hi[0]) == (99, 101)
    assert (lo[1], hi[1]) == (255, 256)                        # never foreground on validation: all background
    assert (lo[2], hi[2]) == (0, 1)
    # class 3: level 0 is background 1000 of 1020 times (0.98), but holds 20 of the 100 foreground pixels: it is
    # not labelled background (a rule by the background's share would call every pixel there background)
    assert (lo[3], hi[3]) == (-1, 1)
    lo, hi = fit_band(fg, bg, 0.98)
    assert (lo[0], hi[0]) == (99, 256)                         # no level is 98% foreground: no positive pixel
    assert (lo[3], hi[3]) == (-1, 1)


def test_precision_outside_the_open_unit_interval_is_refused():
    assert check_precision(0.99) == 0.99
    for bad in (0, 1, 1.5, -0.1, float("nan"), True, "0.9"):
        with pytest.raises(ValueError, match="outside \\(0, 1\\)"):
            check_precision(bad)


# --------------------------------------------------------------------------------- the loss ignores pixels

@pytest.mark.parametrize("term", ["bce", "dice", "focal", "tversky"])
def test_ignored_pixels_give_no_loss_and_no_gradient(term):
    from tasks.segmentation.task import MultilabelLoss

    gen = torch.Generator().manual_seed(0)
    target = (torch.rand(2, 29, 8, 8, generator=gen) > 0.7).to(torch.uint8)
    ignore = (torch.rand(2, 29, 8, 8, generator=gen) > 0.6).to(torch.uint8)
    logits = torch.randn(2, 29, 8, 8, generator=gen, requires_grad=True)
    loss = MultilabelLoss({term: 1.0})
    value = loss(logits, target, ignore)
    value.backward()
    grad = logits.grad
    assert torch.all(grad[ignore.bool()] == 0)
    assert grad[~ignore.bool()].abs().sum() > 0
    # what an ignored pixel holds does not matter
    changed = logits.detach().clone()
    changed[ignore.bool()] = 50.0
    assert float(loss(changed, target, ignore)) == pytest.approx(value.item(), rel=1e-6)
    flipped = torch.where(ignore.bool(), 1 - target, target)
    assert float(loss(logits.detach(), flipped, ignore)) == pytest.approx(value.item(), rel=1e-6)


def test_without_an_ignore_map_the_loss_is_smps():
    import segmentation_models_pytorch as smp

    from tasks.segmentation.task import MultilabelLoss

    gen = torch.Generator().manual_seed(1)
    target = (torch.rand(2, 29, 8, 8, generator=gen) > 0.7).float()
    logits = torch.randn(2, 29, 8, 8, generator=gen)
    ours = MultilabelLoss({"bce": 1.0, "dice": 0.5, "focal": 2.0, "tversky": 0.25})(logits, target)
    theirs = (smp.losses.SoftBCEWithLogitsLoss()(logits, target)
              + 0.5 * smp.losses.DiceLoss(mode="multilabel", from_logits=True)(logits, target)
              + 2.0 * smp.losses.FocalLoss(mode="multilabel", gamma=2.0)(logits, target)
              + 0.25 * smp.losses.TverskyLoss(mode="multilabel", alpha=0.3, beta=0.7)(logits, target))
    assert float(ours) == pytest.approx(float(theirs), rel=1e-5)
    nothing = torch.zeros_like(target, dtype=torch.uint8)          # the masked path, nothing ignored: the same
    assert float(MultilabelLoss({"bce": 1.0, "dice": 0.5, "focal": 2.0, "tversky": 0.25})(logits, target, nothing)) \
        == pytest.approx(float(theirs), rel=1e-5)
    bce_kept = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    ignore = torch.zeros_like(target, dtype=torch.uint8)
    ignore[:, :, :4] = 1
    assert float(MultilabelLoss({"bce": 1.0})(logits, target, ignore)) == \
        pytest.approx(float(bce_kept[:, :, 4:].mean()), rel=1e-6)


# ------------------------------------------------------------------------------ segmentation, end to end

SIZE = 32


def _square(x0: int) -> np.ndarray:
    return np.array([[x0, 3], [x0 + 6, 3], [x0 + 6, 9], [x0, 9]], float)


def _segmentation_runs(tmp_path: Path, n_patients: int = 4, n_test: int = 3):
    """A labelled training set (a Radius square per image), test images, and two members' fold runs with
    validation and test caches (levels p * 255): "good" says 230 on the bone and 6 off it, "fair" 178 and 26."""
    root, test = tmp_path / "train", tmp_path / "test"
    for i in range(n_patients):
        name = f"image{i:013d}"
        write_png(root / "DCM" / f"ID{i:03d}" / f"{name}.png", np.full((SIZE, SIZE), 40 + i, np.uint8))
        write_polygons(root / "outputs_json" / f"ID{i:03d}" / f"{name}.json", {"Radius": [_square(2 + i)]})
    test_masks = {}
    for i in range(n_test):
        name = f"image{100 + i:013d}.png"
        write_png(test / "DCM" / f"ID{100 + i:03d}" / name, np.full((SIZE, SIZE), 90 + i, np.uint8))
        mask = np.zeros((29, SIZE, SIZE), np.float32)
        mask[RADIUS, 4:10, 3 + i:9 + i] = 1
        test_masks[name] = mask
    samples = list_samples(root)
    runs = {}
    for label, (on, off) in {"good": (230, 6), "fair": (178, 26)}.items():
        runs[label] = []
        for fold in (0, 1):
            run = tmp_path / "runs" / f"{label}-f{fold}"
            cfg = build_config({"task": "segmentation", "data": {"root": str(root), "test_root": str(test),
                                                                 "image_size": SIZE, "n_folds": 2, "fold": fold}})
            save_config(cfg, run / "config.yaml")
            for k in split_folds(samples, 2, fold)[1]:
                gt = read_masks(samples[k].label_path, SIZE, SIZE)
                save_probs(run / "preds" / "val" / f"{samples[k].name}.npz", np.where(gt, on, off).astype(np.uint8),
                           (SIZE, SIZE))
            for name, mask in test_masks.items():
                save_probs(run / "preds" / "test" / f"{name}.npz", np.where(mask, on, off).astype(np.uint8),
                           (SIZE, SIZE))
            runs[label].append(run)
    ens = EnsembleConfig.model_validate({"task": "segmentation", "method": "soft", "name": "seg_soft",
                                         "members": [{"name": k, "runs": [str(r) for r in v]} for k, v in runs.items()],
                                         "out_dir": str(tmp_path / "ens")})
    return root, test, ens, test_masks


def test_segmentation_pseudo_labels_fit_write_and_train_only(tmp_path, capsys):
    root, test, ens, test_masks = _segmentation_runs(tmp_path)
    out, manifest = pseudo_label(ens, tmp_path / "pseudo", precision=0.99, progress=False)
    # soft mean: level 204 on the bone, 16 off it; every validation pixel is one or the other
    radius = CLASSES[RADIUS]
    assert manifest["thresholds"]["hi"][RADIUS] == 17        # the lowest level above every background pixel
    assert manifest["thresholds"]["lo"][RADIUS] == 16        # the highest below it
    assert manifest["thresholds"]["hi_p"][radius] == round(17 / 255, 4)
    assert manifest["validation"]["right"] == 1.0 and manifest["validation"]["kept"] == 1.0
    assert manifest["test"] == {"images": 3, "written": 3, "kept": 1.0, "kept_per_class": manifest["test"]["kept_per_class"]}
    assert manifest["source"]["test_predictions"] == "cache" and manifest["source"]["members"] == ["good", "fair"]
    assert json.loads((out / "pseudo.json").read_text()) == manifest
    # read back through the task's own reader: the labels are the test masks, nothing ignored
    cfg = build_config({"task": "segmentation", "data": {"root": str(root), "image_size": SIZE, "n_folds": 2,
                                                         "pseudo_roots": [str(out)], "cache": False},
                        "augment": {"rotate": 0, "scale": 0, "shift": 0, "brightness_contrast": 0, "gamma": 0}})
    from tasks.segmentation.task import SegmentationTask

    pseudo_names = set(test_masks)
    for fold in (0, 1):
        train, val = SegmentationTask(cfg.model_copy(update={"data": cfg.data.model_copy(update={"fold": fold})})
                                      ).datasets()
        assert pseudo_names <= {s.name for s in train.samples}
        assert not pseudo_names & {s.name for s in val.samples}      # never in a validation fold
    by_name = {s.name: i for i, s in enumerate(train.samples)}
    for name, mask in test_masks.items():
        item = train[by_name[name]]
        np.testing.assert_array_equal(item["masks"].numpy(), mask.astype(np.uint8))
        assert item["ignore"].sum() == 0
        assert Path(train.samples[by_name[name]].image_path).is_symlink()
    labelled = next(i for i, s in enumerate(train.samples) if s.name not in pseudo_names)
    assert train[labelled]["ignore"].sum() == 0                      # a labelled image ignores nothing
    from tools import pseudo_label as tool

    assert tool.main([str(_yaml(tmp_path, ens)), "--out", str(tmp_path / "pseudo2"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "right 100.0% of the kept" in printed and f"{radius:<12}" in printed and "wrote" in printed


def _yaml(tmp_path: Path, ens: EnsembleConfig) -> Path:
    import yaml

    path = tmp_path / f"{ens.run_name}.yaml"
    path.write_text(yaml.safe_dump(ens.model_dump(mode="json", exclude_unset=True)))
    return path


def test_segmentation_band_ignores_uncertain_pixels_and_what_polygons_cannot_say(tmp_path):
    test = tmp_path / "test"
    write_png(test / "DCM" / "ID001" / "a.png", np.zeros((SIZE, SIZE), np.uint8))
    sample = list_samples(test, labels=None)[0]
    levels = np.zeros((29, SIZE, SIZE), np.uint8)
    levels[RADIUS, 2:12, 2:12] = 255          # a confident ring ...
    levels[RADIUS, 5:9, 5:9] = 0              # ... around a confident hole (a polygon cannot hold it)
    levels[RADIUS, 2:12, 12] = 128            # an uncertain column
    thresholds = {"lo": [50] * 29, "hi": [200] * 29}
    stats = SEG_SIDE.write(tmp_path / "out", [(sample, levels)], thresholds)
    ignore = read_ignore(tmp_path / "out" / "ignore" / "ID001" / "a.npz", SIZE, SIZE)
    expected = np.zeros((29, SIZE, SIZE), bool)
    expected[RADIUS, 2:12, 12] = True
    expected[RADIUS, 5:9, 5:9] = True
    np.testing.assert_array_equal(ignore, expected)
    label = read_masks(tmp_path / "out" / "outputs_json" / "ID001" / "a.json", SIZE, SIZE)
    np.testing.assert_array_equal(label[RADIUS, 2:12, 2:12], 1)      # the hole filled, and ignored
    assert stats["written"] == 1
    assert stats["per_image"]["a.png"]["classes"][RADIUS] == pytest.approx(1 - 26 / SIZE**2, abs=1e-4)
    # a training pixel is ignored where any original pixel under it is
    write_manifest(tmp_path / "out", {"format": 1, "task": "segmentation", "test": stats})
    from tasks.segmentation.task import HandboneDataset
    from tasks.segmentation.pseudo import training_samples

    data = build_config({"task": "segmentation", "data": {"root": str(test), "pseudo_roots": [str(tmp_path / "out")],
                                                          "cache": False}}).data
    item = HandboneDataset(training_samples(data), SIZE // 2)[0]
    assert item["ignore"][RADIUS].numpy().tolist() == \
        (expected[RADIUS].reshape(SIZE // 2, 2, SIZE // 2, 2).any(axis=(1, 3))).astype(int).tolist()


def test_training_with_pseudo_roots_runs_with_augmentation(tmp_path):
    from engine.trainer import train

    root, _, ens, _ = _segmentation_runs(tmp_path)
    out, _ = pseudo_label(ens, tmp_path / "pseudo", progress=False)
    cfg = build_config({"task": "segmentation", "name": "with_pseudo",
                        "data": {"root": str(root), "image_size": SIZE, "n_folds": 2, "pseudo_roots": [str(out)],
                                 "cache_dir": str(tmp_path / "cache")},
                        "model": {"name": "smp:unet/resnet18"}, "augment": {"hflip": 0.5, "rotate": 20},
                        "train": {"epochs": 1, "batch_size": 5, "device": "cpu"},   # one step: 2 labelled + 3 pseudo
                        "logging": {"out_dir": str(tmp_path / "runs"), "progress": False}})
    train(cfg)
    summary = json.loads((cfg.run_dir / "summary.json").read_text())
    assert summary["val"]["score"] is not None


def test_pseudo_folder_is_written_whole_or_not_at_all(tmp_path):
    _, _, ens, _ = _segmentation_runs(tmp_path)
    out, first = pseudo_label(ens, tmp_path / "pseudo", progress=False)
    with pytest.raises(FileExistsError, match="exists; choose another --out or replace it"):
        pseudo_label(ens, out, progress=False)
    stale = next((ens.members[0].run_dirs[0] / "preds" / "test").glob("*.npz"))
    stale.write_bytes(b"not an npz")                                  # fails while the folder is being written
    with pytest.raises(FormatError, match="not a prediction cache entry"):
        pseudo_label(ens, out, overwrite=True, progress=False)
    assert json.loads((out / "pseudo.json").read_text()) == first     # the old folder stands
    assert not list(tmp_path.glob(".pseudo.*.tmp"))                   # no half-written folder left


# ---------------------------------------------------------------------------------------------- bad input

def test_an_ensemble_without_validation_caches_is_one_line(tmp_path, capsys):
    from tools import pseudo_label as tool

    _, _, ens, _ = _segmentation_runs(tmp_path)
    for run in ens.members[1].run_dirs:
        for p in (run / "preds" / "val").glob("*.npz"):
            p.unlink()
    assert run_main(tool.main, [str(_yaml(tmp_path, ens)), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: member fair: ") and "--split val --save-probs" in err
    assert not (tmp_path / "p").exists()
    assert run_main(tool.main, [str(_yaml(tmp_path, ens)), "--out", str(tmp_path / "p"), "--precision", "1.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: precision 1.5 is outside (0, 1)")


def test_pseudo_roots_are_refused_for_a_task_without_pseudo_labels_and_checked_when_read(tmp_path):
    with pytest.raises(ConfigError, match="data.pseudo_roots: task 'orientation' has no pseudo-labels"):
        build_config({"task": "orientation", "data": {"root": "x", "pseudo_roots": ["p"]}})
    from tasks.segmentation.pseudo import training_samples

    data = build_config({"task": "segmentation", "data": {"root": "x", "pseudo_roots": [str(tmp_path)]}}).data
    with pytest.raises(FormatError, match="not a pseudo-labelled folder \\(no pseudo.json"):
        training_samples(data)
    write_manifest(tmp_path, {"format": 1, "task": "keypoints", "test": {"written": 1}})
    with pytest.raises(FormatError, match="pseudo-labels of task 'keypoints', the run is segmentation"):
        training_samples(data)


# ------------------------------------------------------------------------------------ keypoints, bone age

def _value_runs(tmp_path: Path, task: str, data: dict, truth: dict, test_names: list, write_cache, noise: list):
    """Two members x two fold runs whose caches hold the truth plus member-specific noise (validation), and the
    test predictions (the same noise around a made-up truth)."""
    rng = np.random.default_rng(0)
    runs = {}
    for m, scale in enumerate(noise):
        runs[f"m{m}"] = []
        for fold in (0, 1):
            cfg = build_config({"task": task, "data": {**data, "n_folds": 2, "fold": fold}})
            run = tmp_path / "runs" / f"m{m}-f{fold}"
            save_config(cfg, run / "config.yaml")
            val = list(cfg.spec.ensemble_side().truth(cfg))
            values = np.stack([np.asarray(truth[n], float) for n in val])
            write_cache(run / "preds" / "val", val, values + rng.normal(0, scale, values.shape), cfg)
            fake = np.stack([np.asarray(truth[n], float) for n in test_names])
            write_cache(run / "preds" / "test", test_names, fake + rng.normal(0, scale, fake.shape), cfg)
            runs[f"m{m}"].append(run)
    return EnsembleConfig.model_validate({"task": task, "method": "mean", "name": f"{task}_mean",
                                          "members": [{"name": k, "runs": [str(r) for r in v]} for k, v in runs.items()],
                                          "out_dir": str(tmp_path / "ens")})


def test_keypoint_pseudo_labels_keep_the_points_members_agree_on(phantom, tmp_path):
    from tasks.keypoint_sets import get_set
    from tasks.keypoints.cache import save_cache
    from tasks.keypoints.samples import split_samples
    from tasks.keypoints.task import KeypointTask
    from tasks.metrics import radial_errors

    lmset = get_set("shs15")
    data = {"root": str(phantom / "joints"), "landmarks": "shs15", "image_size": 64, "cache": False}
    base = build_config({"task": "keypoints", "data": data}).data
    labelled = split_samples(base.model_copy(update={"n_folds": 2}), lmset, "train") + \
        split_samples(base.model_copy(update={"n_folds": 2}), lmset, "val")
    truth = {s.name: s.coords for s in labelled}
    test = split_samples(base, lmset, "test")
    centre = np.array([[64.0, 64.0]] * len(lmset))
    truth.update({s.name: centre for s in test})

    def write(folder, names, values, cfg):
        save_cache(folder, names, np.clip(values, 0, 127), np.ones(values.shape[:2]), "shs15")

    ens = _value_runs(tmp_path, "keypoints", data, truth, [s.name for s in test], write, noise=[0.5, 6.0])
    out, manifest = pseudo_label(ens, tmp_path / "kp", precision=0.9, progress=False)
    t, radius = manifest["thresholds"]["spread_px"], manifest["thresholds"]["radius_px"]
    assert radius == lmset.sdr_px[0] and t is not None
    # the threshold by hand from the caches
    from ensembles.members import resolve_members
    from ensembles.values import validation_values

    _, preds, gt = validation_values(ens, resolve_members(ens, need_models=False))
    spread, right = member_spread(preds), radial_errors(preds.mean(0), gt) <= radius
    assert t == fit_spread(spread, right, 0.9)
    assert manifest["validation"]["right"] >= 0.9 and 0 < manifest["validation"]["kept"] < 1
    # read back: every written image's visible points are exactly the kept ones; train only
    cfg = build_config({"task": "keypoints", "data": {**data, "n_folds": 2, "pseudo_roots": [str(out)]},
                        "augment": {"rotate": 0, "scale": 0, "shift": 0, "brightness_contrast": 0, "gamma": 0}})
    test_names = {s.name for s in test}
    for fold in (0, 1):
        task = KeypointTask(cfg.model_copy(update={"data": cfg.data.model_copy(update={"fold": fold})}))
        train, val = task.datasets()
        assert not test_names & {s.name for s in val.samples}
    written = [(i, s) for i, s in enumerate(train.samples) if s.name in test_names]
    assert len(written) == manifest["test"]["written"] > 0
    test_preds = np.stack([np.mean([np.load(r / "preds/test/keypoints.npz")["coords"] for r in m.run_dirs], axis=0)
                           for m in ens.members])
    order = list(np.load(ens.members[0].run_dirs[0] / "preds/test/keypoints.npz")["names"])
    keep = member_spread(test_preds) <= t
    for i, s in written:
        np.testing.assert_array_equal(train[i]["visible"].numpy().astype(bool), keep[order.index(s.name)])
        np.testing.assert_allclose(s.coords, test_preds.mean(0)[order.index(s.name)], atol=1e-3)


def test_boneage_pseudo_labels_keep_the_images_members_agree_on(phantom, tmp_path):
    from tasks.boneage.samples import test_samples, train_samples
    from tasks.boneage.task import BoneAgeTask
    from tasks.formats.submissions import write_ages

    data = {"root": str(phantom / "boneage"), "image_size": 32, "cache": False}
    base = build_config({"task": "boneage", "data": data}).data
    truth = {s.id: s.age for s in train_samples(base)}
    test = test_samples(base)
    truth.update({s.id: 100.0 for s in test})

    def write(folder, names, values, cfg):
        folder.mkdir(parents=True, exist_ok=True)
        write_ages(folder / "boneage.csv", names, np.clip(values, 0, 240))

    ens = _value_runs(tmp_path, "boneage", data, truth, [s.id for s in test], write, noise=[2.0, 9.0])
    # a single member has no spread: refused in one line
    one = ens.model_copy(update={"members": ens.members[:1]})
    with pytest.raises(ValueError, match="needs at least 2 members, it has 1"):
        pseudo_label(one, tmp_path / "one", progress=False)
    out, manifest = pseudo_label(ens, tmp_path / "ba", precision=0.95, progress=False)
    assert manifest["thresholds"]["tolerance_months"] == 12.0
    assert manifest["validation"]["right"] >= 0.95
    kept = {n for n, v in manifest["images"].items() if v["kept"]}
    assert len(kept) == manifest["test"]["written"]
    cfg = build_config({"task": "boneage", "data": {**data, "n_folds": 2, "pseudo_roots": [str(out)]}})
    for fold in (0, 1):
        train, val = BoneAgeTask(cfg.model_copy(update={"data": cfg.data.model_copy(update={"fold": fold})})).datasets()
        assert kept <= {s.id for s in train.samples} and not kept & {s.id for s in val.samples}
    ages = {s.id: s.age for s in train.samples if s.id in kept}
    cached = [dict(zip(*_read_ages(r / "preds/test/boneage.csv"))) for m in ens.members for r in m.run_dirs]
    for name, age in ages.items():
        assert age == pytest.approx(np.mean([c[name] for c in cached]), abs=1e-3)   # both members: 2 runs each


def _read_ages(path: Path):
    from tasks.boneage.cache import load_cache

    return load_cache(path)


def test_a_kept_point_stays_kept_under_a_mirror_that_swaps_its_pair(tmp_path):
    from tasks.augment import build_augment
    from tasks.keypoint_labels import list_keypoint_samples, write_wide
    from tasks.keypoint_sets import LandmarkSet
    from tasks.keypoints.pseudo import PseudoKeypointSample
    from tasks.keypoints.task import KeypointDataset

    root = tmp_path / "pairs"
    pts = np.array([[30.0, 40.0], [90.0, 42.0]])
    write_png(root / "images" / "s.png", np.zeros((128, 128), np.uint8))
    lmset = LandmarkSet("pair", ("L", "R"), flip_pairs=(("L", "R"),))
    write_wide(root / "labels.csv", ["s.png"], pts[None], lmset)
    s = list_keypoint_samples(root, lmset, labels="labels.csv")[0]
    sample = PseudoKeypointSample(s.name, s.image_path, s.coords, None, np.array([True, False]))   # L kept, R not
    cfg = build_config({"task": "keypoints", "data": {"root": str(root)},
                        "augment": {"rotate": 0, "scale": 0.0, "shift": 0.0, "hflip": 1.0, "brightness_contrast": 0,
                                    "gamma": 0}})
    plain = KeypointDataset([sample], 128, lmset)[0]
    assert plain["visible"].tolist() == [1.0, 0.0]
    flipped = KeypointDataset([sample], 128, lmset, augment=build_augment(cfg.augment, keypoints=True))[0]
    # mirrored: channel L now holds the image of R (not kept), channel R the image of L (kept)
    assert flipped["visible"].tolist() == [0.0, 1.0]
    assert flipped["keypoints"][1].tolist() == pytest.approx([127 - 30.0, 40.0], abs=1e-3)
