"""tools/export.py (ONNX / TorchScript of any run, checked against PyTorch) and the FLOPs of summary.json."""
from __future__ import annotations

import errno
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from engine.checkpoint import load_checkpoint, save_checkpoint
from core.cli import run_main
from engine.config import load_config, save_config
from engine.cost import count_flops
from engine.export import export_run
from engine.predictor import load_model
from models import create_model
from phantom import render_hand
from core import atomic
from tools import export as export_tool


# --------------------------------------------------------------------------------------------------
# FLOPs
# --------------------------------------------------------------------------------------------------

def test_flops_of_small_known_models_are_the_hand_computed_values():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert count_flops(conv, {"image": torch.zeros(1, 3, 16, 16)}) == 2 * 3 * 8 * 3 * 3 * 16 * 16  # 110592
    strided = nn.Conv2d(3, 8, 3, stride=2, padding=1)  # 8x8 output; the bias add is not a multiply-add
    assert count_flops(strided, {"image": torch.zeros(1, 3, 16, 16)}) == 2 * 3 * 8 * 9 * 8 * 8
    depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)  # one input channel per output channel
    assert count_flops(depthwise, {"image": torch.zeros(1, 8, 16, 16)}) == 2 * 1 * 8 * 9 * 16 * 16
    net = nn.Sequential(nn.Conv2d(1, 4, 1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 10))
    net.train()
    assert count_flops(net, {"image": torch.zeros(1, 1, 5, 5)}) == 2 * 1 * 4 * 25 + 2 * 100 * 10
    assert net.training  # the model's mode is restored


def test_a_trained_run_records_its_flops_and_the_leaderboard_shows_them(tiny_run, tmp_path):
    from leaderboard import html as H
    from leaderboard import table as T

    summary = json.loads((tiny_run / "summary.json").read_text())
    model = create_model("smp:fpn/resnet18", task="segmentation", num_outputs=29, in_channels=1)
    assert summary["flops"] == count_flops(model, {"image": torch.zeros(1, 1, 64, 64)}) > 10**7  # at data.image_size

    old = tmp_path / "runs" / "old"  # a run from before FLOPs were recorded
    old.mkdir(parents=True)
    (old / "summary.json").write_text(json.dumps({k: v for k, v in {**summary, "name": "old"}.items() if k != "flops"}))
    df = T.load_runs(tmp_path / "runs", on_warning=None)
    headers, _, rows = T.cells(df, T.leaderboard_columns(df))
    assert len(df) == 1 and pd_isna(df.iloc[0]["flops"]) and rows[0][headers.index("FLOPs")] == "—"
    df = T.load_runs(tiny_run, on_warning=None)
    assert int(df.iloc[0]["flops"]) == summary["flops"]
    shown = T.fmt_flops(summary["flops"])
    assert shown == f"{summary['flops'] / 1e6:.1f}M" and T.fmt_flops(1.3e12) == "1.30T" and T.fmt_flops(None) == "—"
    md = T.to_markdown(df, group=True)
    header = next(line for line in md.splitlines() if line.startswith("| # |"))
    assert header.split(" | ").index("FLOPs") == header.split(" | ").index("params") + 1
    assert f"| {shown} |" in md and md.count(f"| {shown} |") == 3  # leaderboard, cross-validation, family tables
    csv = tmp_path / "lb.csv"
    T.write_csv(df, csv)
    assert f",{summary['flops']}," in csv.read_text()
    html = H.table_html(*T.sections(df)[0]["table"])  # the report's leaderboard table
    assert '<th class="r">params</th><th class="r">FLOPs</th>' in html and f'<td class="r">{shown}</td>' in html


def pd_isna(v) -> bool:
    import pandas as pd

    return bool(pd.isna(v))


# --------------------------------------------------------------------------------------------------
# Export round trips
# --------------------------------------------------------------------------------------------------

def _run(tmp_path: Path, raw: dict, name: str) -> Path:
    """A run folder with an (untrained) model saved the harness way: best.pt of tensors and its config."""
    cfg = load_config(None, {**raw, "name": name, "logging": {"out_dir": str(tmp_path / "runs"), "progress": False}})
    task = cfg.spec.task_class()(cfg)
    torch.manual_seed(0)
    model = create_model(cfg.model.name, task=cfg.task, num_outputs=task.num_outputs, in_channels=1,
                         **cfg.model.options)
    for m in model.modules():  # running statistics away from (0, 1), as after training
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    run = cfg.run_dir
    run.mkdir(parents=True)
    save_config(cfg, run / "config.yaml")
    save_checkpoint(run / "best.pt", {"model": model.state_dict(), "model_name": cfg.model.name, "task": cfg.task,
                                      "num_outputs": task.num_outputs, "config": cfg.to_dict()})
    return run / "best.pt"


def _onnx_run(path: Path, inputs: dict[str, torch.Tensor]) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {k: v.numpy() for k, v in inputs.items()})[0]


@pytest.mark.slow
def test_segmentation_run_round_trips_through_onnx_and_torchscript(tiny_run, tmp_path, capsys):
    ckpt = tiny_run / "best.pt"
    out = tmp_path / "exports" / "seg.onnx"  # a folder that does not exist yet
    assert run_main(export_tool.main, ["--ckpt", str(ckpt), "--format", "onnx", "-o", str(out), "--check", "3"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(f"{out}: ONNX of smp:fpn/resnet18 (segmentation): image [batch, 1, height, width]")
    assert "3 validation images of fold 0" in printed[1] and "max abs difference" in printed[1]
    report = json.loads((tmp_path / "exports" / "seg.onnx.json").read_text())
    assert report["dynamic_hw"] and report["input_size"] == [64, 64] and report["outputs"]["output"] == ["batch", 29, 64, 64]
    assert [c["size"] for c in report["checks"]] == [[64, 64], [96, 96]] and report["max_abs_diff"] < 1e-4

    # the file itself, on inputs the export never saw: another batch size and another size, against the checkpoint
    member = load_model(ckpt, torch.device("cpu"))
    x = torch.rand(3, 1, 128, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = member.model(x).numpy()
    assert np.abs(_onnx_run(out, {"image": x}) - ref).max() < 1e-4

    ts = export_run(ckpt, "torchscript", check=2)
    assert ts.path == tiny_run / "best.torchscript" and ts.dynamic_hw and ts.max_abs_diff < 1e-5
    with warnings.catch_warnings():  # torch.jit is deprecated in torch 2.x (FutureWarning); it still loads
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(ts.path))
    with torch.no_grad():
        assert np.abs(loaded(x).numpy() - ref).max() < 1e-5
    assert load_checkpoint(ckpt)["model_name"] == "smp:fpn/resnet18"  # the checkpoint is untouched


def test_keypoint_hint_model_exports_its_hint_maps_as_a_second_input(phantom, tmp_path):
    ckpt = _run(tmp_path, {
        "task": "keypoints", "data": {"root": str(phantom / "joints"), "landmarks": "shs15", "image_size": 64,
                                      "n_folds": 3, "cache_dir": str(tmp_path / "cache")},
        "model": {"name": "hint:shsnet:unet", "options": {"base_channels": 4, "depth": 2, "out_stride": 2}},
    }, "kp")
    result = export_run(ckpt, "onnx", check=2)
    assert list(result.inputs) == ["image", "hints"] and result.inputs["hints"] == ["batch", 15, "height", "width"]
    assert result.outputs["output"] == ["batch", 15, 32, 32] and result.dynamic_hw and result.max_abs_diff < 1e-4
    member = load_model(ckpt, torch.device("cpu"))
    gen = torch.Generator().manual_seed(2)
    x, hints = torch.rand(2, 1, 96, 96, generator=gen), torch.rand(2, 15, 96, 96, generator=gen)
    with torch.no_grad():
        ref = member.model(x, hints).numpy()
    assert np.abs(_onnx_run(result.path, {"image": x, "hints": hints}) - ref).max() < 1e-4


def test_bone_age_regressor_exports_the_sex_input_and_falls_back_to_phantoms(tmp_path):
    ckpt = _run(tmp_path, {
        "task": "boneage", "data": {"root": str(tmp_path / "absent"), "image_size": 64},
        "model": {"name": "timm:test_resnet", "options": {"sex_input": True, "head_hidden": 16}},
    }, "ba")
    with torch.no_grad():  # a head that starts at zero would make every output 0: give it weights
        state = load_checkpoint(ckpt)
        state["model"] = {k: (torch.randn_like(v) * 0.1 if k.startswith("head.") else v) for k, v in state["model"].items()}
        save_checkpoint(ckpt, state)
    result = export_run(ckpt, "torchscript", check=2, phantoms=render_hand)
    assert list(result.inputs) == ["image", "male"] and result.inputs["male"] == ["batch"]
    assert "2 phantom hands" in result.source and "absent" in result.source
    assert result.outputs["output"] == ["batch"] and result.max_abs_diff < 1e-5
    member = load_model(ckpt, torch.device("cpu"))
    x, male = torch.rand(3, 1, 64, 64), torch.tensor([0.0, 1.0, 1.0])
    with torch.no_grad():
        ref = member.model(x, male)
    assert not torch.allclose(ref[1], member.model(x[1:2], torch.tensor([0.0]))[0])  # the sex matters
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(result.path))
    with torch.no_grad():
        assert torch.allclose(loaded(x, male), ref, atol=1e-5)


def test_a_model_the_exporter_cannot_make_dynamic_is_exported_at_its_size(tmp_path):
    """custom:unet3plus pools to sizes read off its features: ONNX fixes height and width, and a traced
    TorchScript file runs only at its size; both say so, and both still check out at the run's size."""
    ckpt = _run(tmp_path, {
        "task": "segmentation", "data": {"root": str(tmp_path / "absent"), "image_size": 64},
        "model": {"name": "custom:unet3plus/tu-test_resnet", "options": {"cat_channels": 4}},
    }, "u3")
    onnx_result = export_run(ckpt, "onnx", check=1, phantoms=render_hand)
    assert not onnx_result.dynamic_hw and "cannot make them dynamic" in onnx_result.fixed_why
    assert onnx_result.inputs["image"] == ["batch", 1, 64, 64] and onnx_result.max_abs_diff < 1e-4
    import onnxruntime

    shape = onnxruntime.InferenceSession(str(onnx_result.path)).get_inputs()[0].shape
    assert shape == ["batch", 1, 64, 64]
    ts = export_run(ckpt, "torchscript", check=1, phantoms=render_hand)
    assert not ts.dynamic_hw and ts.fixed_why.startswith("at 96x96 the export ")
    assert [c.size for c in ts.checks] == [(64, 64), (64, 64)]


@pytest.mark.slow
def test_yolo_run_exports_offline_through_ultralytics(phantom, tmp_path, no_network):
    """Slower (ultralytics builds and traces a YOLO11n): both formats, offline, dynamic batch and size."""
    from ultralytics.nn.tasks import SegmentationModel

    from engine.yolo_learner import harness_checkpoint

    cfg = load_config(None, {"task": "segmentation", "name": "yolo",
                             "data": {"root": str(phantom / "handbones" / "train"), "image_size": 64, "n_folds": 3,
                                      "cache_dir": str(tmp_path / "cache")},
                             "model": {"name": "yolo:yolo11n-seg"},
                             "logging": {"out_dir": str(tmp_path / "runs"), "progress": False}})
    torch.manual_seed(0)
    net = SegmentationModel("yolo11n-seg.yaml", nc=29, ch=3, verbose=False).eval()
    cfg.run_dir.mkdir(parents=True)
    save_config(cfg, cfg.run_dir / "config.yaml")
    save_checkpoint(cfg.run_dir / "best.pt", harness_checkpoint(cfg, net, 0, {}))
    for fmt in ("onnx", "torchscript"):
        result = export_run(cfg.run_dir / "best.pt", fmt, check=2)
        assert result.dynamic_hw and list(result.inputs) == ["images"] and list(result.outputs) == ["output0", "output1"]
        assert result.inputs["images"] == ["batch", 3, "height", "width"] and result.max_abs_diff < 1e-2
        assert result.exporter.startswith("ultralytics")


# --------------------------------------------------------------------------------------------------
# Bad input: one line, nothing written
# --------------------------------------------------------------------------------------------------

def test_bad_input_ends_in_one_line_and_writes_nothing(tiny_run, tmp_path, capsys, monkeypatch):
    ckpt = tiny_run / "best.pt"
    cases = [
        (["--ckpt", str(tiny_run / "summary.json"), "--format", "onnx"], f"error: {tiny_run / 'summary.json'}: not a "),
        (["--ckpt", str(ckpt), "--format", "tflite"], "error: --format: unknown format 'tflite'; choose onnx or torchscript"),
        (["--ckpt", str(ckpt), "--format", "onnx", "-o", str(ckpt)], f"error: {ckpt}: is the checkpoint itself"),
        (["--ckpt", str(ckpt), "--format", "onnx", "--check", "0"], "error: --check: 0: "),
    ]
    for argv, message in cases:
        assert run_main(export_tool.main, argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(message) and err.count("\n") == 1, err

    beyond = tmp_path / "strict.onnx"  # no tolerance at all: float rounding alone is too much, and nothing is written
    assert run_main(export_tool.main, ["--ckpt", str(ckpt), "--format", "onnx", "-o", str(beyond), "--check", "1",
                                       "--atol", "0", "--rtol", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {beyond}: the ONNX export differs from PyTorch at 64x64: max abs difference ")
    assert err.endswith("; nothing written\n") and not beyond.exists() and not (tmp_path / "strict.onnx.json").exists()

    read_only = tmp_path / "ro"  # files there cannot be written (EROFS), as on a read-only mount
    read_only.mkdir()
    real_open = open

    def guarded(file, *args, **kwargs):
        if Path(file).is_relative_to(read_only):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(atomic, "open", guarded, raising=False)
    out = read_only / "seg.onnx"
    assert run_main(export_tool.main, ["--ckpt", str(ckpt), "--format", "onnx", "-o", str(out), "--check", "1"]) == 2
    assert capsys.readouterr().err == f"error: {out}: Read-only file system\n"
    assert list(read_only.iterdir()) == []
