"""The Streamlit viewer (tools/viewer.py): runs and images listed, keypoint corrections through the widgets
(pinned point, model revision, simulated user, undo, reset), segmentation columns with Dice, clear
messages, the click handler, and a screenshot of the running app in headless Chromium."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from engine.config import load_config, save_config
from engine.interactive import open_run
from tasks.segmentation.cache import save_probs
from tasks.segmentation.samples import split_samples
from tasks.spec import MODE_SLIDING
from engine.trainer import train
from leaderboard.chromium import find_chromium
from tasks.formats.handbones import read_masks
from tasks.formats.images import image_size
from display import viewer_state as vs

VIEWER = Path(__file__).resolve().parents[1] / "tools" / "viewer.py"
TIMEOUT = 120


@pytest.fixture(scope="module")
def runs(phantom, tmp_path_factory) -> Path:
    """A runs folder: one hinted keypoint run (1 epoch, 64 px) and two segmentation runs whose val caches hold
    the true masks ("perfect") and nothing ("empty") for two images."""
    out = tmp_path_factory.mktemp("viewer")
    cfg = load_config(None, {
        "task": "keypoints", "name": "hint",
        "data": {"root": str(phantom / "joints"), "landmarks": "dha37", "image_size": 64, "sigma": 2.0,
                 "n_folds": 3, "cache_dir": str(out / "cache")},
        "model": {"name": "hint:shsnet:unet", "options": {"base_channels": 4, "depth": 2, "out_stride": 2}},
        "loss": {"weights": {"kl": 1.0}},
        "train": {"epochs": 1, "batch_size": 4, "lr": 3e-3, "warmup_epochs": 0},
        "inference": {"batch_size": 4},
        "logging": {"out_dir": str(out / "runs"), "progress": False},
    })
    train(cfg)
    for name, fill in (("perfect", 1.0), ("empty", 0.0)):
        seg = load_config(None, {
            "task": "segmentation", "name": name,
            "data": {"root": str(phantom / "handbones" / "train"), "test_root": str(phantom / "handbones" / "test"),
                     "image_size": 64},
            "model": {"name": "smp:unet/resnet18"}, "inference": {"sliding_window": True},
            "logging": {"out_dir": str(out / "runs"), "progress": False},
        })
        save_config(seg, seg.run_dir / "config.yaml")
        for s in split_samples(seg.data, "val")[:2]:  # maps at the original size: what a sliding-window run caches
            size = image_size(s.image_path)
            save_probs(seg.run_dir / "preds" / "val" / f"{s.name}.npz", read_masks(s.label_path, *size) * fill, size,
                       MODE_SLIDING)
    return out / "runs"


@pytest.fixture(scope="module")
def kp(runs):
    """The keypoint run opened outside the app, to check what the app shows."""
    return open_run(runs / "keypoints" / "hint-f0" / "best.pt", "val", device="cpu")


@pytest.fixture
def app(runs, monkeypatch) -> AppTest:
    monkeypatch.setenv("VIEWER_RUNS", str(runs))
    at = AppTest.from_file(str(VIEWER), default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def widget(elements, label: str):
    found = [e for e in elements if e.label == label]
    assert len(found) == 1, f"{label!r} among {[e.label for e in elements]}"
    return found[0]


def metric_px(at: AppTest, label_start: str) -> float:
    value = next(m.value for m in at.metric if m.label.startswith(label_start))
    return float(re.match(r"([\d.]+) px", value).group(1))


def context(runs: Path, name: str) -> str:
    return f"{runs / 'keypoints' / 'hint-f0'}|val|{name}"


def test_app_lists_the_run_and_images_and_shows_a_prediction(app, runs, kp):
    assert widget(app.sidebar.selectbox, "Keypoint run").options == ["hint-f0"]
    assert widget(app.sidebar.selectbox, "Image").options == kp.names
    assert len(app.get("plotly_chart")) == 2          # model revision (clickable) and manual only
    truth = kp.dataset.samples[0].coords
    start = kp.predict(indices=[0])[0]
    assert metric_px(app, "Model revision") == pytest.approx(vs.mre(start, truth), abs=0.006)
    assert metric_px(app, "Manual only") == metric_px(app, "Model revision")
    landmark = widget(app.selectbox, "Landmark")
    assert landmark.value == 0 and len(landmark.options) == 37
    assert widget(app.number_input, "x (px)").value == pytest.approx(round(start[0, 0], 1))
    assert widget(app.button, "Undo").disabled and not widget(app.button, "Correct the worst point").disabled


def test_a_typed_correction_is_pinned_and_the_model_revises(app, runs, kp):
    widget(app.selectbox, "Landmark").select_index(5).run()
    widget(app.number_input, "x (px)").set_value(30.0)
    widget(app.number_input, "y (px)").set_value(40.0)
    widget(app.button, "Apply correction").click().run()
    assert not app.exception
    ctx = context(runs, kp.names[0])
    assert app.session_state["corrections"][ctx] == (vs.Correction(5, 30.0, 40.0),)
    # the refilled inputs show the current position of landmark 5: where it was put
    assert widget(app.number_input, "x (px)").value == 30.0 and widget(app.number_input, "y (px)").value == 40.0
    hints, clicked = vs.hint_arrays(app.session_state["corrections"][ctx], 37)
    revision = kp.predict(hints, clicked, [0])[0]
    truth, start = kp.dataset.samples[0].coords, kp.predict(indices=[0])[0]
    assert revision[5].tolist() == [30.0, 40.0]
    assert metric_px(app, "Model revision") == pytest.approx(vs.mre(revision, truth), abs=0.006)
    manual = vs.manual_only(start, (vs.Correction(5, 30.0, 40.0),))
    assert metric_px(app, "Manual only") == pytest.approx(vs.mre(manual, truth), abs=0.006)
    assert any("→ (30.0, 40.0)" in c.value for c in app.caption)


def test_worst_point_undo_and_reset(app, runs, kp):
    ctx = context(runs, kp.names[0])
    truth = kp.dataset.samples[0].coords
    before = metric_px(app, "Manual only")
    errors = np.linalg.norm(kp.predict(indices=[0])[0] - truth, axis=-1)
    widget(app.button, "Correct the worst point").click().run()
    first = app.session_state["corrections"][ctx]
    assert len(first) == 1 and first[0].landmark == int(errors.argmax())
    assert (first[0].x, first[0].y) == pytest.approx(tuple(truth[first[0].landmark]))
    assert metric_px(app, "Manual only") <= before
    widget(app.button, "Correct the worst point").click().run()
    second = app.session_state["corrections"][ctx]
    assert len(second) == 2 and second[0] == first[0] and second[1].landmark != first[0].landmark
    widget(app.button, "Undo").click().run()
    assert app.session_state["corrections"][ctx] == first
    widget(app.button, "Reset").click().run()
    assert app.session_state["corrections"][ctx] == ()
    assert metric_px(app, "Manual only") == pytest.approx(before)
    assert widget(app.button, "Reset").disabled


def test_corrections_are_kept_per_image(app, runs, kp):
    widget(app.button, "Correct the worst point").click().run()
    widget(app.sidebar.selectbox, "Image").select_index(1).run()
    assert app.session_state["corrections"].get(context(runs, kp.names[1]), ()) == ()
    assert widget(app.button, "Undo").disabled
    widget(app.sidebar.selectbox, "Image").select_index(0).run()
    assert len(app.session_state["corrections"][context(runs, kp.names[0])]) == 1


def test_segmentation_mode_one_column_per_run_with_dice(app, runs):
    widget(app.sidebar.radio, "Mode").set_value("segmentation").run()
    runs_box = widget(app.sidebar.multiselect, "Segmentation runs")
    assert runs_box.options == ["empty-f0", "perfect-f0"] and runs_box.value == [runs / "segmentation" / "empty-f0"]
    runs_box.set_value([runs / "segmentation" / "empty-f0", runs / "segmentation" / "perfect-f0"]).run()
    assert not app.exception and not app.error
    assert len(app.columns) == 2 and len(app.image) == 2
    assert len(widget(app.sidebar.selectbox, "Image").options) == 2
    dice = {c.markdown[0].value.strip("*"): c.metric[0].value for c in app.columns}
    assert dice["perfect-f0"] == "1.0000" and float(dice["empty-f0"]) < 1


def test_clear_messages_instead_of_tracebacks(tmp_path, monkeypatch):
    monkeypatch.setenv("VIEWER_RUNS", str(tmp_path / "nowhere"))
    at = AppTest.from_file(str(VIEWER), default_timeout=TIMEOUT).run()
    assert not at.exception and "no such folder" in at.warning[0].value
    (tmp_path / "runs" / "segmentation").mkdir(parents=True)
    widget(at.sidebar.text_input, "Runs folder").set_value(str(tmp_path / "runs")).run()
    assert not at.exception and "no keypoint run" in at.info[0].value
    widget(at.sidebar.radio, "Mode").set_value("segmentation").run()
    assert "no run with a prediction cache for val" in at.info[0].value
    seg = tmp_path / "runs" / "keypoints" / "seg"
    seg.mkdir(parents=True)
    (seg / "best.pt").write_bytes(b"not a checkpoint")
    (seg / "config.yaml").write_text("task: segmentation\n")
    broken = tmp_path / "runs" / "keypoints" / "truncated"
    broken.mkdir()
    (broken / "best.pt").write_bytes(b"not a checkpoint")
    widget(at.sidebar.radio, "Mode").set_value("keypoints").run()
    assert not at.exception and "not a keypoint run" in at.error[0].value and str(seg) in at.error[0].value
    widget(at.sidebar.selectbox, "Keypoint run").select_index(1).run()
    assert not at.exception and f"{broken / 'best.pt'}: not a readable checkpoint" in at.error[0].value


def test_project_streamlit_config_keeps_the_viewer_local(tmp_path):
    """.streamlit/config.toml binds to localhost, runs headless, sends no usage statistics, and Streamlit
    started in the repository root reads it (with an empty HOME and no STREAMLIT_* variables)."""
    root = VIEWER.parents[1]
    conf = tomllib.loads((root / ".streamlit" / "config.toml").read_text())
    assert conf["server"]["address"] == "localhost" and conf["server"]["headless"] is True
    assert conf["browser"]["gatherUsageStats"] is False
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLIT_")} | {"HOME": str(tmp_path)}
    keys = ("server.address", "server.headless", "browser.gatherUsageStats")
    code = f"from streamlit import config; print([config.get_option(k) for k in {keys!r}])"
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "['localhost', True, False]", out.stderr


def test_runs_folder_from_the_command_line_then_the_environment(monkeypatch):
    import tools.viewer as viewer

    monkeypatch.setenv("VIEWER_RUNS", "/from/env")
    assert viewer.default_runs(["--runs", "/from/args"]) == "/from/args"
    assert viewer.default_runs(["-q", "--other"]) == "/from/env"
    monkeypatch.delenv("VIEWER_RUNS")
    assert viewer.default_runs([]) == "runs"


def test_clicks_on_the_figure():
    bg = vs.Background(np.zeros((50, 40, 3), np.uint8), 100, 80)
    points = np.array([[10.0, 10.0], [60.0, 70.0], [30.0, 50.0]])
    fig = vs.keypoint_figure(bg, points, ["a", "b", "c"], [(0, 1)], truth=points + 1, corrected=[1], selected=2,
                             clickable=True)
    traces = vs.trace_names(fig)
    grid, landmarks = traces.index(vs.GRID), traces.index(vs.LANDMARKS)
    assert landmarks == len(traces) - 1          # drawn last: on top of the click grid
    gx, gy = np.asarray(fig.data[grid].x), np.asarray(fig.data[grid].y)
    assert gx.min() >= -0.5 and gx.max() <= 79.5 and gy.min() >= -0.5 and gy.max() <= 99.5 and len(gx) > 1000
    nearest = np.linalg.norm(np.stack([gx, gy], 1)[:, None] - points[None], axis=-1).min(0)
    assert (nearest >= 1.0).all()                # no grid point on a landmark's marker
    earlier = (vs.Correction(0, 1.0, 2.0),)

    def click(curve: int, index: int, x: float, y: float) -> dict:
        return {"selection": {"points": [{"curve_number": curve, "point_index": index, "x": x, "y": y}],
                              "point_indices": [index], "box": [], "lasso": []}}

    # a click on the grid moves the selected landmark there
    selected, corrections = vs.handle_selection(click(grid, 17, 41.5, 12.5), traces, 2, earlier)
    assert selected == 2 and corrections == (*earlier, vs.Correction(2, 41.5, 12.5))
    assert vs.manual_only(points, corrections)[2].tolist() == [41.5, 12.5]
    # a click on a landmark selects it and moves nothing
    assert vs.handle_selection(click(landmarks, 1, 60.0, 70.0), traces, 2, earlier) == (1, earlier)
    # nothing selected, an empty selection, a trace that is neither: no change
    assert vs.handle_selection(click(grid, 3, 5.0, 5.0), traces, None, earlier) == (None, earlier)
    assert vs.handle_selection({"selection": {"points": []}}, traces, 2, earlier) == (2, earlier)
    assert vs.handle_selection(None, traces, 2, earlier) == (2, earlier)
    assert vs.handle_selection(click(0, 0, 5.0, 5.0), traces, 2, earlier) == (2, earlier)


def test_corrections_logic():
    truth = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    current = truth + np.array([[3.0, 0.0], [0.0, 5.0], [0.0, 5.0]])
    step = vs.worst_correction(current, truth, ())
    assert step == vs.Correction(1, 10.0, 0.0)                    # tie 5 vs 5: the lower index
    assert vs.worst_correction(current, truth, (step,)) == vs.Correction(2, 0.0, 10.0)
    assert vs.worst_correction(current, truth, tuple(vs.Correction(i, 0, 0) for i in range(3))) is None
    hints, clicked = vs.hint_arrays((vs.Correction(1, 1.0, 2.0), vs.Correction(1, 3.0, 4.0)), 3)
    assert clicked.tolist() == [[False, True, False]] and hints[0, 1].tolist() == [3.0, 4.0]
    assert vs.undo((step, step)) == (step,) and vs.undo(()) == ()
    with pytest.raises(ValueError, match="landmark 5"):
        vs.hint_arrays((vs.Correction(5, 0, 0),), 3)


# The clickable figure's plot area (viewport pixels) and its landmarks (image pixels), read in the browser.
FIGURE = """(() => {
  const gd = document.querySelector('[data-testid="stPlotlyChart"] .js-plotly-plot');
  const r = gd.querySelector('.nsewdrag').getBoundingClientRect();
  const t = gd._fullData.find(d => d.name === %s);
  return {area: [r.left, r.top, r.width, r.height], x: Array.from(t.x), y: Array.from(t.y)};
})()"""
CAPTIONS = "[...document.querySelectorAll('[data-testid=\"stCaptionContainer\"]')].map(e => e.innerText)"


@pytest.mark.browser
def test_screenshot_and_a_real_click_in_headless_chromium(runs, kp, tmp_path):
    """The running app in a browser: a mouse click on the image moves the selected landmark there (the
    Plotly event as Streamlit really sends it), the worst-point button works, and the screenshot shows
    the drawn app, not the empty skeleton of a page still loading."""
    if find_chromium() is None:
        pytest.skip("chromium is absent (Debian/Ubuntu: apt-get install -y chromium)")
    from PIL import Image

    from display.screenshot import browser, click, open_app, press, save_screenshot, serve

    height, width = image_size(kp.dataset.samples[0].image_path)
    with serve(runs) as url, browser(1400, 1000) as page:
        open_app(page, url, 1400, 1000)
        fig = page.evaluate(FIGURE % json.dumps(vs.LANDMARKS))
        left, top, w, h = fig["area"]
        points = np.stack([fig["x"], fig["y"]], 1)
        # the spot of the image farthest from every landmark: a click there hits the click grid
        spots = np.stack(np.meshgrid(np.linspace(0.2, 0.8, 7) * width, np.linspace(0.2, 0.8, 7) * height), -1).reshape(-1, 2)
        spot = spots[np.linalg.norm(spots[:, None] - points[None], axis=-1).min(1).argmax()]
        click(page, left + (spot[0] + 0.5) / width * w, top + (spot[1] + 0.5) / height * h)
        placed = re.search(r"1 correction\(s\): (\w+) → \(([\d.]+), ([\d.]+)\)", " ".join(page.evaluate(CAPTIONS)))
        assert placed, page.evaluate(CAPTIONS)
        assert placed.group(1) == kp.task.lmset.names[0]
        step = max(height, width) / vs.GRID_POINTS
        assert np.hypot(float(placed.group(2)) - spot[0], float(placed.group(3)) - spot[1]) <= 2 * step
        press(page, "Correct the worst point")
        assert any("2 correction(s)" in c for c in page.evaluate(CAPTIONS))
        png = save_screenshot(page, tmp_path / "viewer.png")
    with Image.open(png) as im:
        rgb = np.asarray(im.convert("RGB"))
    assert rgb.shape == (1000, 1400, 3)
    colours = len(np.unique(rgb.reshape(-1, 3), axis=0))
    dark = (rgb.max(-1) < 100).mean()        # the radiographs' black background: an empty app skeleton has none
    assert colours > 500 and dark > 0.05, (colours, dark)
