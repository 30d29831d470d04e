"""Load run folders into a leaderboard table, rank them, group them and render them as text.

A run folder (``runs/<task>/<run-name>/``) holds a ``summary.json`` written by the training engine
(or by the ensemble builder, with ``"kind": "ensemble"``). :func:`load_runs` turns every readable
summary under a root into one row of a :class:`pandas.DataFrame`; a summary that cannot be read, lacks
a key or has a value of the wrong type is reported by path and skipped.

Row order and ranks come from :func:`rank_runs`: by default the local test score when any run of the
task has one, else the validation score, in the direction the task's metric asks for (``mode``). Any
other metric a summary's ``val`` or ``test`` object holds (``sdr_2px``, ``mre_mm``, ``rmse``,
``within_12m``, ...) sorts too, best first in its own direction (:func:`metric_mode`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from core.cli import lazy_module
from core.atomic import write_text

pd = lazy_module("pandas")  # imported on first use: leaderboard.py --help does without it

# --------------------------------------------------------------------------- schema

#: Every key a summary.json must have (values may be null unless noted in ``_check_summary``). ``flops`` (per
#: image at the run's input size) is optional: runs from before it was recorded show "—".
SUMMARY_KEYS = (
    "name", "task", "kind", "model", "family", "arch", "encoder", "config_id", "image_size", "fold",
    "n_folds", "epochs", "params", "train_time_s", "train_images_per_s", "metric", "mode", "best_epoch",
    "val", "test", "speed", "members", "git_commit", "created",
)
KINDS = ("run", "ensemble")
MODES = ("max", "min")
#: Tasks are shown in this order; any other task follows, alphabetically.
TASK_ORDER = ("segmentation", "keypoints", "boneage")

#: Columns of the frame returned by :func:`load_runs` (per-item scores are dicts, the rest scalars).
COLUMNS = (
    "task", "name", "kind", "model", "family", "arch", "encoder", "config_id", "image_size", "fold",
    "n_folds", "epochs", "best_epoch", "params", "flops", "train_time_s", "train_images_per_s", "images_per_s",
    "images_per_s_tta", "metric", "mode", "val_score", "test_score", "test_public", "test_private", "gap",
    "n_members", "members", "val_per_item", "test_per_item", "val_metrics", "test_metrics", "interactive",
    "git_commit", "created", "run_dir", "summary_path",
)
INT_COLUMNS = ("n_folds", "epochs", "best_epoch", "params", "flops", "n_members")
#: ``fold`` of a run trained on every image (``data.fold: all``): no validation score; the fold column holds it
#: beside the fold numbers.
FOLD_ALL = "all"
#: Columns written by :func:`write_csv` (no nested values).
CSV_COLUMNS = tuple(c for c in COLUMNS if c not in ("members", "val_per_item", "test_per_item", "val_metrics",
                                                    "test_metrics", "interactive")) + ("rank",)

#: ``--sort`` accepts these short names besides the frame's own column names.
SORT_ALIASES = {
    "val": "val_score", "test": "test_score", "public": "test_public", "private": "test_private",
    "score": None,  # the default: test if any else val
    "ips": "images_per_s", "ips_tta": "images_per_s_tta", "time": "train_time_s", "size": "image_size",
    "members": "n_members",
}
SCORE_COLUMNS = ("val_score", "test_score", "test_public", "test_private")
#: Columns that sort from high to low by default (scores follow the metric's mode instead).
DESCENDING_COLUMNS = ("images_per_s", "images_per_s_tta", "train_images_per_s", "epochs", "n_members")
SORTABLE = tuple(c for c in CSV_COLUMNS if c not in ("summary_path", "run_dir"))
#: Direction of the metrics in a summary's ``val``/``test`` objects, by name prefix: "max" = higher is better.
METRIC_MODES = (("sdr_", "max"), ("within_", "max"), ("dice", "max"), ("mre_", "min"), ("sd_", "min"), ("median_", "min"),
                ("mae", "min"), ("rmse", "min"), ("loss", "min"))
#: Keys of a summary's ``val``/``test`` objects that are not metrics.
NOT_METRICS = ("score", "public", "private", "images")


class SummaryError(ValueError):
    """A summary.json that cannot be used; the message names what is wrong."""


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_types(d: dict, where: str, spec: dict[str, tuple[Callable[[Any], bool], str]]) -> None:
    for key, (ok, what) in spec.items():
        if key in d and d[key] is not None and not ok(d[key]):
            raise SummaryError(f"{where}{key!r} must be {what} or null, got {type(d[key]).__name__} {d[key]!r:.60}")


def _check_per_item(v: Any, where: str) -> None:
    if v is None:
        return
    if not isinstance(v, dict):
        raise SummaryError(f"{where}'per_item' must be an object of numbers or null, got {type(v).__name__}")
    for k, x in v.items():
        if x is not None and not is_number(x):
            raise SummaryError(f"{where}'per_item'[{k!r}] must be a number or null, got {x!r:.40}")


def _check_summary(s: Any) -> None:
    """Raise :class:`SummaryError` unless ``s`` follows the summary.json schema."""
    if not isinstance(s, dict):
        raise SummaryError(f"top level must be a JSON object, got {type(s).__name__}")
    missing = [k for k in SUMMARY_KEYS if k not in s]
    if missing:
        raise SummaryError(f"missing key(s) {', '.join(missing)}")
    for key in ("name", "task", "metric"):
        if not isinstance(s[key], str) or not s[key]:
            raise SummaryError(f"{key!r} must be a non-empty string, got {s[key]!r:.60}")
    if s["kind"] not in KINDS:
        raise SummaryError(f"'kind' must be one of {', '.join(KINDS)}, got {s['kind']!r:.60}")
    if s["mode"] not in MODES:
        raise SummaryError(f"'mode' must be one of {', '.join(MODES)}, got {s['mode']!r:.60}")
    is_str = (lambda v: isinstance(v, str), "a string")
    is_int = (_is_int, "an integer")
    is_num = (is_number, "a number")
    size = (lambda v: _is_int(v) or (isinstance(v, list) and len(v) == 2 and all(_is_int(x) for x in v)),
            "an integer or [height, width]")
    _check_types(s, "", {
        "model": is_str, "family": is_str, "arch": is_str, "encoder": is_str, "config_id": is_str,
        "git_commit": is_str, "created": is_str, "image_size": size,
        "fold": (lambda v: _is_int(v) or v == FOLD_ALL, f"an integer or {FOLD_ALL!r}"), "n_folds": is_int,
        "epochs": is_int, "best_epoch": is_int, "params": is_int, "flops": is_int, "train_time_s": is_num,
        "train_images_per_s": is_num,
        "members": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings"),
    })
    if not isinstance(s["val"], dict):
        raise SummaryError(f"'val' must be an object with 'score', got {type(s['val']).__name__}")
    for part in ("val", "test"):
        d = s[part]
        if d is None:
            continue
        if not isinstance(d, dict):
            raise SummaryError(f"{part!r} must be an object or null, got {type(d).__name__}")
        if "score" not in d:
            raise SummaryError(f"{part!r} has no 'score' key")
        _check_types(d, f"{part}.", {"score": is_num, "public": is_num, "private": is_num})
        _check_per_item(d.get("per_item"), f"{part}.")
    if s["speed"] is not None:
        if not isinstance(s["speed"], dict):
            raise SummaryError(f"'speed' must be an object or null, got {type(s['speed']).__name__}")
        _check_types(s["speed"], "speed.", {"images_per_s": is_num, "images_per_s_tta": is_num})


def read_summary(path: str | os.PathLike) -> dict:
    """Read and check one summary.json; raise :class:`SummaryError` (message without the path)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SummaryError(f"cannot read: {e}") from None
    try:
        s = json.loads(text)
    except json.JSONDecodeError as e:
        raise SummaryError(f"invalid JSON ({e})") from None
    _check_summary(s)
    return s


def _num(v: Any) -> float:
    return float(v) if is_number(v) else math.nan


def _metrics(part: dict | None, metric: str) -> dict[str, float]:
    """The numeric metrics of a summary's ``val`` or ``test`` object, the headline also under its name."""
    if not part:
        return {}
    out = {k: float(v) for k, v in part.items() if k not in NOT_METRICS and is_number(v)}
    if is_number(part.get("score")):
        out.setdefault(metric, float(part["score"]))
    return out


def metric_mode(name: str) -> str | None:
    """``"max"`` for a metric where higher is better (SDR, Dice, within 12 months), ``"min"`` for an error
    (MRE, SD, MAE, RMSE, loss), None for a name that is no known metric."""
    return next((mode for prefix, mode in METRIC_MODES if name.startswith(prefix)), None)


def _row(s: dict, path: Path) -> dict:
    test = s["test"] or {}
    speed = s["speed"] or {}
    public, private = _num(test.get("public")), _num(test.get("private"))
    size = s["image_size"]
    model = s["model"]
    if not model and (s["arch"] or s["encoder"]):
        model = (f"{s['family']}:" if s["family"] else "") + "/".join(x for x in (s["arch"], s["encoder"]) if x)
    return {
        "task": s["task"], "name": s["name"], "kind": s["kind"], "model": model, "family": s["family"],
        "arch": s["arch"], "encoder": s["encoder"], "config_id": s["config_id"],
        "image_size": f"{size[0]}x{size[1]}" if isinstance(size, list) else size,
        "fold": s["fold"], "n_folds": s["n_folds"], "epochs": s["epochs"], "best_epoch": s["best_epoch"],
        "params": s["params"], "flops": s.get("flops"), "train_time_s": _num(s["train_time_s"]),
        "train_images_per_s": _num(s["train_images_per_s"]),
        "images_per_s": _num(speed.get("images_per_s")), "images_per_s_tta": _num(speed.get("images_per_s_tta")),
        "metric": s["metric"], "mode": s["mode"], "val_score": _num(s["val"].get("score")),
        "test_score": _num(test.get("score")), "test_public": public, "test_private": private,
        "gap": public - private,
        "n_members": len(s["members"]) if s["members"] is not None else None, "members": s["members"],
        "val_per_item": s["val"].get("per_item") or {}, "test_per_item": test.get("per_item") or {},
        "val_metrics": _metrics(s["val"], s["metric"]), "test_metrics": _metrics(test, s["metric"]),
        "git_commit": s["git_commit"], "created": s["created"],
        "interactive": s.get("interactive") if isinstance(s.get("interactive"), dict) else None,
        "run_dir": str(path.parent), "summary_path": str(path),
    }


def find_summaries(root: str | os.PathLike) -> list[Path]:
    """Every ``summary.json`` under ``root`` (a run folder is not searched below itself; hidden dirs skipped)."""
    root = Path(root)
    if root.is_file():
        return [root] if root.name == "summary.json" else []
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        if "summary.json" in filenames:
            found.append(Path(dirpath) / "summary.json")
            dirnames[:] = []  # a run folder holds preds/, checkpoints: nothing more to find below
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
    return sorted(found)


def _stderr_warning(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def load_runs(root: str | os.PathLike, task: str | None = None,
              on_warning: Callable[[str], None] | None = _stderr_warning) -> pd.DataFrame:
    """One row per run and per ensemble found under ``root``, ranked (see :func:`rank_runs`).

    A summary.json that is unreadable, not JSON, missing keys or holding values of the wrong type is
    skipped; ``on_warning`` receives ``"<path>: <reason>"`` for it (default: printed to stderr) and the
    frame's ``attrs["skipped"]`` lists ``(path, reason)`` pairs. ``task`` keeps only that task.
    """
    rows, skipped = [], []
    for path in find_summaries(root):
        try:
            s = read_summary(path)
        except SummaryError as e:
            skipped.append((str(path), str(e)))
            if on_warning is not None:
                on_warning(f"skipping {path}: {e}")
            continue
        if task is None or s["task"] == task:
            rows.append(_row(s, path))
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    for c in INT_COLUMNS:  # integers stay integers (CSV "3", not "3.0") with missing values allowed
        df[c] = df[c].astype("Int64")
    df["fold"] = pd.Series([r["fold"] for r in rows], index=df.index, dtype=object)  # numbers and "all", as written
    df = rank_runs(df)
    df.attrs["skipped"] = skipped
    df.attrs["root"] = str(root)
    return df


# --------------------------------------------------------------------------- ranking


def tasks_of(df: pd.DataFrame) -> list[str]:
    """The tasks present, in the canonical order (segmentation, keypoints, boneage, then others)."""
    present = set(df["task"].dropna()) if len(df) else set()
    return [t for t in TASK_ORDER if t in present] + sorted(present - set(TASK_ORDER))


def task_mode(df_task: pd.DataFrame) -> str:
    """The metric direction of one task's rows (the most common ``mode``)."""
    modes = df_task["mode"].dropna()
    return modes.mode().iloc[0] if len(modes) else "max"


def task_metric(df_task: pd.DataFrame) -> str:
    metrics = df_task["metric"].dropna()
    return metrics.mode().iloc[0] if len(metrics) else "score"


def primary_score_column(df_task: pd.DataFrame) -> str:
    """``test_score`` when any row of the task has a test score, else ``val_score``."""
    return "test_score" if df_task["test_score"].notna().any() else "val_score"


def metric_sort(name: str) -> tuple[str | None, str] | None:
    """``"test.sdr_2px"`` -> ("test", "sdr_2px"); a bare ``"sdr_2px"`` -> (None, "sdr_2px"): the test value
    when any run of the task has one, else the validation value. None unless the name is a known metric."""
    part, dot, metric = name.rpartition(".")
    if dot and part not in ("val", "test"):
        return None
    return (part or None, metric) if metric_mode(metric) else None


def resolve_sort(column: str | None) -> tuple[str | None, bool | None]:
    """``"params"``, ``"val"``, ``"params:desc"``, ``"sdr_2px"``, ``"val.mre_mm"`` -> (frame column, metric
    or None for the default, descending or None)."""
    if column is None:
        return None, None
    name, _, direction = column.partition(":")
    if direction not in ("", "asc", "desc"):
        raise ValueError(f"sort direction must be 'asc' or 'desc', got {direction!r}")
    name = SORT_ALIASES.get(name, name)
    if name is not None and name not in SORTABLE and metric_sort(name) is None:
        choices = sorted(set(SORTABLE) | set(SORT_ALIASES))
        raise ValueError(f"unknown sort column {column!r}; choose from: {', '.join(choices)}, or a metric of "
                         "the summaries (sdr_2px, mre_mm, rmse, within_12m, ...; val.<metric> or test.<metric>)")
    return name, (None if not direction else direction == "desc")


def _metric_key(part: pd.DataFrame, which: str | None, metric: str) -> tuple[pd.Series, str]:
    """The values of ``metric`` in one task's rows (test, val, or test when any row has it) and its label."""
    if which is None:
        which = "test" if part["test_metrics"].map(lambda m: metric in m).any() else "val"
    values = part[f"{which}_metrics"].map(lambda m: m.get(metric, math.nan)).astype(float)
    return values, f"{which} {metric}"


def rank_runs(df: pd.DataFrame, sort: str | None = None) -> pd.DataFrame:
    """Sort each task's rows and number them.

    ``sort`` is a column (see :data:`SORTABLE` and :data:`SORT_ALIASES`) or a metric of the summaries
    (:func:`metric_sort`), optionally with ``:asc`` or ``:desc``. Scores sort best first following each
    task's mode, metrics best first following their own (:func:`metric_mode`); speeds and epochs high
    to low; other columns low to high; missing values always last. A metric sort adds its values as
    column ``sort_value``, labelled by ``attrs["sort_label"]`` per task. ``rank`` counts rows by the
    task's primary score (test if any, else val) whatever the display order, and is missing for rows
    without that score.
    """
    column, descending = resolve_sort(sort)
    metric = metric_sort(column) if column is not None and column not in SORTABLE else None
    df = df.drop(columns=["sort_value"], errors="ignore")  # of an earlier metric sort
    parts, labels = [], {}
    for t in tasks_of(df):
        part = df[df["task"] == t].copy()
        primary = primary_score_column(part)
        best_first_desc = task_mode(part) == "max"
        by = primary if column in (None, "rank") else column
        if metric is not None:
            key, labels[t] = _metric_key(part, *metric)
            part["sort_value"] = key
            desc = metric_mode(metric[1]) == "max" if descending is None else descending
        else:
            desc = descending if descending is not None else (
                best_first_desc if by in SCORE_COLUMNS else by in DESCENDING_COLUMNS)
            key = part[by]
            if by == "gap":
                key = key.abs()
            elif by == "image_size":  # 512 or "512x640": compare pixel counts
                key = key.map(_pixels)
            elif by == "fold":  # the run on all data after the numbered folds
                key = key.map(lambda v: math.inf if v == FOLD_ALL else math.nan if v is None else float(v))
        # ties and rows without the sort key: best validation score first, then by name
        val_key = part["val_score"] if best_first_desc else -part["val_score"]
        part = part.assign(_key=key, _val=val_key).sort_values(
            ["_key", "_val", "name"], ascending=[not desc, False, True], na_position="last", kind="mergesort"
        ).drop(columns=["_key", "_val"])
        ranks = part[primary].rank(method="min", ascending=not best_first_desc)
        part["rank"] = ranks.astype("Int64")
        parts.append(part)
    if not parts:
        return df.assign(rank=pd.Series(dtype="Int64"))
    out = pd.concat(parts, ignore_index=True)
    out.attrs = {k: v for k, v in df.attrs.items() if k != "sort_label"}
    if labels:
        out.attrs["sort_label"] = labels
    return out


def _pixels(size: Any) -> float:
    """512 -> 512*512, "512x640" -> 512*640, missing -> NaN."""
    try:
        if isinstance(size, str):
            h, _, w = size.partition("x")
            return float(h) * float(w or h)
        return float(size) ** 2
    except (TypeError, ValueError):
        return math.nan


def by_task(df: pd.DataFrame) -> Iterable[tuple[str, pd.DataFrame]]:
    for t in tasks_of(df):
        yield t, df[df["task"] == t]


# --------------------------------------------------------------------------- grouping


def group_folds(df: pd.DataFrame) -> pd.DataFrame:
    """Cross-validation view: mean and sample std (ddof=1) over the runs sharing a ``config_id``.

    Ensembles are left out. A run without ``config_id`` forms its own group (keyed by name). Columns:
    task, config_id, model, family, n (runs), folds ("0,1,..."), val_mean, val_std, test_mean, test_std,
    public_mean, private_mean, gap_mean, params, flops, train_time_s (mean), images_per_s (mean), metric, mode.
    Rows are sorted per task, best mean first (test mean if any group has one, else val mean).
    """
    runs = df[df["kind"] == "run"]
    cols = ["task", "config_id", "model", "family", "n", "folds", "val_mean", "val_std", "test_mean",
            "test_std", "public_mean", "private_mean", "gap_mean", "params", "flops", "train_time_s", "images_per_s",
            "metric", "mode"]
    rows = []
    for t, part in by_task(runs):
        key = part["config_id"].where(part["config_id"].notna(), part["name"])
        for cid, g in part.groupby(key, sort=False):
            folds = sorted({f for f in g["fold"].dropna()}, key=lambda f: (f == FOLD_ALL, 0 if f == FOLD_ALL else f))
            rows.append({
                "task": t, "config_id": cid, "model": _first(g["model"]), "family": _first(g["family"]),
                "n": len(g), "folds": ",".join(map(str, folds)),
                "val_mean": g["val_score"].mean(), "val_std": g["val_score"].std(ddof=1),
                "test_mean": g["test_score"].mean(), "test_std": g["test_score"].std(ddof=1),
                "public_mean": g["test_public"].mean(), "private_mean": g["test_private"].mean(),
                "gap_mean": g["gap"].mean(), "params": _first(g["params"]), "flops": _first(g["flops"]),
                "train_time_s": g["train_time_s"].mean(), "images_per_s": g["images_per_s"].mean(),
                "metric": task_metric(g), "mode": task_mode(g),
            })
    out = pd.DataFrame(rows, columns=cols)
    parts = []
    for t in tasks_of(out):
        part = out[out["task"] == t]
        by = "test_mean" if part["test_mean"].notna().any() else "val_mean"
        parts.append(part.sort_values([by, "config_id"], ascending=[task_mode(part) == "min", True],
                                      na_position="last", kind="mergesort"))
    return pd.concat(parts, ignore_index=True) if parts else out


def best_per_family(df: pd.DataFrame) -> pd.DataFrame:
    """The best-ranked row of each model family per task (ensembles form the family "ensemble")."""
    ranked = df.sort_values(["task", "rank"], na_position="last", kind="mergesort")
    fam = ranked["family"].where(ranked["family"].notna(),
                                 ranked["kind"].map({"ensemble": "ensemble"}).fillna("?"))
    ranked = ranked.assign(family=fam)
    parts = []
    for t, part in by_task(ranked):
        parts.append(part.drop_duplicates("family", keep="first"))
    return pd.concat(parts, ignore_index=True) if parts else ranked.iloc[0:0]


def _first(s: pd.Series) -> Any:
    s = s.dropna()
    return s.iloc[0] if len(s) else None


# --------------------------------------------------------------------------- formatting


def fmt_score(v: Any, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return "—"
    v = float(v)
    digits = 4 if abs(v) < 10 else 2
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def _scaled(v: Any, units: tuple[tuple[float, str, int], ...]) -> str:
    """``v`` divided by the first unit it reaches, e.g. 24.4M; "—" when missing."""
    if v is None or pd.isna(v):
        return "—"
    v = float(v)
    for scale, suffix, digits in units:
        if v >= scale:
            return f"{v / scale:.{digits}f}{suffix}"
    return f"{int(v)}"


def fmt_params(v: Any) -> str:
    return _scaled(v, ((1e9, "B", 2), (1e6, "M", 1), (1e3, "k", 1)))


def fmt_flops(v: Any) -> str:
    """FLOPs per image (2 x multiply-adds): 1.30T, 12.3G, 450.1M; "—" when the run did not record them."""
    return _scaled(v, ((1e12, "T", 2), (1e9, "G", 1), (1e6, "M", 1), (1e3, "k", 1)))


def fmt_time(v: Any) -> str:
    if v is None or pd.isna(v):
        return "—"
    s = int(round(float(v)))
    if s < 60:
        return f"{float(v):.1f}s" if float(v) < 10 else f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def fmt_rate(v: Any) -> str:
    if v is None or pd.isna(v):
        return "—"
    v = float(v)
    return f"{v:.1f}" if v < 1000 else f"{v:.0f}"


def fmt_plain(v: Any) -> str:
    if v is None or (not isinstance(v, (list, dict, str)) and pd.isna(v)):
        return "—"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def fmt_mean_std(mean: Any, std: Any, n: int) -> str:
    if mean is None or pd.isna(mean):
        return "—"
    if n < 2 or std is None or pd.isna(std):
        return fmt_score(mean)
    return f"{fmt_score(mean)} ± {fmt_score(std)}"


def direction_word(mode: str) -> str:
    return "higher is better" if mode == "max" else "lower is better"


def leaderboard_columns(df_task: pd.DataFrame, sort_label: str | None = None) -> list[tuple[str, str, Callable[[dict], str]]]:
    """(header, alignment, cell function) of the leaderboard for one task; empty optional columns dropped.
    ``sort_label`` (a metric sort, :func:`rank_runs`) adds the metric sorted by after the scores."""
    metric = task_metric(df_task)
    cols: list[tuple[str, str, Callable[[dict], str]]] = [
        ("#", "right", lambda r: fmt_plain(r["rank"])),
        ("name", "left", lambda r: str(r["name"])),
        ("kind", "left", lambda r: r["kind"] if r["kind"] != "ensemble" else f"ensemble ({fmt_plain(r['n_members'])})"),
        ("model", "left", lambda r: fmt_plain(r["model"])),
        ("size", "right", lambda r: fmt_plain(r["image_size"])),
        ("fold", "right", lambda r: fmt_plain(r["fold"])),
        ("epochs", "right", lambda r: fmt_plain(r["epochs"])),
        ("params", "right", lambda r: fmt_params(r["params"])),
        ("FLOPs", "right", lambda r: fmt_flops(r["flops"])),
        ("train time", "right", lambda r: fmt_time(r["train_time_s"])),
        ("img/s", "right", lambda r: fmt_rate(r["images_per_s"])),
        ("img/s TTA", "right", lambda r: fmt_rate(r["images_per_s_tta"])),
        (f"val {metric}", "right", lambda r: fmt_score(r["val_score"])),
        (f"test {metric}", "right", lambda r: fmt_score(r["test_score"])),
        ("public", "right", lambda r: fmt_score(r["test_public"])),
        ("private", "right", lambda r: fmt_score(r["test_private"])),
        ("gap pub−priv", "right", lambda r: fmt_score(r["gap"], signed=True)),
    ]
    if sort_label and "sort_value" in df_task:
        cols.append((sort_label, "right", lambda r: fmt_score(r["sort_value"])))
    optional = {"img/s": "images_per_s", "img/s TTA": "images_per_s_tta", f"test {metric}": "test_score",
                "public": "test_public", "private": "test_private", "gap pub−priv": "gap"}
    return [c for c in cols if c[0] not in optional or df_task[optional[c[0]]].notna().any()]


def cv_columns(df_cv: pd.DataFrame) -> list[tuple[str, str, Callable[[dict], str]]]:
    metric = task_metric(df_cv) if len(df_cv) else "score"
    cols = [
        ("config", "left", lambda r: str(r["config_id"])),
        ("model", "left", lambda r: fmt_plain(r["model"])),
        ("n folds", "right", lambda r: str(r["n"])),
        ("folds", "left", lambda r: r["folds"] or "—"),
        ("params", "right", lambda r: fmt_params(r["params"])),
        ("FLOPs", "right", lambda r: fmt_flops(r["flops"])),
        ("train time (mean)", "right", lambda r: fmt_time(r["train_time_s"])),
        ("img/s (mean)", "right", lambda r: fmt_rate(r["images_per_s"])),
        (f"val {metric}", "right", lambda r: fmt_mean_std(r["val_mean"], r["val_std"], r["n"])),
        (f"test {metric}", "right", lambda r: fmt_mean_std(r["test_mean"], r["test_std"], r["n"])),
        ("gap (mean)", "right", lambda r: fmt_score(r["gap_mean"], signed=True)),
    ]
    optional = {"img/s (mean)": "images_per_s", f"test {metric}": "test_mean", "gap (mean)": "gap_mean"}
    return [c for c in cols if c[0] not in optional or df_cv[optional[c[0]]].notna().any()]


def family_columns(df_fam: pd.DataFrame) -> list[tuple[str, str, Callable[[dict], str]]]:
    metric = task_metric(df_fam) if len(df_fam) else "score"
    col = primary_score_column(df_fam) if len(df_fam) else "val_score"
    label = "test" if col == "test_score" else "val"
    return [
        ("family", "left", lambda r: str(r["family"])),
        ("#", "right", lambda r: fmt_plain(r["rank"])),
        ("best run", "left", lambda r: str(r["name"])),
        ("model", "left", lambda r: fmt_plain(r["model"])),
        ("params", "right", lambda r: fmt_params(r["params"])),
        ("FLOPs", "right", lambda r: fmt_flops(r["flops"])),
        ("img/s", "right", lambda r: fmt_rate(r["images_per_s"])),
        (f"{label} {metric}", "right", lambda r: fmt_score(r[col])),
    ]


def cells(df: pd.DataFrame, columns) -> tuple[list[str], list[str], list[list[str]]]:
    """Headers, alignments and string cells of ``df`` for ``columns`` (see ``*_columns``)."""
    headers = [c[0] for c in columns]
    aligns = [c[1] for c in columns]
    rows = [[c[2](r) for c in columns] for r in df.to_dict("records")]
    return headers, aligns, rows


def task_title(task: str, df_task: pd.DataFrame) -> str:
    mode = task_mode(df_task)
    return f"{task} — {task_metric(df_task)} ({direction_word(mode)})"


def sections(df: pd.DataFrame, group: bool = False) -> list[dict]:
    """What a report shows, in order: one dict per table with keys ``task``, ``kind`` ("leaderboard",
    "cv", "family"), ``title`` and ``table`` = (headers, aligns, rows of strings)."""
    out = []
    cv = group_folds(df) if group else None
    fam = best_per_family(df) if group else None
    for t, part in by_task(df):
        n_runs = int((part["kind"] == "run").sum())
        n_ens = len(part) - n_runs
        ranked_by = "test" if primary_score_column(part) == "test_score" else "validation"
        out.append({"task": t, "kind": "leaderboard",
                    "title": f"{task_title(t, part)} — {n_runs} run(s), {n_ens} ensemble(s), "
                             f"ranked by {ranked_by} score",
                    "table": cells(part, leaderboard_columns(part, (df.attrs.get("sort_label") or {}).get(t)))})
        if group:
            cv_t = cv[cv["task"] == t]
            out.append({"task": t, "kind": "cv",
                        "title": f"{t} — cross-validation: {task_metric(cv_t) if len(cv_t) else 'score'} "
                                 f"mean ± std (ddof=1) over the folds of each config",
                        "table": cells(cv_t, cv_columns(cv_t))})
            fam_t = fam[fam["task"] == t]
            out.append({"task": t, "kind": "family", "title": f"{t} — best run per model family",
                        "table": cells(fam_t, family_columns(fam_t))})
    return out


def trial_section(trials: pd.DataFrame) -> dict:
    return {"task": "sweep", "kind": "trials", "title": trials.attrs.get("title", "sweep trials"),
            "table": trial_cells(trials)}


# --------------------------------------------------------------------------- renderers


def render_terminal(df: pd.DataFrame, group: bool = False, console=None, study_trials: pd.DataFrame | None = None):
    """Print the leaderboard (one rich table per task; with ``group`` the fold and family views too), each table
    folded to the console's width: blocks of columns that repeat its key columns (rank and name), none cut off."""
    from rich.console import Console

    from core.tables import print_folded

    console = console or Console()
    if not len(df):
        console.print("[yellow]no runs found[/yellow]")
    tables = sections(df, group=group)
    if study_trials is not None:
        tables.append(trial_section(study_trials))
    for sec in tables:
        print_folded(console, _rich_table(sec), keys=KEY_COLUMNS[sec["kind"]])
        console.print()
    return console


#: The leading columns of each kind of table that every block of a folded table repeats.
KEY_COLUMNS = {"leaderboard": 2, "cv": 1, "family": 1, "trials": 1}


def _rich_table(sec: dict):
    from rich.table import Table

    headers, aligns, rows = sec["table"]
    table = Table(title=sec["title"], title_justify="left", title_style="bold", header_style="bold cyan",
                  pad_edge=False, caption_justify="left")
    for header, align in zip(headers, aligns):
        table.add_column(header, justify=align, overflow="fold",
                         no_wrap=header not in ("name", "model", "params", "FLOPs", "best run", "config"))
    for n, row in enumerate(rows):
        best = n == 0 and sec["kind"] == "leaderboard" and row[0] == "1"
        table.add_row(*row, style="bold green" if best else None)
    return table


#: Markdown cell text: characters that could end the cell, open a link, code span or raw HTML.
_MD_ESCAPES = str.maketrans({"\\": "\\\\", "|": "\\|", "`": "\\`", "[": "\\[", "]": "\\]", "<": "&lt;",
                             ">": "&gt;", "&": "&amp;", "\n": " ", "\r": " "})


def _md_escape(s: str) -> str:
    """``s`` as literal text in a Markdown table cell: no cell break, link, code span or HTML tag."""
    return s.translate(_MD_ESCAPES)


def markdown_table(headers: list[str], aligns: list[str], rows: list[list[str]]) -> str:
    sep = {"left": ":---", "right": "---:", "center": ":---:"}
    lines = ["| " + " | ".join(_md_escape(h) for h in headers) + " |",
             "|" + "|".join(sep.get(a, "---") for a in aligns) + "|"]
    lines += ["| " + " | ".join(_md_escape(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def to_markdown(df: pd.DataFrame, group: bool = False, study_trials: pd.DataFrame | None = None) -> str:
    """The leaderboard as Markdown: one ``##`` section per task, tables as GitHub pipe tables."""
    parts = ["# Leaderboard", ""]
    if not len(df):
        parts += ["No runs found.", ""]
    tables = sections(df, group=group)
    if study_trials is not None:
        tables.append(trial_section(study_trials))
    for sec in tables:
        heading = "##" if sec["kind"] in ("leaderboard", "trials") else "###"
        parts += [f"{heading} {sec['title']}", "", markdown_table(*sec["table"]), ""]
    skipped = df.attrs.get("skipped") or []
    if skipped:
        parts += ["## Skipped summaries", ""] + [f"- {_md_escape(p)}: {_md_escape(r)}" for p, r in skipped] + [""]
    return "\n".join(parts)


def write_markdown(df: pd.DataFrame, path: str | os.PathLike, group: bool = False,
                   study_trials: pd.DataFrame | None = None) -> Path:
    return write_text(path, to_markdown(df, group=group, study_trials=study_trials))


#: A spreadsheet reads a cell that starts with one of these as a formula (OWASP CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(v: Any) -> Any:
    """``v`` safe for a spreadsheet: text that would start a formula gets a leading ``'``; numbers, and text
    that is only a number (``-0.5``), stay as they are."""
    if not isinstance(v, str) or not v.startswith(FORMULA_STARTS):
        return v
    try:
        float(v)
    except ValueError:
        return "'" + v
    return v


def write_csv(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """The leaderboard's scalar columns (raw numbers, all tasks, in rank order) as CSV with CRLF rows; text
    cells that a spreadsheet would run as a formula get a leading ``'`` (see :func:`csv_cell`)."""
    buf = io.StringIO()
    table = df.reindex(columns=list(CSV_COLUMNS))
    text = [c for c in table.columns if not pd.api.types.is_numeric_dtype(table[c])]
    table[text] = table[text].map(csv_cell)
    # CRLF rows (RFC 4180): the csv writer then also quotes a cell holding a bare CR, which would end a row
    table.to_csv(buf, index=False, quoting=csv.QUOTE_MINIMAL, lineterminator="\r\n", float_format="%.10g")
    return write_text(path, buf.getvalue())


# --------------------------------------------------------------------------- sweeps (Optuna)


def default_storage(root: str | os.PathLike, study: str) -> str:
    """Where ``tools/sweep.py`` run from the folder above ``root`` (``runs``) keeps ``study`` by default: its SQLite
    database ``<root>/sweeps/optuna.db``, else the study's journal ``<root>/sweeps/<study>.journal`` (K workers),
    else ``<root>/optuna.db``; the first that exists (the SQLite database when none does)."""
    root = Path(root)
    for storage, path in ((f"sqlite:///{root / 'sweeps' / 'optuna.db'}", root / "sweeps" / "optuna.db"),
                          (f"journal:{root / 'sweeps' / (study + '.journal')}", root / "sweeps" / f"{study}.journal"),
                          (f"sqlite:///{root / 'optuna.db'}", root / "optuna.db")):
        if path.is_file():
            return storage
    return f"sqlite:///{root / 'sweeps' / 'optuna.db'}"


def load_study(name: str, storage: str):
    """Load an existing Optuna study from an RDB URL or ``journal:<file>`` (a ``.journal`` path also); a missing
    SQLite or journal file is an error (Optuna would create it)."""
    import optuna

    journal = storage[len("journal:"):] if storage.startswith("journal:") else \
        storage if storage.endswith(".journal") else None
    path = Path(journal) if journal is not None else \
        Path(storage[len("sqlite:///"):]) if storage.startswith("sqlite:///") else None
    if path is not None and not path.is_file():
        raise FileNotFoundError(f"no Optuna {'journal' if journal else 'database'} at {path} (storage {storage})")
    if journal is not None:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        storage = JournalStorage(JournalFileBackend(journal))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage=storage)]
        raise KeyError(f"no study {name!r} in {storage}; studies there: {', '.join(names) or 'none'}") from None


def study_trials(study) -> pd.DataFrame:
    """One row per trial: number, state, value (first objective), values, params (dict), duration_s.

    ``attrs`` holds the study's name, directions (``"max"``/``"min"``) and a title.
    """
    rows = []
    for t in study.trials:
        values = t.values
        rows.append({
            "number": t.number, "state": t.state.name,
            "value": float(values[0]) if values else math.nan,
            "values": list(values) if values else None,
            "params": dict(t.params),
            "duration_s": t.duration.total_seconds() if t.duration is not None else math.nan,
        })
    df = pd.DataFrame(rows, columns=["number", "state", "value", "values", "params", "duration_s"])
    directions = ["max" if d.name == "MAXIMIZE" else "min" for d in study.directions]
    df.attrs.update(study=study.study_name, directions=directions,
                    title=f"sweep {study.study_name} — {len(df)} trial(s), "
                          f"{'/'.join(directions)}imize")
    return df


def _fmt_param(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def trial_cells(trials: pd.DataFrame):
    headers = ["trial", "state", "value", "duration", "params"]
    aligns = ["right", "left", "right", "right", "left"]
    rows = []
    for r in trials.to_dict("records"):
        values = r["values"]
        value = ", ".join(fmt_score(v) for v in values) if values and len(values) > 1 else fmt_score(r["value"])
        params = ", ".join(f"{k}={_fmt_param(v)}" for k, v in sorted(r["params"].items()))
        rows.append([str(r["number"]), r["state"], value, fmt_time(r["duration_s"]), params or "—"])
    return headers, aligns, rows


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The epochs of a run's ``metrics.jsonl`` (lines that are not JSON objects are ignored)."""
    path = Path(run_dir) / "metrics.jsonl"
    out = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(rec, dict):
                    out.append(rec)
    except (OSError, UnicodeDecodeError):
        return []
    return out
