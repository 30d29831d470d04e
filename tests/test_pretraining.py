"""A fine-tune warns, in one line naming the run and its figure, when the run its ``model.weights`` come from
missed its ``train.target`` or stopped early; a pretraining that reached its target and ran its course
makes no warning. Tiny phantom keypoint runs (64 px, one optimiser step an epoch)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

import train as train_cmd
from engine.config import load_config
from engine.pretraining import RunProgress, pretraining_warning
from engine.trainer import StopTraining, train


def base(root: Path, out: Path, name: str, **train_opts) -> dict:
    return {
        "task": "keypoints", "name": name,
        "data": {"root": str(root), "landmarks": "shs15", "image_size": 64, "n_folds": 3,
                 "cache_dir": str(out / "cache")},
        "model": {"name": "shsnet:unet", "options": {"base_channels": 8, "depth": 3, "out_stride": 2}},
        "train": {"epochs": 1, "batch_size": 4, "max_steps_per_epoch": 1, "warmup_epochs": 0, **train_opts},
        "inference": {"batch_size": 8},
        "logging": {"out_dir": str(out / "runs"), "progress": False},
    }


def pretrain(root: Path, out: Path, name: str, stop_after: type[BaseException] | None = None, **train_opts) -> Path:
    """Train a tiny run; ``stop_after`` raised from the first epoch's callback ends it there."""
    cfg = load_config(None, base(root, out, name, **train_opts))

    def stop(epoch: int, row: dict) -> None:
        raise stop_after()

    try:
        train(cfg, callbacks=[stop] if stop_after else None)
    except KeyboardInterrupt:
        pass
    return cfg.run_dir


@pytest.fixture(scope="module")
def runs(phantom, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("pretrain")
    root = phantom / "joints"
    return {
        "reached": pretrain(root, out, "reached", target=1e4),             # any MRE of 64 px inputs is below
        "missed": pretrain(root, out, "missed", target=1e-3),              # no model is within a thousandth px
        "no_target": pretrain(root, out, "no_target"),
        "stopped": pretrain(root, out, "stopped", stop_after=StopTraining, epochs=3),
        "interrupted": pretrain(root, out, "interrupted", stop_after=KeyboardInterrupt, epochs=3),
        "out": out, "root": root,
    }


def score_of(run: Path) -> float:
    return torch.load(run / "best.pt", weights_only=True)["metrics"]["score"]


def test_a_run_that_reached_its_target_and_ran_its_course_makes_no_warning(runs):
    assert pretraining_warning(runs["reached"] / "best.pt") is None
    assert pretraining_warning(runs["reached"] / "last.pt") is None
    assert pretraining_warning(runs["no_target"] / "best.pt") is None   # no target: only stopping early counts


def test_a_missed_target_names_the_run_and_its_figure(runs):
    run = runs["missed"]
    assert pretraining_warning(run / "best.pt") == (
        f"model.weights: the run {run} (best.pt: val mre_px {score_of(run):.4g} at epoch 1) missed its target "
        "mre_px <= 0.001 (train.target); the fine-tune starts from a short pretraining")


def test_a_run_stopped_early_or_interrupted_warns(runs):
    stopped, interrupted = runs["stopped"], runs["interrupted"]
    assert (stopped / "summary.json").is_file() and not (interrupted / "summary.json").is_file()
    assert pretraining_warning(stopped / "best.pt") == (
        f"model.weights: the run {stopped} (best.pt: val mre_px {score_of(stopped):.4g} at epoch 1) stopped after "
        "1 of its 3 epochs; the fine-tune starts from a short pretraining")
    assert pretraining_warning(interrupted / "last.pt").endswith(
        "at epoch 1) did not finish (1 of its 3 epochs, no summary.json); the fine-tune starts from a short pretraining")


def test_the_fine_tune_warns_once_and_only_for_a_short_pretraining(runs, tmp_path, capsys):
    config = tmp_path / "finetune.yaml"
    config.write_text(yaml.safe_dump(base(runs["root"], runs["out"], "finetune")))
    for run, warned in (("missed", True), ("reached", False)):
        weights = runs[run] / "best.pt"
        assert train_cmd.main(["-c", str(config), f"--model.weights={weights}", f"--logging.run_name=ft_{run}",
                               "--folds", "0,1"]) == 0
        lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: model.weights")]
        assert lines == ([f"warning: {pretraining_warning(weights)}"] if warned else [])   # once for both folds


def progress(**changes) -> RunProgress:
    fields = dict(weights=Path("r/best.pt"), run=Path("r"), metric="dice", mode="max", score=0.8, epoch=15,
                  target=0.7, planned=20, ran=20, finished=True, patience=None)
    return RunProgress(**{**fields, **changes})


def test_what_counts_as_short():
    assert progress().problems() == []
    assert progress(score=0.6).problems() == ["missed its target dice >= 0.7 (train.target)"]   # dice: higher is better
    assert progress(mode="min", metric="mre_px", score=0.6, target=1.0).problems() == []
    assert progress(ran=12, patience=5, epoch=7).problems() == ["stopped after 12 of its 20 epochs (early stopping)"]
    assert progress(epoch=10, ran=20).problems() == ["kept weights from epoch 10 of the 20 it ran"]   # first half
    assert progress(epoch=1, ran=3, planned=3).problems() == []          # too few epochs to call the best early
    assert progress(finished=None, ran=None).problems() == []             # a checkpoint copied out of its folder


def test_a_file_that_is_no_run_checkpoint_is_not_judged(tmp_path):
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "encoder.pth")
    assert pretraining_warning(tmp_path / "encoder.pth") is None
    assert pretraining_warning(tmp_path / "missing.pt") is None and pretraining_warning(None) is None
