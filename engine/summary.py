"""``summary.json`` of a run or an ensemble: what the leaderboard reads."""
from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from engine.cli import Output
from engine.offline import PROJECT_ROOT
from tasks.formats.atomic import write_text


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def split_model_name(name: str) -> dict[str, str | None]:
    family, _, rest = name.partition(":")
    arch, sep, encoder = rest.partition("/")
    return {"family": family, "arch": arch if sep else rest, "encoder": encoder if sep else None}


def base_summary(**fields: Any) -> dict[str, Any]:
    """All keys the leaderboard expects, null where unknown, then ``fields``. ``flops``: per image at the run's
    input size (:mod:`engine.cost`)."""
    summary: dict[str, Any] = {
        "name": None, "task": None, "kind": "run", "model": None, "family": None, "arch": None, "encoder": None,
        "config_id": None, "image_size": None, "fold": None, "n_folds": None, "epochs": None, "params": None,
        "flops": None, "train_time_s": None, "train_images_per_s": None, "metric": None, "mode": None, "best_epoch": None,
        "val": None, "test": None, "speed": None, "members": None, "git_commit": git_commit(),
        "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    summary.update(fields)
    return summary


def read_summary(run_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(run_dir) / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def write_summary(run_dir: str | os.PathLike, summary: dict[str, Any]) -> None:
    write_text(Path(run_dir) / "summary.json", json.dumps(summary, indent=2))


def update_summary(run_dir: str | os.PathLike, *, merge: bool = True, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into an existing summary (e.g. inference speed: an object merges key by key).
    ``merge=False`` replaces each field whole (test scores: a new score leaves none of the old one's keys)."""
    summary = read_summary(run_dir) or base_summary()
    for key, value in fields.items():
        if merge and isinstance(value, dict) and isinstance(summary.get(key), dict):
            summary[key] = {**summary[key], **value}
        else:
            summary[key] = value
    write_summary(run_dir, summary)
    return summary


def record_summary(run_dir: str | os.PathLike, *, merge: bool = True, **fields: Any) -> bool:
    """:func:`update_summary` as bookkeeping after a command's real output (a prediction, a score): a
    summary that cannot be written (read-only run folder, full disk) is a warning, not a failure."""
    return Output(Path(run_dir) / "summary.json", required=False)(update_summary, run_dir, merge=merge, **fields)
