"""Patch training at the original resolution (``data.patch_size``): crops of the right size from the full-size
image (padded where it is smaller), foreground oversampling that raises the foreground share of the crops, a
tiny patch-trained model that beats chance through tiled validation and prediction, and one-line config errors."""
import numpy as np
import pytest
import torch

import train as train_command
from engine.config import ConfigError, load_config
from engine.trainer import check_model_config
from tasks.cache import SampleCache
from tasks.formats.handbones import list_samples, read_masks
from tasks.formats.images import read_grey
from tasks.segmentation.patches import FullSizeDataset, crop_origin, cut, cut_packed, foreground_points


def patch_config(phantom, out, **extra):
    raw = {
        "task": "segmentation", "name": "patch",
        "data": {"root": str(phantom / "handbones" / "train"), "test_root": str(phantom / "handbones" / "test"),
                 "image_size": 64, "n_folds": 3, "patch_size": 64, "cache_dir": str(out / "cache")},
        "model": {"name": "smp:unet/resnet18"},
        "train": {"epochs": 1, "batch_size": 4},
        "inference": {"sliding_window": True},
        "logging": {"out_dir": str(out / "runs"), "progress": False},
    }
    for section, values in extra.items():
        raw[section] = {**raw.get(section, {}), **values}
    return load_config(None, raw)


def test_cut_and_cut_packed_pad_outside_the_image():
    rng = np.random.default_rng(0)
    image = rng.integers(1, 255, (10, 13), dtype=np.uint8)
    masks = rng.random((3, 10, 13)) > 0.5
    packed = np.packbits(masks, axis=-1)
    for y0, x0, patch in ((2, 3, 6), (-2, 9, 7), (4, -3, 12), (-1, -1, 16)):
        padded = np.zeros((40, 40), np.uint8)
        padded[20:30, 20:33] = image
        want = padded[20 + y0:20 + y0 + patch, 20 + x0:20 + x0 + patch]
        assert np.array_equal(cut(image, y0, x0, patch), want), (y0, x0, patch)
        padded_masks = np.zeros((3, 40, 40), np.uint8)
        padded_masks[:, 20:30, 20:33] = masks
        got = cut_packed(packed, 13, y0, x0, patch)
        assert got.dtype == np.uint8 and np.array_equal(got, padded_masks[:, 20 + y0:20 + y0 + patch,
                                                                          20 + x0:20 + x0 + patch]), (y0, x0, patch)


def test_crop_origin_centres_on_foreground_and_stays_inside():
    rng = np.random.default_rng(0)
    points = np.array([[3, 50, 70]], np.int32)
    assert crop_origin((200, 200), 64, rng, points, foreground=1.0) == (18, 38)
    assert crop_origin((200, 200), 64, rng, np.array([[0, 5, 190]], np.int32), foreground=1.0) == (0, 136)
    assert crop_origin((40, 200), 64, rng, points, foreground=1.0) == (-12, 38)  # a short side: centred padding
    for _ in range(50):
        y0, x0 = crop_origin((100, 120), 64, rng, points, foreground=0.0)
        assert 0 <= y0 <= 36 and 0 <= x0 <= 56
    masks = np.zeros((4, 20, 20), bool)
    masks[1, 2:4, 5:9] = True
    rows = foreground_points(masks, per_class=3)
    assert rows.shape == (3, 3) and set(rows[:, 0]) == {1} and all(masks[1, y, x] for _, y, x in rows)
    assert foreground_points(np.zeros((2, 5, 5), bool)).shape == (0, 3)


def test_crops_have_the_patch_size_and_a_larger_patch_is_padded(phantom, tmp_path):
    samples = list_samples(phantom / "handbones" / "train")[:3]
    cache = SampleCache(tmp_path / "cache")
    crops = FullSizeDataset(samples, 64, cache=cache)
    item = crops[0]
    assert item["image"].shape == (1, 64, 64) and item["masks"].shape == (29, 64, 64)
    assert item["masks"].dtype == torch.uint8 and tuple(item["orig_size"].tolist()) == read_grey(samples[0].image_path).shape
    big = FullSizeDataset(samples, 160, cache=cache)[1]
    image = read_grey(samples[1].image_path)
    h, w = image.shape
    top, left = (160 - h) // 2, (160 - w) // 2
    assert big["image"].shape == (1, 160, 160)
    assert torch.equal(big["image"][0, top:top + h, left:left + w], torch.from_numpy(image.copy()).float() / 255)
    assert big["image"][0, :top].abs().sum() == 0 and big["masks"][:, :, :left].sum() == 0
    full = read_masks(samples[1].label_path, h, w)
    assert np.array_equal(big["masks"][:, top:top + h, left:left + w].numpy(), full)
    whole = FullSizeDataset(samples, None, cache=cache)[1]
    assert whole["image"].shape == (1, h, w) and np.array_equal(whole["masks"].numpy(), full)
    assert len(list((tmp_path / "cache").rglob("*.arrays"))) == 2  # images 0 and 1: one full-size entry each


def test_foreground_oversampling_raises_the_foreground_share(tmp_path):
    from phantom import generate

    generate(tmp_path / "ph", n_train=4, n_test=2, size=512, seed=1, workers=1)
    samples = list_samples(tmp_path / "ph" / "handbones" / "train")
    cache = SampleCache(tmp_path / "cache")

    def share(foreground: float) -> float:
        dataset = FullSizeDataset(samples, 64, foreground, cache=cache, seed=0)
        fractions = []
        for epoch in range(30):
            dataset.set_epoch(epoch)
            fractions += [float(dataset[i]["masks"].amax(0).float().mean()) for i in range(len(dataset))]
        return float(np.mean(fractions))

    uniform, nnunet, always = share(0.0), share(0.33), share(1.0)
    assert always > 2 * uniform and uniform < nnunet < always, (uniform, nnunet, always)


def test_config_errors_name_the_key(phantom, tmp_path, capsys):
    cfg = patch_config(phantom, tmp_path, data={"patch_size": 100}, model={"name": "smp:fpn/resnet18"})
    with pytest.raises(ConfigError, match=r"^data.patch_size: 100 is not a multiple of 32 .*use 96 or 128"):
        check_model_config(cfg)
    (tmp_path / "seg.yaml").write_text("task: segmentation\nmodel: {name: 'smp:fpn/resnet18'}\n")
    args = [f"--data.root={phantom / 'handbones' / 'train'}", "--data.patch_size=100", "--inference.sliding_window=true",
            f"--logging.out_dir={tmp_path / 'runs'}", "--logging.progress=false"]
    assert train_command.main(["-c", str(tmp_path / "seg.yaml"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[0]] and err[0].startswith("error: data.patch_size: 100 is not a multiple of 32")
    assert not (tmp_path / "runs" / "segmentation" / "seg-f0").exists()
    cases = {
        "inference.sliding_window: a patch-trained run": {"inference": {"sliding_window": False}},
        "'data.patch_size': a stage-2 wrist-ROI run": {"data": {"roi": {}}},
        "'data.patch_size': a patch-trained run validates in tiles": {"data": {"val_at_train_size": True}},
        "'data.patch_size': Input should be greater than or equal to 8": {"data": {"patch_size": 4}},
    }
    for message, extra in cases.items():
        with pytest.raises(ConfigError, match=message):
            patch_config(phantom, tmp_path, **extra)
    with pytest.raises(ConfigError, match=r"unknown key 'data.patch_size'"):
        load_config(None, {"task": "keypoints", "data": {"root": str(tmp_path), "patch_size": 64}})
    assert patch_config(phantom, tmp_path, data={"patch_size": 512}).data.input_size == 512  # larger: padded




def test_a_tiny_patch_trained_model_beats_chance_in_tiles(phantom, tmp_path):
    """Patches of 64 px from the 128 px phantom, 32 steps; validation and prediction in tiles at the original size.
    Chance: a model that has not learnt which pixel is which bone ranks a class's pixels no better than the others
    (pooled AUC 0.5; this untrained network: 0.50-0.58); predicting every pixel of every class scores the all-on Dice."""
    from sklearn.metrics import roc_auc_score

    from engine.predictor import Predictor, load_model, predict_run
    from engine.trainer import train
    from tasks.tta import View

    cfg = patch_config(phantom, tmp_path, train={"epochs": 8, "batch_size": 4, "lr": 3e-3, "warmup_epochs": 0.5,
                                                 "val_every": 8})
    summary = train(cfg)
    _, val = cfg.spec.task_class()(cfg).datasets()
    all_on = []
    for i in range(len(val)):
        masks = val[i]["masks"].numpy().reshape(29, -1)
        fg = masks.sum(1)
        all_on.append(np.where(fg > 0, 2 * fg / (fg + masks.shape[1]), 0.0))
    assert summary["image_size"] == 64 and summary["val"]["score"] > float(np.mean(all_on))
    predictor = Predictor(load_model(cfg.run_dir / "best.pt", torch.device("cpu")), [View()], torch.device("cpu"))
    truth, probs = [], []
    for i in range(len(val)):
        item = val[i]
        out = predictor({"image": item["image"][None]})[0]
        assert out.shape == item["masks"].shape  # tiles stitched at the original size
        truth.append(item["masks"].numpy().ravel())
        probs.append(out.numpy().ravel())
    assert roc_auc_score(np.concatenate(truth), np.concatenate(probs)) > 0.8
    stats = predict_run(cfg, cfg.run_dir / "best.pt", out_csv=tmp_path / "test.csv", save_probs_dir="auto",
                        progress=False)
    assert stats["images"] == len(list((phantom / "handbones" / "test" / "DCM").rglob("*.png")))
    assert (cfg.run_dir / "summary.json").read_text().count("images_per_s_sliding_window") == 1
