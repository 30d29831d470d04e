"""The leaderboard of a folder of runs, end to end: load the summaries (and an Optuna study), rank them,
print the terminal tables and write the Markdown, CSV and HTML files asked for. The command is
``tools/leaderboard.py``; :func:`publish` is what it calls."""
from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

from leaderboard import table as T


class LeaderboardError(ValueError):
    """A fault of the request (missing folder, unreadable study); the message names what is wrong."""


def study_frame(name: str, storage: str):
    """The trials of Optuna study ``name`` in ``storage`` as a frame (:func:`leaderboard.table.study_trials`)."""
    try:
        return T.study_trials(T.load_study(name, storage))
    except (FileNotFoundError, KeyError) as e:
        raise LeaderboardError(f"--study: {e.args[0] if e.args else e}") from None
    except Exception as e:  # unreachable database server, wrong URL, ...
        raise LeaderboardError(f"--study: cannot load {name!r} from {storage}: {type(e).__name__}: {e}") from None


def publish(root: str | os.PathLike, *, task: str | None = None, sort: str | None = None, group: bool = False,
            md: str | None = None, csv: str | None = None, html: str | None = None, study: str | None = None,
            storage: str | None = None, quiet: bool = False) -> int:
    """Tables of the runs under ``root`` on the terminal (unless ``quiet``) and in the files named.

    Returns the exit status: 0, or 1 when no run was found and no study given. Raises
    :class:`LeaderboardError` for a missing ``root`` or a study that cannot be loaded (``storage``
    defaults to where ``tools/sweep.py`` keeps it, :func:`leaderboard.table.default_storage`).
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(errno.ENOENT, "does not exist", str(root))
    df = T.load_runs(root, task=task)
    if sort:
        df = T.rank_runs(df, sort=sort)
    trials = study_frame(study, storage or T.default_storage(root, study)) if study else None
    if not len(df):
        where = f" for task {task!r}" if task else ""
        print(f"no readable summary.json under {root}{where}", file=sys.stderr)

    if not quiet:
        from core.tables import table_console

        # a terminal (or COLUMNS): tables fold to its width; a pipe or file: every column at its natural width
        console = table_console()
        T.render_terminal(df, group=group, console=console, study_trials=trials)
    written = []
    if md:
        written.append(T.write_markdown(df, md, group=group, study_trials=trials))
    if csv:
        written.append(T.write_csv(df, csv))
    if html:
        from leaderboard.html import write_html

        written.append(write_html(df, root, html, study=trials))
    for path in written:
        print(f"wrote {os.fspath(path)}", file=sys.stderr)
    return 0 if len(df) or trials is not None else 1
