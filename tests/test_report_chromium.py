"""The HTML leaderboard opens in a real browser (headless Chromium) without console errors and every
plot image decodes. Skipped where Chromium is not installed (Debian: apt-get install -y chromium)."""

from __future__ import annotations

import os

import pytest

from leaderboard import chromium
from leaderboard import table as T
from leaderboard.fake import make_fake_runs, make_fake_study
from leaderboard.html import write_html

pytestmark = [pytest.mark.browser, pytest.mark.skipif(
    not os.access("/usr/bin/chromium", os.X_OK),
    reason="/usr/bin/chromium is absent (Debian/Ubuntu: apt-get install -y chromium)",
)]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    make_fake_runs(d / "runs")
    (d / "runs" / "segmentation" / "broken").mkdir()
    (d / "runs" / "segmentation" / "broken" / "summary.json").write_text("{truncated")
    study = make_fake_study(f"sqlite:///{d / 'optuna.db'}", n_trials=12)
    df = T.load_runs(d / "runs", on_warning=None)
    return write_html(df, d / "runs", d / "leaderboard.html", study=study)


def test_report_renders_without_errors(report):
    result = chromium.check_report(report)
    assert result["errors"] == [] and result["console"] == [], result
    # 3 tasks x 4 plots + the sweep plot, all drawn from the fake runs
    assert len(result["images"]) == 13 and result["missing"] == 0
    for img in result["images"]:
        assert img["complete"] and img["width"] > 0 and img["height"] > 0, img
    assert {i["id"] for i in result["images"]} >= {"plot-segmentation-per-item", "plot-keypoints-per-item",
                                                     "plot-boneage-per-item", "plot-sweep"}


def test_checker_catches_broken_pages(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text(
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>x</title></head><body>'
        '<img class="plot" id="ok" src="data:image/png;base64,'
        'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==">'
        '<img class="plot" id="broken" src="data:image/png;base64,AAAA">'
        "<script>undefinedFunction();</script></body></html>")
    result = chromium.check_report(page)
    sizes = {i["id"]: i["width"] for i in result["images"]}
    assert sizes == {"ok": 1, "broken": 0}
    assert any("undefinedFunction" in e for e in result["errors"])
    assert any("Uncaught" in line or "CONSOLE" in line for line in result["console"])


def test_screenshot(report, tmp_path):
    from PIL import Image

    png = chromium.screenshot(report, tmp_path / "shot.png", 1200, 1600)
    assert png.stat().st_size < 300_000
    with Image.open(png) as im:
        assert im.size == (1200, 1600)
        assert len(im.convert("RGB").getcolors(1 << 20) or []) > 50  # not a blank page
