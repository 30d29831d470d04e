"""Training: the loss falls and the model beats chance, resume after a kill equals an uninterrupted run, DDP."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.config import load_config
from engine.trainer import train

ROOT = Path(__file__).resolve().parents[1]


def seg_config(phantom: Path, out: Path, **overrides):
    base = {
        "task": "segmentation",
        "name": "tiny",
        "data": {"root": str(phantom / "handbones" / "train"), "test_root": str(phantom / "handbones" / "test"),
                 "image_size": 64, "n_folds": 3, "cache_dir": str(out / "cache")},
        "model": {"name": "smp:unet/resnet18"},
        "train": {"epochs": 2, "batch_size": 4, "lr": 3e-3, "warmup_epochs": 0.5},
        "logging": {"out_dir": str(out / "runs"), "progress": False},
    }
    base["data"].update(overrides.pop("data", {}))  # data keys merge; other sections are replaced whole
    return load_config(None, {**base, **overrides})


def all_on_dice(dataset) -> float:
    """Score of predicting every pixel of every class: the 'chance' baseline for Dice."""
    scores = []
    for i in range(len(dataset)):
        masks = dataset[i]["masks"].numpy().reshape(29, -1)
        fg = masks.sum(1)
        scores.append(np.where(fg > 0, 2 * fg / (fg + masks.shape[1]), 0.0))
    return float(np.mean(scores))


def test_loss_falls_and_beats_chance(phantom, tmp_path):
    cfg = seg_config(phantom, tmp_path, train={"epochs": 4, "batch_size": 4, "lr": 3e-3, "warmup_epochs": 0.5},
                     data={"root": str(phantom / "handbones" / "train"), "image_size": 64, "n_folds": 3,
                           "val_at_train_size": True, "cache_dir": str(tmp_path / "cache")})
    summary = train(cfg)
    rows = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4
    assert rows[-1]["train/loss"] < rows[0]["train/loss"]
    from tasks.segmentation.task import SegmentationTask

    _, val = SegmentationTask(cfg).datasets()
    assert summary["val"]["score"] > max(3 * all_on_dice(val), 0.03)
    for name in ("config.yaml", "best.pt", "last.pt", "summary.json"):
        assert (cfg.run_dir / name).is_file()
    ckpt = torch.load(cfg.run_dir / "best.pt", weights_only=True)
    assert ckpt["model_name"] == "smp:unet/resnet18" and ckpt["num_outputs"] == 29
    assert summary["params"] > 0 and summary["train_images_per_s"] > 0 and len(summary["val"]["per_item"]) == 29


class Kill(Exception):
    pass


@pytest.mark.slow
@pytest.mark.parametrize("full_workers, cut_workers, model", [(0, 0, "smp:unet/resnet18"), (0, 2, "smp:fpn/resnet18")])
def test_resume_after_kill_equals_uninterrupted(phantom, tmp_path, tensorboard_scalars, full_workers, cut_workers,
                                                model):
    """Also with persistent loader workers in the killed and resumed run (started at epoch 0, then again at
    epoch 1) against none in the uninterrupted one, and a model whose dropout draws from the global torch RNG
    (FPN's decoder): the numbers depend neither on the workers nor on when they started. And with
    logging.tensorboard the run's events hold exactly the numbers of its metrics.jsonl."""
    common = {"train": {"epochs": 3, "batch_size": 4, "lr": 3e-3, "max_steps_per_epoch": 2, "ema": 0.9},
              "augment": {"hflip": 0.5, "rotate": 15}, "model": {"name": model}}
    full = seg_config(phantom, tmp_path, logging={"out_dir": str(tmp_path / "a"), "progress": False},
                      data={"num_workers": full_workers}, **common)
    train(full)

    cut = seg_config(phantom, tmp_path, logging={"out_dir": str(tmp_path / "b"), "progress": False,
                                                 "tensorboard": True}, data={"num_workers": cut_workers}, **common)

    def kill_after_first_epoch(epoch, row):
        if epoch == 0:
            raise Kill()

    with pytest.raises(Kill):
        train(cut, callbacks=[kill_after_first_epoch])
    assert not (cut.run_dir / "summary.json").exists()
    train(cut, resume=True)

    a = torch.load(full.run_dir / "last.pt", weights_only=True)
    b = torch.load(cut.run_dir / "last.pt", weights_only=True)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for key, value in a["ema"].items():
        assert torch.equal(value, b["ema"][key]), key
    lines_a = [json.loads(x) for x in (full.run_dir / "metrics.jsonl").read_text().splitlines()]
    lines_b = [json.loads(x) for x in (cut.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["train/loss"] for r in lines_a] == [r["train/loss"] for r in lines_b]

    assert not (full.run_dir / "tensorboard").exists()  # off by default
    events = tensorboard_scalars(cut.run_dir / "tensorboard")
    expected = {key for row in lines_b for key, value in row.items() if key != "epoch" and isinstance(value, float)}
    assert set(events) == expected and {"train/loss", "val/dice", "val/loss", "lr", "time_s"} <= expected
    for key in expected:
        logged = [(row["epoch"], row[key]) for row in lines_b if key in row]
        assert [step for step, _ in events[key]] == [step for step, _ in logged], key
        assert np.allclose([v for _, v in events[key]], [v for _, v in logged], rtol=1e-6), key


def test_loader_workers_persist_across_epochs(phantom, tmp_path, monkeypatch):
    from tasks.segmentation.task import HandboneDataset

    pids = tmp_path / "pids"
    pids.mkdir()
    getitem = HandboneDataset.__getitem__

    def recording(self, i):
        (pids / str(os.getpid())).touch()
        return getitem(self, i)

    monkeypatch.setattr(HandboneDataset, "__getitem__", recording)
    cfg = seg_config(phantom, tmp_path, data={"num_workers": 1}, train={"epochs": 3, "batch_size": 4, "max_steps_per_epoch": 2})
    train(cfg)
    workers = {p.name for p in pids.iterdir()} - {str(os.getpid())}  # the main process checks and validates
    assert len(workers) == 1, f"{len(workers)} worker processes served 3 epochs"


@pytest.mark.slow
def test_ddp_two_cpu_processes(phantom, tmp_path):
    cfg = seg_config(phantom, tmp_path)
    from engine.config import save_config

    save_config(cfg, tmp_path / "ddp.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
         str(ROOT / "train.py"), "-c", str(tmp_path / "ddp.yaml"), "--train.epochs=1", "--train.max_steps_per_epoch=2",
         "--logging.run_name=ddp"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = cfg.run_dir.parent / "ddp-f0"
    rows = (run / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 1, "only rank 0 writes"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["val"]["score"] is not None
