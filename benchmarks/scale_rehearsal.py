#!/usr/bin/env python
"""Competition-scale rehearsal on this machine: the whole cycle on 2048² phantom radiographs at two dataset
sizes, stage by stage, with each stage's wall time and peak memory, how they grow with the images, and a
projection to the real competition.

    python benchmarks/scale_rehearsal.py                  # 16 and 48 training images, 8 test, 2048², 256 px models
    python benchmarks/scale_rehearsal.py --smoke          # tiny (8 and 16 images at 512², 1 step): checks the script

For each size (its own folder under ``--workdir``) it runs, each as its own process, through the harness's own
commands:

* ``phantom`` - ``tools/phantom.py --size 2048 --workers N``: the training and test radiographs.
* ``train``, ``test``, ``select``, ``fit``, ``submit`` - ``tools/cycle.py PLAN --until STAGE`` in turn, on a
  plan this script writes: segmentation, two smp decoders (U-Net and FPN on ResNet-18, the ``demo_*`` configs)
  at ``--image-size`` px, folds 0 and 1 of 4, ``--epochs`` epochs, flip TTA, cross-fitted selection, fitted
  thresholds, the validated and scored submission (docs/cycle.md).

and after the larger size ``cpu_parts``: this script's ``--probe`` in its own process, timing on one thread the
per-image work that stays on the CPU whatever the accelerator, with maps at the projection's input size
(decoding a 2048² PNG; one model's map upsampled, thresholded and RLE-encoded as a submission row; a
validation image's masks, labels and Dice at the original size, as the trainer does every epoch; the
submitted ensemble's maps of a test image read from the cache, fused and encoded).

Each stage records its wall seconds, CPU seconds and peak RSS (``os.wait4``: the child's ``ru_maxrss``, the
largest single process among it and the processes it waited for, such as the phantom's workers; Linux counts
a child's peak as at least its parent's at the fork, so this script stays small, ``driver_peak_rss_mb``), and
the images it handled. Training and prediction should grow about linearly with their images, and peak memory
stay flat: the predictor and the ensemble stream one image at a time, so a 29x2048x2048 float map (486 MB)
never exists whole (``largest_object``).

The projection to 800 training and 300 test images of 2048², 5 folds x 3 architectures at 1024 px takes the
GPU rates from ``benchmarks/results/gpu_rehearsal.json`` (``--gpu-rates``) when it exists, otherwise leaves
the GPU time unknown; the CPU-bound parts scale from this machine's figures. Every projected number says
what it is based on. Writes ``benchmarks/results/scale_rehearsal.json`` (``--out``; ``--smoke``:
``scale_rehearsal_smoke.json``) after every stage, and prints the tables in Markdown.

Figures are meaningful only on a quiet machine: the JSON records the load average at the start and the end.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.atomic import write_text  # noqa: E402  (standard library only: this process stays small)
from core.cli import run_main  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
GPU_RATES = RESULTS / "gpu_rehearsal.json"
CYCLE_STAGES = ("train", "test", "select", "fit", "submit")   # cycle.steps.STAGES (tests check they agree)
STAGES = ("phantom", *CYCLE_STAGES)
MODELS = (("unet", "configs/segmentation/demo_unet.yaml"), ("fpn", "configs/segmentation/demo_fpn.yaml"))
CLASSES = 29
RSS_FLAT = 0.2   # peak RSS "flat" when the larger set's is within 20 % of the smaller's

# What each stage's images are, the count its per-image figures use, and how its time should grow.
PRIMARY = {"phantom": "generated", "train": "training_passes", "test": "test_predicted", "select": "oof_maps",
           "fit": "oof_maps", "submit": "test_images"}
EXPECTED = {"phantom": "linear in images", "train": "linear in images (passes and out-of-fold predictions)",
            "test": "flat (the same test images)", "select": "linear in out-of-fold maps",
            "fit": "linear in out-of-fold maps", "submit": "flat (the same test images)"}


@dataclass(frozen=True)
class Setting:
    """One rehearsal's sizes: the phantom sets, the models' input, folds, epochs."""

    sizes: tuple[int, ...]       # training images of each set
    test: int                    # test images (every set)
    phantom_px: int              # the radiographs' side (2048: the competition)
    image_size: int              # the models' input size
    epochs: int
    folds: int                   # cross-validation folds trained (of n_folds)
    n_folds: int
    batch_size: int
    max_steps: int | None        # training steps per epoch (None: the whole fold)
    phantom_workers: int
    select_folds: int            # cross-fitting folds of selection and fitting


@dataclass(frozen=True)
class Target:
    """The competition the projection is for."""

    train_images: int = 800
    test_images: int = 300
    image_px: int = 2048
    folds: int = 5
    architectures: int = 3
    input_px: int = 1024
    epochs: int = 50

    @property
    def runs(self) -> int:
        return self.folds * self.architectures


def setting_from(args: argparse.Namespace) -> Setting:
    """The rehearsal's setting from the command line (``--smoke``: tiny sizes, one step an epoch)."""
    cpus = os.cpu_count() or 1
    if args.smoke:
        return Setting(sizes=(8, 16), test=4, phantom_px=512, image_size=64, epochs=1, folds=2, n_folds=4,
                       batch_size=2, max_steps=1, phantom_workers=args.phantom_workers or 1, select_folds=2)
    sizes = tuple(int(s) for s in args.sizes.split(",") if s.strip()) if args.sizes else ()
    setting = Setting(sizes=sizes, test=args.test, phantom_px=args.phantom_size, image_size=args.image_size,
                      epochs=args.epochs, folds=args.folds, n_folds=4, batch_size=4, max_steps=None,
                      phantom_workers=args.phantom_workers or cpus, select_folds=2)
    check_setting(setting)
    return setting


def check_setting(s: Setting) -> None:
    """Faults of the options, before anything is written (ValueError: one ``error:`` line)."""
    least = 2 * s.n_folds   # two images a patient, a patient in every fold
    if not s.sizes or any(n < least or n % 2 for n in s.sizes) or list(s.sizes) != sorted(set(s.sizes)):
        raise ValueError(f"--sizes: {','.join(map(str, s.sizes)) or 'nothing'}: increasing even numbers of "
                         f"training images, each at least {least} (two per patient, {s.n_folds} folds)")
    if s.test < 2:
        raise ValueError(f"--test: {s.test}: at least 2 test images (one patient)")
    if s.image_size < 32 or s.image_size % 32:
        raise ValueError(f"--image-size: {s.image_size}: a multiple of 32 (the encoders' stride)")
    if s.phantom_px < 64:
        raise ValueError(f"--phantom-size: {s.phantom_px}: at least 64 px")
    if s.epochs < 1:
        raise ValueError(f"--epochs: {s.epochs}: at least 1")
    if not 1 <= s.folds <= s.n_folds:
        raise ValueError(f"--folds: {s.folds}: 1 to {s.n_folds} folds")


# ------------------------------------------------------------------------------------------- the machine


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return {"git_commit": git("rev-parse", "HEAD"), "git_dirty": bool(git("status", "--porcelain", "-uno"))}
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": None, "git_dirty": None}


def machine() -> dict[str, Any]:
    """What ran it (torch's version from its metadata: importing it would raise every child's peak RSS)."""
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = None
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "host": platform.node(), "python": platform.python_version(),
            "torch": torch_version, "load_avg_start": [round(x, 2) for x in os.getloadavg()], "load_avg_end": None,
            **git_state()}


def own_peak_rss_mb() -> float:
    """Peak RSS of this process (``VmHWM``), MB: the floor under every child's reported peak."""
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    raise OSError("no VmHWM in /proc/self/status (Linux only)")


def largest_object(s: Setting, target: Target) -> dict[str, Any]:
    """Sizes (MiB, as the RSS figures) of the per-image arrays that would blow up memory if they were ever held
    whole, or for many images at once."""
    mib = 2 ** 20
    side = s.phantom_px
    full = CLASSES * side * side * 4
    return {
        "full_size_float32_map_mb": round(full / mib, 1),
        "full_size_uint8_masks_mb": round(full / 4 / mib, 1),
        "input_size_float32_map_mb": round(CLASSES * s.image_size ** 2 * 4 / mib, 1),
        "target_input_size_float32_map_mb": round(CLASSES * target.input_px ** 2 * 4 / mib, 1),
        "note": (f"a {CLASSES}x{side}x{side} float32 probability map ({full / mib:.0f} MiB, {full / 1e6:.0f} MB) is "
                 "never made: maps stay at the input size (the prediction cache holds them as uint8) and are "
                 "upsampled, thresholded and encoded one class at a time (tasks.segmentation.masks.class_masks); "
                 "the predictor and the ensemble stream one image at a time, so peak RSS should not grow with the "
                 "number of images"),
    }


# ------------------------------------------------------------------------------------------------- stages


def run_stage(cmd: list[str], log: Path) -> dict[str, Any]:
    """Run ``cmd`` from the repository root, output into ``log``: wall and CPU seconds, peak RSS, exit status."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    record = {"seconds": round(seconds, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
              "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "exit": proc.returncode,
              "status": "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"}
    text = log.read_text(encoding="utf-8", errors="replace")
    if proc.returncode:
        record["log_tail"] = text[-3000:]
    elif text.strip():
        record["last_line"] = text.strip().splitlines()[-1][-500:]
    return record


def write_plan(folder: Path, n: int, s: Setting) -> Path:
    """The cycle plan of one set (JSON, which YAML reads): two models, ``s.folds`` folds, flip TTA."""
    data = folder / "data" / "handbones"
    sets: dict[str, Any] = {"train.epochs": s.epochs, "train.batch_size": s.batch_size, "logging.progress": False}
    if s.max_steps:
        sets["train.max_steps_per_epoch"] = s.max_steps
    plan = {
        "name": f"scale-n{n}", "task": "segmentation", "out_dir": str(folder / "runs"),
        "data": {"root": str(data / "train"), "test_root": str(data / "test"), "image_size": s.image_size,
                 "n_folds": s.n_folds, "cache_dir": str(folder / "sample-cache")},
        "set": sets,
        "models": [{"config": str(ROOT / path), "name": label} for label, path in MODELS],
        "folds": list(range(s.folds)), "tta": True,
        "select": {"max_steps": 10, "folds": s.select_folds},
        "fit": {"thresholds": True, "postprocess": False, "folds": s.select_folds},
        "submission": str(folder / "submissions" / "{name}.csv"),
        "test_gt": str(data / "test_gt"),
    }
    path = folder / "plan.yaml"
    write_text(path, json.dumps(plan, indent=1) + "\n")
    return path


def stage_command(stage: str, folder: Path, n: int, s: Setting) -> list[str]:
    py = sys.executable
    if stage == "phantom":
        return [py, str(ROOT / "tools" / "phantom.py"), "--out", str(folder / "data"), "--n-train", str(n),
                "--n-test", str(s.test), "--size", str(s.phantom_px), "--seed", "0",
                "--workers", str(s.phantom_workers), "--quiet"]
    return [py, str(ROOT / "tools" / "cycle.py"), str(folder / "plan.yaml"), "--until", stage]


def count(folder: Path, pattern: str) -> int:
    return sum(1 for _ in folder.glob(pattern)) if folder.is_dir() else 0


def runs_dir(folder: Path, n: int) -> Path:
    """The cycle's task folder of a set: its runs and ensembles."""
    return folder / "runs" / "cycles" / f"scale-n{n}" / "segmentation"


def submitted_yaml(folder: Path, n: int) -> Path:
    return runs_dir(folder, n) / f"scale-n{n}" / "submitted.yaml"


def cycle_runs(folder: Path, n: int) -> list[Path]:
    """The trained runs of a set's cycle (the folders with a best.pt)."""
    runs = runs_dir(folder, n)
    return sorted(d for d in runs.iterdir() if (d / "best.pt").is_file()) if runs.is_dir() else []


def submitted_runs(folder: Path, n: int) -> list[Path]:
    """The runs the submitted ensemble fuses (its members' fold runs)."""
    import yaml

    path = submitted_yaml(folder, n)
    if not path.is_file():
        return []
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return [Path(r) for m in raw.get("members", []) for r in m.get("runs", [])]


def stage_images(stage: str, folder: Path, n: int, s: Setting) -> dict[str, int]:
    """What a finished stage handled, counted from what it wrote (the primary count first)."""
    runs = cycle_runs(folder, n)
    oof = {r: count(r / "preds" / "val", "*.npz") for r in runs}
    if stage == "phantom":
        return {"generated": n + s.test}
    if stage == "train":
        per_epoch = [n - v if s.max_steps is None else min(n - v, s.max_steps * s.batch_size) for v in oof.values()]
        return {"training_passes": sum(per_epoch) * s.epochs, "oof_predicted": sum(oof.values()), "runs": len(runs)}
    if stage == "test":
        return {"test_predicted": sum(count(r / "preds" / "test", "*.npz") for r in runs), "runs": len(runs)}
    if stage == "select":
        return {"oof_maps": sum(oof.values()), "models": len(MODELS)}
    members = submitted_runs(folder, n)
    if stage == "fit":
        return {"oof_maps": sum(count(r / "preds" / "val", "*.npz") for r in members), "member_runs": len(members)}
    if stage == "submit":
        return {"test_images": s.test, "test_maps": s.test * len(members), "member_runs": len(members)}
    return {}


# ---------------------------------------------------------------------------------------- the probe


def probe(args: argparse.Namespace) -> int:
    """``--probe RUN --probe-ensemble YAML``: on one thread, with maps at ``--probe-px`` (RUN's cached maps
    resized, as a model at that size hands them on): each test image decoded; its map upsampled, thresholded
    and RLE-encoded (one run's submission row); each of RUN's out-of-fold images validated at the original
    size as the trainer does every epoch (masks, labels, Dice); each test image's maps of the submitted
    ensemble read from the cache, and fused and encoded. Medians in seconds, as JSON on stdout."""
    import statistics

    import cv2
    import numpy as np
    import yaml

    from ensembles.config import load_ensemble_config
    from ensembles.members import resolve_members
    from ensembles.runner import Fuser, ensemble_samples, member_maps_from_cache
    from tasks.formats.handbones import list_samples, read_masks
    from tasks.formats.images import image_size, read_grey
    from tasks.metrics import dice_per_class
    from tasks.segmentation.cache import cache_path, read_npz
    from tasks.segmentation.masks import encode_probs, probs_to_masks, resolve_thresholds

    cv2.setNumThreads(1)
    run, px = Path(args.probe), args.probe_px
    data = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))["data"]
    thresholds = resolve_thresholds(0.5)

    def at_px(probs: np.ndarray) -> np.ndarray:
        """A ``(C, h, w)`` map resized to ``(C, px, px)``, its dtype kept."""
        return np.stack([cv2.resize(np.ascontiguousarray(c), (px, px), interpolation=cv2.INTER_LINEAR) for c in probs])

    def cached(split: str, name: str) -> np.ndarray:
        return at_px(read_npz(cache_path(run, split, name))["probs"]).astype(np.float32) / 255

    def timed(fn: Any, *a: Any) -> float:
        t0 = time.perf_counter()
        fn(*a)
        return time.perf_counter() - t0

    decode, post, val, read, fuse = [], [], [], [], []
    for sample in list_samples(data["test_root"], labels=None):
        decode.append(timed(read_grey, sample.image_path))
        post.append(timed(encode_probs, cached("test", sample.name), image_size(sample.image_path), thresholds))
    for sample in list_samples(data["root"]):
        if cache_path(run, "val", sample.name).is_file():
            h, w = image_size(sample.image_path)
            probs = cached("val", sample.name)
            val.append(timed(lambda: dice_per_class(probs_to_masks(probs, (h, w), thresholds),
                                                    read_masks(sample.label_path, h, w))))
    ens = load_ensemble_config(args.probe_ensemble)
    members = resolve_members(ens, need_models=False)
    fuser = Fuser(ens, members)
    for sample in ensemble_samples(ens, members, "test"):
        t0 = time.perf_counter()
        maps, size = member_maps_from_cache(members, sample.name, "test")
        read.append(time.perf_counter() - t0)
        fuse.append(timed(fuser, [at_px(m) for m in maps], size))

    def median(xs: list[float]) -> float | None:
        return round(statistics.median(xs), 4) if xs else None

    print(json.dumps({"input_px": px, "test_images": len(decode), "val_images": len(val),
                      "members": [m.label for m in members], "decode_s": median(decode),
                      "postprocess_rle_s": median(post), "validate_s": median(val), "ensemble_read_s": median(read),
                      "ensemble_fuse_rle_s": median(fuse)}))
    return 0


def run_probe(folder: Path, n: int, px: int, into: dict[str, Any]) -> None:
    """The ``cpu_parts`` stage on the set in ``folder``: the probe in its own process (its peak RSS too)."""
    runs = cycle_runs(folder, n)
    if not runs:
        into["status"] = "skipped: no trained run"
        return
    log = folder / "logs" / "cpu_parts.log"
    into.update(run_stage([sys.executable, str(Path(__file__).resolve()), "--probe", str(runs[0]),
                           "--probe-ensemble", str(submitted_yaml(folder, n)), "--probe-px", str(px)], log))
    if into["status"] == "ok":
        into.update(json.loads(into.pop("last_line")))


# ------------------------------------------------------------------------------------- growth, projection


def ratio(a: float | None, b: float | None) -> float | None:
    return round(b / a, 3) if a and b is not None else None


def per_image(small: dict[str, Any] | None, large: dict[str, Any], stage: str) -> dict[str, Any] | None:
    """Seconds per image of a stage: the marginal cost between the two sets (what the larger one added over
    the images it added; start-up and other fixed costs cancel), or None with why where it cannot be told."""
    key = PRIMARY[stage]
    n_l = large.get("images", {}).get(key)
    n_s = (small or {}).get("images", {}).get(key)
    if small is None or small.get("status") != "ok" or large.get("status") != "ok" or n_s is None or n_l is None:
        return None
    if n_s == n_l:
        return {"s": None, "how": f"the same {n_l} {key} in both sets: its time should stay flat"}
    slope = (large["seconds"] - small["seconds"]) / (n_l - n_s)
    if slope <= 0:
        return {"s": None, "how": f"{small['seconds']} → {large['seconds']} s for {n_s} → {n_l} {key}: no "
                                  "measurable cost per image (fixed costs and noise dominate)"}
    return {"s": round(slope, 4), "how": f"marginal between the sets ({n_s} → {n_l} {key})"}


def growth(small: dict[str, Any], large: dict[str, Any], stage: str) -> dict[str, Any]:
    """How a stage grew from the smaller set to the larger: images, seconds and peak RSS as ratios, and whether
    peak memory stayed flat (within ``RSS_FLAT``)."""
    key = PRIMARY.get(stage)
    n_s = small.get("images", {}).get(key) if key else None
    n_l = large.get("images", {}).get(key) if key else None
    rss = ratio(small.get("peak_rss_mb"), large.get("peak_rss_mb"))
    return {"images_ratio": ratio(n_s, n_l), "seconds_ratio": ratio(small.get("seconds"), large.get("seconds")),
            "cpu_s_ratio": ratio(small.get("cpu_s"), large.get("cpu_s")), "peak_rss_ratio": rss,
            "rss_flat": None if rss is None else abs(rss - 1) <= RSS_FLAT,
            "expected": EXPECTED[stage]}


def gpu_figures(path: Path) -> dict[str, Any] | None:
    """The rates a GPU rehearsal measured (``benchmarks/gpu_rehearsal.py``), or None without a usable file."""
    try:
        r = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    infer = (r.get("sections") or {}).get("infer") or {}
    if not r.get("gpu") or not r.get("train_img_s_amp") or not r.get("infer_full_s") or not infer.get("images"):
        return None
    return {"file": str(path), "device": r.get("device"), "train_img_s_amp": r["train_img_s_amp"],
            "infer_s_per_image": r["infer_full_s"] / infer["images"], "infer_input_px": infer.get("input_size"),
            "post_workers": infer.get("post_workers"), "model": (r.get("config") or {}).get("seg_model")}


def item(what: str, count_: float, unit: str, seconds: float | None, based_on: str) -> dict[str, Any]:
    return {"what": what, "count": round(count_), "unit": unit,
            "seconds": None if seconds is None else round(seconds, 1), "based_on": based_on}


def projection(rates: dict[str, dict | None], cpu: dict[str, Any] | None, gpu: dict[str, Any] | None,
               target: Target, measured_at: str) -> dict[str, Any]:
    """Seconds of each part of the target competition's cycle, each with what it is based on.

    ``rates``: this machine's seconds per image of the stages (:func:`per_image`; select and fit are used);
    ``cpu``: the ``cpu_parts`` probe (seconds per image on one thread); ``gpu``: :func:`gpu_figures` or None.
    GPU parts are wall seconds on one GPU; CPU parts are seconds on one thread (threads divide them)."""
    t = target
    passes = t.train_images * (t.folds - 1) / t.folds * t.epochs * t.runs
    validations = t.train_images / t.folds * t.epochs * t.runs
    oof = t.train_images * t.architectures
    predicted = oof + t.test_images * t.runs
    cpu = cpu if cpu and cpu.get("status") == "ok" else None
    no_probe = "unknown: the cpu_parts probe did not run"

    def probed(*keys: str) -> float | None:
        values = [cpu.get(k) for k in keys] if cpu else [None]
        return None if None in values else sum(values)

    def on_cpu(keys: tuple[str, ...], extra: str = "") -> str:
        if probed(*keys) is None:
            return no_probe
        return (f"cpu_parts here ({measured_at}), one thread, maps at {cpu['input_px']} px: "
                + " + ".join(f"{k} {cpu[k]}" for k in keys) + " s per image" + extra)

    items = []
    if gpu:
        gpu_note = f"{Path(gpu['file']).name} on {gpu['device']} ({gpu['model']} at {gpu['infer_input_px']} px"
        items.append(item("training (GPU)", passes, "image passes", passes / gpu["train_img_s_amp"],
                          f"{gpu_note}, bf16): train_img_s_amp {gpu['train_img_s_amp']}; {t.epochs} epochs assumed "
                          "(--project-epochs)"))
        items.append(item("out-of-fold and test prediction with flip TTA (GPU; decoding and post-processing "
                          "threads included)", predicted, "images", predicted * gpu["infer_s_per_image"],
                          f"{gpu_note}): infer_full_s per image {gpu['infer_s_per_image']:.4g} s with "
                          f"{gpu['post_workers']} post-processing threads"))
    else:
        unknown = ("unknown: no GPU rates (no benchmarks/results/gpu_rehearsal.json; run benchmarks/gpu_rehearsal.py "
                   "on a GPU)")
        items.append(item("training (GPU)", passes, "image passes", None, unknown))
        items.append(item("model time of out-of-fold and test prediction with flip TTA (GPU)", predicted, "images",
                          None, unknown))
        for what, key in (("decoding the 2048² PNGs of predicted images (CPU)", "decode_s"),
                          ("upsampling, thresholds and RLE of each run's predicted images (CPU)", "postprocess_rle_s")):
            rate = probed(key)
            items.append(item(what, predicted, "images", None if rate is None else rate * predicted, on_cpu((key,))))
    rate = probed("validate_s")
    items.append(item("validation every epoch at the original size: masks, labels, Dice (CPU)", validations,
                      "images", None if rate is None else rate * validations, on_cpu(("validate_s",))))
    for stage, what in (("select", "cross-fitted selection over the out-of-fold maps (CPU)"),
                        ("fit", "fitted thresholds on the out-of-fold maps (CPU)")):
        rate = rates.get(stage) or {}
        if rate.get("s") is None:
            based = f"unknown: {stage} stage {rate.get('how', 'not measured at two sizes')}"
        else:
            based = (f"{stage} stage here ({measured_at}): {rate['s']} s per map, {rate['how']}, taken as linear in "
                     f"maps; the target's cached maps at {t.input_px} px are larger, so a lower bound")
        items.append(item(what, oof, "maps", None if rate.get("s") is None else rate["s"] * oof, based))
    rate = probed("ensemble_read_s", "ensemble_fuse_rle_s")
    members = len(cpu["members"]) if cpu else 0
    items.append(item("the submission: the ensemble's cached test maps read, fused and RLE-encoded (CPU)",
                      t.test_images, "images", None if rate is None else rate * t.test_images,
                      on_cpu(("ensemble_read_s", "ensemble_fuse_rle_s"),
                             f" with {members} member(s); up to {t.architectures} members of {t.folds} fold runs "
                             "in the target: more")))
    known = [i["seconds"] for i in items if i["seconds"] is not None]
    return {"target": {**asdict(t), "runs": t.runs}, "gpu_rates": gpu, "items": items,
            "known_s": round(sum(known), 1), "unknown": [i["what"] for i in items if i["seconds"] is None],
            "note": ("GPU items: wall seconds on one GPU; CPU items: seconds on one thread (divide by the threads "
                     "given to them). The cycle runs the stages in order, the runs of a stage in parallel over "
                     "--workers.")}


# ------------------------------------------------------------------------------------------------ tables


def fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}g}"


def markdown(result: dict[str, Any]) -> str:
    sizes = list(result["sets"])
    small, large = sizes[0], sizes[-1]
    lines = [f"Scale rehearsal: {' and '.join(sizes)} training images, {result['setting']['test']} test, "
             f"{result['setting']['phantom_px']}² phantoms, models at {result['setting']['image_size']} px "
             f"({result['machine']['cpu']}, {result['machine']['cores']} cores, load {result['machine']['load_avg_start']}"
             f" → {result['machine']['load_avg_end']})", "",
             f"| stage | images ({' → '.join(dict.fromkeys([small, large]))}) | seconds | x time (x images) | peak RSS MB "
             "| x RSS | s per image | expected |",
             "|---|---|---|---|---|---|---|---|"]
    for stage in [*STAGES, "cpu_parts"]:
        recs = [result["sets"][n]["stages"].get(stage) for n in sizes]
        if stage == "cpu_parts":
            rec = result.get("cpu_parts") or {}
            if rec.get("status") == "ok":
                lines.append(f"| cpu_parts (one thread, s per image, maps at {rec['input_px']} px) | "
                             f"{rec['test_images']} test, {rec['val_images']} val | decode {fmt(rec['decode_s'])}, "
                             f"upsample+RLE {fmt(rec['postprocess_rle_s'])}, validate {fmt(rec['validate_s'])}, "
                             f"ensemble read {fmt(rec['ensemble_read_s'])} + fuse+RLE {fmt(rec['ensemble_fuse_rle_s'])}"
                             f" | | {fmt(rec['peak_rss_mb'], 4)} | | | flat |")
            continue
        if not all(recs):
            continue
        key = PRIMARY[stage]
        g = result["growth"].get(stage, {})
        images = " → ".join(str(r.get("images", {}).get(key, "-")) for r in recs) if key else "-"
        lines.append(f"| {stage} | {images} {key or ''} | {' → '.join(fmt(r['seconds'], 4) for r in recs)} | "
                     f"{fmt(g.get('seconds_ratio'))} ({fmt(g.get('images_ratio'))}) | "
                     f"{' → '.join(fmt(r.get('peak_rss_mb'), 4) for r in recs)} | {fmt(g.get('peak_rss_ratio'))} | "
                     f"{fmt((result['per_image'].get(stage) or {}).get('s'))} | {EXPECTED[stage]} |")
    p = result.get("projection")
    if p:
        t = p["target"]
        lines += ["", f"Projection: {t['train_images']} training and {t['test_images']} test images of "
                  f"{t['image_px']}², {t['folds']} folds x {t['architectures']} architectures at {t['input_px']} px, "
                  f"{t['epochs']} epochs", "", "| part | count | seconds | based on |", "|---|---|---|---|"]
        for i in p["items"]:
            lines.append(f"| {i['what']} | {i['count']} {i['unit']} | {fmt(i['seconds'], 4)} | {i['based_on']} |")
        lines.append(f"| known parts together | | {fmt(p['known_s'], 4)} | {len(p['unknown'])} part(s) unknown |")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="16,48", help="training images of each set, increasing (default 16,48)")
    parser.add_argument("--test", type=int, default=8, help="test images of every set (default 8)")
    parser.add_argument("--image-size", type=int, default=256, help="the models' input size (default 256)")
    parser.add_argument("--phantom-size", type=int, default=2048, help="the radiographs' side (default 2048)")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs of every run (default 2)")
    parser.add_argument("--folds", type=int, default=2, help="folds of 4 each model trains (default 2)")
    parser.add_argument("--phantom-workers", type=int, default=0, help="phantom processes (default: the cores)")
    parser.add_argument("--until", choices=STAGES, help="stop each set after this stage (e.g. phantom: a quick check)")
    parser.add_argument("--smoke", action="store_true", help="tiny: 8 and 16 images at 512², 64 px, 1 step an epoch")
    parser.add_argument("--project-epochs", type=int, default=Target.epochs,
                        help=f"epochs the projection assumes (default {Target.epochs})")
    parser.add_argument("--gpu-rates", type=Path, default=GPU_RATES,
                        help="a gpu_rehearsal.py JSON for the projection's GPU parts (default: benchmarks/results/"
                             "gpu_rehearsal.json, when it exists)")
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a temporary one, removed at the end)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary scratch folder")
    parser.add_argument("--out", type=Path, help="JSON to write (default benchmarks/results/scale_rehearsal.json, "
                                                 "--smoke: scale_rehearsal_smoke.json)")
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    parser.add_argument("--probe-ensemble", help=argparse.SUPPRESS)
    parser.add_argument("--probe-px", type=int, default=Target.input_px, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv)


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    if args.probe:
        return probe(args)
    setting = setting_from(args)
    target = Target(epochs=args.project_epochs)
    if target.epochs < 1:
        raise ValueError(f"--project-epochs: {target.epochs}: at least 1")
    out = args.out or RESULTS / ("scale_rehearsal_smoke.json" if args.smoke else "scale_rehearsal.json")
    for n in setting.sizes if args.workdir else ():
        folder = args.workdir / f"n{n}"
        if folder.exists() and any(folder.iterdir()):
            raise ValueError(f"--workdir: {folder} is not empty (a rehearsal times a fresh cycle; give an empty "
                             "folder or remove it)")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="scale_rehearsal_"))
    result: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
        "setting": {**asdict(setting), "smoke": args.smoke, "models": {label: path for label, path in MODELS},
                    "tta": "hflip", "until": args.until},
        "driver_peak_rss_mb": None, "largest_object": largest_object(setting, target),
        "sets": {str(n): {"workdir": str(workdir / f"n{n}"), "stages": {}} for n in setting.sizes},
        "cpu_parts": None, "growth": {}, "per_image": {}, "projection": None, "complete": False,
    }
    stages = STAGES[:STAGES.index(args.until) + 1] if args.until else STAGES
    ok = True
    try:
        for n in setting.sizes:
            folder = workdir / f"n{n}"
            records = result["sets"][str(n)]["stages"]
            for stage in stages:
                if stage == "train":
                    write_plan(folder, n, setting)
                print(f"n={n}: {stage} ...", flush=True)
                result["driver_peak_rss_mb"] = own_peak_rss_mb()
                records[stage] = rec = run_stage(stage_command(stage, folder, n, setting),
                                                 folder / "logs" / f"{stage}.log")
                if rec["status"] == "ok":
                    rec["images"] = stage_images(stage, folder, n, setting)
                print(f"n={n}: {stage}: {rec['status']}, {rec['seconds']} s, peak RSS {rec['peak_rss_mb']} MB",
                      flush=True)
                save(result, out)
                if rec["status"] != "ok":
                    print(rec.get("log_tail", ""), file=sys.stderr)
                    ok = False
                    break
            if not ok:
                break
        if ok and "submit" in stages:
            result["cpu_parts"] = {}
            run_probe(workdir / f"n{setting.sizes[-1]}", setting.sizes[-1], min(target.input_px, setting.phantom_px),
                      result["cpu_parts"])
            ok = result["cpu_parts"].get("status") == "ok"
        summarise(result, setting, target, args.gpu_rates, stages)
        result["complete"] = ok and not args.until
    finally:
        result["machine"]["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
        save(result, out)
        if not args.workdir and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(markdown(result))
    print(f"wrote {out}" + (f"; scratch kept in {workdir}" if args.keep or args.workdir else ""))
    return 0 if ok else 1


def summarise(result: dict[str, Any], s: Setting, target: Target, gpu_path: Path, stages: tuple[str, ...]) -> None:
    """Growth and seconds per image between the smallest and largest set, and the projection."""
    sets = [result["sets"][str(n)]["stages"] for n in s.sizes]
    large = sets[-1]
    for stage in stages:
        if stage not in large or large[stage]["status"] != "ok":
            continue
        small = sets[0].get(stage) if len(sets) > 1 else None
        result["per_image"][stage] = per_image(small, large[stage], stage)
        if small:
            result["growth"][stage] = growth(small, large[stage], stage)
    if "submit" in stages:
        measured_at = f"{s.sizes[-1]} training images, {s.phantom_px}², models at {s.image_size} px"
        result["projection"] = projection(result["per_image"], result["cpu_parts"], gpu_figures(gpu_path), target,
                                          measured_at)


def save(result: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, json.dumps({"command": " ".join(["benchmarks/scale_rehearsal.py", *sys.argv[1:]]), **result},
                               indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
