"""tools/score.py prints every metric its scorer computes, --run stores them all, the leaderboard sorts by them.

Tiny constructed CSV pairs with hand-computed values: keypoints (2 images x 15 joints, known offsets,
with and without a pixel spacing), bone age (4 ages) and segmentation (one 16x16 image).
"""
from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest

from engine.cli import run_main
from engine.summary import base_summary, write_summary
from leaderboard import table as T
from tasks.formats import FormatError
from tasks.formats.handbones import CLASSES
from tasks.keypoint_labels import write_wide
from tasks.keypoint_sets import get_set
from tasks.rle import encode
from tools import score

SHS = get_set("shs15")


@pytest.fixture
def kp_pair(tmp_path):
    """Image a: every joint off by (3, 4) = 5 px. Image b: joints 0-4 off by (0, 2) = 2 px, the rest by
    (0, 1) = 1 px. Spacing 0.5 mm (a) and 2.0 mm (b)."""
    truth = 20.0 + np.arange(2 * 15 * 2, dtype=float).reshape(2, 15, 2)
    pred = truth.copy()
    pred[0] += (3.0, 4.0)
    pred[1, :5] += (0.0, 2.0)
    pred[1, 5:] += (0.0, 1.0)
    gt_dir = tmp_path / "gt"
    gt_dir.mkdir()
    write_wide(gt_dir / "truth.csv", ["a.png", "b.png"], truth, SHS)
    write_wide(tmp_path / "pred.csv", ["a.png", "b.png"], pred, SHS)
    return tmp_path / "pred.csv", gt_dir / "truth.csv"


# errors px: 15 x 5, 5 x 2, 10 x 1 -> mean 95/30, mean square 405/30; mm: 15 x 2.5, 5 x 4, 10 x 2
MRE_PX, SD_PX = 95 / 30, math.sqrt(405 / 30 - (95 / 30) ** 2)
MRE_MM, SD_MM = 77.5 / 30, math.sqrt(213.75 / 30 - (77.5 / 30) ** 2)


def test_keypoint_scores_without_spacing_print_px_and_say_mm_is_unavailable(kp_pair, capsys):
    pred, gt = kp_pair
    assert score.main([str(pred), "--gt", str(gt), "--sdr", "2,4,8"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines() if line.startswith("  ")}
    assert float(rows["mre_px"]) == pytest.approx(MRE_PX, abs=1e-4)                    # 3.1667
    assert float(rows["sd_px"]) == pytest.approx(SD_PX, abs=1e-4)                      # 1.8634
    assert float(rows["sdr_2px"]) == 0.5 and float(rows["sdr_4px"]) == 0.5 and float(rows["sdr_8px"]) == 1.0
    assert float(rows["IP"]) == pytest.approx((5 + 2) / 2) and float(rows["W5"]) == pytest.approx((5 + 1) / 2)
    assert not {"mre_mm", "sd_mm", "sdr_2mm"} & set(rows) and "MRE mm" not in out
    assert "  mm metrics unavailable: no pixel spacing for 2 of 2 images\n" in out
    assert out.splitlines()[-1].startswith(f"{pred}: mre_px 3.1667  public ")


def test_keypoint_sdr_radii_default_to_the_landmark_set_and_follow_the_flags(kp_pair, capsys):
    pred, gt = kp_pair
    (gt.parent / "spacing.csv").write_text("id,spacing_mm\na,0.5\nb,2.0\n")
    assert score.main([str(pred), "--gt", str(gt), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert SHS.sdr_px == (5, 10, 20)                     # the SHS_NET films' radii
    assert (got["sdr_5px"], got["sdr_10px"], got["sdr_20px"]) == (1.0, 1.0, 1.0)     # errors 5, 2, 1 px (inclusive)
    assert (got["sdr_2mm"], got["sdr_4mm"], got["sdr_10mm"]) == pytest.approx((10 / 30, 1.0, 1.0))
    assert score.main([str(pred), "--gt", str(gt), "--json", "--sdr", "1.5,3", "--sdr-mm", "2.5"]) == 0
    got = json.loads(capsys.readouterr().out)
    # px: 15 points at 5, 5 at 2, 10 at 1; mm: 15 at 2.5, 5 at 4, 10 at 2
    assert (got["sdr_1.5px"], got["sdr_3px"], got["sdr_2.5mm"]) == pytest.approx((10 / 30, 15 / 30, 25 / 30))
    assert not {"sdr_5px", "sdr_2mm"} & set(got)
    # medians along each axis: dx is 3 (15 points) or 0 (15 points) -> 1.5; dy 4 (15), 2 (5), 1 (10) -> 3
    assert (got["median_dx_px"], got["median_dy_px"]) == (1.5, 3.0)


def test_score_options_of_another_task_are_refused_in_one_line(kp_pair, capsys):
    pred, gt = kp_pair
    assert run_main(score.main, [str(pred), "--gt", str(gt), "--within", "6"]) == 2
    assert capsys.readouterr().err == (f"error: --within: {pred} is a keypoints submission, whose score takes "
                                       "--per-image, --sdr, --sdr-mm, --subset\n")
    with pytest.raises(SystemExit):
        score.main([str(pred), "--gt", str(gt), "--sdr", "5,-1"])
    assert "give positive numbers such as 5,10,20" in capsys.readouterr().err


def test_keypoint_scores_in_mm_where_the_spacing_is_known(kp_pair, capsys):
    pred, gt = kp_pair
    (gt.parent / "spacing.csv").write_text("id,spacing_mm\na,0.5\nb,2.0\n")
    assert score.main([str(pred), "--gt", str(gt), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["task"] == "keypoints" and got["metric"] == "mre_px" and got["score"] == pytest.approx(MRE_PX)
    assert got["mre_px"] == pytest.approx(MRE_PX) and got["sd_px"] == pytest.approx(SD_PX)
    assert got["mre_mm"] == pytest.approx(MRE_MM) and got["sd_mm"] == pytest.approx(SD_MM)   # 2.5833, 0.6719
    assert (got["sdr_2mm"], got["sdr_4mm"], got["sdr_10mm"]) == pytest.approx((10 / 30, 1.0, 1.0))  # radii inclusive
    assert got["per_item_mm"]["IP"] == pytest.approx((2.5 + 4) / 2)
    assert sorted([got["public"], got["private"]]) == pytest.approx([20 / 15, 5.0])   # one image each
    assert score.main([str(pred), "--gt", str(gt)]) == 0
    out = capsys.readouterr().out
    assert "unavailable" not in out and "sd_mm" in out and "standard deviation of the radial error, mm" in out


def test_boneage_scores(tmp_path, capsys):
    (tmp_path / "answers.csv").write_text("id,boneage,male\n1,30,True\n2,100,False\n3,130,True\n4,200,False\n")
    (tmp_path / "sub.csv").write_text("id,boneage\n1,40\n2,90\n3,130\n4,230\n")   # errors 10, 10, 0, 30
    assert score.main([str(tmp_path / "sub.csv"), "--gt", str(tmp_path / "answers.csv")]) == 0
    rows = {line.split()[0]: line.split()[-1] if line.split()[0] in ("0-5", "5-10", "10-13", "16-19")
            else line.split()[1] for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    assert float(rows["mae_months"]) == pytest.approx(12.5)
    assert float(rows["rmse"]) == pytest.approx(math.sqrt(275), abs=1e-4)               # 16.5831
    assert float(rows["within_12m"]) == 0.75
    assert float(rows["mae_male"]) == 5.0 and float(rows["mae_female"]) == 20.0
    assert [float(rows[b]) for b in ("0-5", "5-10", "10-13", "16-19")] == [10.0, 10.0, 0.0, 30.0]


def test_boneage_within_thresholds_spread_baseline_subset_and_per_image(tmp_path, capsys):
    (tmp_path / "answers.csv").write_text("id,boneage,male\n1,30,True\n2,100,False\n3,130,True\n4,200,False\n")
    (tmp_path / "sub.csv").write_text("id,boneage\n1,40\n2,90\n3,130\n4,230\n")   # errors 10, 10, 0, 30
    args = [str(tmp_path / "sub.csv"), "--gt", str(tmp_path / "answers.csv"), "--json"]
    assert score.main(args + ["--within", "6,12,30", "--baseline-age", "115"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert (got["within_6m"], got["within_12m"], got["within_30m"]) == (0.25, 0.75, 1.0)
    # sd of the predictions 40, 90, 130, 230 over sd of the ages 30, 100, 130, 200: sqrt(4868.75 / 3725)
    assert got["pred_spread"] == pytest.approx(math.sqrt(4868.75 / 3725))                    # 1.1433
    assert got["baseline_mae"] == 50.0                                # |30-115|, |100-115|, |130-115|, |200-115|
    (tmp_path / "train.csv").write_text("id,boneage,male\n7,100,True\n8,130,False\n")     # mean age 115
    assert score.main(args + ["--baseline-age", str(tmp_path / "train.csv")]) == 0
    assert json.loads(capsys.readouterr().out)["baseline_mae"] == 50.0
    assert score.main(args) == 0
    got = json.loads(capsys.readouterr().out)
    assert "baseline_mae" not in got and set(k for k in got if k.startswith("within")) == {"within_12m"}
    (tmp_path / "fold.csv").write_text("id,boneage\n2,90\n4,230\n")        # a validation fold: ids 2 and 4
    fold = [str(tmp_path / "fold.csv"), "--gt", str(tmp_path / "answers.csv")]
    with pytest.raises(FormatError, match="2 ids of .*answers.csv have no prediction, e.g. 1 .*--subset"):
        score.main(fold)
    assert score.main(fold + ["--subset", "--per-image"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("  ")}
    assert float(rows["mae_months"][1]) == 20.0 and out.splitlines()[-1].endswith("(2 images)")
    assert rows["2"][1:] == ["10.0000", "pred", "90.0000", "age", "100.0000"]
    assert rows["4"][1:] == ["30.0000", "pred", "230.0000", "age", "200.0000"]
    with pytest.raises(SystemExit):
        score.main(fold + ["--subset", "--run", str(tmp_path)])
    assert "a --subset score (a validation fold) is not one" in capsys.readouterr().err


def test_keypoint_subset_and_per_image(kp_pair, capsys):
    pred, gt = kp_pair
    (gt.parent / "spacing.csv").write_text("id,spacing_mm\na,0.5\nb,2.0\n")
    lines = pred.read_text().splitlines()
    only_b = pred.parent / "only_b.csv"
    only_b.write_text("\n".join([lines[0], lines[2]]) + "\n")
    with pytest.raises(FormatError, match="1 ground-truth images have no prediction, e.g. a.png"):
        score.main([str(only_b), "--gt", str(gt)])
    assert score.main([str(only_b), "--gt", str(gt), "--subset", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["images"] == 1 and got["mre_px"] == pytest.approx(20 / 15) and got["mre_mm"] == pytest.approx(40 / 15)
    assert score.main([str(pred), "--gt", str(gt), "--per-image"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    # a: every joint 5 px (2.5 mm) off, the first three named worst; b: IP..PIP4 2 px (4 mm), the rest 1 px
    assert rows["a.png"].split()[1:3] == ["5.0000", "mre_mm"] and "worst: IP 5.0 px (2.5 mm), PIP2 5.0 px" in rows["a.png"]
    assert rows["b.png"].split()[1] == f"{20 / 15:.4f}" and "worst: IP 2.0 px (4.0 mm), PIP2 2.0 px (4.0 mm)" in rows["b.png"]


def handbones(root, pred_masks: dict[str, np.ndarray]):
    """One 16x16 image whose ground truth is finger-1 = the 8x8 square [2, 9]^2; a submission of ``pred_masks``."""
    (root / "test" / "DCM" / "ID001").mkdir(parents=True)
    (root / "test_gt" / "outputs_json" / "ID001").mkdir(parents=True)
    cv2.imwrite(str(root / "test" / "DCM" / "ID001" / "image1.png"), np.full((16, 16), 128, np.uint8))
    square = [[2, 2], [9, 2], [9, 9], [2, 9]]
    (root / "test_gt" / "outputs_json" / "ID001" / "image1.json").write_text(json.dumps(
        {"annotations": [{"id": "0", "type": "poly_seg", "attributes": {}, "points": square, "label": "finger-1"}]}))
    empty = np.zeros((16, 16), np.uint8)
    rows = ["image_name,class,rle"] + [f"image1.png,{c},{encode(pred_masks.get(c, empty))}" for c in CLASSES]
    (root / "sub.csv").write_text("\n".join(rows) + "\n")
    return root / "sub.csv", root / "test_gt"


def test_segmentation_scores_mean_and_per_class_dice(tmp_path, capsys):
    half = np.zeros((16, 16), np.uint8)
    half[2:6, 2:10] = 1                      # 32 of finger-1's 64 pixels: Dice 2*32/(32+64) = 2/3
    stray = np.zeros((16, 16), np.uint8)
    stray[0, 0] = 1                          # finger-2 is empty in the ground truth: Dice 0
    sub, gt = handbones(tmp_path, {"finger-1": half, "finger-2": stray})
    assert score.main([str(sub), "--gt", str(gt)]) == 0
    rows = {line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    assert float(rows["dice"]) == pytest.approx((27 + 2 / 3) / 29, abs=1e-4)          # 0.9540
    assert float(rows["finger-1"]) == pytest.approx(2 / 3, abs=1e-4) and float(rows["finger-2"]) == 0.0
    assert float(rows["Ulna"]) == 1.0                                                  # empty/empty


def test_segmentation_per_image_and_a_training_root_as_ground_truth(tmp_path, capsys):
    half = np.zeros((16, 16), np.uint8)
    half[2:6, 2:10] = 1
    sub, gt = handbones(tmp_path, {"finger-1": half})
    (tmp_path / "test" / "DCM").rename(gt / "DCM")          # one folder holding DCM/ and outputs_json/ (a train root)
    assert score.main([str(sub), "--gt", str(gt), "--per-image"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    assert float(rows["image1.png"][1]) == pytest.approx((28 + 2 / 3) / 29, abs=1e-4)    # 0.9885


def summary_of(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


def test_run_stores_every_metric_and_a_new_score_replaces_the_old(kp_pair, tmp_path):
    pred, gt = kp_pair
    run = tmp_path / "runs" / "keypoints" / "kp"
    run.mkdir(parents=True)
    write_summary(run, base_summary(name="kp", task="keypoints", metric="mre_px", mode="min", val={"score": 4.0}))
    (gt.parent / "spacing.csv").write_text("id,spacing_mm\na,0.5\nb,2.0\n")
    assert score.main([str(pred), "--gt", str(gt), "--run", str(run), "--quiet"]) == 0
    test = summary_of(run)["test"]
    assert set(test) == {"score", "public", "private", "images", "mre_px", "sd_px", "sdr_5px", "sdr_10px", "sdr_20px",
                         "median_dx_px", "median_dy_px", "mre_mm", "sd_mm", "sdr_2mm", "sdr_4mm", "sdr_10mm",
                         "per_item", "per_item_mm"}
    assert test["sd_mm"] == pytest.approx(SD_MM) and test["sdr_2mm"] == pytest.approx(1 / 3)
    (gt.parent / "spacing.csv").unlink()
    assert score.main([str(pred), "--gt", str(gt), "--run", str(run), "--quiet"]) == 0
    test = summary_of(run)["test"]
    assert "mre_mm" not in test and "per_item_mm" not in test and test["mre_px"] == pytest.approx(MRE_PX)
    assert summary_of(run)["val"] == {"score": 4.0}


def test_boneage_run_stores_nan_as_null(tmp_path):
    (tmp_path / "answers.csv").write_text("id,boneage,male\n1,30,True\n2,100,True\n")   # no girls: MAE of girls NaN
    (tmp_path / "sub.csv").write_text("id,boneage\n1,40\n2,100\n")
    run = tmp_path / "ba"
    run.mkdir()
    assert score.main([str(tmp_path / "sub.csv"), "--gt", str(tmp_path / "answers.csv"), "--run", str(run),
                       "--quiet"]) == 0
    text = (run / "summary.json").read_text()
    assert "NaN" not in text
    test = json.loads(text)["test"]
    assert test["mae_months"] == 5.0 and test["rmse"] == pytest.approx(math.sqrt(50)) and test["within_12m"] == 1.0
    assert test["mae_male"] == 5.0 and test["mae_female"] is None


def test_json_and_quiet_are_one_or_the_other(kp_pair, capsys):
    pred, gt = kp_pair
    with pytest.raises(SystemExit) as exit_:
        score.main([str(pred), "--gt", str(gt), "--json", "--quiet"])
    assert exit_.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def kp_run(root, name: str, val: dict, test: dict | None):
    run = root / name
    run.mkdir(parents=True)
    write_summary(run, base_summary(name=name, task="keypoints", metric="mre_px", mode="min", val=val, test=test))


@pytest.fixture
def lb_runs(tmp_path):
    """Three keypoint runs whose MRE, SDR and mm errors rank them differently."""
    root = tmp_path / "runs"
    kp_run(root, "a", {"score": 3.0, "mre_px": 3.0, "sdr_2px": 0.5}, {"score": 2.0, "mre_px": 2.0, "sdr_2px": 0.6,
                                                                       "mre_mm": 0.9})
    kp_run(root, "b", {"score": 2.0, "mre_px": 2.0, "sdr_2px": 0.4}, {"score": 3.0, "mre_px": 3.0, "sdr_2px": 0.8,
                                                                       "mre_mm": 0.4})
    kp_run(root, "c", {"score": 1.0, "mre_px": 1.0, "sdr_2px": 0.9}, None)
    return root


def names(df) -> list[str]:
    return list(df["name"])


def test_leaderboard_sorts_by_any_metric_in_its_direction(lb_runs):
    df = T.load_runs(lb_runs)
    assert names(df) == ["a", "b", "c"]                               # default: test MRE, lower first
    assert names(T.rank_runs(df, sort="sdr_2px")) == ["b", "a", "c"]  # test SDR (any run has one), higher first
    assert names(T.rank_runs(df, sort="mre_mm")) == ["b", "a", "c"]   # an error: lower first, missing last
    assert names(T.rank_runs(df, sort="val.sdr_2px")) == ["c", "a", "b"]
    assert names(T.rank_runs(df, sort="val.mre_px")) == ["c", "b", "a"]
    assert names(T.rank_runs(df, sort="val.sdr_2px:asc")) == ["b", "a", "c"]
    ranked = T.rank_runs(df, sort="sdr_2px")
    assert list(ranked["rank"]) == [2, 1, pd_na()]                     # ranks still follow the headline
    assert T.metric_mode("within_12m") == "max" and T.metric_mode("rmse") == "min" and T.metric_mode("dice") == "max"
    with pytest.raises(ValueError, match="unknown sort column 'train.sdr_2px'"):
        T.rank_runs(df, sort="train.sdr_2px")


def pd_na():
    import pandas as pd

    return pd.NA


def test_leaderboard_command_shows_the_metric_it_sorts_by(lb_runs, tmp_path):
    from tools import leaderboard

    assert leaderboard.main([str(lb_runs), "--sort", "sdr_2px", "--md", str(tmp_path / "lb.md"), "-q"]) == 0
    lines = (tmp_path / "lb.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| # | name"))
    assert header.endswith("| test mre_px | test sdr_2px |")
    rows = [line.split(" | ") for line in lines if line.startswith("| ") and line.split(" | ")[1] in ("a", "b", "c")]
    assert [(r[1], r[-1]) for r in rows] == [("b", "0.8000 |"), ("a", "0.6000 |"), ("c", "— |")]
