"""A viewer for people: look at keypoint and segmentation runs, and correct keypoints interactively.
The Streamlit app that ``tools/viewer.py`` starts (:func:`main` draws one run of the script).

    streamlit run tools/viewer.py -- --runs runs          # or: VIEWER_RUNS=runs streamlit run tools/viewer.py

Run it from the repository root: Streamlit then reads ``.streamlit/config.toml`` (localhost only, headless,
no usage statistics); from elsewhere pass ``--server.address localhost --server.headless true
--browser.gatherUsageStats false`` before ``--``.

The sidebar picks the runs folder, the mode and the split (``val``: each run's validation fold; ``test``).

Keypoints: a run under ``<runs>/keypoints/`` (one with ``best.pt``) and an image. The figure shows the
predicted landmarks with the skeleton, the true points and each point's error when the image is labelled,
and the MRE in pixels. Correct a point: click a landmark (or pick it in the list), then click where it
belongs (or type x/y and press "Apply correction"). The run revises every point from all corrections so
far (a ``hint:`` model uses them as hints; any other run only pins them); the manual-only result (only the
corrected points moved) is shown beside it. "Correct the worst point" plays the simulated user of the click
protocol (labelled images only); "Undo" and "Reset" step back. Corrections are kept per run and image.

Segmentation: one or more runs under ``<runs>/segmentation/`` with a prediction cache for the split
(``python inference.py --ckpt <run>/best.pt --split val --save-probs``), an image in all their caches; one
column a run with its class-coloured masks (thresholded as ``inference.py`` does) and its Dice when the
image is labelled.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import engine  # noqa: F401  (offline environment before any third-party import)
import numpy as np
import streamlit as st

from engine.interactive import HINTLESS_NOTE, InteractiveRun, open_run
from display import viewer_state as vs


SPLITS = ("val", "test")
MODES = ("keypoints", "segmentation")


@st.cache_resource(show_spinner="Loading the run...")
def load_run(ckpt: str, split: str, tta: bool) -> InteractiveRun:
    return open_run(ckpt, split, tta=tta)


@st.cache_data(max_entries=512, show_spinner=False)
def predict(_run: InteractiveRun, key: tuple[str, str, bool], index: int, corrections: vs.Corrections) -> np.ndarray:
    """``(K, 2)`` points of image ``index`` given ``corrections`` (``key`` names the run for the cache)."""
    hints, clicked = vs.hint_arrays(corrections, len(_run.task.lmset))
    return _run.predict(hints, clicked, [index])[0]


@st.cache_data(max_entries=64, show_spinner=False)
def background(image_path: str) -> vs.Background:
    return vs.background(image_path)


@st.cache_data(max_entries=16, show_spinner=False)
def seg_images(run_dir: str, split: str) -> dict:
    from engine.config import load_config

    return vs.split_images(load_config(Path(run_dir) / "config.yaml"), split)


@st.cache_data(max_entries=64, show_spinner=False)
def seg_panel(run_dir: str, split: str, name: str) -> vs.SegmentationPanel:
    samples = seg_images(run_dir, split)
    if name not in samples:
        raise ValueError(f"{run_dir}/preds/{split}/{name}.npz: {name} is not among the run's {split} images")
    return vs.segmentation_panel(Path(run_dir), split, samples[name])


# ---------------------------------------------------------------------------------- session state

def corrections_of(ctx: str) -> vs.Corrections:
    return st.session_state.setdefault("corrections", {}).get(ctx, ())


def version_of(ctx: str) -> int:
    """Bumped on every change of ``ctx``'s corrections: versioned widget keys refill and the chart's
    selection clears."""
    return st.session_state.setdefault("versions", {}).get(ctx, 0)


def set_corrections(ctx: str, corrections: vs.Corrections) -> None:
    st.session_state.setdefault("corrections", {})[ctx] = tuple(corrections)
    st.session_state.setdefault("versions", {})[ctx] = version_of(ctx) + 1


def on_apply(ctx: str, landmark_key: str, x_key: str, y_key: str) -> None:
    ss = st.session_state
    set_corrections(ctx, (*corrections_of(ctx), vs.Correction(int(ss[landmark_key]), float(ss[x_key]), float(ss[y_key]))))


def on_worst(ctx: str, current: np.ndarray, truth: np.ndarray) -> None:
    step = vs.worst_correction(current, truth, corrections_of(ctx))
    if step is not None:
        set_corrections(ctx, (*corrections_of(ctx), step))


def on_undo(ctx: str) -> None:
    set_corrections(ctx, vs.undo(corrections_of(ctx)))


def on_reset(ctx: str) -> None:
    set_corrections(ctx, ())


def on_chart(ctx: str, chart_key: str, traces: list[str], landmark_key: str) -> None:
    selected, corrections = vs.handle_selection(st.session_state.get(chart_key), traces,
                                                st.session_state.get(landmark_key), corrections_of(ctx))
    if selected is not None:
        st.session_state[landmark_key] = selected
    set_corrections(ctx, corrections)


# ------------------------------------------------------------------------------------------ pages

def mre_metric(label: str, points: np.ndarray, truth: np.ndarray | None, start: np.ndarray, spacing: float | None) -> None:
    if truth is None:
        st.metric(label, "—", help="this image has no true points")
        return
    value = vs.mre(points, truth)
    mm = f" · {value * spacing:.2f} mm" if spacing else ""
    delta = value - vs.mre(start, truth)
    st.metric(label, f"{value:.2f} px{mm}", delta=f"{delta:+.2f} px" if delta else None, delta_color="inverse")


def open_keypoint_run(run_dir: Path, split: str, tta: bool) -> InteractiveRun:
    task = vs.run_task(run_dir)
    if task not in (None, "keypoints"):
        raise ValueError(f"{run_dir}: a {task} run, not a keypoint run (its config.yaml says task: {task})")
    return load_run(str(run_dir / "best.pt"), split, tta)


def keypoint_page(root: Path, split: str) -> None:
    runs = vs.keypoint_runs(root)
    if not runs:
        st.info(f"{root / 'keypoints'}: no keypoint run (a run folder holding best.pt). Train one, e.g. "
                "`python train.py -c configs/keypoints/interactive_phantom_dha37.yaml`.")
        return
    run_dir = st.sidebar.selectbox("Keypoint run", runs, format_func=lambda p: p.name)
    tta = st.sidebar.checkbox("Flip TTA", value=False, help="average each prediction with its mirror image")
    try:
        run = open_keypoint_run(run_dir, split, tta)
    except (ValueError, OSError) as err:
        st.error(str(err))
        return
    if not run.names:
        st.info(f"{run_dir}: the run has no {split} images")
        return
    index = st.sidebar.selectbox("Image", range(len(run.names)), format_func=run.names.__getitem__)
    if not run.takes_hints:
        st.info(f"{run_dir.name}: {HINTLESS_NOTE}")
    keypoint_view(run, run_dir, split, tta, index)


def keypoint_view(run: InteractiveRun, run_dir: Path, split: str, tta: bool, index: int) -> None:
    sample = run.dataset.samples[index]
    names, lmset = list(run.task.lmset.names), run.task.lmset
    ctx = f"{run_dir}|{split}|{sample.name}"
    corrections = corrections_of(ctx)
    version = version_of(ctx)
    key = (str(run_dir), split, tta)
    try:
        start = predict(run, key, index, ())
        current = predict(run, key, index, corrections)
        bg = background(str(sample.image_path))
    except (ValueError, OSError) as err:
        st.error(str(err))
        return
    manual = vs.manual_only(start, corrections)
    truth = sample.coords
    done = vs.corrected_landmarks(corrections)
    landmark_key = f"landmark|{ctx}"

    pick, x_col, y_col, apply_col, worst_col, undo_col, reset_col = st.columns([2, 1, 1, 1.5, 2, 0.8, 0.8],
                                                                               vertical_alignment="bottom")
    selected = pick.selectbox("Landmark", range(len(names)), format_func=names.__getitem__, key=landmark_key)
    x_key, y_key = f"x|{ctx}|{selected}|{version}", f"y|{ctx}|{selected}|{version}"
    x_col.number_input("x (px)", value=float(round(current[selected, 0], 1)), step=1.0, format="%.1f", key=x_key)
    y_col.number_input("y (px)", value=float(round(current[selected, 1], 1)), step=1.0, format="%.1f", key=y_key)
    apply_col.button("Apply correction", key="apply", type="primary", width="stretch",
                     on_click=on_apply, args=(ctx, landmark_key, x_key, y_key))
    worst = truth is not None and vs.worst_correction(current, truth, corrections) is not None
    worst_col.button("Correct the worst point", key="worst", disabled=not worst, width="stretch",
                     help=None if truth is not None else "needs the image's true points",
                     on_click=on_worst, args=(ctx, current, truth))
    undo_col.button("Undo", key="undo", disabled=not corrections, width="stretch", on_click=on_undo, args=(ctx,))
    reset_col.button("Reset", key="reset", disabled=not corrections, width="stretch", on_click=on_reset, args=(ctx,))

    left, right = st.columns(2)
    with left:
        mre_metric("Model revision · MRE", current, truth, start, sample.spacing_mm)
        fig = vs.keypoint_figure(bg, current, names, lmset.edges, truth=truth, corrected=done, selected=selected,
                                 clickable=True)
        chart_key = f"chart|{ctx}|{version}"
        st.plotly_chart(fig, key=chart_key, on_select=partial(on_chart, ctx, chart_key, vs.trace_names(fig), landmark_key),
                        selection_mode="points", config={"displayModeBar": False})
    with right:
        mre_metric("Manual only (just the corrected points moved) · MRE", manual, truth, start, sample.spacing_mm)
        st.plotly_chart(vs.keypoint_figure(bg, manual, names, lmset.edges, truth=truth, corrected=done),
                        key=f"manual|{ctx}|{version}", config={"displayModeBar": False, "staticPlot": True})
    st.caption("Click a landmark on the left figure to select it, then click where it belongs; or pick it in the "
               "list, type x/y and apply. The run revises every point from all corrections so far.")
    if corrections:
        st.caption(f"{len(corrections)} correction(s): " + ", ".join(
            f"{names[c.landmark]} → ({c.x:.1f}, {c.y:.1f})" for c in corrections))


def segmentation_page(root: Path, split: str) -> None:
    runs = vs.segmentation_runs(root, split)
    if not runs:
        st.info(f"{root / 'segmentation'}: no run with a prediction cache for {split} (write one with "
                f"`python inference.py --ckpt <run>/best.pt --split {split} --save-probs`)")
        return
    chosen = st.sidebar.multiselect("Segmentation runs", runs, default=runs[:1], format_func=lambda p: p.name)
    if not chosen:
        st.info("Pick one or more segmentation runs in the sidebar.")
        return
    images = vs.common_images(chosen, split)
    if not images:
        st.warning(f"No image is in the {split} cache of every chosen run.")
        return
    name = st.sidebar.selectbox("Image", images)
    st.subheader(f"{name} · {split}")
    for column, run_dir in zip(st.columns(len(chosen)), chosen):
        with column:
            st.markdown(f"**{run_dir.name}**")
            try:
                panel = seg_panel(str(run_dir), split, name)
            except (ValueError, OSError) as err:
                st.error(str(err))
                continue
            st.metric("Dice", "—" if panel.dice is None else f"{panel.dice:.4f}",
                      help=None if panel.dice is not None else "this image has no label file")
            st.image(panel.rgb, width="stretch")


def main(runs: str) -> None:
    """Draw the app once (Streamlit reruns it on every interaction); ``runs``: the runs folder shown first."""
    st.set_page_config(page_title="bone-harness viewer", layout="wide")
    with st.sidebar:
        st.title("bone-harness viewer")
        root = Path(st.text_input("Runs folder", value=runs)).expanduser()
        mode = st.radio("Mode", MODES, horizontal=True)
        split = st.radio("Split", SPLITS, horizontal=True)
    problem = vs.runs_problem(root)
    if problem:
        st.warning(problem)
        return
    if mode == "keypoints":
        keypoint_page(root, split)
    else:
        segmentation_page(root, split)

