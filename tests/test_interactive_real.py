"""Interactive keypoints on the real AASCE spines (68 corners) and DHA hands: the readers are exact (CSV vs
.mat within 0.05 px), the left/right corner order holds on real labels, and a short fine-tune of a hinted
model followed by the click curve runs end to end. Skipped when ../shared/data/real is absent."""
import json
from pathlib import Path

import numpy as np
import pytest

from engine.config import load_config
from engine.trainer import train
from tasks.formats import aasce
from tasks.formats.images import image_size
from tasks.keypoint_sets import AASCE68
from tasks.keypoints import list_keypoint_samples, split_folds
from tools import interactive_eval

ROOT = Path(__file__).resolve().parents[1]


def test_aasce_csv_and_mat_labels_agree_on_every_real_spine(real_data):
    root = real_data / "aasce_spine"
    names = aasce.read_filenames(root / "filenames.csv")
    assert len(names) == 14 and all(" " in n for n in names)            # names with spaces, kept whole
    via_csv = list_keypoint_samples(root, AASCE68)
    via_mat = list_keypoint_samples(root, AASCE68, labels="labels_mat")
    assert [s.name for s in via_csv] == [s.name for s in via_mat] == sorted(names)
    for a, b in zip(via_csv, via_mat):
        assert np.abs(a.coords - b.coords).max() < 0.05, a.name
        h, w = image_size(a.image_path)
        assert a.coords[:, 0].max() <= w and a.coords[:, 1].max() <= h
    assert aasce.read_angles(root / "angles.csv").shape == (14, 3)
    # corners come TL, TR, BL, BR per vertebra: left corners left of right ones, top above bottom
    v = np.stack([s.coords for s in via_csv]).reshape(14, 17, 4, 2)
    assert (v[:, :, 0, 0] < v[:, :, 1, 0]).mean() > 0.95 and (v[:, :, 2, 0] < v[:, :, 3, 0]).mean() > 0.95
    assert (v[:, :, 0, 1] < v[:, :, 2, 1]).mean() > 0.95
    # the two views of one patient never straddle train and validation
    train_idx, val_idx = split_folds(via_csv, 4, 0, AASCE68)
    groups = lambda idx: {via_csv[i].name.split(" ")[0].rsplit("-", 1)[1] for i in idx}   # noqa: E731
    assert not groups(train_idx) & groups(val_idx)


@pytest.mark.parametrize("config,folder,overrides", [
    ("interactive_aasce68.yaml", "aasce_spine", {}),
    ("interactive_phantom_dha37.yaml", "dha_hand_landmarks37", {"n_folds": 3, "test_root": None}),
])
def test_short_finetune_then_click_curve_on_real_images(real_data, tmp_path, capsys, config, folder, overrides):
    root = real_data / folder
    cfg = load_config(ROOT / "configs" / "keypoints" / config, {
        "data": {"root": str(root), "image_size": 96, "cache_dir": str(tmp_path / "cache"),
                 "clicks": {"eval_clicks": 5}, **overrides},
        "model": {"name": "hint:shsnet:unet",
                  "options": {"base_channels": 4, "depth": 3, "out_stride": 2, "leaky_relu": 0.01}},
        "train": {"epochs": 2, "batch_size": 2, "max_steps_per_epoch": 2, "warmup_epochs": 0},
        "logging": {"out_dir": str(tmp_path / "runs"), "progress": False},
    })
    summary = train(cfg)
    assert np.isfinite(summary["val"]["mre_px"])
    assert interactive_eval.main(["--ckpt", str(cfg.run_dir / "best.pt"), "--split", "val"]) == 0
    assert "model px" in capsys.readouterr().out
    entry = json.loads((cfg.run_dir / "summary.json").read_text())["interactive"]
    assert entry["clicks"] == list(range(6)) and entry["takes_hints"]
    assert entry["model_mre_px"][0] == pytest.approx(entry["manual_mre_px"][0])
    assert entry["manual_mre_px"] == sorted(entry["manual_mre_px"], reverse=True)
    assert ("model_mre_mm" in entry) == (folder == "dha_hand_landmarks37")
