"""Ensemble selection (``tools/fit_ensemble.py --select``) for keypoints and bone age on constructed run folders.

Each "run" is a finished run folder (config.yaml, summary.json, a checkpoint holding only its config) whose
out-of-fold cache (``preds/val/keypoints.npz`` / ``preds/val/boneage.csv``) is the truth plus a known bias,
so the right selection is known by hand.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.config import load_config, save_config

ROOT = Path(__file__).resolve().parents[1]
FOLDS = 2


def _run(runs: Path, raw: dict, name: str, fold: int):
    """A finished run folder ``<runs>/<task>/<name>-f<fold>`` without a cache; returns its config."""
    import torch

    from engine.summary import base_summary, write_summary

    cfg = load_config(None, {**raw, "name": name, "data": {**raw["data"], "fold": fold, "n_folds": FOLDS},
                             "logging": {"out_dir": str(runs), "progress": False}})
    cfg.run_dir.mkdir(parents=True)
    save_config(cfg, cfg.run_dir / "config.yaml")
    torch.save({"config": cfg.to_dict()}, cfg.run_dir / "best.pt")
    write_summary(cfg.run_dir, base_summary(name=cfg.run_dir.name, task=cfg.task, fold=fold))
    return cfg


def _keypoint_library(phantom: Path, tmp: Path, biases: dict[str, tuple[float, float]]) -> Path:
    """One keypoint configuration per bias (px, added to every true point), both folds, caches written."""
    from tasks.keypoints.cache import save_cache
    from tasks.keypoints.task import KeypointTask

    raw = {"task": "keypoints", "data": {"root": str(phantom / "joints"), "landmarks": "shs15", "image_size": 64},
           "model": {"name": "shsnet:unet"}, "loss": {"weights": {"kl": 1.0}}}
    for name, bias in biases.items():
        for fold in range(FOLDS):
            cfg = _run(tmp / "runs", raw, name, fold)
            samples = KeypointTask(cfg).samples("val")
            coords = np.stack([s.coords for s in samples]) + np.array(bias)
            save_cache(cfg.run_dir / "preds" / "val", [s.name for s in samples], coords,
                       np.ones(coords.shape[:2]), "shs15")
    return tmp / "runs" / "keypoints"


def _boneage_library(phantom: Path, tmp: Path, biases: dict[str, float]) -> Path:
    """One bone-age configuration per bias (months), both folds, ``preds/val/boneage.csv`` written."""
    from tasks.boneage.task import BoneAgeTask
    from tasks.formats.rsna import write_predictions

    raw = {"task": "boneage", "data": {"root": str(phantom / "boneage"), "image_size": 64},
           "model": {"name": "timm:resnet10t"}, "loss": {"weights": {"l1": 1.0}}}
    for name, bias in biases.items():
        for fold in range(FOLDS):
            cfg = _run(tmp / "runs", raw, name, fold)
            val = BoneAgeTask(cfg).split()[1]
            (cfg.run_dir / "preds" / "val").mkdir(parents=True)
            write_predictions(cfg.run_dir / "preds" / "val" / "boneage.csv",
                              pd.DataFrame({"id": [s.id for s in val], "boneage": [s.age + bias for s in val]}))
    return tmp / "runs" / "boneage"


def _select(runs: Path, capsys, name: str = "selected") -> tuple[dict, str]:
    from tools import fit_ensemble

    assert fit_ensemble.main(["--select", str(runs), "--quiet", "--name", name]) == 0
    return json.loads((runs / name / "selection.json").read_text()), capsys.readouterr().out


def test_keypoints_selection_picks_the_exact_member(phantom, tmp_path, capsys):
    from ensembles.config import load_ensemble_config

    runs = _keypoint_library(phantom, tmp_path, {"biased": (3.0, 4.0), "exact": (0.0, 0.0)})
    record, out = _select(runs, capsys)
    assert record["task"] == "keypoints" and record["metric"] == "mre_px" and record["mode"] == "min"
    assert record["singles"] == {"biased": pytest.approx(5.0), "exact": pytest.approx(0.0)}  # |(3, 4)| = 5 px
    assert record["weights"] == {"exact": 1.0} and record["best_single"] == "exact"
    assert record["average"] == pytest.approx(2.5)  # the mean point lies (1.5, 2) off
    assert record["val"]["in_sample"] == pytest.approx(0.0) and record["stopped"] == "no improvement"
    assert record["images"] == 24 and record["cross_fitted"]["selection"] == pytest.approx(0.0)
    assert "MRE (px), lower is better" in out and "selected: exact=1.000" in out
    ens = load_ensemble_config(runs / "selected" / "selection.yaml")
    assert ens.task == "keypoints" and ens.method == "weighted" and ens.labels == ["exact"]
    assert [len(m.run_dirs) for m in ens.members] == [FOLDS]
    summary = json.loads((runs / "selected" / "summary.json").read_text())
    assert summary["kind"] == "ensemble" and summary["members"] == ["exact"]


def test_keypoints_selection_pairs_opposite_biases(phantom, tmp_path, capsys):
    """+2 px and -2 px in x: each alone 2 px, together exact; a third member 1 px off in y only adds error."""
    from ensembles.config import load_ensemble_config
    from ensembles.api import predict_ensemble

    runs = _keypoint_library(phantom, tmp_path, {"minus": (-2.0, 0.0), "plus": (2.0, 0.0), "up": (0.0, -3.0)})
    record, _ = _select(runs, capsys)
    assert record["weights"] == {"minus": 0.5, "plus": 0.5}
    assert record["val"]["in_sample"] == pytest.approx(0.0, abs=1e-9)
    assert record["singles"] == {"minus": pytest.approx(2.0), "plus": pytest.approx(2.0), "up": pytest.approx(3.0)}
    assert record["average"] == pytest.approx(1.0)  # the mean of all three is 1 px off in y
    # the written YAML fuses the validation caches to the truth through the ensemble runner
    ens = load_ensemble_config(runs / "selected" / "selection.yaml")
    csv = tmp_path / "val.csv"
    predict_ensemble(ens, out_csv=csv, split="val", from_cache=True, progress=False)
    from tasks.keypoint_sets import get_set
    from tasks.keypoints.task import KeypointTask

    cfgs = [load_config(runs / f"plus-f{f}" / "config.yaml") for f in range(FOLDS)]
    truth = {s.name: s.coords for c in cfgs for s in KeypointTask(c).samples("val")}
    frame = pd.read_csv(csv, index_col=0)
    names = get_set("shs15").names
    fused = np.stack([frame[[f"{n}_x" for n in names]].to_numpy(), frame[[f"{n}_y" for n in names]].to_numpy()], -1)
    assert sorted(frame.index) == sorted(truth)
    np.testing.assert_allclose(fused, np.stack([truth[n] for n in frame.index]), atol=1e-6)


def test_boneage_selection_known_answers(phantom, tmp_path, capsys):
    from ensembles.config import load_ensemble_config

    runs = _boneage_library(phantom, tmp_path, {"exact": 0.0, "late": 6.0, "early": -6.0})
    record, out = _select(runs, capsys)
    assert record["task"] == "boneage" and record["metric"] == "mae_months"
    assert record["singles"] == {"early": pytest.approx(6.0), "exact": pytest.approx(0.0), "late": pytest.approx(6.0)}
    assert record["weights"] == {"exact": 1.0} and record["history"][0]["member"] == "exact"
    assert "MAE (months)" in out
    assert load_ensemble_config(runs / "selected" / "selection.yaml").labels == ["exact"]


def test_boneage_selection_pairs_opposite_biases(phantom, tmp_path, capsys):
    runs = _boneage_library(phantom, tmp_path, {"early": -4.0, "late": 4.0, "later": 10.0})
    record, _ = _select(runs, capsys, "pair")
    assert record["weights"] == {"early": 0.5, "late": 0.5}
    assert record["val"]["in_sample"] == pytest.approx(0.0, abs=1e-9)
    assert record["cross_fitted"]["selection"] == pytest.approx(0.0, abs=1e-9)
    assert record["cross_fitted"]["best_single"] == pytest.approx(4.0)
    assert record["average"] == pytest.approx(10 / 3)
    assert (runs / "pair" / "selection.yaml").is_file()


def test_bad_selection_input_is_one_line(phantom, tmp_path, capsys):
    from core.cli import run_main
    from tools import fit_ensemble

    def error(runs: Path) -> str:
        assert run_main(fit_ensemble.main, ["--select", str(runs), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
        return err

    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no finished run" in error(empty)
    assert "no such runs folder" in error(tmp_path / "missing")
    # finished runs without out-of-fold predictions
    raw = {"task": "boneage", "data": {"root": str(phantom / "boneage"), "image_size": 64},
           "model": {"name": "timm:resnet10t"}, "loss": {"weights": {"l1": 1.0}}}
    for fold in range(FOLDS):
        _run(tmp_path / "bare", raw, "nocache", fold)
    message = error(tmp_path / "bare" / "boneage")
    assert "none of its 2 finished boneage runs has out-of-fold predictions (preds/val/boneage.csv)" in message
    assert "--folds all" in message
    # finished runs of two tasks in one folder
    mixed = _boneage_library(phantom, tmp_path / "mixed", {"exact": 0.0})
    kp = _keypoint_library(phantom, tmp_path / "kp", {"exact": (0.0, 0.0)})
    (kp / "exact-f0").rename(mixed / "joints-f0")
    message = error(mixed)
    assert "holds runs of several tasks (boneage: exact-f0, keypoints: joints-f0)" in message
    assert not (mixed / "selected").exists()
