#!/usr/bin/env python
"""CSV-level hard vote of 5 submissions: run-space streaming (ours) against decode-everything-first.

  python benchmarks/hard_vote_csv.py                       # 5 CSVs, 4 images at 2048x2048, 29 classes
  python benchmarks/hard_vote_csv.py --images 8 --lookup index

The baseline is the pattern of public competition code: read every CSV with pandas, decode every mask
of every CSV into memory (``--lookup filter``: one DataFrame filter per (image, class), as they do;
``index``: a groupby index, the kindest variant), then vote pixel-wise and encode. It uses this
harness's fast ``decode``/``encode``, so the difference is the approach, not the RLE code. Ours is
``ensembles.hard.fuse_csvs`` (``tools/fuse.py hard``): image by image, votes swept over run
boundaries, no pixel arrays. Both run in fresh processes on the same CSVs; the outputs must be
byte-identical. Peak memory is the process peak RSS (VmHWM), shown with the idle process (imports) apart.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import engine  # noqa: F401  (offline environment first)
from common import rss_mb
from tasks.formats.handbones import CLASSES


def baseline(paths: list[Path], out: Path, size: int, min_votes: int, lookup: str) -> int:
    """Decode every mask of every CSV into memory, then vote."""
    import numpy as np
    import pandas as pd

    from tasks.rle import decode, encode
    from tasks.submission import AtomicCSVWriter

    decoded = []
    for p in paths:
        df = pd.read_csv(p, keep_default_na=False)
        masks = {}
        if lookup == "index":
            for (name, cls), rle in zip(zip(df.image_name, df["class"]), df.rle):
                masks[(name, cls)] = decode(rle, size, size)
        else:
            for name in df.image_name.unique():
                for cls in CLASSES:
                    rle = df[(df.image_name == name) & (df["class"] == cls)].rle.values[0]
                    masks[(name, cls)] = decode(rle, size, size)
        decoded.append(masks)
    names = list(dict.fromkeys(pd.read_csv(paths[0], usecols=["image_name"]).image_name))
    with AtomicCSVWriter(out) as w:
        for name in names:
            rles = []
            for cls in CLASSES:
                votes = np.zeros((size, size), np.uint8)
                for masks in decoded:
                    votes += masks[(name, cls)]
                rles.append(encode(votes >= min_votes))
            w.write_image(name, rles)
    return len(names)


def child(which: str, paths: list[Path], out: Path, size: int, min_votes: int, lookup: str) -> dict:
    import pandas  # noqa: F401  (both sides' imports happen before the idle measurement)

    from ensembles.hard import fuse_csvs
    from tasks.rle import decode  # noqa: F401

    idle = rss_mb()
    t0 = time.perf_counter()
    if which == "ours":
        n = fuse_csvs(paths, out, "hard", min_votes=min_votes, sizes=lambda name: (size, size), classes=CLASSES)
    else:
        n = baseline(paths, out, size, min_votes, lookup)
    return {"which": which, "images": n, "seconds": round(time.perf_counter() - t0, 2), "idle_rss_mb": round(idle),
            "peak_rss_mb": round(rss_mb())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--min-votes", type=int, default=3)
    parser.add_argument("--lookup", choices=("filter", "index"), default="filter")
    parser.add_argument("--workdir", help="scratch folder (default: a temporary one, removed at the end)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="ens_vote_"))
    paths = [workdir / f"csv{args.images}" / f"m{m}.csv" for m in range(args.members)]
    if args.child:
        print(json.dumps(child(args.child, paths, workdir / f"{args.child}.csv", args.size, args.min_votes,
                               args.lookup)))
        return 0
    from ensemble_memory import prepare_csvs

    try:
        prepare_csvs(workdir, args.images, args.members, args.size)
        mb = sum(p.stat().st_size for p in paths) / 1e6
        print(f"{args.members} CSVs x {args.images} images at {args.size}x{args.size}, 29 classes ({mb:.1f} MB); "
              f"min_votes {args.min_votes}", flush=True)
        results = {}
        for which in ("baseline", "ours"):
            cmd = [sys.executable, __file__, "--child", which, "--images", str(args.images), "--members",
                   str(args.members), "--size", str(args.size), "--min-votes", str(args.min_votes), "--lookup",
                   args.lookup, "--workdir", str(workdir)]
            r = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
            results[which] = r
            label = f"baseline ({args.lookup})" if which == "baseline" else "ours (run sweep)"
            print(f"  {label:<18} {r['seconds']:>7.2f}s  peak RSS {r['peak_rss_mb']:>6} MB "
                  f"(idle process {r['idle_rss_mb']} MB, fusion {r['peak_rss_mb'] - r['idle_rss_mb']} MB)", flush=True)
        same = (workdir / "baseline.csv").read_bytes() == (workdir / "ours.csv").read_bytes()
        b, o = results["baseline"], results["ours"]
        extra_b = max(1, b["peak_rss_mb"] - b["idle_rss_mb"])
        extra_o = max(1, o["peak_rss_mb"] - o["idle_rss_mb"])
        print(f"  outputs identical: {same}")
        print(f"  speed-up {b['seconds'] / max(o['seconds'], 1e-9):.1f}x; peak RSS {b['peak_rss_mb'] / o['peak_rss_mb']:.1f}x "
              f"lower (fusion memory above the idle process: {extra_b} vs {extra_o} MB, {extra_b / extra_o:.0f}x)")
        if not same:
            return 1
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
