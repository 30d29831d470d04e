#!/usr/bin/env python
"""Local leaderboard of run folders: which architecture wins, at what size and speed.

    python tools/leaderboard.py runs/                                   # one table per task
    python tools/leaderboard.py runs/ --task segmentation --sort params
    python tools/leaderboard.py runs/ --task keypoints --sort sdr_2px             # any metric score.py stored
    python tools/leaderboard.py runs/ --group                           # + mean ± std over folds, best per family
    python tools/leaderboard.py runs/ --md lb.md --csv lb.csv --html reports/leaderboard.html
    python tools/leaderboard.py runs/ --study seg-sweep --html r.html   # the study where tools/sweep.py keeps it

Reads every ``summary.json`` under the given folder (runs and ensembles). A summary that cannot be
read, or misses keys, or has values of the wrong type is named in a warning and skipped.
Exit status: 0 on success, 1 when no run was found (and no study given), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.cli import run_main  # noqa: E402
from leaderboard import table as T  # noqa: E402
from leaderboard.publish import publish  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="leaderboard.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="sort columns: " + ", ".join(sorted(set(T.SORTABLE) | set(T.SORT_ALIASES)))
        + "; or any metric of the summaries (sdr_2px, mre_mm, rmse, within_12m, ...: the test value when any "
        "run has one, else val; val.<metric> or test.<metric> to choose); add ':asc' or ':desc' to force a "
        "direction (scores and metrics default to best first).",
    )
    p.add_argument("root", nargs="?", default="runs", help="folder to scan for */summary.json (default: runs)")
    p.add_argument("--task", help="show only this task (segmentation, keypoints, boneage, ...)")
    p.add_argument("--sort", metavar="COLUMN", help="sort by this column (default: test score if any, else val)")
    p.add_argument("--group", action="store_true",
                   help="add tables: mean ± std over the folds of each config_id, best run per family")
    p.add_argument("--md", metavar="PATH", help="write the tables as Markdown")
    p.add_argument("--csv", metavar="PATH", help="write the leaderboard (raw numbers) as CSV")
    p.add_argument("--html", metavar="PATH", help="write a self-contained HTML report with plots")
    p.add_argument("--study", metavar="NAME", help="Optuna study to show (trials table and plot)")
    p.add_argument("--storage", metavar="URL",
                   help="Optuna storage of --study: an RDB URL or journal:<file> (default: where tools/sweep.py keeps "
                        "it: <root>/sweeps/optuna.db, <root>/sweeps/<study>.journal, else <root>/optuna.db)")
    p.add_argument("--quiet", "-q", action="store_true", help="no terminal tables (files only)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Faults raise (``run_main`` turns them into one ``error:`` line, exit 2)."""
    args = build_parser().parse_args(argv)
    try:
        T.resolve_sort(args.sort)
    except ValueError as e:
        raise ValueError(f"--sort: {e}") from None
    if args.storage and not args.study:
        raise ValueError("--storage: needs --study NAME")
    return publish(args.root, task=args.task, sort=args.sort, group=args.group, md=args.md, csv=args.csv,
                   html=args.html, study=args.study, storage=args.storage, quiet=args.quiet)


if __name__ == "__main__":
    sys.exit(run_main(main))
