"""benchmarks/gpu_rehearsal.py at its tiny scale on the CPU: every section runs through the harness, the JSON
holds the issue's figures, says they are not GPU figures, and its ratios come from its parts."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = ("device", "date", "git_commit", "train_img_s_amp", "train_img_s_fp32", "loader_wait_fraction",
            "infer_model_s", "infer_full_s", "ensemble_img_s", "yolo_train_img_s", "peak_gpu_mem_gb")


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU (tiny-scale) behaviour")
def test_tiny_rehearsal_on_cpu(tmp_path):
    out = tmp_path / "rehearsal.json"
    committed = ROOT / "benchmarks" / "results" / "gpu_rehearsal.json"
    before = committed.stat().st_mtime_ns if committed.exists() else None
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_rehearsal.py"), "--out", str(out),
                           "--workdir", str(tmp_path / "work")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "NOT GPU figures" in proc.stdout
    r = json.loads(out.read_text())

    assert set(REQUIRED) <= set(r)
    assert r["gpu"] is False and r["scale"] == "tiny" and "NOT GPU figures" in r["note"]
    assert r["device"] == "cpu" and r["peak_gpu_mem_gb"] is None
    assert r["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}", r["git_commit"])
    datetime.fromisoformat(r["date"])
    assert r["complete"] is True
    sections = r["sections"]
    assert list(sections) == ["data", "train", "infer", "ensemble", "yolo"]
    for name, section in sections.items():
        assert section["status"] == "ok", (name, section)
        assert section["seconds"] > 0 and section["peak_rss_mb"] > 0 and section["peak_gpu_mem_gb"] is None

    for key in ("train_img_s_amp", "train_img_s_fp32", "infer_model_s", "infer_full_s", "ensemble_img_s",
                "yolo_train_img_s"):
        assert r[key] > 0, key
    assert 0 <= r["loader_wait_fraction"] < 1
    assert r["amp_speedup"] == pytest.approx(r["train_img_s_amp"] / r["train_img_s_fp32"], rel=1e-2)
    assert r["postprocess_overhead"] == pytest.approx(r["infer_full_s"] / r["infer_model_s"] - 1, abs=1e-2)
    train = sections["train"]
    assert train["amp_dtype"] == "None" and train["channels_last"] is False  # no AMP on a CPU
    assert train["train_compute_img_s_amp"] >= r["train_img_s_amp"]  # waits left out: never slower
    assert train["loader_img_s"] > 0 and train["loader_img_s_no_augment"] > 0
    assert train["amp_steps"] >= 1 and train["fp32_steps"] >= 1
    assert sections["infer"]["images"] >= 1 and sections["infer"]["tta_views"] == ["identity", "hflip"]
    assert sections["ensemble"]["images"] == r["sections"]["data"]["images_test"]
    assert len(sections["ensemble"]["members"]) == 3
    assert sections["yolo"]["steps"] >= 1
    assert (committed.stat().st_mtime_ns if committed.exists() else None) == before  # GPU figures untouched
