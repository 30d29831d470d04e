#!/usr/bin/env python
"""Export a trained run to ONNX or TorchScript and check the export against PyTorch.

  python tools/export.py --ckpt runs/segmentation/<run>/best.pt --format onnx              # -> <run>/best.onnx
  python tools/export.py --ckpt runs/boneage/<run>/best.pt --format torchscript -o exports/ba.torchscript
  python tools/export.py --ckpt runs/keypoints/<run>/best.pt --format onnx --check 8

Any run: segmentation (smp, custom:unet3plus), keypoints (heatmap models, hint: ones with their hint maps
as a second input), bone age (timm regressors with the sex as a second input), YOLO-seg (ultralytics' own
exporter). Exported on the CPU at the run's input size with a dynamic batch and, where the model allows,
dynamic height and width; then run beside PyTorch on the first N validation images of the run's fold
(phantom hands where the run's data is not at hand), printing the max abs difference of the outputs. The
report goes beside the export as <file>.json. An export that differs at the run's size is not written.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # first: before tools/, whose phantom.py shadows the package

import engine  # noqa: E402,F401  (offline environment first)
from core.cli import run_main  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="a run's checkpoint (runs/<task>/<run>/best.pt)")
    parser.add_argument("--format", required=True, help="onnx or torchscript")
    parser.add_argument("-o", "--out", help="the file to write (default: beside the checkpoint, best.onnx / "
                                            "best.torchscript)")
    parser.add_argument("--check", type=int, default=4, metavar="N", help="images to check the export on (default 4)")
    parser.add_argument("--atol", type=float, default=1e-3,
                        help="the check passes when the max abs difference is within atol + rtol x the largest "
                             "output magnitude (default 1e-3)")
    parser.add_argument("--rtol", type=float, default=1e-3, help="see --atol (default 1e-3)")
    return parser.parse_args(argv)


def _export(argv: list[str]) -> int:
    args = parse_args(argv)
    from contextlib import nullcontext

    from engine.export import export_run
    from phantom import render_hand
    from tasks.formats.run_lock import claim

    run_dir = Path(args.ckpt).parent  # written into (the default -o) only under the run folder's claim
    inside = args.out is None or Path(args.out).resolve().parent == run_dir.resolve()
    with claim(run_dir) if inside else nullcontext():
        result = export_run(args.ckpt, args.format.lower(), args.out, check=args.check, atol=args.atol,
                            rtol=args.rtol, phantoms=render_hand)
    print("\n".join(result.lines()))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main(_export, argv)


if __name__ == "__main__":
    sys.exit(main())
