"""One self-contained HTML report of the leaderboard: tables plus matplotlib plots as inline PNGs.

No JavaScript and no external resource: the file opens anywhere, offline, and can be mailed around.
Every plot is an ``<img class="plot" id="...">``; a plot without data is replaced by a short note
(``<p class="plot-missing" data-plot="...">``) so the page never shows a broken image.

Plot ids (``<task>`` is the task name made id-safe):

- ``plot-<task>-per-item``      segmentation: per-class score heatmap (runs x classes);
                                other tasks: per-landmark / per-age-band error bars (mean ± std over folds)
- ``plot-<task>-pareto-params`` score vs parameter count, Pareto front marked
- ``plot-<task>-pareto-speed``  score vs inference images/s, Pareto front marked
- ``plot-<task>-curves``        learning curves from metrics.jsonl (val/score and train/loss per epoch)
- ``plot-keypoints-clicks``      interactive refinement: MRE vs clicks, model revision (solid) against
                                manual-only revision (dashed), for the runs measured by tools/interactive_eval.py
- ``plot-sweep``                Optuna trials: value per trial number, coloured by state
"""

from __future__ import annotations

import base64
import html
import io
import os
import re
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leaderboard import table as T
from core.atomic import write_text

MAX_CURVES = 10        # learning curves: the best runs only, or the legend drowns the plot
MAX_HEATMAP_ROWS = 24  # per-class heatmap rows (best first)
MAX_BAR_GROUPS = 5     # per-item bars: configs shown side by side
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf"]
STATE_COLORS = {"COMPLETE": "#2ca02c", "PRUNED": "#ff7f0e", "FAIL": "#d62728", "RUNNING": "#1f77b4",
                "WAITING": "#7f7f7f"}
RC = {"text.parse_math": False, "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9,
      "legend.fontsize": 8, "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
      "grid.alpha": 0.3, "savefig.dpi": 100}


@dataclass
class Plot:
    id: str
    title: str
    png: bytes | None = None  # None: not drawn, ``note`` says why
    note: str = ""


# --------------------------------------------------------------------------- helpers


def slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(s).lower()).strip("-") or "x"


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), layout="constrained")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor="white")
    return buf.getvalue()


def _draw(plot_id: str, title: str, fn, *args) -> Plot:
    """Run a drawing function (returns a Figure, or a string saying why there is nothing to draw)."""
    import matplotlib

    with matplotlib.rc_context(RC):
        try:
            out = fn(*args)
        except Exception as e:  # a broken plot must not take the whole report down
            return Plot(plot_id, title, None, f"could not draw this plot: {type(e).__name__}: {e}")
        if isinstance(out, str):
            return Plot(plot_id, title, None, out)
        return Plot(plot_id, title, _png(out))


def _color_map(keys) -> dict:
    return {k: PALETTE[i % len(PALETTE)] for i, k in enumerate(dict.fromkeys(keys))}


def _family(r) -> str:
    if r["kind"] == "ensemble":
        return "ensemble"
    return r["family"] or "?"


def score_label(part: pd.DataFrame) -> tuple[str, str]:
    """(column, axis label) of the score a task is ranked by."""
    col = T.primary_score_column(part)
    which = "test" if col == "test_score" else "val"
    arrow = "↑" if T.task_mode(part) == "max" else "↓"
    return col, f"{which} {T.task_metric(part)} ({arrow} better)"


def pareto_front(x, y, x_better: str, y_better: str) -> list[int]:
    """Indices of the non-dominated points, sorted by x. ``*_better`` is "max" or "min".

    A point is dominated when another is at least as good on both axes and strictly better on one.
    Points with a missing coordinate take no part.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    ok = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
    # both axes turned into "higher is better"
    pts = np.column_stack([x if x_better == "max" else -x, y if y_better == "max" else -y])[ok]
    front = [int(i) for i, p in zip(ok, pts)
             if not np.any(np.all(pts >= p, axis=1) & np.any(pts > p, axis=1))]
    return sorted(front, key=lambda i: (x[i], y[i]))


# --------------------------------------------------------------------------- plots


def _item_order(dicts) -> list[str]:
    """Keys of per-item dicts in their given order (first seen first)."""
    order: dict[str, None] = {}
    for d in dicts:
        for k in d:
            order.setdefault(k, None)
    return list(order)


def _per_item_source(part: pd.DataFrame) -> tuple[str, str]:
    if any(bool(d) for d in part["val_per_item"]):
        return "val_per_item", "validation"
    return "test_per_item", "test"


def plot_heatmap(part: pd.DataFrame):
    col, which = _per_item_source(part)
    rows = part[[bool(d) for d in part[col]]].head(MAX_HEATMAP_ROWS)
    if not len(rows):
        return "no per-class scores recorded (summary.json val.per_item is empty)"
    keys = _item_order(rows[col])
    m = np.array([[float(d.get(k)) if d.get(k) is not None else np.nan for k in keys] for d in rows[col]])
    metric = T.task_metric(part)
    fig = _figure(min(3.0 + 0.34 * len(keys), 13.0), 1.7 + 0.3 * len(rows))
    ax = fig.add_subplot()
    cmap = "viridis" if T.task_mode(part) == "max" else "viridis_r"
    im = ax.imshow(np.ma.masked_invalid(m), aspect="auto", cmap=cmap, interpolation="nearest")
    ax.set_xticks(range(len(keys)), keys, rotation=60, ha="right", rotation_mode="anchor", fontsize=7.5)
    ax.set_yticks(range(len(rows)), list(rows["name"]), fontsize=8)
    ax.grid(False)
    if len(rows) <= 16 and len(keys) <= 40:
        finite = m[np.isfinite(m)]
        mid = (finite.min() + finite.max()) / 2 if finite.size else 0
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                if np.isfinite(m[i, j]):
                    dark = (m[i, j] < mid) == (T.task_mode(part) == "max")
                    ax.text(j, i, f"{m[i, j]:.2f}".lstrip("0") if 0 <= m[i, j] < 1 else f"{m[i, j]:.3g}",
                            ha="center", va="center", fontsize=6.5, color="white" if dark else "black")
    fig.colorbar(im, ax=ax, label=f"{which} {metric}", fraction=0.025, pad=0.01)
    ax.set_title(f"{which} {metric} per class (rows: best run first)")
    return fig


def plot_item_bars(part: pd.DataFrame):
    col, which = _per_item_source(part)
    has = part[[bool(d) for d in part[col]]]
    if not len(has):
        return "no per-item scores recorded (summary.json val.per_item is empty)"
    keys = _item_order(has[col])
    # one group per config (mean ± std over its folds); ensembles stand alone
    key = has["config_id"].where(has["config_id"].notna() & (has["kind"] == "run"), has["name"])
    groups = []
    for gid, g in has.groupby(key, sort=False):  # ``has`` is in rank order: best group first
        m = np.array([[float(d[k]) if d.get(k) is not None else np.nan for k in keys] for d in g[col]])
        with warnings.catch_warnings():  # an item no fold scored: NaN, not a warning
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(m, axis=0)
            std = np.nanstd(m, axis=0, ddof=1) if len(g) > 1 else None
        label = f"{gid} (n={len(g)})" if len(g) > 1 else str(gid)
        groups.append((label, mean, std))
    groups = groups[:MAX_BAR_GROUPS]
    metric = T.task_metric(part)
    fig = _figure(min(3.5 + 0.45 * len(keys) * max(1, len(groups) / 2.5), 13.0), 3.6)
    ax = fig.add_subplot()
    width = 0.8 / len(groups)
    xs = np.arange(len(keys))
    for gi, (label, mean, std) in enumerate(groups):
        ax.bar(xs - 0.4 + width * (gi + 0.5), mean, width, yerr=std, label=label, color=PALETTE[gi % 10],
               capsize=2 if std is not None else 0, error_kw={"elinewidth": 0.8, "alpha": 0.8})
    ax.set_xticks(xs, keys, rotation=45 if max(len(k) for k in keys) > 4 else 0, ha="right"
                  if max(len(k) for k in keys) > 4 else "center", fontsize=8)
    ax.set_xlim(-0.6, len(keys) - 0.4)
    ax.grid(axis="x", visible=False)
    ax.set_ylabel(f"{which} {metric}")
    noun = {"keypoints": "landmark", "boneage": "age band"}.get(part["task"].iloc[0], "item")
    ax.set_title(f"{which} {metric} per {noun} — mean ± std over folds (best configs)")
    ax.legend(ncols=min(len(groups), 3), loc="upper left", frameon=False)
    ymax = np.nanmax([np.nanmax(m + (s if s is not None else 0)) for _, m, s in groups])
    if np.isfinite(ymax):
        ax.set_ylim(0, ymax * 1.25)
    return fig


def _scatter(part: pd.DataFrame, xcol: str, x_better: str, xlabel: str, logx_auto: bool):
    ycol, ylabel = score_label(part)
    pts = part[part[xcol].notna() & part[ycol].notna()]
    if not len(pts):
        what = "parameter counts" if xcol == "params" else "inference speeds (summary.json speed)"
        return f"no run has both a score and {what}"
    x = pts[xcol].astype(float).to_numpy()
    y = pts[ycol].astype(float).to_numpy()
    fams = [_family(r) for r in pts.to_dict("records")]
    colors = _color_map(sorted(set(fams), key=lambda f: (f == "ensemble", f)))
    fig = _figure(6.2, 4.2)
    ax = fig.add_subplot()
    front = pareto_front(x, y, x_better, T.task_mode(part))
    ax.plot(x[front], y[front], "-", color="#444", lw=1.2, alpha=0.7, zorder=1, label="Pareto front")
    for fam, c in colors.items():
        idx = [i for i, f in enumerate(fams) if f == fam]
        ax.scatter(x[idx], y[idx], s=46 if fam != "ensemble" else 90, c=c, marker="*" if fam == "ensemble" else "o",
                   edgecolors="white", linewidths=0.6, zorder=3, label=fam)
    ax.scatter(x[front], y[front], s=120, facecolors="none", edgecolors="#222", linewidths=1.0, zorder=4)
    names = list(pts["name"])
    for i in front:
        ax.annotate(names[i], (x[i], y[i]), xytext=(5, 4), textcoords="offset points", fontsize=7, zorder=5)
    if logx_auto and x.min() > 0 and x.max() / x.min() > 20:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(loc="best", frameon=False, fontsize=7.5)
    ax.margins(x=0.12, y=0.12)
    return fig


def plot_pareto_params(part: pd.DataFrame):
    fig = _scatter(part, "params", "min", "parameters", True)
    if not isinstance(fig, str):
        ax = fig.axes[0]
        ax.xaxis.set_major_formatter(_param_formatter())
        ax.set_title("score vs model size (front: best score for its size)")
    return fig


def _param_formatter():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _: T.fmt_params(v) if v > 0 else "0")


def speed_column(part: pd.DataFrame) -> tuple[str, str]:
    """The speed to plot: without TTA where any run has that figure, else with TTA (a run predicted only
    with TTA, as the demo's are, records no plain speed); never the two mixed on one axis."""
    if part["images_per_s"].notna().any():
        return "images_per_s", "inference images/s (no TTA)"
    return "images_per_s_tta", "inference images/s (with TTA)"


def plot_pareto_speed(part: pd.DataFrame):
    column, label = speed_column(part)
    fig = _scatter(part, column, "max", label, True)
    if not isinstance(fig, str):
        fig.axes[0].set_title("score vs inference speed (front: best score for its speed)")
    return fig


def plot_curves(part: pd.DataFrame):
    runs = part[part["kind"] == "run"]
    curves = []
    for r in runs.to_dict("records"):
        recs = T.read_metrics(r["run_dir"])
        if recs:
            curves.append((r["name"], recs))
        if len(curves) == MAX_CURVES:
            break
    if not curves:
        return "no metrics.jsonl found in the run folders"
    fig = _figure(11.5, 3.6)
    ax_s, ax_l = fig.subplots(1, 2)
    metric = T.task_metric(part)
    drawn_s = drawn_l = False
    for i, (name, recs) in enumerate(curves):
        c = PALETTE[i % len(PALETTE)]
        ep = [r.get("epoch", k) for k, r in enumerate(recs)]

        def series(key):
            pts = [(e, r[key]) for e, r in zip(ep, recs) if T.is_number(r.get(key)) and T.is_number(e)]
            return ([p[0] for p in pts], [p[1] for p in pts]) if pts else None

        s = series("val/score")
        if s:
            ax_s.plot(*s, "-o", ms=2.5, lw=1.3, color=c, label=name)
            drawn_s = True
        tl = series("train/loss")
        if tl:
            ax_l.plot(*tl, "-", lw=1.3, color=c, label=f"{name} train")
            drawn_l = True
        vl = series("val/loss")
        if vl:
            ax_l.plot(*vl, "--", lw=1.0, color=c, alpha=0.8)
    ax_s.set_title(f"val/score ({metric}) per epoch")
    ax_s.set_xlabel("epoch")
    ax_s.set_ylabel(metric)
    ax_l.set_title("train/loss (solid) and val/loss (dashed) per epoch")
    ax_l.set_xlabel("epoch")
    ax_l.set_ylabel("loss")
    if drawn_l:
        losses = [v for line in ax_l.get_lines() for v in line.get_ydata()]
        if losses and min(losses) > 0 and max(losses) / min(losses) > 30:
            ax_l.set_yscale("log")
    if not (drawn_s or drawn_l):
        return "metrics.jsonl has no val/score or train/loss values"
    if drawn_s:
        ax_s.legend(loc="best", frameon=False, fontsize=7)
    return fig


def draw_click_curves(ax, curves: dict[str, dict], unit: str = "px") -> bool:
    """Draw MRE-vs-clicks curves (``summary.json['interactive']`` entries by label) on ``ax``: model
    revision solid, manual-only dashed, one colour per run. Returns whether anything was drawn."""
    drawn = False
    for i, (label, entry) in enumerate(curves.items()):
        c = PALETTE[i % len(PALETTE)]
        clicks = entry.get("clicks") or []
        for mode, style, what in (("model", "-o", "model revision"), ("manual", "--s", "manual only")):
            values = entry.get(f"{mode}_mre_{unit}")
            if values and len(values) == len(clicks):
                ax.plot(clicks, values, style, ms=3, lw=1.3, color=c, label=f"{label} · {what}")
                drawn = True
    ax.set_xlabel("clicks (the worst point corrected each time)")
    ax.set_ylabel(f"MRE ({unit}, original image)")
    if drawn:
        ax.legend(loc="best", frameon=False, fontsize=7)
    return drawn


def click_figure(curves: dict[str, dict], title: str = "MRE vs clicks"):
    """A figure of :func:`draw_click_curves` (mm beside px when every curve has mm); a string when empty."""
    has_mm = bool(curves) and all("model_mre_mm" in e for e in curves.values())
    fig = _figure(11.5 if has_mm else 6.5, 3.6)
    axes = fig.subplots(1, 2 if has_mm else 1)
    axes = list(axes) if has_mm else [axes]
    if not draw_click_curves(axes[0], curves):
        return "no run has an MRE-vs-clicks curve (python tools/interactive_eval.py --ckpt <run>/best.pt)"
    axes[0].set_title(title)
    if has_mm:
        draw_click_curves(axes[1], curves, "mm")
        axes[1].set_title(f"{title} (mm)")
    return fig


def plot_clicks(part: pd.DataFrame):
    runs = [r for r in part.to_dict("records") if isinstance(r.get("interactive"), dict)][:MAX_CURVES]
    curves = {f"{r['name']} ({r['interactive'].get('split', '?')})": r["interactive"] for r in runs}
    return click_figure(curves, "interactive refinement: MRE vs clicks")


def plot_sweep(trials: pd.DataFrame):
    if not len(trials):
        return "the study has no trials yet"
    direction = (trials.attrs.get("directions") or ["max"])[0]
    fig = _figure(11.5, 3.6)
    ax = fig.add_subplot()
    has = trials[trials["value"].notna()]
    for state in list(STATE_COLORS) + sorted(set(trials["state"]) - set(STATE_COLORS)):
        sel = has[has["state"] == state]
        n_all = int((trials["state"] == state).sum())
        if not n_all:
            continue
        c = STATE_COLORS.get(state, "#333")
        if len(sel):
            ax.scatter(sel["number"], sel["value"], s=30, c=c, label=f"{state} ({n_all})", zorder=3,
                       edgecolors="white", linewidths=0.5)
        none = trials[(trials["state"] == state) & trials["value"].isna()]
        if len(none):  # no value (failed, pruned before reporting): ticks on the x axis
            ax.scatter(none["number"], np.zeros(len(none)), marker="x", s=28, c=c, zorder=3, clip_on=False,
                       transform=ax.get_xaxis_transform(),
                       label=f"{state} ({n_all}, {len(none)} without value)" if not len(sel) else None)
    done = trials[(trials["state"] == "COMPLETE") & trials["value"].notna()].sort_values("number")
    if len(done):
        best = done["value"].cummax() if direction == "max" else done["value"].cummin()
        ax.step(done["number"], best, where="post", color="#222", lw=1.2, alpha=0.7, label="best so far")
    ax.set_xlabel("trial number")
    ax.set_ylabel(f"objective ({direction}imize)")
    ax.set_title(f"sweep {trials.attrs.get('study', '')}: value per trial, coloured by state")
    if len(has) == 0:
        ax.set_ylim(0, 1)
    ax.legend(loc="best", frameon=False, fontsize=7.5)
    return fig


def per_item_plot(task: str) -> tuple[str, Any]:
    """The title and plot of a task's per-item breakdown: a heatmap of the runs x classes of a task of many
    named classes (segmentation), bars otherwise; titled by what the task's spec says an item is."""
    from tasks.spec import task_spec

    try:
        spec = task_spec(task)
    except ValueError:  # a summary of a task this checkout does not have
        return f"{task}: score per item", plot_item_bars
    what, value = spec.per_item
    return f"{task}: {value} per {what}", plot_heatmap if len(spec.classes) > 12 else plot_item_bars


def task_plots(task: str, part: pd.DataFrame) -> list[Plot]:
    """The four plots of one task, drawn from its rows in rank order (best first)."""
    s = slug(task)
    part = T.rank_runs(part)
    per_item = per_item_plot(task)
    return [
        _draw(f"plot-{s}-per-item", per_item[0], per_item[1], part),
        _draw(f"plot-{s}-pareto-params", f"{task}: score vs parameters", plot_pareto_params, part),
        _draw(f"plot-{s}-pareto-speed", f"{task}: score vs images/s", plot_pareto_speed, part),
        _draw(f"plot-{s}-curves", f"{task}: learning curves", plot_curves, part),
    ] + ([_draw(f"plot-{s}-clicks", f"{task}: MRE vs clicks", plot_clicks, part)]
         if "interactive" in part and part["interactive"].notna().any() else [])


# --------------------------------------------------------------------------- HTML

CSS = """
:root { --fg:#1d232b; --muted:#5f6b7a; --line:#e3e7ec; --bg:#f6f8fa; --accent:#0b6bcb; --best:#e9f7ee; }
* { box-sizing: border-box; }
body { margin:0; font:13px/1.45 -apple-system, "Segoe UI", "DejaVu Sans", Roboto, Helvetica, Arial, sans-serif;
       color:var(--fg); background:var(--bg); }
header { background:#16202c; color:#fff; padding:14px 24px 12px; }
header h1 { margin:0; font-size:20px; font-weight:600; letter-spacing:.2px; }
header .meta { color:#b8c4d2; font-size:12px; margin-top:3px; }
nav { display:flex; gap:6px; flex-wrap:wrap; margin-top:9px; }
nav a { color:#dce6f2; text-decoration:none; background:#263445; border-radius:12px; padding:2px 10px; font-size:12px; }
main { max-width:1280px; margin:0 auto; padding:8px 16px 32px; }
section { background:#fff; border:1px solid var(--line); border-radius:8px; padding:12px 16px 16px; margin:14px 0; }
h2 { font-size:16px; margin:2px 0 8px; }
h2 .sub { color:var(--muted); font-weight:400; font-size:13px; }
h3 { font-size:13px; margin:14px 0 6px; color:#2d3a48; }
.tablewrap { overflow-x:auto; }
table { border-collapse:collapse; width:100%; font-size:11.5px; font-variant-numeric:tabular-nums; }
th, td { padding:3px 6px; border-bottom:1px solid var(--line); white-space:nowrap; }
th { background:#f0f3f7; text-align:left; font-weight:600; color:#314152; white-space:normal; vertical-align:bottom; }
td.model { white-space:normal; min-width:9em; }
td.r, th.r { text-align:right; }
tr.best td { background:var(--best); font-weight:600; }
tr:hover td { background:#f5f9ff; }
td.name { font-family:"DejaVu Sans Mono", Menlo, Consolas, monospace; font-size:11.5px; }
.plots { display:grid; grid-template-columns:repeat(2, minmax(0, 1fr)); gap:12px; margin-top:12px; }
figure { margin:0; border:1px solid var(--line); border-radius:6px; padding:6px; background:#fff; }
figure.wide { grid-column:1 / -1; }
figure img.plot { display:block; max-width:100%; height:auto; margin:0 auto; }
figcaption { color:var(--muted); font-size:12px; margin:2px 4px 4px; }
p.plot-missing { color:var(--muted); font-style:italic; margin:18px 8px; }
.warn { background:#fff7e6; border:1px solid #f3d39b; border-radius:8px; padding:8px 14px; margin:14px 0; }
.warn code { font-size:12px; }
footer { color:var(--muted); font-size:11px; text-align:center; padding:12px; }
"""


def _esc(s: Any) -> str:
    return html.escape(str(s), quote=True)


def table_html(headers, aligns, rows, highlight_first: bool = False) -> str:
    cls = ["r" if a == "right" else "" for a in aligns]
    name_cols = {i for i, h in enumerate(headers) if h in ("name", "best run", "config")}
    model_cols = {i for i, h in enumerate(headers) if h == "model"}
    out = ['<div class="tablewrap"><table><thead><tr>']
    out += [f'<th class="{c}">{_esc(h)}</th>' for h, c in zip(headers, cls)]
    out.append("</tr></thead><tbody>")
    for i, row in enumerate(rows):
        best = highlight_first and i == 0 and row and row[0] == "1"
        out.append('<tr class="best">' if best else "<tr>")
        for j, (v, c) in enumerate(zip(row, cls)):
            text = _esc(v)
            if j in name_cols:
                c = (c + " name").strip()
            elif j in model_cols:  # let long model names break after ':' and '/'
                c = (c + " model").strip()
                text = text.replace("/", "/<wbr>").replace(":", ":<wbr>")
            out.append(f'<td class="{c}">{text}</td>')
        out.append("</tr>")
    if not rows:
        out.append(f'<tr><td colspan="{len(headers)}">nothing to show</td></tr>')
    out.append("</tbody></table></div>")
    return "".join(out)


def plot_html(p: Plot, wide: bool = False) -> str:
    cls = ' class="wide"' if wide else ""
    if p.png:
        b64 = base64.b64encode(p.png).decode("ascii")
        body = f'<img class="plot" id="{_esc(p.id)}" alt="{_esc(p.title)}" src="data:image/png;base64,{b64}">'
    else:
        body = f'<p class="plot-missing" data-plot="{_esc(p.id)}">{_esc(p.note)}</p>'
    return f"<figure{cls}><figcaption>{_esc(p.title)}</figcaption>{body}</figure>"


def _as_trials(study) -> pd.DataFrame | None:
    if study is None or isinstance(study, pd.DataFrame):
        return study
    return T.study_trials(study)


def build_html(df: pd.DataFrame, root: str | os.PathLike | None = None, study=None, group: bool = True,
               title: str = "Hand radiograph leaderboard") -> str:
    """The report as a string (see :func:`write_html`)."""
    trials = _as_trials(study)
    root_s = str(root if root is not None else df.attrs.get("root", ""))
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    n_ens = int((df["kind"] == "ensemble").sum()) if len(df) else 0
    tasks = T.tasks_of(df)
    secs = T.sections(df, group=group)
    nav = [f'<a href="#task-{slug(t)}">{_esc(t)}</a>' for t in tasks]
    if trials is not None:
        nav.append('<a href="#sweep">sweep</a>')
    out = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">', f"<title>{_esc(title)}</title>", f"<style>{CSS}</style>",
        "</head><body>", f"<header><h1>{_esc(title)}</h1>",
        f'<div class="meta">{len(df) - n_ens} run(s) and {n_ens} ensemble(s) over {len(tasks)} task(s) '
        f"from <code>{_esc(root_s)}</code> · generated {now}</div>",
        f"<nav>{''.join(nav)}</nav></header><main>",
    ]
    skipped = df.attrs.get("skipped") or []
    if skipped:
        items = "".join(f"<li><code>{_esc(p)}</code>: {_esc(r)}</li>" for p, r in skipped)
        out.append(f'<div class="warn"><b>{len(skipped)} summary file(s) skipped</b><ul>{items}</ul></div>')
    if not len(df):
        out.append('<section><h2>No runs</h2><p>No readable summary.json was found.</p></section>')
    for t, part in T.by_task(df):
        out.append(f'<section id="task-{slug(t)}">')
        for sec in (s for s in secs if s["task"] == t):
            if sec["kind"] == "leaderboard":
                head, _, rest = sec["title"].partition(" — ")
                out.append(f'<h2>{_esc(head)} <span class="sub">— {_esc(rest)}</span></h2>')
            else:
                out.append(f"<h3>{_esc(sec['title'].partition(' — ')[2])}</h3>")
            out.append(table_html(*sec["table"], highlight_first=sec["kind"] == "leaderboard"))
        plots = task_plots(t, part)
        out.append('<div class="plots">')
        for i, p in enumerate(plots):
            out.append(plot_html(p, wide=i in (0, 3, 4)))
        out.append("</div></section>")
    if trials is not None:
        sec = T.trial_section(trials)
        out.append(f'<section id="sweep"><h2>{_esc(sec["title"])}</h2>')
        out.append('<div class="plots">')
        out.append(plot_html(_draw("plot-sweep", "sweep: value per trial", plot_sweep, trials), wide=True))
        out.append("</div>")
        out.append(f"<h3>trials</h3>{table_html(*sec['table'])}</section>")
    out.append("</main><footer>tools/leaderboard.py · one self-contained file, plots are inline PNGs</footer>")
    out.append("</body></html>")
    return "\n".join(out)


def write_html(df: pd.DataFrame, root: str | os.PathLike | None, path: str | os.PathLike, study=None,
               group: bool = True, title: str = "Hand radiograph leaderboard") -> Path:
    """Write the self-contained report to ``path`` atomically (temp file + rename).

    ``df`` comes from :func:`leaderboard.table.load_runs`; ``root`` is only shown in the header;
    ``study`` is an ``optuna.Study``, a frame from :func:`leaderboard.table.study_trials`, or None.
    """
    return write_text(path, build_html(df, root, study=study, group=group, title=title))
