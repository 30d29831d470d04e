#!/usr/bin/env python
"""An ensemble fused from the prediction cache, as a user runs it, against the same fusion written plainly.

  python benchmarks/ensemble_cache.py                     # 3 members, 8 16 32 images, maps at 1024 px, masks 2048²
  python benchmarks/ensemble_cache.py --images 8 16 32 --rounds 3 --methods soft weighted --json PATH

Each path runs as a fresh process, the way a user's command does, so its start-up and imports count:

* harness: ``python inference.py --ensemble <ens.yaml> --from-cache -o <csv>`` (its ``workers``: the YAML's default);
* plain: :func:`plain_ensemble` below, run as ``python benchmarks/ensemble_cache.py --plain <job.json>``: per image,
  each member's ``.npz`` loaded with ``np.load``, the weighted mean of the members, each class resized to the
  original size with ``cv2.resize`` (bilinear), thresholded at 0.5, RLE-encoded (the competition notebook's
  encoder), one CSV row per class. This module imports nothing but the standard library, numpy, OpenCV and
  ``common`` at its top, so that process pays for no harness import.

The plain mean follows the harness's arithmetic, which the ensembles document (``ensembles/soft.py``
``as_probability``, ``ensembles/runner.py`` ``Fuser``): a cached uint8 ``q`` is ``q * float32(1/255)``, and the
members are summed in their order, each times its weight normalised to a sum of 1 (soft: ``1/M``), in float32.
A mean computed in another order (``np.mean`` of the stack, ``/ 255``) differs in the last bit, and a value that
lands exactly on 0.5 after the bilinear upsampling can then fall on the other side of the threshold: a handful
of pixels, but not identical CSVs. The two CSVs must be byte-identical, else the benchmark stops naming the first
differing row.

Setup (under ``--workdir``, default a temporary folder removed at the end): ``--members`` run folders per image
count, each with the ``config.yaml`` of a segmentation run whose input is ``--cache-size`` and its
``preds/test/<image>.npz`` written by the harness's own cache writer (``tasks/segmentation/cache.py``
``save_probs``; bone-like maps, each member shifted a little, hard links to two distinct files per member:
``benchmarks/ensemble_memory.py`` ``prepare_cache``), the test folder they predict (blank ``--size``² PNGs in the
competition layout: only their names are read) and one ensemble YAML per method (weighted: weights M, M-1, ..., 1).

For each image count and method the two paths alternate over ``--rounds`` (reversed order on odd rounds);
medians of the wall time of the whole process and of its peak RSS (``VmHWM`` of the child) are reported, with
the ratios harness / plain, and written to ``benchmarks/results/ensemble_cache.json`` (``--json``). The target
(issue 27): under 16 images, within 1.5x the time and 2x the memory of the plain code; from 16 images up, faster
than it, within 2x its memory; the harness process imports none of ``common.HEAVY_MODULES`` (torch, the model
registry). Timings mean something only on a quiet machine.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from common import ROOT, alternate, check_same, medians, run_measured, write_result

TARGET_TIME_SMALL, TARGET_MEMORY, FASTER_FROM = 1.5, 2.0, 16


def plain_rle(mask: np.ndarray) -> str:
    """The competition notebook's encoder: the mask flattened row by row, 1-indexed ``start length`` pairs."""
    pixels = np.concatenate([[0], mask.flatten(), [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def plain_ensemble(job: dict) -> None:
    """The ensemble written by hand (``job``: member ``runs``, their ``weights``, the ``classes``, the
    ``threshold`` and the ``out`` CSV): one image at a time, one member map at a time."""
    folders = [Path(run) / "preds" / "test" for run in job["runs"]]
    total = sum(job["weights"])
    weights = [np.float32(w / total) for w in job["weights"]]
    names = sorted(p.name[:-len(".npz")] for p in folders[0].glob("*.npz"))
    with open(job["out"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_name", "class", "rle"])
        for name in names:
            mean = None
            for w, folder in zip(weights, folders):
                with np.load(folder / f"{name}.npz") as npz:
                    probs = npz["probs"].astype(np.float32)
                    height, width = (int(v) for v in npz["orig_size"])
                probs *= np.float32(1 / 255)
                probs *= w
                if mean is None:
                    mean = probs
                else:
                    mean += probs
            for c, cls in enumerate(job["classes"]):
                full = cv2.resize(mean[c], (width, height), interpolation=cv2.INTER_LINEAR)
                writer.writerow([name, cls, plain_rle(full > job["threshold"])])


def write_test_images(root: Path, names: list[str], size: int) -> None:
    """Blank ``size``² PNGs named ``names`` in the competition layout (two images per patient folder)."""
    blank = root / "blank.png"
    root.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(blank), np.zeros((size, size), np.uint8))
    for i, name in enumerate(names):
        path = root / "DCM" / f"ID{i // 2:03d}" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        os.link(blank, path)
    blank.unlink()


def prepare(workdir: Path, n_images: int, n_members: int, methods: list[str], cache_size: int,
            size: int) -> dict[str, dict]:
    """Members, test folder and, per method, the ensemble YAML and the plain job of ``n_images`` images."""
    import yaml

    from ensemble_memory import names, prepare_cache
    from tasks.formats.handbones import CLASSES

    runs = prepare_cache(workdir, n_images, n_members, cache_size, size)
    test_root = workdir / f"test{n_images}"
    write_test_images(test_root, names(n_images), size)
    settings = {}
    for method in methods:
        weights = [float(n_members - k) for k in range(n_members)] if method == "weighted" else [1.0] * n_members
        ens = {"task": "segmentation", "method": method, "name": f"{method}{n_images}",
               "members": [{"run": str(r)} for r in runs], "test_root": str(test_root),
               "out_dir": str(workdir / "ensembles"), "thresholds": 0.5}
        if method == "weighted":
            ens["weights"] = weights
        yaml_path = workdir / f"{method}{n_images}.yaml"
        yaml_path.write_text(yaml.safe_dump(ens, sort_keys=False))
        job = {"runs": [str(r) for r in runs], "weights": weights, "classes": list(CLASSES), "threshold": 0.5,
               "out": str(workdir / f"plain_{method}{n_images}.csv")}
        job_path = workdir / f"plain_{method}{n_images}.json"
        job_path.write_text(json.dumps(job, indent=1))
        settings[method] = {"yaml": yaml_path, "job": job_path, "plain_csv": Path(job["out"]),
                            "harness_csv": workdir / f"harness_{method}{n_images}.csv"}
    return settings


def measure(n_images: int, method: str, setting: dict, rounds: int) -> dict:
    """Both paths of one image count and method over alternating rounds; their CSVs must be identical."""
    runs: dict[str, list[dict]] = {"plain": [], "harness": []}
    commands = {
        "plain": (str(Path(__file__).resolve()), ["--plain", str(setting["job"])]),
        "harness": ("inference.py", ["--ensemble", str(setting["yaml"]), "--from-cache", "-o",
                                     str(setting["harness_csv"])]),
    }

    def path(name: str):
        def run() -> None:
            runs[name].append(run_measured(*commands[name]))
            if setting["plain_csv"].exists() and setting["harness_csv"].exists():
                check_same(f"{method} ensemble of {n_images} images, CSV {setting['harness_csv']}",
                           setting["plain_csv"].read_bytes(), setting["harness_csv"].read_bytes())
        return run

    times = alternate({name: path(name) for name in commands}, rounds)
    med_s = medians(times)
    med_mb = medians({name: [r["peak_mb"] for r in rs] for name, rs in runs.items()})
    time_ratio, memory_ratio = med_s["harness"] / med_s["plain"], med_mb["harness"] / med_mb["plain"]
    imported = sorted({m for r in runs["harness"] for m in r["imported"]})
    faster = n_images >= FASTER_FROM
    meets = (time_ratio < 1 if faster else time_ratio <= TARGET_TIME_SMALL) and memory_ratio <= TARGET_MEMORY \
        and not imported
    return {"images": n_images, "method": method, "csv_identical": True,
            "seconds": {k: [round(t, 3) for t in v] for k, v in times.items()},
            "peak_rss_mb": {k: [round(r["peak_mb"], 1) for r in v] for k, v in runs.items()},
            "median_seconds": {k: round(v, 3) for k, v in med_s.items()},
            "median_peak_rss_mb": {k: round(v, 1) for k, v in med_mb.items()},
            "time_ratio": round(time_ratio, 3), "memory_ratio": round(memory_ratio, 3),
            "harness_imported": imported,
            "target": ("time < 1x (faster)" if faster else f"time <= {TARGET_TIME_SMALL}x")
            + f", memory <= {TARGET_MEMORY}x, no heavy import",
            "meets_target": meets}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=["soft", "weighted"], choices=("soft", "weighted"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=2048, help="original image size (masks, RLEs)")
    parser.add_argument("--cache-size", type=int, default=1024, help="size of the members' cached maps")
    parser.add_argument("--workdir", help="scratch folder (default: a temporary one, removed at the end)")
    parser.add_argument("--json", help="result file (default benchmarks/results/ensemble_cache.json)")
    parser.add_argument("--plain", metavar="JOB", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.plain:
        plain_ensemble(json.loads(Path(args.plain).read_text()))
        return 0
    if min(args.images) < 1 or args.members < 1 or args.rounds < 1:
        parser.error("--images, --members and --rounds must be at least 1")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="ens_cache_"))
    load_start = os.getloadavg()
    rows = []
    try:
        for n in args.images:
            settings = prepare(workdir, n, args.members, args.methods, args.cache_size, args.size)
            for method in args.methods:
                rows.append(measure(n, method, settings[method], args.rounds))
                r = rows[-1]
                print(f"{method:<8} {n:>4} images: harness {r['median_seconds']['harness']:.2f}s "
                      f"{r['median_peak_rss_mb']['harness']:.0f} MB, plain {r['median_seconds']['plain']:.2f}s "
                      f"{r['median_peak_rss_mb']['plain']:.0f} MB: time x{r['time_ratio']:.2f}, memory "
                      f"x{r['memory_ratio']:.2f} ({r['target']}: {'met' if r['meets_target'] else 'NOT met'})"
                      + (f"; the harness imported {', '.join(r['harness_imported'])}" if r["harness_imported"] else ""),
                      flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    result = {"members": args.members, "size": args.size, "cache_size": args.cache_size, "rounds": args.rounds,
              "methods": args.methods, "load_avg_start": [round(x, 2) for x in load_start],
              "load_avg_end": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
              "python": sys.version.split()[0], "settings": rows}
    out = write_result("ensemble_cache", result, args.json)
    print(f"{args.members} members, maps {args.cache_size} px -> masks {args.size}², medians of {args.rounds} "
          f"alternating rounds, identical CSVs -> {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
