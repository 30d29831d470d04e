"""benchmarks/scale_rehearsal.py: the smoke setting runs the whole cycle stage by stage into a JSON that holds
every stage's figures and the images it handled; per-image rates, growth and the projection computed by hand;
bad options are one error line. No timing is asserted."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import scale_rehearsal as sr
from cycle.steps import STAGES

ROOT = Path(__file__).resolve().parents[1]


def test_the_rehearsal_runs_the_cycles_own_stages():
    assert sr.CYCLE_STAGES == STAGES
    assert sr.STAGES == ("phantom", *STAGES)


@pytest.mark.slow
def test_smoke_runs_every_stage_of_both_sets_end_to_end(tmp_path):
    out = tmp_path / "scale.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scale_rehearsal.py"), "--smoke", "--out", str(out),
                           "--workdir", str(tmp_path / "work"), "--gpu-rates", str(tmp_path / "none.json")],
                          cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["complete"] is True
    assert set(r["machine"]) >= {"cpu", "cores", "load_avg_start", "load_avg_end", "torch", "git_commit"}
    assert r["machine"]["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}", r["machine"]["git_commit"])
    assert len(r["machine"]["load_avg_start"]) == 3 and len(r["machine"]["load_avg_end"]) == 3
    assert r["setting"]["smoke"] is True and r["setting"]["sizes"] == [8, 16]
    assert 0 < r["driver_peak_rss_mb"] < 200

    # 2 models x folds 0 and 1 of 4; a patient (2 images) per fold at 8 images, two at 16; 4 test images;
    # one step of batch 2 an epoch, one epoch
    expected = {8: {"generated": 12, "oof_predicted": 8, "test_predicted": 16},
                16: {"generated": 20, "oof_predicted": 16, "test_predicted": 16}}
    for n, want in expected.items():
        stages = r["sets"][str(n)]["stages"]
        assert list(stages) == list(sr.STAGES)
        for name, rec in stages.items():
            assert rec["status"] == "ok" and rec["exit"] == 0, (n, name, rec)
            assert rec["seconds"] > 0 and rec["peak_rss_mb"] > 0 and rec["cpu_s"] >= 0
        assert stages["phantom"]["images"] == {"generated": want["generated"]}
        assert stages["train"]["images"] == {"training_passes": 4 * 2, "oof_predicted": want["oof_predicted"], "runs": 4}
        assert stages["test"]["images"] == {"test_predicted": want["test_predicted"], "runs": 4}
        assert stages["select"]["images"] == {"oof_maps": want["oof_predicted"], "models": 2}
        members = stages["submit"]["images"]["member_runs"]
        assert 1 <= members <= 4 and stages["submit"]["images"]["test_maps"] == 4 * members
        assert stages["submit"]["last_line"].startswith("submission: ") and "valid (4 images" in stages["submit"]["last_line"]
        csv = tmp_path / "work" / f"n{n}" / "submissions" / f"scale-n{n}.csv"
        assert csv.is_file() and csv.read_text().splitlines()[0] == "image_name,class,rle"

    assert list(r["growth"]) == list(sr.STAGES)
    assert r["growth"]["phantom"]["images_ratio"] == pytest.approx(20 / 12, abs=1e-3)
    assert r["growth"]["select"]["images_ratio"] == 2 and r["growth"]["test"]["images_ratio"] == 1
    for g in r["growth"].values():
        assert g["peak_rss_ratio"] > 0 and isinstance(g["rss_flat"], bool)
    assert r["per_image"]["test"] == {"s": None, "how": "the same 16 test_predicted in both sets: its time should stay flat"}

    cpu = r["cpu_parts"]
    assert cpu["status"] == "ok" and cpu["input_px"] == 512 and cpu["test_images"] == 4 and cpu["val_images"] == 4
    for key in ("decode_s", "postprocess_rle_s", "validate_s", "ensemble_read_s", "ensemble_fuse_rle_s"):
        assert cpu[key] > 0, key

    p = r["projection"]
    assert p["gpu_rates"] is None
    gpu_items = [i for i in p["items"] if "(GPU" in i["what"]]
    assert len(gpu_items) == 2 and all(i["seconds"] is None and i["based_on"].startswith("unknown") for i in gpu_items)
    assert {i["what"] for i in gpu_items} <= set(p["unknown"])
    decode = next(i for i in p["items"] if i["what"].startswith("decoding"))
    assert decode["count"] == 6900 and decode["seconds"] == pytest.approx(6900 * cpu["decode_s"], abs=0.1)
    assert "| stage | images (8 → 16) |" in proc.stdout and "| part | count | seconds | based on |" in proc.stdout


def test_per_image_is_the_marginal_cost_between_the_sets():
    small = {"status": "ok", "seconds": 20.0, "images": {"oof_maps": 10}}
    large = {"status": "ok", "seconds": 50.0, "images": {"oof_maps": 30}}
    assert sr.per_image(small, large, "select") == {"s": 1.5, "how": "marginal between the sets (10 → 30 oof_maps)"}
    same = sr.per_image(small, {**large, "images": {"oof_maps": 10}}, "select")
    assert same["s"] is None and "the same 10 oof_maps" in same["how"]
    faster = sr.per_image(small, {**large, "seconds": 18.0}, "select")
    assert faster["s"] is None and "no measurable cost" in faster["how"]
    assert sr.per_image(None, large, "select") is None

    g = sr.growth({**small, "peak_rss_mb": 1000.0, "cpu_s": 10.0}, {**large, "peak_rss_mb": 1250.0, "cpu_s": 40.0}, "select")
    assert g["images_ratio"] == 3 and g["seconds_ratio"] == 2.5 and g["cpu_s_ratio"] == 4
    assert g["peak_rss_ratio"] == 1.25 and g["rss_flat"] is False
    assert sr.growth({**small, "peak_rss_mb": 1000.0}, {**large, "peak_rss_mb": 1150.0}, "select")["rss_flat"] is True


def test_the_projection_uses_the_gpu_rates_when_there_are_some(tmp_path):
    gpu_json = tmp_path / "gpu_rehearsal.json"
    gpu_json.write_text(json.dumps({"gpu": True, "device": "NVIDIA H200", "train_img_s_amp": 100.0, "infer_full_s": 20.0,
                                    "config": {"seg_model": "smp:unet/resnet34"},
                                    "sections": {"infer": {"images": 10, "input_size": 1024, "post_workers": 8}}}))
    gpu = sr.gpu_figures(gpu_json)
    assert gpu["infer_s_per_image"] == 2.0 and gpu["train_img_s_amp"] == 100.0
    cpu = {"status": "ok", "input_px": 1024, "members": ["unet", "fpn"], "decode_s": 0.05, "postprocess_rle_s": 0.5,
           "validate_s": 0.25, "ensemble_read_s": 0.1, "ensemble_fuse_rle_s": 0.9}
    rates = {"select": {"s": 0.01, "how": "marginal"}, "fit": {"s": None, "how": "no measurable cost"}}
    target = sr.Target(epochs=10)
    p = sr.projection(rates, cpu, gpu, target, "here")
    by = {i["what"].split(" (")[0]: i for i in p["items"]}
    # 800 x 4/5 training images x 10 epochs x 15 runs at 100 img/s
    assert by["training"]["count"] == 96000 and by["training"]["seconds"] == 960.0
    # 800 x 3 out-of-fold + 300 x 15 test images at 2 s
    assert by["out-of-fold and test prediction with flip TTA"]["seconds"] == 6900 * 2.0
    assert "decoding the 2048² PNGs of predicted images" not in by   # inside the GPU prediction figure
    # 160 validation images x 10 epochs x 15 runs at 0.25 s
    assert by["validation every epoch at the original size: masks, labels, Dice"]["seconds"] == 24000 * 0.25
    assert by["cross-fitted selection over the out-of-fold maps"]["seconds"] == 24.0
    assert by["fitted thresholds on the out-of-fold maps"]["seconds"] is None
    assert by["the submission: the ensemble's cached test maps read, fused and RLE-encoded"]["seconds"] == 300.0
    assert p["known_s"] == 960 + 13800 + 6000 + 24 + 300
    assert p["unknown"] == ["fitted thresholds on the out-of-fold maps (CPU)"]
    assert "gpu_rehearsal.json on NVIDIA H200" in by["training"]["based_on"]

    assert sr.gpu_figures(tmp_path / "none.json") is None
    gpu_json.write_text(json.dumps({"gpu": False, "train_img_s_amp": 1.0, "infer_full_s": 1.0}))   # a CPU tiny run
    assert sr.gpu_figures(gpu_json) is None


@pytest.mark.parametrize("argv, message", [
    (["--sizes", "48,16"], "--sizes: 48,16: increasing even numbers"),
    (["--sizes", "6"], "each at least 8"),
    (["--test", "1"], "--test: 1: at least 2"),
    (["--image-size", "100"], "--image-size: 100: a multiple of 32"),
    (["--folds", "5"], "--folds: 5: 1 to 4 folds"),
])
def test_bad_options_are_one_error_line_before_anything_runs(tmp_path, capsys, argv, message):
    out = tmp_path / "r.json"
    assert sr.main([*argv, "--workdir", str(tmp_path / "w"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err
    assert not out.exists() and not (tmp_path / "w").exists()


def test_a_used_workdir_is_refused(tmp_path, capsys):
    (tmp_path / "w" / "n16").mkdir(parents=True)
    (tmp_path / "w" / "n16" / "plan.yaml").write_text("{}")
    assert sr.main(["--sizes", "16", "--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "r.json")]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()
