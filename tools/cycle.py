#!/usr/bin/env python
"""Run a whole competition cycle from one plan: every model x fold trained with its out-of-fold predictions,
test predictions with TTA, cross-fitted ensemble selection, fitted thresholds and post-processing, the
submission CSV validated, scored and ranked.

  python tools/cycle.py configs/cycles/demo.yaml                 # run (or continue) the plan
  python tools/cycle.py configs/cycles/demo.yaml --dry-run       # the steps, what is done, the time left
  python tools/cycle.py configs/cycles/demo.yaml --workers 4     # 4 processes: one per GPU, or CPU shares
  python tools/cycle.py configs/cycles/demo.yaml --set train.seed=1 --name demo-s1   # a variant of the plan

Idempotent: a finished step is skipped (its folder says it is done), a training stopped anywhere resumes
from its last.pt, and a run whose saved config differs from the plan's is refused as train.py --resume
refuses it. Several machines sharing the runs folder run the same command: each step is claimed by one
worker (the run-folder lock), a worker's step is taken over when its process dies. The plan format is in
cycle/plan.py and docs/cycle.md.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the cycle package, not this file

import engine  # noqa: E402, F401  (offline environment first)
from core.cli import run_main  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("plan", help="the cycle plan (configs/cycles/<name>.yaml)")
    parser.add_argument("--dry-run", action="store_true", help="print the steps, their state and estimated times")
    parser.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a key of every model's config, over the plan's set: (repeatable), e.g. train.seed=1")
    parser.add_argument("--name", help="another name for the cycle (its folder), e.g. for a --set variant")
    parser.add_argument("--until", choices=("train", "test", "select", "fit", "submit", "pseudo"),
                        help="stop after this stage (e.g. train every model here, ensemble elsewhere); pseudo: the "
                             "pseudo-label rounds too (all of it)")
    parser.add_argument("--rates", help="JSON with train_images_per_s / predict_images_per_s for the estimates "
                                        "of steps no run of this cycle has measured yet")
    parser.add_argument("--poll", type=float, default=2.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers: {args.workers} is not a number of processes (1 or more)")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv)


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    from cycle.estimate import FallbackRates
    from cycle.plan import load_plan
    from cycle.report import final_lines
    from cycle.schedule import describe, run_cycle
    from cycle.steps import build_cycle, check_test_set
    from cycle.workers import WORKER_ENV, run_workers
    from engine.config import ConfigError, parse_overrides

    worker = os.environ.get(WORKER_ENV, "")
    try:
        sets = parse_overrides(["--" + s.removeprefix("--") for s in args.set])
    except ConfigError as err:
        raise ConfigError(f"--set: {err}") from None
    if worker:
        sets["logging.progress"] = False  # several workers on one terminal: their step lines, no bars
    plan = load_plan(args.plan, sets, args.name)
    whole = build_cycle(plan, FallbackRates.read(args.rates))
    cycle = whole.until(args.until) if args.until else whole
    models = len(cycle.runs)
    folds = {len(cfgs) for cfgs in cycle.runs.values()}
    if not worker:
        extra = "".join(f" + {part}" for part, on in (
            ("a run on all data each", plan.full_data is not None),
            (f"{len(whole.rounds) - 1} pseudo-label round(s)", len(whole.rounds) > 1)) if on)
        print(f"cycle {plan.name}: {plan.task}, {models} model(s) x {'/'.join(map(str, sorted(folds)))} fold(s){extra}, "
              f"{len(cycle.steps)} steps, folder {plan.folder}", flush=True)
    if args.dry_run:
        print("\n".join(describe(cycle, args.workers)))
        return 0
    if args.workers > 1 and not worker:
        command = [str(Path(__file__).resolve()), args.plan, *[f"--set={s}" for s in args.set],
                   *(["--name", args.name] if args.name else []), *(["--rates", args.rates] if args.rates else []),
                   *(["--until", args.until] if args.until else []), "--poll", str(args.poll)]
        check_test_set(cycle)
        code = run_workers(command, args.workers)
        if code and not all(s.done() for s in cycle.steps):
            return code
    else:
        if not worker:
            check_test_set(cycle)
        run_cycle(cycle, worker=worker, workers=int(worker.split("/")[1]) if worker else 1, poll_s=args.poll)
        if worker:
            return 0
    left = [s for s in whole.steps if not s.done()]
    if left:
        print(f"stopped after stage {args.until}: {len(left)} steps left (python tools/cycle.py {args.plan} "
              "finishes them)")
    else:
        print("\n".join(final_lines(whole)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
