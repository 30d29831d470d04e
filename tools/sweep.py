#!/usr/bin/env python
"""Hyperparameter sweep with Optuna over the W&B-format search space of ``sweep_config.yaml``.

    python tools/sweep.py sweep_config.yaml --n-trials 30
    python tools/sweep.py sweep_config.yaml --n-trials 40 --workers 4            # 4 local processes, one study
    python tools/sweep.py sweep_config.yaml --n-trials 20 --storage postgresql://user:pw@db-host:5432/optuna
    python tools/sweep.py sweep_config.yaml --set data.root=data/phantom/handbones/train --set train.epochs=5
    python tools/sweep.py sweep_config.yaml --show                               # only the ranked table

The same file runs on W&B: ``wandb sweep sweep_config.yaml && wandb agent <entity/project/id>``.
Rerunning with the same study name (default: the sweep file's ``name:``, else its file name) resumes the study
and adds ``--n-trials`` more. The command ends when that many of its trials ended, over all its workers: a
worker that dies loses its running trial (marked FAIL) and the surviving workers run one in its place.
"""
from __future__ import annotations

import argparse
import sys

import engine  # noqa: F401  (offline environment first)
from core.cli import run_main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", help="W&B-format sweep file (sweep_config.yaml)")
    p.add_argument("--n-trials", type=int, default=10,
                   help="trials this command adds to the study (a resumed study gets N more, as study.optimize "
                        "does; run_cap caps the total): it runs until N of its trials ended (complete, pruned, or "
                        "failed with their error), shared by all --workers; a trial lost with a killed worker does "
                        "not count and another worker runs one in its place (default 10; 0 with --timeout: until "
                        "the timeout)")
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    p.add_argument("--study-name", help="Optuna study (default: name: of the sweep file, else its file name)")
    p.add_argument("--storage", help="sqlite:///path.db | postgresql://user:pw@host:5432/db | PATH.journal "
                                     "(default: sqlite:///runs/sweeps/optuna.db; runs/sweeps/<study>.journal "
                                     "with --workers > 1)")
    p.add_argument("--workers", type=int, default=1, help="local worker processes sharing the study (default 1)")
    p.add_argument("--subprocess", action="store_true",
                   help="run each trial as 'python train.py -c BASE --k=v ...' (pruning terminates it)")
    p.add_argument("--base", help="base config (default: the '-c PATH' in the sweep file's command:)")
    p.add_argument("--set", dest="sets", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="fixed overrides for every trial, e.g. --set data.root=data/x train.epochs=5")
    p.add_argument("--seed", type=int, help="sampler seed (workers and resumed runs derive their own from it)")
    prune = p.add_mutually_exclusive_group()
    prune.add_argument("--prune-all", action="store_true",
                       help="prune every trial after its first validated epoch (checks the pruning path)")
    prune.add_argument("--no-prune", action="store_true", help="ignore early_terminate")
    p.add_argument("--heartbeat", type=int, default=60,
                   help="RDB storages: heartbeat interval in s; a trial silent for 2x this is marked FAIL (0: off)")
    p.add_argument("--retry-failed", type=int, default=0,
                   help="queue a trial whose worker died again, at most this many times (default 0)")
    p.add_argument("--top", type=int, default=30, help="rows of the ranked table (0: all)")
    p.add_argument("--show", action="store_true", help="print the ranked table of the study and exit")
    p.add_argument("--dry-run", action="store_true",
                   help="run the whole sweep machinery with a cheap synthetic objective instead of training")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """The command; faults of input raise (``SweepError``, ``SweepSpecError``: ValueErrors) for ``run_main``."""
    args = parse_args(argv)
    from sweeps.runner import SweepError, SweepOptions, default_study_name, print_table, run_sweep, show_study
    from sweeps.space import load_sweep

    spec = load_sweep(args.sweep)
    study_name = args.study_name or default_study_name(spec)
    opts = SweepOptions(
        spec=spec, study_name=study_name, storage=args.storage,
        n_trials=args.n_trials if args.n_trials > 0 or args.timeout is None else None,
        timeout=args.timeout, workers=args.workers, subprocess=args.subprocess, base=args.base, sets=args.sets,
        seed=args.seed, prune="all" if args.prune_all else "none" if args.no_prune else "auto",
        heartbeat=args.heartbeat or None, retry_failed=args.retry_failed,
        train_fn="sweeps.runner:synthetic_train" if args.dry_run else None)
    if args.dry_run and args.subprocess:
        raise SweepError("--dry-run runs in-process; drop --subprocess")
    if args.show:
        show_study(spec, study_name, args.storage, top=args.top or None)
        return 0
    result = run_sweep(opts)
    print_table(result.study, spec, result.storage, top=args.top or None)
    if result.interrupted:
        print("interrupted: the running trial was marked FAIL; rerun the same command to resume the study",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
