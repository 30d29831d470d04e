"""Keypoints on the real SHS_NET (15 joints) and Digital Hand Atlas (37 landmarks) examples: readers read
them exactly, the letterbox round-trips their sizes, and a short fine-tune → predict → score runs end to end.
Skipped when ../shared/data/real is absent."""
import csv
from pathlib import Path

import numpy as np
import pytest

import inference
from engine.config import load_config
from engine.trainer import train
from tasks.formats import FormatError
from tasks.formats.images import image_size, read_grey
from tasks.keypoint_sets import DHA37, SHS15
from tasks.keypoint_labels import list_keypoint_samples, read_wide
from tasks.keypoints import KeypointTask
from tasks.scoring import score_keypoints as score_submission
from tasks.letterbox import Letterbox
from tools import score

ROOT = Path(__file__).resolve().parents[1]


def test_shs_reader_reads_the_real_joints_exactly(real_data):
    root = real_data / "shs_net_joints15"
    samples = list_keypoint_samples(root, SHS15)
    with (root / "coord_list.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [s.name for s in samples] == sorted(r["img_id"] for r in rows)
    by_name = {r["img_id"]: r for r in rows}
    for s in samples:
        row = by_name[s.name]
        expected = np.array([[float(row[f"{n}_x"]), float(row[f"{n}_y"])] for n in SHS15.names])
        assert np.array_equal(s.coords, expected)
        assert image_size(s.image_path) == (910, 630) and s.spacing_mm is None
    first = next(s for s in samples if s.name == "test_img1_L.png")
    assert first.coords[0].tolist() == [531.5625, 381.875] and first.coords[-1].tolist() == [362.8125, 666.25]
    assert read_grey(first.image_path).shape == (910, 630)      # RGB PNG read as grey


def test_dha_reader_takes_the_rows_with_images_and_their_spacing(real_data):
    root = real_data / "dha_hand_landmarks37"
    samples = list_keypoint_samples(root, DHA37)
    assert [s.name for s in samples] == ["3167", "3177", "3229", "3231", "5245", "7081"]
    lines = {line.split(",")[0]: line for line in (root / "all.csv").read_text().splitlines()}
    assert len(lines) == 907
    spacing = {r["id"]: float(r["spacing_mm"]) for r in csv.DictReader((root / "spacing.csv").open())}
    for s in samples:
        values = np.array(lines[s.name].split(",")[1:], float).reshape(37, 2)
        assert np.array_equal(s.coords, values)
        assert s.spacing_mm == spacing[s.name]
        h, w = image_size(s.image_path)
        assert (s.coords[:, 0] < w).all() and (s.coords[:, 1] < h).all()


def test_letterbox_round_trips_the_real_frames(real_data):
    for folder, lmset in (("shs_net_joints15", SHS15), ("dha_hand_landmarks37", DHA37)):
        for s in list_keypoint_samples(real_data / folder, lmset):
            lb = Letterbox.fit(*image_size(s.image_path), 256)
            fwd = lb.forward(s.coords)
            assert lb.inside(fwd).all()
            assert np.abs(lb.inverse(fwd) - s.coords).max() < 1e-9


def finetune_config(config: str, root: Path, out: Path, **model):
    return load_config(ROOT / "configs" / "keypoints" / config, {
        "data": {"root": str(root), "image_size": 96, "cache_dir": str(out / "cache")},
        "model": {"weights": None, **model},
        "train": {"epochs": 2, "batch_size": 2, "max_steps_per_epoch": 2},
        "logging": {"out_dir": str(out / "runs"), "progress": False},
    })


@pytest.mark.parametrize("config,folder,lmset", [
    ("real_shs15_finetune.yaml", "shs_net_joints15", SHS15),
    ("real_dha37_finetune.yaml", "dha_hand_landmarks37", DHA37),
])
def test_finetune_predict_score_on_real_hands(real_data, tmp_path, capsys, config, folder, lmset):
    """As the config's header does it: the held-out fold predicted (--split val) and scored (--subset)."""
    root = real_data / folder
    cfg = finetune_config(config, root, tmp_path, name="shsnet:unet", options={"base_channels": 8, "depth": 3, "out_stride": 2})
    summary = train(cfg)
    assert summary["task"] == "keypoints" and np.isfinite(summary["val"]["mre_px"])
    assert ("mre_mm" in summary["val"]) == (lmset is DHA37)
    out = tmp_path / "real.csv"
    assert inference.main(["--ckpt", str(cfg.run_dir / "best.pt"), "--split", "val", "--tta", "-o", str(out)]) == 0
    names, coords, got = read_wide(out)
    held_out = KeypointTask(cfg).samples("val")
    assert got is lmset and sorted(names) == sorted(s.name for s in held_out) and len(names) == 2
    assert not set(names) & {s.name for s in KeypointTask(cfg).samples("train")}
    for s, xy in zip(held_out, coords):
        h, w = image_size(s.image_path)
        # decoded in the ORIGINAL frame; an (untrained) peak on the letterbox padding is clamped onto the image
        assert (xy >= 0).all() and (xy[:, 0] <= w - 1).all() and (xy[:, 1] <= h - 1).all()
    result = score_submission(out, root, subset=True)
    assert result["images"] == 2 and np.isfinite(result["score"])
    assert ("mre_mm" in result) == (lmset is DHA37)
    assert score.main([str(out), "--gt", str(root), "--subset", "--quiet"]) == 0
    assert f"mre_px {result['score']:.4f}" in capsys.readouterr().out
    with pytest.raises(FormatError, match="4 ground-truth images have no prediction"):
        score.main([str(out), "--gt", str(root)])


def test_shape_prior_puts_a_lost_thumb_tip_back_on_a_real_atlas_hand(real_data):
    """DHA fold 0 with ``data.shape_prior``: the model fits on the 4 training hands plus the 901 atlas rows
    without an image (never the 2 validation hands); decoding heatmaps whose thumb-tip peak sits on the
    wrong side of the hand returns a thumb tip near the truth and every other point where its peak is."""
    import torch

    root = real_data / "dha_hand_landmarks37"
    cfg = load_config(ROOT / "configs" / "keypoints" / "real_dha37_finetune.yaml",
                      [f"--data.root={root}", f"--data.test_root={root}", "--data.fold=0"])
    task = KeypointTask(cfg)
    model = task.shape_model()
    assert model.n_shapes == 4 + 901 and model.modes.shape == (8, 74)
    val = task.samples("val")[0]
    h, w = image_size(val.image_path)
    lb = Letterbox.fit(h, w, 256)
    true_in = lb.forward(val.coords)                          # input-frame (256 px) points
    peaks = true_in.copy()
    tip = DHA37.names.index("TIP1")
    peaks[tip] = [20.0, 240.0]                                # the thumb tip "found" at the far corner
    yy, xx = np.mgrid[0:256, 0:256]
    maps = np.exp(-((xx[None] - peaks[:, 0, None, None]) ** 2 + (yy[None] - peaks[:, 1, None, None]) ** 2) / 8.0)
    maps /= maps.sum((1, 2), keepdims=True)
    xy, _ = task.decode(torch.from_numpy(maps[None]).float(), 256, [lb])
    err_mm = np.linalg.norm(xy[0] - val.coords, axis=1) * val.spacing_mm
    wrong_mm = np.linalg.norm(lb.inverse(peaks)[tip] - val.coords[tip]) * val.spacing_mm
    assert wrong_mm > 100 and err_mm[tip] < 25
    others = np.arange(37) != tip
    assert err_mm[others].max() < 1.0                         # the other peaks decode where they are
    off = load_config(ROOT / "configs" / "keypoints" / "real_dha37_finetune.yaml",
                      [f"--data.root={root}", f"--data.test_root={root}", "--data.shape_prior.enabled=false"])
    assert KeypointTask(off).shape_model() is None
    gone = load_config(ROOT / "configs" / "keypoints" / "real_dha37_finetune.yaml",
                       [f"--data.root={root / 'missing'}", f"--data.test_root={root}"])
    with pytest.raises(ValueError, match="data.shape_prior: fits on the training labels"):
        KeypointTask(gone).shape_model()
