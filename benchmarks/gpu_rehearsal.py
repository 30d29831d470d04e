#!/usr/bin/env python
"""GPU truth: a competition-scale rehearsal of the harness on one accelerator, in one command.

On the GPU box (one H200-class GPU, 16 CPU cores, no network), from the repository root::

    python benchmarks/gpu_rehearsal.py       # expected 3-4 minutes; sections capped at 7 (--budget-s 420)

writes ``benchmarks/results/gpu_rehearsal.json``. On a machine without CUDA the same command runs at a
tiny scale in well under a minute (``--scale tiny``: 96 px phantoms, a handful of images, 1-2 measured
steps a section) and writes ``benchmarks/results/gpu_rehearsal_cpu.json`` with ``"gpu": false`` and a
note that its figures are not GPU figures. Options: ``--scale tiny|full``, ``--out PATH``,
``--budget-s SECONDS`` (all sections together), ``--workdir DIR`` (scratch, default a temporary folder
removed at the end), ``--sections`` (a subset, e.g. to rerun one).

What it does, each step through the harness's own code (no re-implementation):

* ``data`` - phantom hand radiographs in the competition layout (``phantom.generate``; full:
  200 train + 40 test at 2048², rendered on every CPU core).
* ``train`` - ``smp:unet/resnet34`` at 1024 px (``resnet18`` at the tiny scale). The harness ``Trainer``
  (bf16 AMP + channels_last, its own DataLoader with the configured workers, pinned memory and the
  decoded-once sample cache, filled beforehand) runs a short warm-up pass (cuDNN, allocator) and then a
  measured epoch (fold 0: 160 images), less its first steps (the loader's worker start-up).
  Around every ``next()`` of the loader the device is synchronised, so ``loader_wait_fraction`` is the
  share of a step spent waiting for data. Then the same model in a plain fp32 loop (no autocast, no
  channels_last, same loader and loss) the same way: ``train_img_s_amp`` / ``train_img_s_fp32`` (wall
  clock, data waits included) and ``amp_speedup``; ``*_compute_img_s`` leave the waits out. The loader
  alone (no model) gives ``loader_img_s``, what the input pipeline can feed at most, and without the
  augmentation ``loader_img_s_no_augment`` (is CPU augmentation what holds it back?).
* ``infer`` - the test images at 2048² through ``engine.predictor`` with flip TTA, using the AMP-trained
  weights: model time alone (read + resize + model + TTA, ``infer_model_s``) vs the full pipeline
  (the predictor + the segmentation writer: upsampling, thresholds, RLE, CSV; ``infer_full_s``) with
  ``post_workers`` threads; ``postprocess_s_per_image_thread`` is one image's post-processing on one
  thread, to tell more threads from on-device post-processing (``tasks.rle.runs_torch``) as the fix.
* ``ensemble`` - ``ensembles.runner.predict_ensemble`` live (models loaded once), soft, flip TTA, three
  members: the AMP-trained U-Net, the fp32-trained U-Net, and the AMP weights at 3/4 of the input size.
* ``yolo`` - ``yolo:yolo11n-seg`` at 1024 through the harness's ultralytics trainer (``models.yolo``:
  built from its YAML, no weights, ``amp="bf16"`` so ultralytics' online AMP check never runs), timed
  per batch with ultralytics callbacks over one epoch; its per-epoch Dice validation is not reached.

Every section records its seconds, peak GPU memory (``torch.cuda.max_memory_allocated``, reset before
it) and the peak RSS of this process (DataLoader and phantom workers not included), and the JSON is
rewritten after every section, so a run cut short still leaves the figures of what finished. Each
section gets a share of what is left of ``--budget-s``; its loops stop at that deadline.
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
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import engine  # noqa: E402,F401  (offline environment first)

import torch  # noqa: E402

from benchmarks.common import reset_peak_rss, rss_mb  # noqa: E402
from engine.config import Config, deep_merge, load_config, save_config  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SEG_CONFIG = ROOT / "configs" / "segmentation" / "unet_r34.yaml"
YOLO_CONFIG = ROOT / "configs" / "segmentation" / "yolo11n_seg.yaml"
SECTIONS = ("train", "infer", "ensemble", "yolo")
HEADLINE = ("train_img_s_amp", "train_img_s_fp32", "amp_speedup", "loader_wait_fraction", "infer_model_s",
            "infer_full_s", "postprocess_overhead", "ensemble_img_s", "yolo_train_img_s")
SHARES = {"train": 0.35, "infer": 0.15, "ensemble": 0.2, "yolo": 0.3}  # of the budget left after the data
CPU_NOTE = ("tiny scale on a CPU: these figures test the script and are NOT GPU figures; "
            "run `python benchmarks/gpu_rehearsal.py` on a CUDA machine for those")


@dataclass(frozen=True)
class Scale:
    """Sizes of one rehearsal: phantom data, model inputs, batches and how many steps are left out."""

    image_size: int     # phantom radiographs (the competition's 2048)
    n_train: int
    n_test: int
    input_size: int     # smp and YOLO training / inference input
    seg_model: str      # the smp model of the train, infer and ensemble sections
    batch_size: int
    warm_steps: int     # steps of the warm-up pass (cuDNN, allocator) before the measured one
    skip_steps: int     # first steps of the measured pass left out (worker start-up)
    max_steps: int | None  # steps per epoch (None: the whole fold)
    workers: int        # DataLoader workers of the smp and YOLO trainers
    post_workers: int   # post-processing threads of inference and the ensemble


def scales(cpus: int) -> dict[str, Scale]:
    return {
        "full": Scale(2048, 200, 40, 1024, "smp:unet/resnet34", 8, warm_steps=4, skip_steps=2, max_steps=None,
                      workers=max(2, min(12, cpus - 4)), post_workers=max(2, min(8, cpus // 2))),
        "tiny": Scale(96, 8, 2, 64, "smp:unet/resnet18", 2, warm_steps=1, skip_steps=1, max_steps=2, workers=1,
                      post_workers=1),
    }


def sig(x: float, digits: int = 4) -> float:
    """``x`` to ``digits`` significant digits (figures for the JSON)."""
    return float(f"{x:.{digits}g}")


def device_sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TimedLoader:
    """Wraps a loader: time waiting in each ``next()`` and time from a batch's arrival to the next request
    (the step), the device synchronised at each request. Stops after ``limit`` batches or at ``deadline``."""

    def __init__(self, loader: Iterable, device: torch.device, deadline: float, limit: int | None = None) -> None:
        self.loader = loader
        self.device = device
        self.deadline = deadline
        self.limit = limit
        self.waits: list[float] = []
        self.steps: list[float] = []
        self.sizes: list[int] = []

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator:
        it = iter(self.loader)
        arrived = None
        while True:
            device_sync(self.device)
            asked = time.perf_counter()
            if arrived is not None:
                self.steps.append(asked - arrived)
            if asked > self.deadline or (self.limit is not None and len(self.waits) >= self.limit):
                return
            try:
                batch = next(it)
            except StopIteration:
                return
            arrived = time.perf_counter()
            self.waits.append(arrived - asked)
            self.sizes.append(len(batch["image"]))
            yield batch

    def steady(self, skip: int) -> dict[str, float | int]:
        """Images/s (waits included and left out) and the wait share over the steps after the first ``skip``."""
        n = len(self.steps)
        if n == 0:
            raise RuntimeError("no training step finished before the deadline")
        skip = min(skip, n - 1)
        wait, step = sum(self.waits[skip:n]), sum(self.steps[skip:n])
        images = sum(self.sizes[skip:n])
        return {"steps": n - skip, "images": images, "img_s": images / (wait + step),
                "compute_img_s": images / step, "wait_fraction": wait / (wait + step)}


class Rehearsal:
    """Runs the sections in order, each within its share of the budget, rewriting the JSON after each."""

    def __init__(self, scale_name: str, out: Path, budget_s: float, workdir: Path) -> None:
        from engine.device import pick_device

        self.device = pick_device("auto")
        self.gpu = self.device.type == "cuda"
        self.scale = scales(os.cpu_count() or 1)[scale_name]
        self.out = out
        self.workdir = workdir
        self.start = time.perf_counter()
        self.deadline = self.start + budget_s
        self.data = workdir / "phantom" / "handbones"
        self.members: dict[str, Path] = {}  # trained weights for the infer and ensemble sections
        self.results: dict[str, Any] = {
            "gpu": self.gpu, "note": None if self.gpu else CPU_NOTE,
            "device": torch.cuda.get_device_name(self.device) if self.gpu else str(self.device),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), **git_state(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "cpu_count": os.cpu_count(),
            "host": platform.node(), "scale": scale_name, "budget_s": budget_s, "config": asdict(self.scale),
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "train_img_s_amp": None, "train_img_s_fp32": None, "amp_speedup": None, "loader_wait_fraction": None,
            "infer_model_s": None, "infer_full_s": None, "postprocess_overhead": None, "ensemble_img_s": None,
            "yolo_train_img_s": None, "peak_gpu_mem_gb": None, "complete": False, "sections": {},
        }

    def save(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_name(self.out.name + ".tmp")
        tmp.write_text(json.dumps(self.results, indent=1) + "\n")
        os.replace(tmp, self.out)

    def run(self, sections: list[str]) -> bool:
        ok = self.section("data", self.make_data, share=None)
        todo = [s for s in SECTIONS if s in sections] if ok else []
        for k, name in enumerate(todo):
            left = sum(SHARES[s] for s in todo[k:])
            ok &= self.section(name, getattr(self, f"run_{name}"), share=SHARES[name] / left)
        self.results["complete"] = ok and len(todo) == len(sections)
        self.results["total_s"] = round(time.perf_counter() - self.start, 1)
        self.publish()
        return ok

    def publish(self) -> None:
        """Copy the headline figures out of the section records (finished or not) and rewrite the JSON."""
        for record in self.results["sections"].values():
            for key in HEADLINE:
                if key in record:
                    self.results[key] = record[key]
        peaks = [s.get("peak_gpu_mem_gb") for s in self.results["sections"].values()]
        self.results["peak_gpu_mem_gb"] = max((p for p in peaks if p is not None), default=None)
        self.save()

    def section(self, name: str, fn: Callable[[float, dict], None], share: float | None) -> bool:
        """Run one section within ``share`` of the time left. ``fn`` fills its record as it goes (and may
        :meth:`publish` midway), so a section that fails or is killed keeps the figures it had."""
        now = time.perf_counter()
        record: dict[str, Any] = {"status": "running"}
        self.results["sections"][name] = record
        if share is not None and now >= self.deadline:
            record["status"] = "skipped: budget spent"
            self.publish()
            return False
        deadline = self.deadline if share is None else now + share * (self.deadline - now)
        self.reset_gpu_peak()
        rss_reset = reset_peak_rss()
        print(f"[{now - self.start:6.1f}s] {name} ...", flush=True)
        try:
            fn(deadline, record)
            record["status"] = "ok"
        except Exception as err:  # one failing section must not lose the others' figures
            record["status"] = f"error: {type(err).__name__}: {err}"
            record["traceback"] = traceback.format_exc(limit=8)
            print(record["traceback"], file=sys.stderr, flush=True)
        record["seconds"] = round(time.perf_counter() - now, 2)
        if self.gpu:  # the section's peak, its parts' peaks included (a part may reset the counter)
            record["peak_gpu_mem_gb"] = max([self.gpu_peak_gb()] + [v for k, v in record.items()
                                                                    if k.endswith("peak_gpu_mem_gb") and v is not None])
        else:
            record["peak_gpu_mem_gb"] = None
        record["peak_rss_mb"] = round(rss_mb())
        record["peak_rss_of"] = "this section" if rss_reset else "the process so far"
        self.publish()
        print(f"[{time.perf_counter() - self.start:6.1f}s] {name}: {record['status']}", flush=True)
        return record["status"] == "ok"

    def reset_gpu_peak(self) -> None:
        if self.gpu:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def gpu_peak_gb(self) -> float | None:
        """Peak GPU memory allocated by tensors since the last :meth:`reset_gpu_peak`, GB (None without CUDA)."""
        return round(torch.cuda.max_memory_allocated(self.device) / 2**30, 3) if self.gpu else None

    def seg_config(self, name: str, **overrides: Any) -> Config:
        """The U-Net run config (``configs/segmentation/unet_r34.yaml``) with this scale's model."""
        return self.config(SEG_CONFIG, name, model={"name": self.scale.seg_model}, **overrides)

    def config(self, base: Path, name: str, **overrides: Any) -> Config:
        """A run config from the shipped YAML, pointed at the phantom data and the scratch folder."""
        s = self.scale
        raw = {"data": {"root": str(self.data / "train"), "test_root": str(self.data / "test"),
                        "image_size": s.input_size, "num_workers": s.workers,
                        "cache_dir": str(self.workdir / "cache")},
               "train": {"batch_size": s.batch_size, "epochs": 2, "max_steps_per_epoch": s.max_steps,
                         "device": str(self.device)},
               "inference": {"post_workers": s.post_workers},
               "logging": {"out_dir": str(self.workdir / "runs"), "run_name": name, "progress": False}}
        return load_config(base, deep_merge(raw, overrides))

    def make_data(self, deadline: float, out: dict[str, Any]) -> None:
        from phantom import generate

        s = self.scale
        t0 = time.perf_counter()
        generate(self.data.parent, s.n_train, s.n_test, size=s.image_size, seed=0, workers=os.cpu_count())
        out.update({"images_train": s.n_train, "images_test": s.n_test, "image_size": s.image_size,
                    "generate_s": round(time.perf_counter() - t0, 2)})

    def passes(self, loader: Iterable, deadline: float, run_pass: Callable[[int, TimedLoader], None]) -> TimedLoader:
        """A short warm-up pass (cuDNN, allocator), then the measured pass over ``loader``; returns its timings."""
        s = self.scale
        now = time.perf_counter()
        run_pass(0, TimedLoader(loader, self.device, now + (deadline - now) / 3, limit=s.warm_steps))
        timed = TimedLoader(loader, self.device, deadline, limit=s.max_steps)
        run_pass(1, timed)
        return timed

    def loader_img_s(self, loader: Iterable, deadline: float) -> float:
        """Images/s that ``loader`` delivers with nothing consuming them (its first batch, the start-up, left out)."""
        timed = TimedLoader(loader, self.device, deadline, limit=self.scale.max_steps)
        for _ in timed:
            pass
        return timed.steady(1)["img_s"]

    def member(self, name: str, **overrides: Any) -> Path:
        """Checkpoint of a U-Net member: the trained weights of ``name`` (before ``@``; random ones when ``train``
        did not run) in a run folder of its own config (``overrides``: e.g. another input size)."""
        from engine.checkpoint import load_checkpoint, save_checkpoint

        cfg = self.seg_config(name, **overrides)
        trained = self.members.get(name.split("@")[0])
        if trained is None:
            return save_member(create_plain(cfg, torch.device("cpu")), cfg)
        if trained.parent != cfg.run_dir:
            save_config(cfg, cfg.run_dir / "config.yaml")
            save_checkpoint(cfg.run_dir / "best.pt", {**load_checkpoint(trained), "config": cfg.to_dict()})
        return cfg.run_dir / "best.pt"

    def run_train(self, deadline: float, out: dict[str, Any]) -> None:
        from engine.trainer import Trainer

        s = self.scale
        trainer = Trainer(self.seg_config("unet-amp"))
        cfg, task, loader = trainer.cfg, trainer.task, trainer.loader
        t0 = time.perf_counter()
        fill_cache(trainer.train_set, os.cpu_count() or 1)
        out.update({"model": cfg.model.name, "input_size": s.input_size, "batch_size": s.batch_size,
                    "loader_workers": s.workers, "amp_dtype": str(trainer.amp),
                    "channels_last": cfg.train.channels_last and self.gpu,
                    "train_images": len(trainer.train_set), "cache_fill_s": round(time.perf_counter() - t0, 2)})
        part = (deadline - time.perf_counter()) / 2.5

        def harness_epoch(epoch: int, timed: TimedLoader) -> None:
            trainer.loader = timed
            trainer.train_one_epoch(epoch)

        amp = self.passes(loader, time.perf_counter() + part, harness_epoch).steady(s.skip_steps)
        self.members["unet-amp"] = save_member(trainer.model, cfg)
        out.update({"train_img_s_amp": sig(amp["img_s"]), "train_compute_img_s_amp": sig(amp["compute_img_s"]),
                    "loader_wait_fraction": round(amp["wait_fraction"], 4), "amp_steps": amp["steps"],
                    "amp_peak_gpu_mem_gb": self.gpu_peak_gb()})
        self.publish()
        trainer = None  # free its GPU memory before the fp32 baseline (the closure above shares the name)
        self.reset_gpu_peak()
        augment = loader.dataset.augment
        out["loader_img_s"] = sig(self.loader_img_s(loader, time.perf_counter() + part / 4))
        loader.dataset.augment = None  # the same pass without augmentation: is the augmentation the bottleneck?
        out["loader_img_s_no_augment"] = sig(self.loader_img_s(loader, time.perf_counter() + part / 4))
        loader.dataset.augment = augment
        model = create_plain(cfg, self.device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        fp32 = self.passes(loader, deadline, lambda epoch, timed: plain_fp32_pass(model, optimizer, task, timed,
                                                                                  self.device)).steady(s.skip_steps)
        self.members["unet-fp32"] = save_member(model, self.seg_config("unet-fp32"))
        out["fp32_peak_gpu_mem_gb"] = self.gpu_peak_gb()
        out.update({"train_img_s_fp32": sig(fp32["img_s"]),
                    "train_compute_img_s_fp32": sig(fp32["compute_img_s"]),
                    "fp32_loader_wait_fraction": round(fp32["wait_fraction"], 4), "fp32_steps": fp32["steps"],
                    "amp_speedup": sig(amp["img_s"] / fp32["img_s"]),
                    "amp_speedup_compute": sig(amp["compute_img_s"] / fp32["compute_img_s"])})

    def run_infer(self, deadline: float, out: dict[str, Any]) -> None:
        from engine.predictor import Predictor, load_model
        from tasks.rle import encode_many
        from tasks.segmentation.masks import probs_to_masks, resolve_thresholds
        from tasks.tta import views_from_config

        loaded = load_model(self.member("unet-amp"), self.device)
        cfg, task = loaded.cfg, loaded.task
        views = views_from_config(cfg.inference.tta, enabled=True)
        predictor = Predictor(loaded, views, self.device)
        samples = task.samples("test")
        first = next(predictor.inputs(samples[:1]))
        probs = predictor(first)[0].float().cpu().numpy()  # warm-up
        thresholds = resolve_thresholds(cfg.inference.threshold)
        t0 = time.perf_counter()
        encode_many(probs_to_masks(probs, first["raw"][0].shape, thresholds))
        post_s = time.perf_counter() - t0  # one image's post-processing on one thread: what each worker pays
        half = time.perf_counter() + (deadline - time.perf_counter()) / 2.5
        t0 = time.perf_counter()
        done = 0
        for batch in predictor.inputs(samples):
            if time.perf_counter() > half:
                break
            predictor(batch)[0].float().cpu()
            done += 1
        model_s = time.perf_counter() - t0
        csv_path = self.workdir / "submission_unet.csv"
        t0 = time.perf_counter()
        with task.writer(csv_path, None, views=views, workers=cfg.inference.post_workers) as writer:
            for batch, outputs in predictor.batches(samples[:done]):
                writer.add(batch, outputs)
        full_s = time.perf_counter() - t0
        out.update({"images": done, "tta_views": [v.name for v in views], "input_size": cfg.data.image_size,
                    "post_workers": cfg.inference.post_workers, "postprocess_s_per_image_thread": sig(post_s),
                    "infer_model_s": sig(model_s), "infer_full_s": sig(full_s),
                    "postprocess_overhead": round(full_s / model_s - 1, 4),
                    "foreground_fraction": foreground_fraction(csv_path, samples[0].image_path)})

    def run_ensemble(self, deadline: float, out: dict[str, Any]) -> None:
        """``predict_ensemble`` runs to its end: the test set's size bounds it, not ``deadline``."""
        from ensembles.api import predict_ensemble
        from ensembles.config import EnsembleConfig

        s = self.scale
        small = max(32, round(0.75 * s.input_size / 32) * 32)
        runs = {"unet-amp": self.member("unet-amp"), "unet-fp32": self.member("unet-fp32"),
                f"unet-amp@{small}": self.member(f"unet-amp@{small}", data={"image_size": small})}
        ens = EnsembleConfig.model_validate({
            "task": "segmentation", "method": "soft", "name": "rehearsal-ensemble", "tta": {"hflip": True},
            "members": [{"run": str(path.parent), "name": label} for label, path in runs.items()],
            "test_root": str(self.data / "test"), "out_dir": str(self.workdir / "runs"), "workers": s.post_workers})
        stats = predict_ensemble(ens, out_csv=self.workdir / "submission_ensemble.csv", tta=True,
                                 device=str(self.device), progress=False)
        out.update({"members": list(runs), "method": ens.method, "images": stats["images"], "workers": s.post_workers,
                    "ensemble_s": stats["seconds"], "ensemble_img_s": sig(stats["images"] / stats["seconds"])})

    def run_yolo(self, deadline: float, out: dict[str, Any]) -> None:
        from engine.yolo_learner import YoloTrainer, ultralytics_args
        from models import create_model
        from tasks.formats.yolo import yolo_dataset

        s = self.scale
        cfg = self.config(YOLO_CONFIG, "yolo", train={"epochs": 1, "amp": "bf16" if self.gpu else "off"})
        model = create_model(cfg.model.name, task=cfg.task, num_outputs=29, weights=cfg.model.weights,
                             **cfg.model.options)
        weights, pickled = model.start_weights()
        save_config(cfg, cfg.run_dir / "config.yaml")  # the harness's YoloTrainer reads it from its project folder
        t0 = time.perf_counter()
        data_yaml = yolo_dataset(cfg.data.root, cfg.data.cache_dir, cfg.data.fold, cfg.data.n_folds)
        convert_s = time.perf_counter() - t0
        trainer = YoloTrainer(overrides=ultralytics_args(cfg, data_yaml, model.model_arg, model.options,
                                                         weights if pickled else None))
        clock = BatchClock(self.device, deadline, s.max_steps)
        trainer.add_callback("on_train_batch_start", clock.batch_start)
        trainer.add_callback("on_train_batch_end", clock.batch_end)
        trainer.add_callback("on_train_epoch_end", clock.stop)
        try:
            trainer.train()
        except EnoughSteps:
            pass
        n_images = len(trainer.train_loader.dataset)
        del trainer
        steady = clock.steady(s.skip_steps, s.batch_size, n_images)
        out.update({"model": cfg.model.name, "input_size": s.input_size, "batch_size": s.batch_size,
                    "amp": cfg.train.amp, "loader_workers": s.workers, "convert_s": round(convert_s, 2),
                    "steps": steady["steps"], "yolo_train_img_s": sig(steady["img_s"]),
                    "yolo_loader_wait_fraction": round(steady["wait_fraction"], 4)})


class EnoughSteps(Exception):
    """Raised from an ultralytics callback to end its training once the measured steps are done."""


class BatchClock:
    """Ultralytics callbacks timing each training batch (device synchronised) and ending the run in time."""

    def __init__(self, device: torch.device, deadline: float, limit: int | None) -> None:
        self.device = device
        self.deadline = deadline
        self.limit = limit
        self.waits: list[float] = []
        self.steps: list[float] = []
        self.started = 0.0
        self.ended: float | None = None

    def batch_start(self, trainer: Any) -> None:
        device_sync(self.device)
        now = time.perf_counter()
        if (self.limit is not None and len(self.steps) >= self.limit) or now > self.deadline:
            raise EnoughSteps
        self.waits.append(now - self.ended if self.ended is not None else 0.0)
        self.started = now

    def batch_end(self, trainer: Any) -> None:
        device_sync(self.device)
        self.ended = time.perf_counter()
        self.steps.append(self.ended - self.started)

    def stop(self, trainer: Any) -> None:
        raise EnoughSteps

    def steady(self, skip: int, batch_size: int, n_images: int) -> dict[str, float | int]:
        n = len(self.steps)
        if n == 0:
            raise RuntimeError("no YOLO training step finished before the deadline")
        skip = min(skip, n - 1)
        images = sum(min(batch_size, n_images - k * batch_size) for k in range(skip, n))
        wait, step = sum(self.waits[skip:n]), sum(self.steps[skip:n])
        return {"steps": n - skip, "img_s": images / (wait + step), "wait_fraction": wait / (wait + step)}


def fill_cache(dataset: Any, workers: int) -> None:
    """Decode every sample once into the dataset's sample cache (what the first epoch would do), in threads."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for _ in pool.map(dataset.load, range(len(dataset))):
            pass


def create_plain(cfg: Config, device: torch.device) -> torch.nn.Module:
    from models import create_model

    return create_model(cfg.model.name, task=cfg.task, num_outputs=29, weights=cfg.model.weights,
                        **cfg.model.options).to(device)


def plain_fp32_pass(model: torch.nn.Module, optimizer: torch.optim.Optimizer, task: Any, batches: Iterable,
                    device: torch.device) -> None:
    """The baseline: the textbook loop in fp32 (no autocast, no channels_last), the harness's loss and data."""
    model.train()
    for batch in batches:
        image, masks = batch["image"].to(device), batch["masks"].to(device)
        loss = task.loss(model(image), {"masks": masks})
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()


def save_member(model: torch.nn.Module, cfg: Config) -> Path:
    """A run folder (config + ``best.pt``) that ``engine.predictor.load_model`` and the ensemble runner read."""
    from engine.checkpoint import save_checkpoint

    save_config(cfg, cfg.run_dir / "config.yaml")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_checkpoint(cfg.run_dir / "best.pt", {"model": state, "model_name": cfg.model.name, "task": cfg.task,
                                              "num_outputs": 29, "config": cfg.to_dict(), "epoch": 0, "metrics": {}})
    return cfg.run_dir / "best.pt"


def foreground_fraction(csv_path: Path, image_path: Path) -> float:
    """Share of predicted foreground pixels over every (image, class) of a submission (what RLE had to encode)."""
    import csv

    from tasks.formats.images import image_size

    height, width = image_size(image_path)
    pixels = rows = 0
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            pixels += sum(int(v) for v in row["rle"].split()[1::2])
            rows += 1
    return round(pixels / max(1, rows * height * width), 6)


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return {"git_commit": git("rev-parse", "HEAD"), "git_dirty": bool(git("status", "--porcelain", "-uno"))}
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": None, "git_dirty": None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=("tiny", "full"), help="default: full on CUDA, tiny otherwise")
    parser.add_argument("--out", type=Path, help="JSON to write (default: benchmarks/results/gpu_rehearsal.json on "
                                                 "CUDA, gpu_rehearsal_cpu.json otherwise)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="seconds for all sections together")
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a temporary one, removed at the end)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    args = parser.parse_args(argv)
    gpu = torch.cuda.is_available()
    scale = args.scale or ("full" if gpu else "tiny")
    out = args.out or RESULTS / ("gpu_rehearsal.json" if gpu else "gpu_rehearsal_cpu.json")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="gpu_rehearsal_"))
    try:
        rehearsal = Rehearsal(scale, out, args.budget_s, workdir)
        ok = rehearsal.run(args.sections)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    r = rehearsal.results
    print(json.dumps({k: v for k, v in r.items() if k not in ("sections", "config")}, indent=1))
    print(f"wrote {out}" + ("" if gpu else f" ({CPU_NOTE})"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
