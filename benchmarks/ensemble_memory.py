#!/usr/bin/env python
"""Peak memory of every ensemble fusion path does not grow with the number of images.

  python benchmarks/ensemble_memory.py                                   # 20 vs 100 images, 5 members, 2048 px
  python benchmarks/ensemble_memory.py --images 20 100 --members 3 --cache-size 2048 --paths cache

Paths, each measured in a fresh process (peak RSS, ``VmHWM``, the whole process included):

* ``live``  — members on the fly (``ensembles.runner.live_rows``): fake members return float32
  ``(29, s, s)`` probability maps per image, as a model would; quantised, fused (soft) in the thread
  pool, thresholded at 2048², RLE-encoded, CSV written;
* ``cache`` — soft fusion from the prediction cache (``<run>/preds/test/*.npz``, uint8 at ``s``);
* ``csv``   — CSV-level hard vote of the members' submissions (``tools/fuse.py hard``).

Synthetic data: bone-like ellipses (blurred into probabilities), each member shifted a little. The
cache holds two distinct files per member hard-linked under every image name, and the CSVs repeat
two images' RLEs, so disk use stays under 1 GB whatever the image count. Everything is written under
``--workdir`` (default: a temporary folder) and removed at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import engine  # noqa: F401  (offline environment first)

import cv2
import numpy as np

from common import bone_masks, rss_mb, run_child
from tasks.formats.handbones import CLASSES

N_DISTINCT = 2  # distinct synthetic images per member; image i reuses image i % N_DISTINCT


def member_maps(member: int, index: int, cache_size: int) -> np.ndarray:
    """uint8 ``(29, s, s)`` probabilities (p * 255) of member ``member`` for distinct image ``index``."""
    masks = bone_masks(cache_size, seed=index)
    shift = np.float32([[1, 0, 2 * member - 4], [0, 1, member - 2]])
    out = np.empty(masks.shape, np.uint8)
    for c, m in enumerate(masks):
        moved = cv2.warpAffine(m * 255, shift, (cache_size, cache_size))
        out[c] = cv2.GaussianBlur(moved, (0, 0), max(1.0, cache_size / 512))
    return out


def names(n: int) -> list[str]:
    return [f"image{i:013d}.png" for i in range(n)]


def member_runs(folder: Path, n_members: int, image_size: int) -> list[Path]:
    """Run folders ``m0 .. m<n-1>`` under ``folder``, each with the ``config.yaml`` that a member fused from its
    prediction cache alone is read from (as after ``inference.py --save-probs`` on a copied run without weights):
    a model input of ``image_size``, the size of its cached maps."""
    from engine.config import load_config, save_config

    cfg = load_config(None, {"task": "segmentation", "data": {"root": str(folder / "train"), "image_size": image_size},
                             "model": {"name": "smp:unet/resnet18"}})
    runs = []
    for m in range(n_members):
        run = folder / f"m{m}"
        run.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run / "config.yaml")
        runs.append(run)
    return runs


def resolved_members(runs: list[Path], image_names: list[str]):
    """The soft ensemble of ``runs`` and its members as ``inference.py --ensemble`` resolves them (configs read),
    each predicting every one of ``image_names``."""
    from ensembles.config import EnsembleConfig
    from ensembles.members import resolve_members

    ens = EnsembleConfig.model_validate({"task": "segmentation", "method": "soft",
                                         "members": [{"run": str(r)} for r in runs]})
    members = resolve_members(ens)
    for m in members:
        m.sources = {name: [0] for name in image_names}
    return ens, members


def prepare_cache(workdir: Path, n_images: int, n_members: int, cache_size: int, size: int) -> list[Path]:
    """Run folders whose ``preds/test`` hold ``n_images`` entries (hard links to ``N_DISTINCT`` files)."""
    from tasks.segmentation.cache import save_probs

    runs = member_runs(workdir / f"cache{n_images}", n_members, cache_size)
    for m, run in enumerate(runs):
        folder = run / "preds" / "test"
        folder.mkdir(parents=True, exist_ok=True)
        sources = []
        for k in range(N_DISTINCT):
            src = workdir / "distinct" / f"m{m}_{k}_{cache_size}.npz"
            if not src.exists():
                save_probs(src, member_maps(m, k, cache_size), (size, size))
            sources.append(src)
        for i, name in enumerate(names(n_images)):
            os.link(sources[i % N_DISTINCT], folder / f"{name}.npz")
    return runs


def prepare_csvs(workdir: Path, n_images: int, n_members: int, size: int) -> list[Path]:
    """One submission per member: its masks at ``size`` thresholded at 0.5, ``N_DISTINCT`` images repeated."""
    from tasks.rle import encode
    from tasks.submission import AtomicCSVWriter

    paths = []
    for m in range(n_members):
        rles = [[encode(np.greater(cv2.resize(p, (size, size), interpolation=cv2.INTER_LINEAR), 127))
                 for p in member_maps(m, k, size // 2)] for k in range(N_DISTINCT)]
        path = workdir / f"csv{n_images}" / f"m{m}.csv"
        with AtomicCSVWriter(path) as w:
            for i, name in enumerate(names(n_images)):
                w.write_image(name, rles[i % N_DISTINCT])
        paths.append(path)
    return paths


def child(path: str, n_images: int, n_members: int, size: int, cache_size: int, workdir: Path, workers: int) -> dict:
    """Run one fusion path in this (fresh) process; return its peak memory and time."""
    out = workdir / f"out_{path}_{n_images}.csv"
    if path != "csv":
        from ensembles.runner import Fuser, cache_rows, live_rows, write_rows
        from tasks.formats.handbones import HandboneSample

        runs = [workdir / f"cache{n_images}" / f"m{m}" for m in range(n_members)]
        if path == "live":  # members predict on the fly: their run folders hold only config.yaml
            runs = member_runs(workdir / f"live{n_images}", n_members, cache_size)
        ens, members = resolved_members(runs, names(n_images))
        fuser = Fuser(ens, members)
        samples = [HandboneSample(Path(name), None, "ID000") for name in names(n_images)]
    base = {}
    if path == "live":
        base = {k: member_maps(0, k, cache_size) for k in range(N_DISTINCT)}  # members: shifted copies
        image = np.zeros((size, size), np.uint8)
        order = {name: i for i, name in enumerate(names(n_images))}
        current = {}

        def read(path: Path) -> np.ndarray:
            current["k"] = order[path.name] % N_DISTINCT
            return image

        def predict(member: int, run: int, img: np.ndarray) -> np.ndarray:
            # a model's fresh float32 output, each member a little shifted
            return np.roll(base[current["k"]], 2 * member, axis=-1) * np.float32(1 / 255)

    idle = rss_mb()
    t0 = time.perf_counter()
    if path == "live":
        n = write_rows(live_rows(members, samples, fuser, predict, workers, progress=False, read=read), out, CLASSES)
    elif path == "cache":
        n = write_rows(cache_rows(members, samples, fuser, "test", workers, progress=False), out, CLASSES)
    else:
        from ensembles.hard import fuse_csvs

        n = fuse_csvs([workdir / f"csv{n_images}" / f"m{m}.csv" for m in range(n_members)], out, "hard",
                      classes=CLASSES)
    seconds = time.perf_counter() - t0
    return {"path": path, "images": n, "members": n_members, "seconds": round(seconds, 2),
            "images_per_s": round(n / seconds, 3), "idle_rss_mb": round(idle), "peak_rss_mb": round(rss_mb())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, nargs="+", default=[20, 100])
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--size", type=int, default=2048, help="original image size (masks, RLEs)")
    parser.add_argument("--cache-size", type=int, default=1024, help="size of the members' probability maps")
    parser.add_argument("--paths", nargs="+", default=["live", "cache", "csv"], choices=("live", "cache", "csv"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--workdir", help="scratch folder (default: a temporary one, removed at the end)")
    parser.add_argument("--child", nargs=2, metavar=("PATH", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = child(args.child[0], int(args.child[1]), args.members, args.size, args.cache_size,
                       Path(args.workdir), args.workers)
        print(json.dumps(result))
        return 0
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="ens_mem_"))
    rows = []
    try:
        for n in args.images:
            if "cache" in args.paths:
                prepare_cache(workdir, n, args.members, args.cache_size, args.size)
            if "csv" in args.paths:
                prepare_csvs(workdir, n, args.members, args.size)
            for path in args.paths:
                cmd = [sys.executable, __file__, "--child", path, str(n), "--members", str(args.members), "--size",
                       str(args.size), "--cache-size", str(args.cache_size), "--workers", str(args.workers),
                       "--workdir", str(workdir)]
                rows.append(json.loads(run_child(cmd).strip().splitlines()[-1]))
                r = rows[-1]
                print(f"{r['path']:<6} {r['images']:>4} images x {r['members']} members: peak RSS {r['peak_rss_mb']:>5} MB "
                      f"(idle process {r['idle_rss_mb']} MB), {r['seconds']:.1f}s, {r['images_per_s']:.2f} img/s",
                      flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n{args.size}x{args.size} images, 29 classes, member maps at {args.cache_size} px")
    for path in args.paths:
        peaks = {r["images"]: r["peak_rss_mb"] for r in rows if r["path"] == path}
        print(f"  {path:<6} peak RSS by image count: " + ", ".join(f"{n}: {p} MB" for n, p in peaks.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
