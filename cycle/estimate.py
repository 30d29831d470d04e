"""How long a step will take, from rates measured on this machine: the cycle's own run folders first (a model's
seconds per training epoch from its ``metrics.jsonl``, its prediction speed from ``summary.json``), then a rates
file (``--rates``: a JSON object with ``train_images_per_s`` and ``predict_images_per_s``, e.g. measured on the
target GPU), else unknown. Standard library only."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from engine.config import ConfigError


@dataclass(frozen=True)
class FallbackRates:
    """Images per second for training and for prediction where no run of the model has measured its own."""

    train_images_per_s: float | None = None
    predict_images_per_s: float | None = None

    @classmethod
    def read(cls, path: str | os.PathLike | None) -> FallbackRates:
        """The rates file's two numbers (``None``: no file, both unknown)."""
        if path is None:
            return cls()
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: rates file not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ConfigError(f"{path}: not a readable JSON rates file ({err})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: a rates file is a JSON object with train_images_per_s, predict_images_per_s")
        values = {}
        for key in ("train_images_per_s", "predict_images_per_s"):
            value = raw.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
                raise ConfigError(f"{path}: {key} must be a positive number, got {value!r}")
            values[key] = None if value is None else float(value)
        return cls(**values)


def seconds_per_epoch(run_dir: Path) -> float | None:
    """Training seconds per epoch of a started or finished run (its ``metrics.jsonl``: cumulative ``time_s``)."""
    path = run_dir / "metrics.jsonl"
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        last = json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None
    if not isinstance(last, dict) or not isinstance(last.get("time_s"), (int, float)) or last["time_s"] <= 0:
        return None
    return float(last["time_s"]) / (int(last.get("epoch", 0)) + 1)


def epochs_done(run_dir: Path) -> int:
    """Epochs a run has finished (0 for none)."""
    path = run_dir / "metrics.jsonl"
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return int(json.loads(lines[-1]).get("epoch", -1)) + 1 if lines else 0
    except (OSError, ValueError, AttributeError):
        return 0


def prediction_rate(run_dir: Path, tta: bool) -> float | None:
    """Images per second a run predicted at (with TTA views when ``tta``), from its summary.json."""
    try:
        speed = json.loads((run_dir / "summary.json").read_text(encoding="utf-8")).get("speed") or {}
    except (OSError, ValueError, AttributeError):
        return None
    value = speed.get("images_per_s_tta" if tta else "images_per_s") or speed.get("images_per_s")
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


def format_seconds(seconds: float | None) -> str:
    """``"4m10s"``, ``"1h02m"``, ``"?"`` for unknown."""
    if seconds is None:
        return "?"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
