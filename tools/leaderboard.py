#!/usr/bin/env python
"""Local leaderboard of run folders: which architecture wins, at what size and speed.

    python tools/leaderboard.py runs/                                   # one table per task
    python tools/leaderboard.py runs/ --task segmentation --sort params
    python tools/leaderboard.py runs/ --group                           # + mean ± std over folds, best per family
    python tools/leaderboard.py runs/ --md lb.md --csv lb.csv --html reports/leaderboard.html
    python tools/leaderboard.py runs/ --study seg-sweep --storage sqlite:///runs/optuna.db --html r.html

Reads every ``summary.json`` under the given folder (runs and ensembles). A summary that cannot be
read, or misses keys, or has values of the wrong type is named in a warning and skipped.
Exit status: 0 on success, 1 when no run was found (and no study given), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tools.report import table as T


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="leaderboard.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="sort columns: " + ", ".join(sorted(set(T.SORTABLE) | set(T.SORT_ALIASES)))
        + "; add ':asc' or ':desc' to force a direction (scores default to best first).",
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
                   help="Optuna storage of --study (default: sqlite:///<root>/optuna.db)")
    p.add_argument("--quiet", "-q", action="store_true", help="no terminal tables (files only)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    root = Path(args.root)
    if not root.exists():
        print(f"error: {root} does not exist", file=sys.stderr)
        return 2
    try:
        T.resolve_sort(args.sort)
    except ValueError as e:
        parser.print_usage(sys.stderr)
        print(f"error: --sort: {e}", file=sys.stderr)
        return 2
    if args.storage and not args.study:
        print("error: --storage needs --study NAME", file=sys.stderr)
        return 2

    df = T.load_runs(root, task=args.task)
    if args.sort:
        df = T.rank_runs(df, sort=args.sort)

    trials = None
    if args.study:
        storage = args.storage or f"sqlite:///{root / 'optuna.db'}"
        try:
            trials = T.study_trials(T.load_study(args.study, storage))
        except (FileNotFoundError, KeyError) as e:
            print(f"error: --study: {e.args[0] if e.args else e}", file=sys.stderr)
            return 2
        except Exception as e:  # unreachable database server, wrong URL, ...
            print(f"error: --study: cannot load {args.study!r} from {storage}: {type(e).__name__}: {e}",
                  file=sys.stderr)
            return 2

    if not len(df):
        where = f" for task {args.task!r}" if args.task else ""
        print(f"no readable summary.json under {root}{where}", file=sys.stderr)

    if not args.quiet:
        from rich.console import Console

        # to a pipe or file: no terminal width to respect, print every column at its natural width
        console = Console() if sys.stdout.isatty() else Console(width=4000)
        T.render_terminal(df, group=args.group, console=console, study_trials=trials)
    written = []
    if args.md:
        written.append(T.write_markdown(df, args.md, group=args.group, study_trials=trials))
    if args.csv:
        written.append(T.write_csv(df, args.csv))
    if args.html:
        from tools.report.html import write_html

        written.append(write_html(df, root, args.html, study=trials))
    for path in written:
        print(f"wrote {os.fspath(path)}", file=sys.stderr)
    return 0 if len(df) or trials is not None else 1


if __name__ == "__main__":
    sys.exit(main())
