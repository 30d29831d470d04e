"""benchmarks/ensemble_cache.py: its smallest setting runs both paths (``inference.py --ensemble --from-cache`` and
the plain loop) as fresh processes into a JSON of medians and ratios, with byte-identical CSVs; the plain encoder
is the competition's; a differing CSV and a failing child stop the benchmark naming what went wrong. No timing is
asserted."""
from __future__ import annotations

import csv
import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tasks.formats.handbones import CLASSES
from tasks.rle import decode, encode

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    return importlib.import_module("ensemble_cache"), importlib.import_module("common")


def test_smallest_setting_runs_both_paths_with_identical_csvs(tmp_path):
    out, work = tmp_path / "ens.json", tmp_path / "work"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ensemble_cache.py"), "--images", "2", "--rounds",
                           "1", "--size", "256", "--cache-size", "64", "--workdir", str(work), "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert "benchmarks/ensemble_cache.py --images 2 --rounds 1" in r["command"]
    assert (r["members"], r["size"], r["cache_size"], r["rounds"]) == (3, 256, 64, 1)
    assert len(r["load_avg_start"]) == 3 and len(r["load_avg_end"]) == 3
    assert [(s["images"], s["method"]) for s in r["settings"]] == [(2, "soft"), (2, "weighted")]
    for s in r["settings"]:
        assert s["csv_identical"] is True
        assert s["harness_imported"] == []  # fusing from the cache pays for no torch, no model registry
        for key in ("seconds", "peak_rss_mb"):
            assert set(s[key]) == {"harness", "plain"} and all(len(v) == 1 and v[0] > 0 for v in s[key].values())
        for path in ("harness", "plain"):  # one round: the medians are its figures
            assert s["median_seconds"][path] == s["seconds"][path][0]
            assert s["median_peak_rss_mb"][path] == s["peak_rss_mb"][path][0]
        assert s["time_ratio"] == pytest.approx(s["seconds"]["harness"][0] / s["seconds"]["plain"][0], rel=0.01)
        assert s["memory_ratio"] == pytest.approx(s["peak_rss_mb"]["harness"][0] / s["peak_rss_mb"]["plain"][0],
                                                  rel=0.01)
        assert s["target"].startswith("time <= 1.5x") and isinstance(s["meets_target"], bool)

    for method in ("soft", "weighted"):
        harness, plain = work / f"harness_{method}2.csv", work / f"plain_{method}2.csv"
        assert harness.read_bytes() == plain.read_bytes()
        rows = list(csv.reader(harness.open(newline="")))
        assert rows[0] == ["image_name", "class", "rle"] and len(rows) == 1 + 2 * len(CLASSES)
        assert [r[1] for r in rows[1:1 + len(CLASSES)]] == list(CLASSES)
        assert sum(decode(r[2], 256, 256).sum() for r in rows[1:]) > 0  # bones found, not an empty submission
        assert (work / "ensembles" / "segmentation" / f"{method}2" / "summary.json").is_file()
    # the weighted ensemble (weights 3, 2, 1) leans to the first member: its masks differ from the soft mean's
    assert (work / "harness_soft2.csv").read_bytes() != (work / "harness_weighted2.csv").read_bytes()


def test_plain_encoder_is_the_competition_convention(bench):
    ensemble_cache, _ = bench
    mask = np.array([[0, 1, 1], [1, 0, 0]], np.uint8)  # row-major pixels 2, 3, 4 (1-indexed): one run of 3
    assert ensemble_cache.plain_rle(mask) == "2 3"
    assert ensemble_cache.plain_rle(np.zeros((2, 3), bool)) == ""
    rng = np.random.default_rng(0)
    for density in (0.01, 0.5, 0.99):
        m = rng.random((37, 53)) < density
        assert ensemble_cache.plain_rle(m) == encode(m)


def test_a_differing_csv_names_its_first_differing_row(bench):
    _, common = bench
    plain = b"image_name,class,rle\r\na.png,finger-1,1 2\r\na.png,finger-2,5 1\r\n"
    common.check_same("csv", plain, plain)
    with pytest.raises(SystemExit, match=r"first at line 3: plain 'a.png,finger-2,5 1', harness 'a.png,finger-2,5 2'"):
        common.check_same("csv", plain, plain.replace(b"5 1", b"5 2"))
    with pytest.raises(SystemExit, match=r"first at line 3: plain 'a.png,finger-2,5 1', harness '<end>'"):
        common.check_same("csv", plain, plain.rsplit(b"a.png", 1)[0])


def test_a_measured_child_reports_its_peak_and_fails_loudly(bench):
    _, common = bench
    ok = common.run_measured("-c", ["import numpy; print('hello')"])
    assert ok["stdout"] == "hello" and ok["seconds"] > 0 and ok["peak_mb"] > 0 and ok["imported"] == []
    with pytest.raises(SystemExit, match=r"exit 3.*boom"):
        common.run_measured("-c", ["import sys; print('boom', file=sys.stderr); sys.exit(3)"])
