#!/usr/bin/env python
"""Predict and write a submission CSV.

Image size, classes, thresholds and normalisation come from the checkpoint's own config; the run's
config.yaml (or -c) supplies only where the data lives and runtime settings, and a disagreement is
reported. ``--section.key=value`` overrides are applied last. Faults end as one ``error:`` line, exit 2
(``--debug`` shows the traceback).

  python inference.py -c runs/segmentation/<run>/config.yaml --ckpt runs/segmentation/<run>/best.pt --tta -o submissions/a.csv
  python inference.py --ckpt runs/segmentation/<run>/best.pt --split val --save-probs     # validation predictions for fitting
  python inference.py --ckpt runs/segmentation/<run>/best.pt --sliding-window --tta        # tiles at the original resolution
  python inference.py --ckpt runs/segmentation/<roi-run>/best.pt --stage1 runs/segmentation/<run>/best.pt  # two-stage wrist ROI
  python inference.py --ensemble configs/ensembles/seg_soft.yaml --tta -o submissions/ens.csv  # members on the fly
  python inference.py --ensemble configs/ensembles/seg_weighted.yaml --from-cache              # from <run>/preds/test
  python inference.py --ensemble configs/ensembles/kp_hard.yaml --tta                           # any task: keypoints, boneage

An ensemble writes its CSV and, for the test set, its run folder <out_dir>/<task>/<name>/summary.json.
Whatever writes into a run folder (the speed in summary.json, --save-probs into <run>/preds/<split>, an
ensemble's summary) holds that folder's claim while it runs: one in use by another process is refused.
"""
from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import engine  # noqa: F401  (offline environment first)
from core.cli import run_main
from engine.config import parse_overrides
from tasks.formats.run_lock import claim_bookkeeping


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", help="run config (default: config.yaml beside the checkpoint)")
    parser.add_argument("--ckpt", help="checkpoint (best.pt / last.pt of a run)")
    parser.add_argument("--stage1", metavar="CKPT",
                        help="two-stage wrist ROI: --ckpt is the stage-2 (data.roi) run, this the stage-1 checkpoint")
    parser.add_argument("--ensemble", metavar="YAML", help="ensemble config (configs/ensembles/*.yaml) instead of --ckpt")
    parser.add_argument("--from-cache", action="store_true",
                        help="--ensemble: fuse the members' cached predictions (<run>/preds/<split>/) instead of running them")
    parser.add_argument("-o", "--out", help="submission CSV (default: submissions/<run>[-tta].csv)")
    parser.add_argument("--tta", action="store_true", help="test-time augmentation from inference.tta")
    parser.add_argument("--sliding-window", action="store_true",
                        help="overlapping tiles at the original resolution instead of resizing the whole image "
                             "(= --inference.sliding_window=true; overlap: --inference.tile_overlap=0.5)")
    parser.add_argument("--split", choices=("test", "val"), default="test",
                        help="test: data.test_root; val: the run's validation fold")
    parser.add_argument("--save-probs", nargs="?", const="auto", default=None, metavar="DIR",
                        help="write the prediction cache (default DIR: <run>/preds/<split>)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=None, help="post-processing threads")
    return parser.parse_known_args(argv)


def run_ensemble(args: argparse.Namespace) -> dict:
    """Predict an ensemble YAML (:func:`ensembles.api.predict_ensemble`)."""
    from ensembles.api import predict_ensemble
    from ensembles.config import load_ensemble_config

    ens = load_ensemble_config(args.ensemble)
    out = args.out or f"submissions/{ens.run_name}{'-tta' if args.tta else ''}{'-val' if args.split == 'val' else ''}.csv"
    return predict_ensemble(ens, out_csv=out, split=args.split, tta=args.tta, from_cache=args.from_cache, device=args.device,
                  workers=args.workers)


def main(argv: list[str] | None = None) -> int:
    """The command: exit 0, or 2 with one ``error:`` line (``--debug``: the traceback)."""
    return run_main(_infer, argv)


def run_config(args: argparse.Namespace, rest: list[str], ckpt):
    """The config of ``ckpt`` (the checkpoint as read, :class:`engine.checkpoint.Checkpoint`) with the locations
    of -c / the run's config.yaml and the overrides."""
    from engine.run_folder import checkpoint_config

    saved = ckpt.path.parent / "config.yaml"
    cfg_path = args.config or (saved if saved.is_file() else None)
    overrides = parse_overrides(rest)
    if args.sliding_window:
        overrides.setdefault("inference", {})["sliding_window"] = True
    cfg, notes = checkpoint_config(ckpt, cfg_path, overrides)
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    return cfg


def _infer(argv: list[str]) -> int:
    args, rest = parse_args(argv)
    if args.ensemble:
        if args.ckpt or args.config or rest or args.save_probs or args.sliding_window or args.stage1:
            print("inference.py: --ensemble takes no --ckpt, -c, --stage1, --save-probs, --sliding-window or overrides "
                  "(members are run folders; each predicts as its config.yaml's inference section says)", file=sys.stderr)
            return 2
        stats = run_ensemble(args)
        print(f"wrote {stats['csv']}: {stats['images']} images in {stats['seconds']:.1f}s ({stats['images_per_s']:.2f} img/s)")
        return 0
    if args.from_cache:
        print("inference.py: --from-cache needs --ensemble", file=sys.stderr)
        return 2
    if not args.ckpt:
        print("inference.py: give --ckpt (or --ensemble)", file=sys.stderr)
        return 2
    run_dir = Path(args.ckpt).parent
    writes_run = args.save_probs == "auto" or (run_dir / "summary.json").is_file()  # its cache, its speed
    with claim_bookkeeping(run_dir) if writes_run else nullcontext():
        return predict_one(args, rest)


def predict_one(args: argparse.Namespace, rest: list[str]) -> int:
    """Predict the run of ``args.ckpt`` (the command without ``--ensemble``)."""
    from engine.checkpoint import open_checkpoint
    from engine.predictor import predict_run as predict  # here: --help and --ensemble need no single-run predictor

    ckpt = open_checkpoint(args.ckpt)  # read once: its config here, its weights in the predictor
    cfg = run_config(args, rest, ckpt)
    out = args.out or f"submissions/{ckpt.path.parent.name}{'-tta' if args.tta else ''}{'-val' if args.split == 'val' else ''}.csv"
    if args.stage1:
        from engine.roi_predictor import predict_two_stage

        predict = partial(predict_two_stage, stage1=args.stage1)
    stats = predict(cfg, ckpt, out_csv=out, split=args.split, tta=args.tta, save_probs_dir=args.save_probs,
                    device=args.device, workers=args.workers)
    print(f"wrote {stats['csv']}: {stats['images']} images in {stats['seconds']:.1f}s ({stats['images_per_s']:.2f} img/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
