"""A tiny cross-validated real fine-tune (``train.py --folds all``): the 6 real SHS_NET hands in 2 folds by
patient at 64 px, 1 epoch. The CV report and ``<name>-cv.json`` give every fold's metrics and their
mean ± sd, and no image (nor the mirrored other hand of its patient) is both trained and validated on.
Skipped when ../shared/data/real is absent."""
from __future__ import annotations

import json
import math
from pathlib import Path

import train
from engine.folds import cv_summary

ROOT = Path(__file__).resolve().parents[1]


def test_two_fold_real_shs_fine_tune_reports_per_fold_and_mean_sd(real_data, tmp_path, capsys):
    root = real_data / "shs_net_joints15"
    args = ["-c", str(ROOT / "configs" / "keypoints" / "real_shs15_finetune.yaml"), "--folds", "all",
            "--data.n_folds=2", "--data.image_size=64", "--train.epochs=1", "--model.weights=None",
            f"--data.root={root}", f"--data.test_root={root}", f"--data.cache_dir={tmp_path / 'cache'}",
            f"--logging.out_dir={tmp_path}", "--logging.run_name=cv", "--logging.progress=false",
            "--train.device=cpu", "--inference.batch_size=6"]
    assert train.main(args) == 0
    out = capsys.readouterr().out
    doc = json.loads((tmp_path / "keypoints" / "cv-cv.json").read_text())
    assert doc["task"] == "keypoints" and doc["metric"] == "mre_px" and [f["fold"] for f in doc["folds"]] == [0, 1]
    every = sorted(p.name for p in (root / "images").iterdir())
    val_seen = []
    for fold in doc["folds"]:
        train_names = {Path(p).name for p in fold["images"]["train"]}
        val_names = {Path(p).name for p in fold["images"]["val"]}
        assert train_names and val_names and not train_names & val_names
        assert train_names | val_names == set(every)
        assert len({"test_img5_L.png", "test_img5_R.png"} & val_names) in (0, 2)   # one patient, one side
        assert fold["oof_images"] == len(val_names)
        assert {"mre_px", "sdr_10px"} <= set(fold["val"]) and fold["val"]["score"] == fold["val"]["mre_px"]
        val_seen += val_names
    assert sorted(val_seen) == every                     # each image validated exactly once
    scores = [f["val"]["mre_px"] for f in doc["folds"]]
    mean = doc["summary"]["mre_px"]["mean"]
    assert mean == sum(scores) / 2 and math.isclose(doc["summary"]["mre_px"]["sd"], abs(scores[0] - scores[1]) / 2 ** 0.5)
    assert "cross-validated val/mre_px over folds 0,1:" in out and "sdr_10px" in out and "cv-cv.json" in out


def test_cv_summary_of_one_fold_has_no_spread():
    summary = cv_summary([{"val": {"score": 3.0, "baseline_mae": 5.0}}])
    assert summary["score"] == {"mean": 3.0, "sd": None, "folds": 1}
