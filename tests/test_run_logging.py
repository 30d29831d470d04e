"""engine/run_logging.py: the TensorBoard log beside metrics.jsonl (``logging.tensorboard: true``)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from engine.run_logging import RunLogger, clear_run_logs, scalars


def _cfg(tensorboard: bool) -> SimpleNamespace:
    return SimpleNamespace(logging=SimpleNamespace(tensorboard=tensorboard, wandb="off"))


def test_scalars_are_the_finite_numbers_of_a_row_but_its_epoch():
    row = {"epoch": 3, "train/loss": 0.5, "lr": 1e-3, "val/dice": None, "note": "x", "flag": True,
           "val/loss": float("nan"), "images": 7}
    assert scalars(row) == {"train/loss": 0.5, "lr": 1e-3, "images": 7.0}


def test_a_resumed_log_replaces_the_epochs_after_its_checkpoint(tmp_path, tensorboard_scalars):
    """Epochs 0-2 logged, the run resumed from epoch 0's checkpoint and epochs 1-2 logged again: metrics.jsonl and
    the TensorBoard events both hold epoch 0 of the first run and epochs 1-2 of the second, once each."""
    first = RunLogger(tmp_path, _cfg(True))
    first.start_fresh()
    for epoch, loss in enumerate((0.9, 0.8, 0.7)):
        first.log({"epoch": epoch, "train/loss": loss, "lr": 0.01})
    first.finish({})
    again = RunLogger(tmp_path, _cfg(True))
    again.truncate_after(0)
    for epoch, loss in ((1, 0.6), (2, 0.5)):
        again.log({"epoch": epoch, "train/loss": loss, "lr": 0.02})
    again.finish({})

    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["train/loss"]) for r in rows] == [(0, 0.9), (1, 0.6), (2, 0.5)]
    events = tensorboard_scalars(tmp_path / "tensorboard")
    assert sorted(events) == ["lr", "train/loss"]
    assert events["train/loss"] == [(0, pytest.approx(0.9)), (1, pytest.approx(0.6)), (2, pytest.approx(0.5))]
    assert events["lr"] == [(0, pytest.approx(0.01)), (1, pytest.approx(0.02)), (2, pytest.approx(0.02))]

    clear_run_logs(tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "tensorboard").exists()


def test_tensorboard_off_writes_no_events_and_a_disabled_logger_nothing(tmp_path):
    RunLogger(tmp_path, _cfg(False)).log({"epoch": 0, "train/loss": 1.0})
    assert (tmp_path / "metrics.jsonl").is_file() and not (tmp_path / "tensorboard").exists()
    other = tmp_path / "rank1"
    other.mkdir()
    RunLogger(other, _cfg(True), enabled=False).log({"epoch": 0, "train/loss": 1.0})
    assert not any(other.iterdir())
