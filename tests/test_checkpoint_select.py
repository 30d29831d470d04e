"""best.pt selection (engine/checkpoint_select.py): the EMA of the validation score picks exactly the epoch the
rule says, and a (near-)constant regression predictor is never kept, also through the trainer."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.checkpoint_select import CheckpointSelector
from engine.config import ConfigError, load_config
from tasks.boneage.task import BoneAgeTask

ROOT = Path(__file__).resolve().parents[1]


def feed(selector: CheckpointSelector, metrics: list[dict]) -> list[bool]:
    return [selector.update(epoch, m) for epoch, m in enumerate(metrics)]


def test_raw_score_keeps_the_single_lucky_epoch():
    sel = CheckpointSelector("min")
    assert feed(sel, [{"score": s} for s in (10, 4, 20, 5, 5, 5)]) == [True, True, False, False, False, False]
    assert sel.best_epoch == 1 and sel.best == 4


def test_ema_picks_the_epoch_where_the_smoothed_score_is_best():
    # beta 0.5: smoothed 10, 7, 13.5, 9.25, 7.125, 6.0625 -> epoch 5, not the lucky epoch 1 (raw 4)
    sel = CheckpointSelector("min", ema=0.5)
    assert feed(sel, [{"score": s} for s in (10, 4, 20, 5, 5, 5)]) == [True, True, False, False, False, True]
    assert sel.best_epoch == 5 and sel.best == pytest.approx(6.0625)
    # "max" metrics: smoothed 0.2, 0.5, 0.45, 0.625 -> epochs 0, 1, 3
    up = CheckpointSelector("max", ema=0.5)
    assert feed(up, [{"score": s} for s in (0.2, 0.8, 0.4, 0.8)]) == [True, True, False, True]


def test_a_constant_predictor_is_never_kept():
    sel = CheckpointSelector("min", min_spread=0.1)
    # epoch 0: best MAE but a constant answer; epoch 2: spread 0.05 still below the bar
    metrics = [{"score": 30.0, "pred_spread": 0.0}, {"score": 40.0, "pred_spread": 0.5},
               {"score": 20.0, "pred_spread": 0.05}, {"score": 35.0, "pred_spread": 0.8},
               {"score": 25.0, "pred_spread": float("nan")}]
    assert feed(sel, metrics) == [False, True, False, True, False]
    assert sel.best_epoch == 3
    with pytest.raises(ValueError, match="reports no pred_spread"):
        CheckpointSelector("max", min_spread=0.1).update(0, {"score": 0.5})


def test_selector_state_round_trips_for_resume():
    sel = CheckpointSelector("min", ema=0.7)
    feed(sel, [{"score": 5.0}, {"score": 3.0}])
    again = CheckpointSelector("min", ema=0.7)
    again.load_state_dict(sel.state_dict())
    assert again.update(2, {"score": 1.0}) == sel.update(2, {"score": 1.0})
    assert again.state_dict() == sel.state_dict()


def test_config_bounds():
    with pytest.raises(ConfigError, match="select_ema"):
        load_config(ROOT / "configs" / "boneage" / "real_rsna_finetune.yaml", ["--train.select_ema=1.0"])


def test_trainer_never_saves_a_constant_predictor_as_best(phantom, tmp_path, monkeypatch):
    """Stubbed validations: epoch 0 has the best MAE but a constant answer; best.pt must be epoch 2's."""
    from engine.checkpoint import load_checkpoint
    from engine.trainer import train

    sequence = iter([{"score": 10.0, "pred_spread": 0.0}, {"score": 30.0, "pred_spread": 0.4},
                     {"score": 20.0, "pred_spread": 0.6}])
    monkeypatch.setattr(BoneAgeTask, "evaluate", lambda self, *a, **k: {**next(sequence), "loss": 1.0})
    cfg = load_config(ROOT / "configs" / "boneage" / "phantom_cpu_resnet10t.yaml",
                      [f"--data.root={phantom / 'boneage'}", "--data.image_size=64", "--train.epochs=3",
                       "--train.max_steps_per_epoch=1", "--train.device=cpu", "--data.cache=false",
                       f"--logging.out_dir={tmp_path}", "--logging.progress=false", "--train.select_min_spread=0.1"])
    summary = train(cfg)
    assert summary["best_epoch"] == 2 and summary["val"]["score"] == 20.0
    assert "prediction sd is at least 0.1" in summary["selected_by"]
    assert load_checkpoint(cfg.run_dir / "best.pt")["epoch"] == 2


def test_boneage_evaluate_reports_spread_and_the_training_mean_baseline(phantom):
    from models import create_model

    cfg = load_config(ROOT / "configs" / "boneage" / "phantom_cpu_resnet10t.yaml",
                      [f"--data.root={phantom / 'boneage'}", "--data.image_size=64", "--data.cache=false"])
    task = BoneAgeTask(cfg)
    train_set, val_set = task.datasets()
    model = create_model(cfg.model.name, task="boneage", num_outputs=1, in_channels=task.in_channels,
                         **cfg.model.options)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()          # output 0 for every image: the constant answer target_mean
    metrics = task.evaluate(model, val_set, torch.device("cpu"))
    ages = [s.age for s in val_set.samples]
    train_mean = sum(s.age for s in train_set.samples) / len(train_set)
    assert metrics["pred_spread"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["baseline_mae"] == pytest.approx(sum(abs(a - train_mean) for a in ages) / len(ages))


def test_a_fold_without_an_eligible_epoch_is_reported_not_fatal(phantom, tmp_path):
    """No epoch passed the rule (no best.pt): the fold is listed without metrics and the next fold still runs."""
    from engine.folds import cv_report, run_folds

    cfgs = [load_config(ROOT / "configs" / "boneage" / "phantom_cpu_resnet10t.yaml",
                        [f"--data.root={phantom / 'boneage'}", f"--data.fold={f}", f"--logging.out_dir={tmp_path}"])
            for f in (0, 1)]
    trained, messages = [], []

    def train_one(cfg, resume, overwrite):
        trained.append(cfg.data.fold)
        cfg.run_dir.mkdir(parents=True)
        return {"metric": "mae_months", "selected_by": "only epochs whose prediction sd is at least 0.2"}

    rows = run_folds(cfgs, train_one, log=messages.append)
    assert trained == [0, 1] and [r["score"] for r in rows] == [None, None] and rows[0]["val"] == {}
    assert "no epoch passed the checkpoint rule" in messages[1]
    assert rows[0]["images"]["val"] and not set(rows[0]["images"]["val"]) & set(rows[0]["images"]["train"])
    assert "fold" in cv_report(rows)


def test_spread_rule_for_a_task_without_spread_is_refused_before_the_run_folder(tmp_path):
    with pytest.raises(ConfigError, match="only for regression"):
        load_config(ROOT / "configs" / "keypoints" / "real_shs15_finetune.yaml",
                    ["--train.select_min_spread=0.2", f"--logging.out_dir={tmp_path}"])
    assert not any(tmp_path.iterdir())
