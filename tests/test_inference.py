"""inference.py end to end, TTA inverse, the submission validator and bad input."""
import shutil

import numpy as np
import pytest
import torch
from torch import nn

import inference
from engine.config import load_config
from engine.predictor import view_mean
from tasks.segmentation.task import SegmentationTask
from tasks.tta import View, views_from_config
from tasks.formats.handbones import CLASSES
from tools import score, validate_submission


def test_predict_validate_score(tiny_run, phantom, tmp_path, capsys):
    out = tmp_path / "sub.csv"
    assert inference.main(["--ckpt", str(tiny_run / "best.pt"), "--tta", "-o", str(out), "--save-probs"]) == 0
    lines = out.read_text().splitlines()
    n_test = len(list((phantom / "handbones" / "test" / "DCM").rglob("*.png")))
    assert lines[0] == "image_name,class,rle" and len(lines) == 1 + 29 * n_test
    assert [line.split(",")[1] for line in lines[1:30]] == list(CLASSES)
    assert len(list((tiny_run / "preds" / "test").glob("*.npz"))) == n_test
    assert validate_submission.main([str(out), "--images", str(phantom / "handbones" / "test")]) == 0
    assert score.main([str(out), "--gt", str(phantom / "handbones" / "test_gt"), "--run", str(tiny_run), "--quiet"]) == 0
    assert "public" in capsys.readouterr().out
    import json

    summary = json.loads((tiny_run / "summary.json").read_text())
    assert 0.0 <= summary["test"]["score"] <= 1.0 and summary["speed"]["images_per_s_tta"] > 0


def test_validator_rejects_faults(tiny_run, phantom, tmp_path, capsys):
    good = tmp_path / "good.csv"
    inference.main(["--ckpt", str(tiny_run / "best.pt"), "-o", str(good)])
    lines = good.read_text().splitlines()
    images = str(phantom / "handbones" / "test")
    cases = {
        "missing": lines[:-29],
        "order": [lines[0], lines[2], lines[1]] + lines[3:],
        "bounds": lines[:1] + [lines[1].rsplit(",", 1)[0] + ",99999999 5"] + lines[2:],
        "unsorted": lines[:1] + [lines[1].rsplit(",", 1)[0] + ",50 2 10 2"] + lines[2:],
    }
    for name, rows in cases.items():
        bad = tmp_path / f"{name}.csv"
        bad.write_text("\n".join(rows) + "\n")
        assert validate_submission.main([str(bad), "--images", images]) == 1, name
    err = capsys.readouterr().err
    assert "no rows" in err and "canonical order" in err and "beyond" in err and "unsorted" in err


def test_bad_input_is_one_clear_error(tiny_run, phantom, tmp_path, capsys):
    test_dir = tmp_path / "test"
    shutil.copytree(phantom / "handbones" / "test", test_dir)
    victim = sorted((test_dir / "DCM").rglob("*.png"))[1]
    victim.write_bytes(victim.read_bytes()[:100])
    out = tmp_path / "corrupt.csv"
    assert inference.main(["--ckpt", str(tiny_run / "best.pt"), "-o", str(out), f"--data.test_root={test_dir}"]) == 2
    assert victim.name in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob("*.tmp")), "nothing half-written"

    empty = tmp_path / "empty"
    (empty / "DCM").mkdir(parents=True)
    assert inference.main(["--ckpt", str(tiny_run / "best.pt"), "-o", str(out), f"--data.test_root={empty}"]) == 2
    assert "no images" in capsys.readouterr().err

    assert inference.main(["--ckpt", str(tiny_run / "best.pt"), "-o", str(out), "--model.name=smp:unet/resnet18"]) == 2
    assert "checkpoint holds 'smp:fpn/resnet18'" in capsys.readouterr().err


def test_other_size_image_predicted_at_its_own_size(tiny_run, phantom, tmp_path):
    import cv2

    test_dir = tmp_path / "test"
    shutil.copytree(phantom / "handbones" / "test", test_dir)
    victim = sorted((test_dir / "DCM").rglob("*.png"))[-1]
    cv2.imwrite(str(victim), cv2.resize(cv2.imread(str(victim), 0), (96, 80)))
    out = tmp_path / "sizes.csv"
    with pytest.warns(UserWarning, match=victim.name):
        assert inference.main(["--ckpt", str(tiny_run / "best.pt"), "-o", str(out), f"--data.test_root={test_dir}"]) == 0
    assert validate_submission.main([str(out), "--images", str(test_dir)]) == 0


class Pointwise(nn.Module):
    """A 1x1 convolution: exactly equivariant to flips, so TTA must not change its output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 29, 1)

    def forward(self, x):
        return self.conv(x)


def tta_predict(model, x, views):
    return view_mean(model, SegmentationTask.__new__(SegmentationTask), {"image": x}, views)


def test_tta_inverse_is_exact_for_an_equivariant_model():
    torch.manual_seed(0)
    model = Pointwise()
    x = torch.rand(2, 1, 64, 64)
    plain = tta_predict(model, x, [View()])
    cfg = load_config(None, {"task": "segmentation", "data": {"root": "x"},
                             "inference": {"tta": {"hflip": True, "vflip": True}}})
    views = views_from_config(cfg.inference.tta)
    assert [v.name for v in views] == ["identity", "hflip", "vflip"]
    torch.testing.assert_close(tta_predict(model, x, views), plain, rtol=0, atol=1e-6)
    # a model that is NOT equivariant changes under flip TTA: the test can fail
    conv = nn.Conv2d(1, 29, 3, padding=1)
    assert not torch.allclose(tta_predict(conv, x, views), tta_predict(conv, x, [View()]), atol=1e-4)


def test_flip_view_round_trip():
    y = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    for view in (View(hflip=True), View(vflip=True), View(True, True)):
        np.testing.assert_array_equal(view.invert(view.apply(y), (4, 5)).numpy(), y.numpy())


@pytest.mark.slow
def test_inference_sliding_window_with_tta_writes_an_original_size_cache_that_a_resize_member_refuses(
        tiny_run, phantom, tmp_path, capsys):
    run = tmp_path / "runs" / "segmentation" / tiny_run.name
    run.mkdir(parents=True)
    for name in ("best.pt", "config.yaml"):
        shutil.copy(tiny_run / name, run / name)
    out = tmp_path / "sw.csv"
    assert inference.main(["--ckpt", str(run / "best.pt"), "--sliding-window", "--tta", "-o", str(out),
                           "--save-probs", "--inference.tile_overlap=0.25"]) == 0
    assert validate_submission.main([str(out), "--images", str(phantom / "handbones" / "test")]) == 0
    entries = sorted((run / "preds" / "test").glob("*.npz"))
    assert entries
    with np.load(entries[0]) as f:  # phantom images are 128 px, tiles 64 px: the cache is at the original size
        assert f["probs"].shape == (29, 128, 128) and str(f["mode"]) == "sliding_window"
    ens = tmp_path / "ens.yaml"
    ens.write_text(f"task: segmentation\nmethod: soft\nmembers: [{{run: {run}}}]\nout_dir: {tmp_path / 'out'}\n")
    capsys.readouterr()
    assert inference.main(["--ensemble", str(ens), "--from-cache", "-o", str(tmp_path / "e.csv")]) == 2
    assert "was predicted with sliding_window, the run's config asks for resize" in capsys.readouterr().err

    # the member's run config asks for tiles (as the CLI did): the cache is used, and predicting live gives the same CSV
    import yaml

    saved = yaml.safe_load((run / "config.yaml").read_text())
    saved["inference"].update(sliding_window=True, tile_overlap=0.25)
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    for how in (["--from-cache"], ["--tta"]):
        fused = tmp_path / f"e{len(how[0])}.csv"
        assert inference.main(["--ensemble", str(ens), *how, "-o", str(fused)]) == 0
        assert fused.read_text() == out.read_text(), how
