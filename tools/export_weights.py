#!/usr/bin/env python
"""Write the ImageNet encoder weights of a listed model to a local file, for ``model.weights``.

  python tools/export_weights.py smp:unet/resnet34 -o weights/resnet34.pth        # on a machine with internet

Copy the file to the offline machine and set ``--model.weights=weights/resnet34.pth`` (or ``model.weights``
in the YAML). smp and timm download the weights (this command alone goes online: ``HF_HUB_OFFLINE=1``
set by you keeps it offline); offline, or when the Hugging Face Hub does not answer a quick check, the weights
come from the local hub cache only, and their absence ends in one line. The file holds tensors only. ``--random`` writes a randomly initialised
encoder instead (no download), to check the round trip offline.
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "0")   # before engine sets it to 1: this command downloads

import engine  # noqa: E402,F401  (project-local caches; offline switches for everything else)
from engine.cli import run_main  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a model name as train.py --list-models lists it, e.g. smp:unet/resnet34")
    parser.add_argument("-o", "--out", required=True, help="the weights file to write (.pth)")
    parser.add_argument("--random", action="store_true", help="randomly initialised weights (no download)")
    return parser.parse_args(argv)


def _export(argv: list[str]) -> int:
    args = parse_args(argv)
    import torch

    from models.pretrained import encoder_state
    from tasks.formats.atomic import atomic_write

    state = encoder_state(args.model, pretrained=not args.random)
    with atomic_write(args.out, "wb") as f:
        torch.save(state, f)
    print(f"{args.out}: {len(state)} encoder tensors of {args.model}; train with --model.weights={args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main(_export, argv)


if __name__ == "__main__":
    sys.exit(main())
