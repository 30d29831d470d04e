#!/usr/bin/env python
"""Train one run: ``python train.py -c configs/segmentation/unet_r34.yaml --train.lr=3e-4 --data.fold=1``.

``--data.fold=all`` trains one final model on every image of ``data.root`` for exactly ``train.epochs`` epochs,
with no validation split (nnU-Net's "all" fold): its folder is ``<name>-fall`` and its best.pt is the last epoch
(``engine.folds.full_data_epochs`` gives the epoch count from the cross-validated folds).

``--folds all`` (or ``--folds 0,2``) trains every fold of the config, one run folder each, writes each
fold's out-of-fold predictions, prints every validation metric per fold with its cross-validated mean ± sd
and writes them with each fold's train/val images to ``<out_dir>/<task>/<name>-cv.json`` (engine/folds.py).

Also ``--list-models [--task T]`` (every name it prints resolves; a ``+`` line says which names a family
takes beyond them), ``--list-models --encoders 'convnext*'`` (the timm models usable as ``tu-<name>``),
``--resume`` (continue ``<run_dir>/last.pt`` exactly, with the saved config), ``--overwrite`` (replace a run
already in the folder), ``--debug`` (tracebacks instead of one-line errors), and under
``torchrun --nproc_per_node N train.py -c ...`` the same script trains with DDP.

Before the run folder is created or touched, the config, the run folder's state, every sample of the
dataset and the model are checked (engine/run_folder.py); a fault ends as ``error: <file or key>: ...``.
A fine-tune whose ``model.weights`` is a run's checkpoint warns in one line when that run missed its
``train.target`` or stopped early (engine/pretraining.py).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import engine  # noqa: F401  (offline environment first)
from core.cli import run_main


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Any other --section.key=value overrides the config (W&B agents pass these).")
    parser.add_argument("-c", "--config", help="experiment YAML (configs/<task>/<name>.yaml)")
    parser.add_argument("--resume", action="store_true", help="continue from <run_dir>/last.pt (same config)")
    parser.add_argument("--overwrite", action="store_true", help="replace a run that already lives in the run folder")
    parser.add_argument("--folds", metavar="all|0,2",
                        help="train these folds of the config (data.fold = each; all: 0..data.n_folds-1), one run "
                             "folder each, and write each fold's out-of-fold predictions (<run>/preds/val/)")
    parser.add_argument("--list-models", action="store_true", help="list registered model names and exit")
    parser.add_argument("--task", help="with --list-models: only models serving this task")
    parser.add_argument("--encoders", metavar="PATTERN",
                        help="with --list-models: the timm models matching PATTERN (e.g. 'convnext*'), as the "
                             "tu-<name> encoders of smp:<arch>/tu-<name> and custom:unet3plus/tu-<name>")
    return parser.parse_known_args(argv)


def list_models(task: str | None) -> None:
    """Every registered name that resolves, by family, and one ``+`` line per family on the names beyond them."""
    import models

    for family, names in models.list_models(task).items():
        info = models.families()[family]
        print(f"{family}: {info.description}  [tasks: {', '.join(info.tasks)}]")
        for name in names:
            print(f"  {name}")
        if info.note is not None:
            print(f"  {info.note()}")


def list_encoders(pattern: str) -> None:
    """The ``tu-<name>`` encoders matching ``pattern``, and how many there are."""
    from models.smp_models import timm_encoders

    names = timm_encoders(pattern)
    for name in names:
        print(name)
    print(f"{len(names)} timm models match {pattern!r}: smp:<arch>/<encoder> or custom:unet3plus/<encoder> "
          "(a pair smp cannot build is refused with its reason when a config names it)", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """The command: exit 0, or 2 with one ``error:`` line (``--debug``: the traceback)."""
    return run_main(_train, argv)


def _train(argv: list[str]) -> int:
    args, rest = parse_args(argv)
    if args.encoders is not None and not args.list_models:
        raise ValueError("--encoders: goes with --list-models")
    if args.list_models:
        if args.encoders is not None:
            list_encoders(args.encoders)
        else:
            list_models(args.task)
        return 0
    if not args.config and not rest:
        print("train.py: give -c CONFIG (or --list-models)", file=sys.stderr)
        return 2
    from engine.status import is_main_process, progress_asked, run_line, starting_line, status

    if progress_asked(args.config, rest) and is_main_process():  # before the config and torch load (seconds)
        print(starting_line(args.config), flush=True)
    from engine.config import ConfigError, deep_merge, load_config, parse_overrides

    overrides = parse_overrides(rest)
    if os.environ.get("WANDB_SWEEP_ID") and "run_name" not in overrides.get("logging", {}):
        # each W&B sweep run gets its own folder (the agent passes only the searched keys)
        name = Path(args.config).stem if args.config else "sweep"
        overrides = deep_merge(overrides, {"logging": {"run_name": f"{name}-wb-{os.environ.get('WANDB_RUN_ID', 'run')}"}})
    cfg = load_config(args.config, overrides)
    from engine.pretraining import warn_short_pretraining

    warn_short_pretraining(cfg.model.weights)  # once, before the first fold
    from engine.training import train_one

    if args.folds is None:
        status(cfg, run_line(cfg))
        summary = train_one(cfg, args.resume, args.overwrite)
        val = summary.get("val") or {}
        if cfg.data.has_validation:
            print(f"{cfg.run_dir}: best val/{summary['metric']} = {val.get('score')} (epoch {summary['best_epoch']})")
        else:
            print(f"{cfg.run_dir}: trained on all {summary.get('train_images')} images, no validation; best.pt is "
                  f"the last epoch ({summary['best_epoch']})")
        return 0
    from engine.folds import cv_report, parse_folds, run_folds, write_cv

    if "fold" in overrides.get("data", {}):
        raise ConfigError("--data.fold: give either --folds or --data.fold, not both")
    cfgs = [load_config(args.config, deep_merge(overrides, {"data": {"fold": f}}))
            for f in parse_folds(args.folds, cfg.data.n_folds)]
    rows = run_folds(cfgs, train_one, resume=args.resume, overwrite=args.overwrite)
    if is_main_process():
        print(cv_report(rows))
        print(f"cross-validation: {write_cv(cfgs[0], rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
