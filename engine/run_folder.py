"""A run folder never lies: everything is checked before ``runs/<task>/<name>/`` is created or touched.

The order every learner follows (the torch trainer and external learners such as YOLO alike):

1. :func:`check_run_folder` — read-only: a fresh run may not land on an existing run (the ways out are
   ``--resume``, another ``logging.run_name`` or ``--overwrite``); ``--resume`` needs ``last.pt`` and the
   same config as the one saved, else it names the keys that differ.
2. :func:`check_dataset` — every training and validation sample is loaded once (image decoded, labels
   parsed, sizes checked), like nnU-Net's dataset integrity check; with the decode cache on, this also
   fills the cache the first epoch would fill anyway.
3. :func:`open_run_folder` — only now is the folder made (emptied first with ``--overwrite``) and the
   resolved config written.

All of it, and the training that follows, runs under the folder's claim (:func:`claim_run`, taken before
step 1), so two processes never check, create or write one run folder at once.
"""
from __future__ import annotations

import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from engine.config import Config, load_config, save_config
from engine.status import is_main_process
from tasks.formats.run_lock import claim

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from engine.checkpoint import Checkpoint

# Files whose presence makes a folder a run (started or finished).
RUN_FILES = ("config.yaml", "last.pt", "best.pt", "summary.json", "metrics.jsonl")
# Keys that may change on --resume: where the process runs and how it reports, not what it computes.
RESUME_FREE_KEYS = frozenset({
    "train.device", "data.num_workers", "data.cache", "data.cache_dir", "logging.progress", "logging.wandb",
    "logging.wandb_project", "logging.tensorboard", "inference.post_workers",
})


class RunFolderError(ValueError):
    """A run folder that must not be used as asked (the message names it and the ways out)."""


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` → ``{"train.lr": 1}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def differing_keys(a: dict[str, Any], b: dict[str, Any], ignore: Iterable[str] = ()) -> list[str]:
    """Dotted keys whose values differ between two config trees (missing on one side counts)."""
    fa, fb = flatten(a), flatten(b)
    skip = set(ignore)
    return sorted(k for k in set(fa) | set(fb) if k not in skip and fa.get(k, "<unset>") != fb.get(k, "<unset>"))


def describe_difference(keys: Sequence[str], saved: dict[str, Any], new: dict[str, Any], limit: int = 6) -> str:
    fs, fn = flatten(saved), flatten(new)
    shown = [f"{k} (saved {fs.get(k, '<unset>')!r}, now {fn.get(k, '<unset>')!r})" for k in keys[:limit]]
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return "; ".join(shown) + more


def holds_run(run_dir: Path) -> bool:
    return run_dir.is_dir() and any((run_dir / name).exists() for name in RUN_FILES)


def claim_run(run_dir: str | os.PathLike) -> AbstractContextManager:
    """The run folder's claim (:mod:`tasks.formats.run_lock`) for the process that writes it: rank 0 under
    torchrun (the others hold nothing), the process itself otherwise. Refused: ``RunFolderInUse``."""
    return claim(run_dir) if is_main_process() else nullcontext()


def check_same_config(cfg: Config, what: str) -> None:
    """Refuse ``what`` (``--resume``, a cycle taking a finished run) where the run folder's saved config differs
    from ``cfg`` in a key that changes what the run computes; the error names the keys and both values."""
    saved_path = cfg.run_dir / "config.yaml"
    saved = load_config(saved_path).to_dict()
    keys = differing_keys(saved, cfg.to_dict(), ignore=RESUME_FREE_KEYS)
    if keys:
        raise RunFolderError(f"{saved_path}: {what} with a different config ({describe_difference(keys, saved, cfg.to_dict())}); "
                             "resume with the saved config, or start a new run under another logging.run_name")


def check_run_folder(cfg: Config, resume: bool, overwrite: bool) -> None:
    """Refuse, before anything is written, a run that would overwrite or mix with another run's folder."""
    run_dir = cfg.run_dir
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(f"{run_dir}: exists and is not a folder")
    if resume and overwrite:
        raise RunFolderError(f"{run_dir}: --resume continues the run and --overwrite replaces it; give one")
    if resume:
        last = run_dir / "last.pt"
        if not last.is_file():
            way = "start it afresh with --overwrite" if holds_run(run_dir) else "start the run without --resume"
            raise RunFolderError(f"{last}: nothing to resume (no last.pt); {way}")
        check_same_config(cfg, "--resume")
        return
    if holds_run(run_dir) and not overwrite:
        state = "a finished run" if (run_dir / "summary.json").is_file() else "a started run"
        raise RunFolderError(f"{run_dir}: holds {state}; continue it with --resume, choose another "
                             "--logging.run_name=NAME, or replace it with --overwrite")


def check_dataset(datasets: Sequence["Dataset"], workers: int = 0, progress: bool = False) -> int:
    """Load every sample of ``datasets`` once; the first bad one raises its reader's error. Returns the count.

    Items are read exactly as training reads them (``dataset[i]``), so whatever the readers and the
    per-sample checks refuse (an image that does not decode, a label that does not parse, points off
    the image) is refused here, before the run folder exists. Labels that read but look wrong (a dataset's
    ``label_notes``: a hand-bone file lacking a bone while another label repeats) are printed as
    ``warning:`` lines on stderr, and counted in a last one. ``progress``: a bar over the samples.
    """
    from tqdm import tqdm

    jobs = [(ds, i) for ds in datasets for i in range(len(ds))]

    def check(job: tuple[Dataset, int]) -> list[str]:
        ds, i = job
        ds[i]
        notes = getattr(ds, "label_notes", None)
        return notes(i) if notes is not None else []

    notes: list[str] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, \
            tqdm(total=len(jobs), desc="checking samples", unit="img", disable=not progress, leave=False,
                 dynamic_ncols=True) as bar:
        for found in pool.map(check, jobs):
            notes += found
            bar.update(1)
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    if notes:
        print(f"warning: {len(notes)} of {len(jobs)} samples have labels that look wrong (above); training goes on "
              "with them as they are", file=sys.stderr)
    return len(jobs)


def open_run_folder(cfg: Config, resume: bool, overwrite: bool) -> Path:
    """Create (or, with ``overwrite``, empty and recreate) the run folder and save the resolved config.

    Call only after :func:`check_run_folder` and the data/model checks passed, and only on rank 0.
    A resumed run keeps its saved config file untouched.
    """
    run_dir = cfg.run_dir
    if overwrite and run_dir.is_dir():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        save_config(cfg, run_dir / "config.yaml")
    return run_dir


def check_run(cfg: Config, resume: bool, overwrite: bool) -> None:
    """Steps 1 and 2 for a learner that trains in its own loop (e.g. ultralytics YOLO): check the folder, then
    every sample of the configured fold. Read-only: step 3 (:func:`open_run_folder`) is the learner's, after
    whatever else it prepares outside the run folder (YOLO converts the fold into the cache)."""
    from engine.status import data_check_line, shows_progress, status

    check_run_folder(cfg, resume, overwrite)
    datasets = cfg.spec.task_class()(cfg).datasets()
    status(cfg, data_check_line(cfg, *(len(ds) for ds in datasets)))
    check_dataset(datasets, workers=max(1, cfg.data.num_workers), progress=shows_progress(cfg))


# Keys a run's config.yaml (or -c CONFIG) may set for inference: where the data lives and how the process
# runs. Everything else (image size, classes, thresholds, normalisation, model) comes from the checkpoint.
LOCATION_KEYS = frozenset({
    "data.root", "data.test_root", "data.cache", "data.cache_dir", "data.num_workers", "data.labels", "data.images",
    "data.spacing", "data.split_file", "data.train_csv", "data.train_images", "data.test_csv", "data.test_images",
    "inference.batch_size", "inference.post_workers", "inference.sliding_window", "inference.tile_overlap",
    "train.device",
})
LOCATION_PREFIXES = ("logging.", "inference.tta.")


def is_location_key(key: str) -> bool:
    return key in LOCATION_KEYS or key.startswith(LOCATION_PREFIXES)


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def inference_config(ckpt_config: dict[str, Any], ckpt_path: str | Path, config_path: str | Path | None = None,
                     overrides: dict[str, Any] | None = None) -> tuple[Config, list[str]]:
    """The config to predict with: the checkpoint's own, with the data locations and runtime settings of
    ``config_path`` (a run's ``config.yaml`` or ``-c``), then explicit command-line ``overrides``.

    Returns the config and warnings: one for a config file that disagrees with the checkpoint on what
    the weights were trained with (its values are ignored, the checkpoint's used).
    """
    from engine.config import build_config, deep_merge

    merged = flatten(ckpt_config)
    notes: list[str] = []
    if config_path is not None:
        file_flat = flatten(load_config(config_path).to_dict())
        disagree = []
        for key, value in file_flat.items():
            if is_location_key(key):
                merged[key] = value
            elif merged.get(key, "<unset>") != value and not key.startswith(("train.", "augment.", "loss.")):
                disagree.append(key)
        if disagree:
            notes.append(f"{config_path}: differs from the checkpoint {ckpt_path} in "
                         f"{describe_difference(disagree, ckpt_config, unflatten(file_flat))}; "
                         "using the checkpoint's values, which the weights were trained with")
    tree = deep_merge(unflatten(merged), overrides or {})
    return build_config(tree, str(ckpt_path)), notes


def checkpoint_config(ckpt: str | os.PathLike, config_path: str | Path | None = None,
                      overrides: dict[str, Any] | None = None) -> tuple[Config, list[str]]:
    """:func:`inference_config` of the checkpoint ``ckpt``: a file (read with ``weights_only=True``) or a
    :class:`engine.checkpoint.Checkpoint` already read, which the model is then built from without a second read."""
    from engine.checkpoint import open_checkpoint

    ckpt = open_checkpoint(ckpt)
    return inference_config(ckpt.config, ckpt.path, config_path, overrides)


def member_config(run_dir: str | Path, checkpoint: str = "best.pt") -> tuple[Config, "Checkpoint | None"]:
    """A trained run's config for prediction and its checkpoint, read once (None without one): the
    checkpoint's config where ``<run_dir>/<checkpoint>`` exists (its config.yaml then supplies data
    locations, and a disagreement is warned about), else the run's config.yaml (e.g. an ensemble fused from
    cached predictions alone)."""
    import warnings

    from engine.checkpoint import open_checkpoint

    run_dir = Path(run_dir)
    if not (run_dir / checkpoint).is_file():
        return load_config(run_dir / "config.yaml"), None
    ckpt = open_checkpoint(run_dir / checkpoint)
    cfg, notes = checkpoint_config(ckpt, run_dir / "config.yaml")
    for note in notes:
        warnings.warn(note, stacklevel=2)
    return cfg, ckpt
