#!/usr/bin/env python
"""Soft fusion from the prediction cache against reading the same files with ``cat``.

  python benchmarks/soft_cache_throughput.py                          # 5 members x 20 images, maps at 1024, 2048 masks
  python benchmarks/soft_cache_throughput.py --cache-size 512 --workers 4

Writes ``members x images`` distinct cache files (uint8 ``(29, s, s)``, as ``inference.py
--save-probs`` does), then times ``cat`` of all of them to /dev/null and the cached soft ensemble
(read, fuse at ``s``, upsample each class to 2048², threshold, RLE, CSV). Both read the same bytes
from the same page-cache state (``cat`` runs first and again after, the better of the two counts);
the figure is MB of cache read per second. Files are removed at the end (disk: about
``members x images x 29 x s² `` bytes, 3 GB at the defaults).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import engine  # noqa: F401  (offline environment first)

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--cache-size", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--workdir", help="scratch folder (default: a temporary one, removed at the end)")
    args = parser.parse_args(argv)

    from ensemble_memory import member_maps, member_runs, names, resolved_members
    from tasks.segmentation.cache import save_probs
    from ensembles.runner import Fuser, cache_rows, write_rows
    from tasks.formats.handbones import CLASSES, HandboneSample

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="ens_tp_"))
    try:
        image_names = names(args.images)
        runs = member_runs(workdir, args.members, args.cache_size)
        for m, run in enumerate(runs):
            distinct = [member_maps(m, k, args.cache_size) for k in range(2)]
            for i, name in enumerate(image_names):
                probs = np.roll(distinct[i % 2], i, axis=-1)  # distinct bytes per file
                save_probs(run / "preds" / "test" / f"{name}.npz", probs, (args.size, args.size))
        files = sorted(str(p) for p in workdir.glob("m*/preds/test/*.npz"))
        total_mb = sum(Path(f).stat().st_size for f in files) / 1e6

        def cat() -> float:
            t0 = time.perf_counter()
            subprocess.run(["cat", *files], stdout=subprocess.DEVNULL, check=True)
            return time.perf_counter() - t0

        t_cat_before = cat()
        ens, members = resolved_members(runs, image_names)
        samples = [HandboneSample(Path(name), None, "ID000") for name in image_names]
        t0 = time.perf_counter()
        n = write_rows(cache_rows(members, samples, Fuser(ens, members), "test", args.workers, progress=False),
                       workdir / "soft.csv", CLASSES)
        t_fuse = time.perf_counter() - t0
        t_cat = min(t_cat_before, cat())
        print(f"{args.members} members x {n} images, maps {args.cache_size}px -> masks {args.size}px, "
              f"{len(files)} files, {total_mb:.0f} MB, {args.workers} workers")
        print(f"  cat           {t_cat:7.2f}s  {total_mb / t_cat:8.0f} MB/s")
        print(f"  soft fusion   {t_fuse:7.2f}s  {total_mb / t_fuse:8.0f} MB/s  ({n / t_fuse:.2f} images/s, "
              f"{t_fuse / t_cat:.1f}x the time of cat)")
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
