"""What a training command is doing before its first epoch bar: one line per step, printed at once.

Loading torch and the model libraries, checking every sample, filling the decode cache, building the model
and converting a YOLO fold take minutes on a real dataset; without these lines ``train.py`` (and ``make
demo``) would print nothing in that time. Lines go to stdout (flushed), only in the process that reports
(rank 0 under torchrun) and only with ``logging.progress``; the long steps show a tqdm bar of their own.
This module imports neither torch nor the config, so the first line comes before they load.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

PROGRESS_KEY = "--logging.progress"


def is_main_process() -> bool:
    """Rank 0 (or not under torchrun): the process that predicts and reports."""
    return int(os.environ.get("RANK", "0")) == 0


def shows_progress(cfg: Any) -> bool:
    """``logging.progress`` in the reporting process."""
    return bool(cfg.logging.progress) and is_main_process()


def status(cfg: Any, text: str) -> None:
    """Print ``text`` now when ``cfg`` shows progress (:func:`shows_progress`)."""
    if shows_progress(cfg):
        print(text, flush=True)


FALSE_WORDS = ("0", "off", "f", "false", "n", "no")  # what the config's boolean check (pydantic) reads as false


def _off(value: Any) -> bool:
    return value is False or value == 0 or (isinstance(value, str) and value.strip().lower() in FALSE_WORDS)


def progress_asked(config: str | None, overrides: Sequence[str]) -> bool:
    """``logging.progress`` as the command line (``--logging.progress=false`` or ``--logging.progress false``) or
    else the YAML sets it, read before the config is loaded and checked (which imports torch and every task);
    anything unreadable here counts as the default, true, and the config check then reports it."""
    import yaml

    asked: str | None = None
    for i, arg in enumerate(overrides):
        key, sep, value = arg.partition("=")
        if key == PROGRESS_KEY:
            asked = value if sep else (overrides[i + 1] if i + 1 < len(overrides) else "")
    if asked is not None:
        return not _off(asked)
    try:
        tree = yaml.safe_load(Path(config).read_text()) if config else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return True
    logging = tree.get("logging") if isinstance(tree, dict) else None
    return not (isinstance(logging, dict) and _off(logging.get("progress", True)))


def starting_line(config: str | None) -> str:
    """The first line of ``train.py``, printed before the config and torch load."""
    return (f"train.py: {config or 'the command-line config'}: loading the config and torch/smp/timm, then checking "
            "the run folder, every sample and the model before the first epoch")


def run_line(cfg: Any) -> str:
    """Where a run goes and what it trains."""
    from tasks.schema import size_text

    fold = f"fold {cfg.data.fold} of {cfg.data.n_folds}" if cfg.data.has_validation else \
        "every image (fold all, no validation)"
    size = f"patches of {cfg.data.input_size} px at the original size" if cfg.data.trains_on_patches else \
        f"{size_text(cfg.data.image_size)} px"
    return f"{cfg.run_dir}: {cfg.model.name} for {cfg.task}, {fold}, {size}"


def data_check_line(cfg: Any, n_train: int, n_val: int) -> str:
    """What :func:`engine.run_folder.check_dataset` is about to do for ``cfg``."""
    from tasks.cache import DEFAULT_CACHE

    where = cfg.data.cache_dir or DEFAULT_CACHE
    size = "original" if cfg.data.trains_on_patches else "training"
    cache = f"; decoded images not yet cached are cached at the {size} size in {where}" if cfg.data.cache else ""
    return f"checking {n_train} training + {n_val} validation samples (each image decoded, its labels read{cache})"
