"""One place that makes every third-party library behave offline.

Imported first by ``engine/__init__.py`` so the variables are set before albumentations, ultralytics,
timm/huggingface or wandb are imported anywhere. Nothing is written into the user's home directory:
caches and ultralytics settings live under the project's ``.cache/``. Setting the variables costs
nothing (the CSV-only tools import ``core.cli`` through here); the font ultralytics wants is copied by
:func:`provide_yolo_fonts`, which the YOLO plugin calls when it is imported.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from core.atomic import atomic_write

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = Path(os.environ.get("BONEHARNESS_CACHE", PROJECT_ROOT / ".cache"))


def _font_into(config_dir: Path) -> None:
    """Ultralytics downloads Arial.ttf on first plot; hand it matplotlib's DejaVuSans instead."""
    target = config_dir / "Arial.ttf"
    if target.exists():
        return
    # Found without importing matplotlib (half a second): every command imports this module.
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        return
    font = Path(next(iter(spec.submodule_search_locations))) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
    if font.exists():
        for name in ("Arial.Unicode.ttf", "Arial.ttf"):  # Arial.ttf last: its presence means both are there
            with open(font, "rb") as src, atomic_write(config_dir / name, "wb") as dst:
                shutil.copyfileobj(src, dst)


def setup_offline() -> None:
    """Set the environment so no library reaches the network or the home directory."""
    yolo_dir = CACHE_DIR / "ultralytics"
    defaults = {
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "NO_ALBUMENTATIONS_UPDATE": "1",
        "YOLO_OFFLINE": "true",
        "YOLO_AUTOINSTALL": "false",
        "YOLO_VERBOSE": os.environ.get("YOLO_VERBOSE", "false"),
        "YOLO_CONFIG_DIR": str(yolo_dir),
        "WANDB_MODE": os.environ.get("WANDB_MODE", "disabled"),
        "WANDB_DIR": str(CACHE_DIR / "wandb"),
        "WANDB_CACHE_DIR": str(CACHE_DIR / "wandb" / "cache"),
        "WANDB_CONFIG_DIR": str(CACHE_DIR / "wandb" / "config"),
        "WANDB_DATA_DIR": str(CACHE_DIR / "wandb" / "data"),
        "WANDB_ARTIFACT_DIR": str(CACHE_DIR / "wandb" / "artifacts"),
        "XDG_CACHE_HOME": str(CACHE_DIR / "xdg"),
        "WANDB_SILENT": "true",
        "TORCH_HOME": str(CACHE_DIR / "torch"),
        "HF_HOME": str(CACHE_DIR / "huggingface"),
        "MPLCONFIGDIR": str(CACHE_DIR / "matplotlib"),
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


def provide_yolo_fonts() -> None:
    """Put a font where ultralytics looks for Arial.ttf (it downloads one otherwise); imports matplotlib
    the first time only, so it belongs to the commands that train or run YOLO, not to every command."""
    config_dir = Path(os.environ.get("YOLO_CONFIG_DIR", CACHE_DIR / "ultralytics"))
    # Ultralytics >= 8.3.x reads fonts and settings from $YOLO_CONFIG_DIR/Ultralytics, older releases from
    # $YOLO_CONFIG_DIR itself: fill both, or check_font() asks the network for Arial.ttf.
    for directory in (config_dir, config_dir / "Ultralytics"):
        _font_into(directory)


setup_offline()
