"""Local leaderboard (tools/leaderboard.py, leaderboard/): loading, ranking, grouping, outputs."""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import os
import re
from pathlib import Path

import pandas as pd
import pytest

from core.cli import run_main
from leaderboard import html as H
from leaderboard import table as T
from tools import leaderboard

SEG_ITEMS = ["finger-1", "finger-2", "Trapezoid", "Pisiform"]


def summary(name, task="segmentation", **kw):
    """A complete summary.json dict (schema of the training engine) with the given overrides."""
    mode = {"segmentation": "max"}.get(task, "min")
    metric = {"segmentation": "dice", "keypoints": "mre_px", "boneage": "mae_months"}[task]
    s = {
        "name": name, "task": task, "kind": "run", "model": "smp:unet/resnet34", "family": "smp", "arch": "unet",
        "encoder": "resnet34", "config_id": name, "image_size": 256, "fold": 0, "n_folds": 5, "epochs": 2,
        "params": 1000, "train_time_s": 10.0, "train_images_per_s": 5.0, "metric": metric, "mode": mode,
        "best_epoch": 1, "val": {"score": 0.5, "per_item": None}, "test": None, "speed": None, "members": None,
        "git_commit": "abc123", "created": "2026-11-26T13:00:00Z",
    }
    s.update(kw)
    return s


def scored(score, public, private):
    return {"score": score, "public": public, "private": private, "per_item": None}


def write(root: Path, task: str, name: str, obj) -> Path:
    d = root / task / name
    d.mkdir(parents=True, exist_ok=True)
    p = d / "summary.json"
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return p


def per_item(values):
    return dict(zip(SEG_ITEMS, values))


@pytest.fixture
def runs(tmp_path) -> Path:
    root = tmp_path / "runs"
    seg = "segmentation"
    write(root, seg, "unet_r34-f0", summary(
        "unet_r34-f0", config_id="unet_r34", fold=0, params=24_436_369, train_time_s=123.4,
        val={"score": 0.80, "per_item": per_item([0.9, 0.85, 0.7, 0.75])}, test=scored(0.78, 0.79, 0.77),
        speed={"images_per_s": 12.0, "images_per_s_tta": 6.0}))
    write(root, seg, "unet_r34-f1", summary(
        "unet_r34-f1", config_id="unet_r34", fold=1, params=24_436_369, train_time_s=130.0,
        val={"score": 0.70, "per_item": per_item([0.8, 0.75, 0.6, 0.65])}, test=scored(0.74, 0.76, 0.72),
        speed={"images_per_s": 11.0, "images_per_s_tta": 5.0}))
    write(root, seg, "fpn_r18-f0", summary(
        "fpn_r18-f0", model="smp:fpn/resnet18", arch="fpn", encoder="resnet18", config_id="fpn_r18", fold=0,
        params=13_000_000, val={"score": 0.75, "per_item": per_item([0.8, 0.8, 0.7, 0.7])},
        test=scored(0.70, 0.71, 0.69), speed={"images_per_s": 30.0, "images_per_s_tta": 14.0}))
    write(root, seg, "fpn_r18-f1", summary(
        "fpn_r18-f1", model="smp:fpn/resnet18", arch="fpn", encoder="resnet18", config_id="fpn_r18", fold=1,
        params=13_000_000, val={"score": 0.65, "per_item": per_item([0.7, 0.7, 0.6, 0.6])},
        speed={"images_per_s": 31.0, "images_per_s_tta": 15.0}))
    # a name with mathtext and HTML specials: must neither break matplotlib nor the page
    write(root, seg, "yolo", summary(
        "yolo$n$-f0", model="yolo:yolov8n-seg", family="yolo", arch="yolov8n-seg", encoder=None,
        config_id="yolov8n", params=3_000_000, image_size=[256, 320],
        val={"score": 0.60, "per_item": per_item([0.7, 0.6, 0.5, 0.55])}, test=scored(0.65, 0.66, 0.64),
        speed={"images_per_s": 100.0, "images_per_s_tta": 48.0}))
    write(root, seg, "ens-a", summary(
        "ens-a", kind="ensemble", model="soft", family=None, arch=None, encoder=None, config_id=None, epochs=None,
        params=None, train_time_s=None, members=["runs/segmentation/unet_r34-f0", "runs/segmentation/fpn_r18-f0"],
        val={"score": 0.82, "per_item": per_item([0.9, 0.9, 0.75, 0.75])}, test=scored(0.81, 0.80, 0.82),
        speed={"images_per_s": 8.0, "images_per_s_tta": 4.0}))
    # learning curves for two runs
    for name, scores in (("unet_r34-f0", [0.5, 0.8]), ("fpn_r18-f0", [0.4, 0.75])):
        lines = [json.dumps({"epoch": e, "train/loss": 1.0 / (e + 1), "val/loss": 1.1 / (e + 1), "val/score": s,
                             "lr": 1e-3, "time_s": 1.0}) for e, s in enumerate(scores)]
        (root / seg / name / "metrics.jsonl").write_text("\n".join(lines) + "\nnot json\n")
    # keypoints: mode min, no test scores
    for name, score in (("kp_a", 3.5), ("kp_b", 2.5), ("kp_c <x|y>", 4.0)):
        write(root, "keypoints", name.split()[0], summary(name, task="keypoints", val={"score": score, "per_item": None}))
    # bad files
    write(root, seg, "broken", "{not json")
    partial = summary("partial")
    del partial["metric"], partial["val"]
    write(root, seg, "partial", partial)
    write(root, seg, "wrongtype", summary("wrongtype", val={"score": "high", "per_item": None}))
    write(root, seg, "notobject", "[1, 2, 3]")
    return root


BAD = {"broken": "invalid JSON", "partial": "missing key(s) metric, val", "wrongtype": "'score' must be a number",
       "notobject": "top level must be a JSON object"}


def load(root, **kw):
    return T.load_runs(root, on_warning=None, **kw)


def names(df, task):
    return list(df[df["task"] == task]["name"])


# --------------------------------------------------------------------------- loading


def test_load_runs_rows_and_columns(runs):
    df = load(runs)
    assert sorted(df["task"].unique()) == ["keypoints", "segmentation"]
    assert len(df[df["task"] == "segmentation"]) == 6 and len(df[df["task"] == "keypoints"]) == 3
    r = df.set_index("name").loc["unet_r34-f0"]
    assert r["kind"] == "run" and r["model"] == "smp:unet/resnet34" and r["fold"] == 0
    assert r["params"] == 24_436_369 and r["train_time_s"] == 123.4 and r["image_size"] == 256
    assert r["images_per_s"] == 12.0 and r["images_per_s_tta"] == 6.0
    assert r["val_score"] == 0.80 and r["test_score"] == 0.78
    assert r["test_public"] == 0.79 and r["test_private"] == 0.77
    assert r["gap"] == pytest.approx(0.02)
    assert r["val_per_item"] == per_item([0.9, 0.85, 0.7, 0.75])
    e = df.set_index("name").loc["ens-a"]
    assert e["kind"] == "ensemble" and e["n_members"] == 2 and pd.isna(e["params"])
    assert df.set_index("name").loc["yolo$n$-f0"]["image_size"] == "256x320"
    fpn1 = df.set_index("name").loc["fpn_r18-f1"]
    assert math.isnan(fpn1["test_score"]) and math.isnan(fpn1["gap"])


def test_bad_summaries_named_and_skipped(runs, capsys):
    df = T.load_runs(runs)  # default: warnings to stderr
    err = capsys.readouterr().err
    skipped = dict(df.attrs["skipped"])
    assert len(skipped) == len(BAD)
    for folder, reason in BAD.items():
        path = str(runs / "segmentation" / folder / "summary.json")
        assert path in skipped and reason in skipped[path], (folder, skipped.get(path))
        assert path in err
    assert not set(df["name"]) & {"partial", "wrongtype"}


def test_read_summary_type_checks(tmp_path):
    cases = {
        "kind": ("weird", "'kind' must be one of"), "mode": ("up", "'mode' must be one of"),
        "params": (1.5, "'params' must be an integer"), "fold": (True, "'fold' must be an integer"),
        "members": ("a", "'members' must be a list"), "test": ({"public": 1}, "'test' has no 'score'"),
        "speed": ([1], "'speed' must be an object"), "val": (None, "'val' must be an object"),
        "name": ("", "'name' must be a non-empty string"),
    }
    for key, (value, msg) in cases.items():
        p = tmp_path / key / "summary.json"
        p.parent.mkdir()
        p.write_text(json.dumps({**summary("x"), key: value}))
        with pytest.raises(T.SummaryError, match=re.escape(msg)):
            T.read_summary(p)
    p = tmp_path / "perit" / "summary.json"
    p.parent.mkdir()
    p.write_text(json.dumps(summary("x", val={"score": 1.0, "per_item": {"a": "b"}})))
    with pytest.raises(T.SummaryError, match=r"per_item'\]?\[?'a'"):
        T.read_summary(p)


def test_task_filter_and_empty_root(runs, tmp_path):
    df = load(runs, task="keypoints")
    assert set(df["task"]) == {"keypoints"} and len(df) == 3
    empty = load(tmp_path / "nothing-here-yet")
    assert len(empty) == 0 and "rank" in empty.columns


# --------------------------------------------------------------------------- ranking


def test_default_sort_uses_test_then_mode(runs):
    df = load(runs)
    # segmentation (max): by test score, runs without test last; ranks count scored rows only
    assert names(df, "segmentation") == ["ens-a", "unet_r34-f0", "unet_r34-f1", "fpn_r18-f0", "yolo$n$-f0", "fpn_r18-f1"]
    seg = df[df["task"] == "segmentation"]
    assert list(seg["rank"].iloc[:5]) == [1, 2, 3, 4, 5] and pd.isna(seg["rank"].iloc[5])
    # keypoints (min, no test scores): by validation error, lowest first
    assert names(df, "keypoints") == ["kp_b", "kp_a", "kp_c <x|y>"]
    assert list(df[df["task"] == "keypoints"]["rank"]) == [1, 2, 3]


def test_sort_option(runs):
    df = load(runs)
    by_val = T.rank_runs(df, sort="val")
    assert names(by_val, "segmentation") == ["ens-a", "unet_r34-f0", "fpn_r18-f0", "unet_r34-f1", "fpn_r18-f1", "yolo$n$-f0"]
    assert names(by_val, "keypoints") == ["kp_b", "kp_a", "kp_c <x|y>"]  # min mode: ascending
    by_params = T.rank_runs(df, sort="params")
    assert names(by_params, "segmentation")[:3] == ["yolo$n$-f0", "fpn_r18-f0", "fpn_r18-f1"]
    assert names(by_params, "segmentation")[-1] == "ens-a"  # no parameter count: last
    by_ips = T.rank_runs(df, sort="ips")
    assert names(by_ips, "segmentation")[0] == "yolo$n$-f0"
    desc = T.rank_runs(df, sort="params:desc")
    assert names(desc, "segmentation")[0] == "unet_r34-f0"
    by_size = T.rank_runs(df, sort="size")  # 256 and "256x320" compare by pixel count
    assert names(by_size, "segmentation")[-1] == "yolo$n$-f0"
    worst_first = T.rank_runs(df, sort="val:asc")
    assert names(worst_first, "segmentation")[0] == "yolo$n$-f0"
    # rank stays the primary-score rank whatever the display order
    assert int(by_params.set_index("name").loc["ens-a", "rank"]) == 1
    for column in sorted(set(T.SORTABLE) | set(T.SORT_ALIASES)):  # every documented column sorts
        assert len(T.rank_runs(df, sort=column)) == len(df), column
    assert T._pixels(512) == 512 ** 2 and T._pixels("256x320") == 256 * 320 and math.isnan(T._pixels(None))
    with pytest.raises(ValueError, match="unknown sort column 'bogus'"):
        T.rank_runs(df, sort="bogus")


# --------------------------------------------------------------------------- grouping


def test_group_folds_mean_std(runs):
    cv = T.group_folds(load(runs)).set_index("config_id")
    assert "soft" not in set(cv["model"])  # ensembles are not cross-validation folds
    u = cv.loc["unet_r34"]
    assert u["n"] == 2 and u["folds"] == "0,1"
    assert u["val_mean"] == pytest.approx(0.75) and u["val_std"] == pytest.approx(math.sqrt(2 * 0.05 ** 2))
    assert u["test_mean"] == pytest.approx(0.76) and u["test_std"] == pytest.approx(math.sqrt(2 * 0.02 ** 2))
    assert u["train_time_s"] == pytest.approx((123.4 + 130.0) / 2)
    assert u["images_per_s"] == pytest.approx(11.5)
    f = cv.loc["fpn_r18"]
    assert f["val_mean"] == pytest.approx(0.70) and f["val_std"] == pytest.approx(0.0707107, abs=1e-6)
    assert f["test_mean"] == pytest.approx(0.70) and math.isnan(f["test_std"])  # one fold has a test score
    assert cv.loc["yolov8n"]["n"] == 1 and math.isnan(cv.loc["yolov8n"]["val_std"])
    # order: by test mean (max mode)
    seg = T.group_folds(load(runs))
    assert list(seg[seg["task"] == "segmentation"]["config_id"]) == ["unet_r34", "fpn_r18", "yolov8n"]
    kp = seg[seg["task"] == "keypoints"]
    assert list(kp["config_id"]) == ["kp_b", "kp_a", "kp_c <x|y>"]  # min mode, config_id per run


def test_best_per_family(runs):
    fam = T.best_per_family(load(runs))
    seg = fam[fam["task"] == "segmentation"].set_index("family")["name"].to_dict()
    assert seg == {"ensemble": "ens-a", "smp": "unet_r34-f0", "yolo": "yolo$n$-f0"}
    assert list(fam[fam["task"] == "keypoints"]["name"]) == ["kp_b"]


def test_formatters():
    assert T.fmt_params(24_436_369) == "24.4M" and T.fmt_params(3_500) == "3.5k" and T.fmt_params(None) == "—"
    assert T.fmt_time(123.4) == "2m03s" and T.fmt_time(3725) == "1h02m" and T.fmt_time(5.25) == "5.2s"
    assert T.fmt_score(0.71234) == "0.7123" and T.fmt_score(12.345) == "12.35" and T.fmt_score(math.nan) == "—"
    assert T.fmt_score(0.02, signed=True) == "+0.0200"
    assert T.fmt_mean_std(0.75, 0.0707107, 2) == "0.7500 ± 0.0707" and T.fmt_mean_std(0.7, math.nan, 1) == "0.7000"


def test_pareto_front():
    # x = params (lower better), y = score (higher better); NaN takes no part
    x = [1, 2, 3, 4, 5, math.nan]
    y = [0.5, 0.7, 0.6, 0.9, 0.9, 1.0]
    assert H.pareto_front(x, y, "min", "max") == [0, 1, 3]  # (3, .6) and (5, .9) are dominated
    assert H.pareto_front([2, 2], [0.7, 0.7], "min", "max") == [0, 1]  # equal points do not dominate
    x2, y2 = [1, 2, 3], [5.0, 4.0, 6.0]  # speed (higher better) vs error (lower better)
    assert H.pareto_front(x2, y2, "max", "min") == [1, 2]  # (1, 5.0) is slower and worse than (2, 4.0)


# --------------------------------------------------------------------------- outputs


def test_terminal_one_table_per_task(runs):
    from rich.console import Console

    con = Console(record=True, width=400, file=io.StringIO())
    T.render_terminal(load(runs), group=True, console=con)
    out = con.export_text()
    assert "segmentation — dice (higher is better)" in out and "keypoints — mre_px (lower is better)" in out
    assert "cross-validation" in out and "best run per model family" in out
    for name in ("ens-a", "unet_r34-f0", "yolo$n$-f0", "kp_c <x|y>"):
        assert name in out
    assert "0.7500 ± 0.0707" in out and "24.4M" in out and "ensemble (2)" in out
    assert out.index("ens-a") < out.index("unet_r34-f0") < out.index("fpn_r18-f1")


def test_terminal_tables_fold_to_a_narrow_width(runs, monkeypatch, capsys):
    """COLUMNS=72: every table is printed in blocks of columns no wider than 72, each repeating rank and name
    (the fold and family tables: their first column); every column and every run is there, none cut to '…'."""
    monkeypatch.setenv("COLUMNS", "72")
    assert leaderboard.main([str(runs), "--task", "segmentation", "--group"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 72 and "…" not in out
    df = load(runs, task="segmentation")
    part = df[df["task"] == "segmentation"]
    headers = [c[0] for c in T.leaderboard_columns(part)]
    blocks = [line for line in lines if line.startswith("┃# ┃ name")]
    assert len(blocks) >= 3
    for header in headers:
        assert header in out, header
    for name in part["name"]:
        assert out.count(f" {name} ") >= len(blocks)  # in every block of the leaderboard (and in the others)
    assert out.count("(continued ") >= len(blocks) - 1
    assert all(line.startswith(("┃config", "┃family")) for line in lines
               if line.startswith("┃") and ("n folds" in line or "best run" in line or "gap (mean)" in line))

    monkeypatch.delenv("COLUMNS")
    assert leaderboard.main([str(runs), "--task", "segmentation"]) == 0
    wide = capsys.readouterr().out  # a pipe without COLUMNS: one table at its natural width
    assert "(continued" not in wide and sum(line.startswith("┃# ┃ name") for line in wide.splitlines()) == 1


def test_markdown(runs, tmp_path):
    df = load(runs)
    md = T.to_markdown(df, group=True)
    assert md.startswith("# Leaderboard")
    assert "## segmentation — dice (higher is better)" in md and "## keypoints — mre_px" in md
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| # | name |"))
    assert "val dice" in header and "test dice" in header and "gap pub−priv" in header
    row = next(line for line in lines if "| unet_r34-f0 |" in line)
    assert "| 0.8000 | 0.7800 | 0.7900 | 0.7700 | +0.0200 |" in row and "| 24.4M |" in row
    assert "kp_c &lt;x\\|y&gt;" in md  # pipes and HTML specials escaped in cells
    assert "0.7500 ± 0.0707" in md
    assert "## Skipped summaries" in md and "broken/summary.json" in md
    kp_header = next(line for line in lines if line.startswith("| # |") and "mre_px" in line)
    assert "test" not in kp_header  # no test scores in that task: no empty columns
    out = T.write_markdown(df, tmp_path / "out" / "lb.md", group=True)
    assert out.read_text() == md


def test_csv(runs, tmp_path):
    df = load(runs)
    path = T.write_csv(df, tmp_path / "lb.csv")
    back = pd.read_csv(path)
    assert list(back.columns) == list(T.CSV_COLUMNS)
    assert len(back) == 9
    assert list(back[back["task"] == "segmentation"]["name"])[:2] == ["ens-a", "unet_r34-f0"]
    r = back.set_index("name").loc["unet_r34-f1"]
    assert r["val_score"] == 0.70 and r["test_public"] == 0.76 and r["gap"] == pytest.approx(0.04)
    assert r["params"] == 24_436_369 and r["rank"] == 3
    raw = path.read_text().splitlines()
    row = next(line for line in raw if line.startswith("segmentation,unet_r34-f1,"))
    assert ",24436369," in row and ",0.04," in row and ",1,5,2,1," in row  # fold,n_folds,epochs,best_epoch
    assert path.stat().st_mode & 0o777 != 0o600  # not the temp file's private mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lb.csv", "runs"]  # no temp file left


HOSTILE = ("=HYPERLINK(\"http://x\";\"y\")", "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1:A9)", "\tlead", "\rcr",
           "<script>alert(1)</script>", "a|b`c`[l](javascript:x)")


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def test_exports_neutralise_hostile_run_names(tmp_path):
    """CSV: text that a spreadsheet would run as a formula starts with ', numbers stay numbers;
    Markdown: no raw HTML, no cell break, no link or code span from a run name."""
    root = tmp_path / "runs"
    for k, name in enumerate(HOSTILE):
        write(root, "segmentation", f"r{k}", summary(name, model="=cmd", val={"score": -0.5 + k, "per_item": None},
                                                     git_commit="-0.5"))
    df = load(root)
    path = T.write_csv(df, tmp_path / "lb.csv")
    back = pd.read_csv(path, keep_default_na=False)
    assert sorted(back["name"]) == sorted("'" + n if n[0] in "=+-@\t\r" else n for n in HOSTILE)
    assert set(back["model"]) == {"'=cmd"}
    assert sorted(back["val_score"]) == [-0.5 + k for k in range(len(HOSTILE))]  # numbers stay numeric
    assert set(back["git_commit"].astype(str)) == {"-0.5"}  # text that is only a number is no formula
    with open(path, newline="") as f:
        cells = [c for row in csv.reader(f) for c in row]
    assert not [c for c in cells if c.startswith(T.FORMULA_STARTS) and not _is_float(c)]
    assert T.csv_cell(-0.5) == -0.5 and T.csv_cell("-0.5") == "-0.5" and T.csv_cell("-1e3") == "-1e3"
    assert T.csv_cell("=1+1") == "'=1+1" and T.csv_cell("safe-name") == "safe-name"

    md = T.to_markdown(df)
    assert "<script>" not in md and "&lt;script&gt;alert(1)&lt;/script&gt;" in md
    assert "a\\|b\\`c\\`\\[l\\](javascript:x)" in md
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert len({line.count(" | ") - line.count("\\| ") for line in table}) == 1  # every row has the same cells


PNG_RE = re.compile(r'<img class="plot" id="([^"]+)" alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]*)">')


def test_html_report(runs, tmp_path):
    df = load(runs)
    out = H.write_html(df, runs, tmp_path / "reports" / "lb.html")
    text = out.read_text(encoding="utf-8")
    assert not [p for p in out.parent.iterdir() if p.name != "lb.html"]  # no temp file left behind
    imgs = dict(PNG_RE.findall(text))
    assert text.count('class="plot"') == len(imgs)
    for pid, b64 in imgs.items():
        data = base64.b64decode(b64)
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000, pid
    # segmentation has everything; keypoints has no per-item scores, speeds or curves
    for pid in ("plot-segmentation-per-item", "plot-segmentation-pareto-params", "plot-segmentation-pareto-speed",
                "plot-segmentation-curves", "plot-keypoints-pareto-params"):
        assert pid in imgs, pid
    for pid in ("plot-keypoints-per-item", "plot-keypoints-pareto-speed", "plot-keypoints-curves"):
        assert pid not in imgs
        assert f'<p class="plot-missing" data-plot="{pid}">' in text
    assert "could not draw" not in text
    # names are escaped, tables present, skipped files listed, nothing external
    assert "kp_c &lt;x|y&gt;" in text and "<x|y>" not in text
    assert "yolo$n$-f0" in text
    assert text.count("<table>") == 6  # per task: leaderboard, cross-validation, best per family
    assert "4 summary file(s) skipped" in text and "broken/summary.json" in text
    assert "<script" not in text and not re.search(r'(src|href)="(https?:)?//', text)


def test_html_no_runs_and_failing_plot(tmp_path, monkeypatch):
    df = load(tmp_path)
    text = H.build_html(df, tmp_path)
    assert "No readable summary.json" in text and "<img" not in text

    def boom(part):
        raise RuntimeError("kaput")

    (tmp_path / "r" / "segmentation" / "a").mkdir(parents=True)
    write(tmp_path / "r", "segmentation", "a", summary("a", val={"score": 0.5, "per_item": {"x": 0.5}}))
    monkeypatch.setattr(H, "plot_heatmap", boom)
    text = H.build_html(load(tmp_path / "r"), tmp_path / "r")
    assert '<p class="plot-missing" data-plot="plot-segmentation-per-item">could not draw this plot: RuntimeError: kaput' in text


# --------------------------------------------------------------------------- CLI


def make_study(storage: str, name: str = "s1"):
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=storage, direction="minimize")
    dist = {"lr": FloatDistribution(1e-4, 1e-1, log=True)}
    for lr, value in ((1e-3, 0.5), (1e-2, 0.3), (3e-2, 0.4)):
        study.add_trial(create_trial(params={"lr": lr}, distributions=dist, value=value))
    study.add_trial(create_trial(params={"lr": 1e-4}, distributions=dist, state=TrialState.FAIL))
    return study


def test_cli_all_outputs(runs, tmp_path, capsys):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    make_study(storage)
    rc = leaderboard.main([str(runs), "--group", "--md", str(tmp_path / "lb.md"), "--csv", str(tmp_path / "lb.csv"),
                           "--html", str(tmp_path / "lb.html"), "--study", "s1", "--storage", storage])
    assert rc == 0
    cap = capsys.readouterr()
    assert "broken/summary.json" in cap.err and "wrote" in cap.err
    assert "ens-a" in cap.out and "kp_b" in cap.out and "cross-validation" in cap.out
    assert "sweep s1 — 4 trial(s), minimize" in cap.out and "FAIL" in cap.out and "lr=0.01" in cap.out
    md = (tmp_path / "lb.md").read_text()
    assert "## sweep s1" in md and "| 1 | COMPLETE | 0.3000 |" in md
    assert len(pd.read_csv(tmp_path / "lb.csv")) == 9
    html_text = (tmp_path / "lb.html").read_text()
    assert 'id="plot-sweep"' in html_text and "lr=0.01" in html_text


def test_a_study_is_found_where_tools_sweep_keeps_it(runs, tmp_path, capsys):
    """Without --storage the leaderboard reads the sweep's own defaults under its root: runs/sweeps/optuna.db
    (one worker), else runs/sweeps/<study>.journal (K workers); neither existing is an error naming the first."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    root = runs
    assert run_main(leaderboard.main, [str(root), "--study", "s1", "-q"]) == 2
    assert f"no Optuna database at {root / 'sweeps' / 'optuna.db'}" in capsys.readouterr().err
    (root / "sweeps").mkdir()
    make_study(JournalStorage(JournalFileBackend(str(root / "sweeps" / "s1.journal"))))
    assert leaderboard.main([str(root), "--study", "s1", "--md", str(tmp_path / "j.md"), "-q"]) == 0
    assert "| 1 | COMPLETE | 0.3000 |" in (tmp_path / "j.md").read_text()
    make_study(f"sqlite:///{root / 'sweeps' / 'optuna.db'}", name="s2")
    assert leaderboard.main([str(root), "--study", "s2", "--md", str(tmp_path / "s.md"), "-q"]) == 0
    assert "## sweep s2" in (tmp_path / "s.md").read_text()
    assert leaderboard.main([str(root), "--study", "s1", "--storage", f"journal:{root / 'sweeps' / 's1.journal'}",
                             "-q"]) == 0


def test_cli_task_and_sort(runs, capsys):
    assert leaderboard.main([str(runs), "--task", "keypoints", "--sort", "name:desc"]) == 0
    out = capsys.readouterr().out
    assert "segmentation" not in out
    assert out.index("kp_c <x|y>") < out.index("kp_b") < out.index("kp_a")


def test_cli_errors(runs, tmp_path, capsys):
    assert run_main(leaderboard.main, [str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert run_main(leaderboard.main, [str(runs), "--sort", "bogus"]) == 2
    assert "unknown sort column" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert leaderboard.main([str(empty)]) == 1
    assert "no readable summary.json" in capsys.readouterr().err
    # a missing Optuna database is an error and is not created
    db = tmp_path / "nope.db"
    assert run_main(leaderboard.main, [str(runs), "--study", "s1", "--storage", f"sqlite:///{db}"]) == 2
    assert "no Optuna database" in capsys.readouterr().err and not db.exists()
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    make_study(storage)
    assert run_main(leaderboard.main, [str(runs), "--study", "other", "--storage", storage]) == 2
    err = capsys.readouterr().err
    assert "no study 'other'" in err and "studies there: s1" in err


def test_script_runs_from_repo_root(runs):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "tools/leaderboard.py", str(runs), "--task", "keypoints"], cwd=root,
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, COLUMNS="200"))
    assert proc.returncode == 0, proc.stderr
    assert "kp_b" in proc.stdout and "mre_px" in proc.stdout


def test_html_report_plots_the_click_curves_of_interactive_runs(tmp_path):
    import json

    from leaderboard.fake import make_fake_runs

    root = tmp_path / "runs"
    made = make_fake_runs(root, tasks=("keypoints",), n_folds=1)
    without = H.build_html(load(root), root)
    assert "plot-keypoints-clicks" not in without                 # no interactive run: no empty plot either
    summary_path = made[0] / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary["interactive"] = {"split": "val", "clicks": [0, 1, 2], "model_mre_px": [9.0, 5.0, 3.0],
                              "manual_mre_px": [9.0, 7.5, 6.5], "model_mre_mm": [2.0, 1.1, 0.7],
                              "manual_mre_mm": [2.0, 1.7, 1.5]}
    summary_path.write_text(json.dumps(summary))
    df = load(root)
    assert df.loc[df["name"] == summary["name"], "interactive"].iloc[0]["model_mre_px"] == [9.0, 5.0, 3.0]
    text = H.build_html(df, root)
    imgs = dict(PNG_RE.findall(text))
    assert "plot-keypoints-clicks" in imgs and base64.b64decode(imgs["plot-keypoints-clicks"]).startswith(b"\x89PNG")
    fig = H.click_figure({"a": summary["interactive"]})
    assert len(fig.axes) == 2                                      # px and mm side by side
    ax = fig.axes[0]
    assert [list(line.get_ydata()) for line in ax.get_lines()] == [[9.0, 5.0, 3.0], [9.0, 7.5, 6.5]]
    assert H.click_figure({}).startswith("no run has an MRE-vs-clicks curve")


def test_speed_plot_uses_tta_speed_only_where_no_run_has_a_plain_one():
    """The demo predicts both splits with TTA, so its runs record only images_per_s_tta: the speed plot
    takes that column then, and the plain one whenever any run has it (never both on one axis)."""
    import matplotlib

    matplotlib.use("Agg")
    from leaderboard.html import plot_pareto_speed, speed_column

    part = pd.DataFrame({"name": ["a", "b"], "kind": ["run", "run"], "family": ["smp", "smp"],
                         "model": ["smp:unet/resnet18", "smp:fpn/resnet18"],
                         "images_per_s": [None, None], "images_per_s_tta": [5.0, 9.0], "test_score": [0.7, 0.6],
                         "val_score": [0.7, 0.6], "metric": ["dice", "dice"], "mode": ["max", "max"]})
    assert speed_column(part) == ("images_per_s_tta", "inference images/s (with TTA)")
    fig = plot_pareto_speed(part)
    assert not isinstance(fig, str) and fig.axes[0].get_xlabel() == "inference images/s (with TTA)"
    part.loc[0, "images_per_s"] = 12.0
    assert speed_column(part)[0] == "images_per_s"
    assert speed_column(part.assign(images_per_s_tta=None, images_per_s=None))[0] == "images_per_s_tta"
