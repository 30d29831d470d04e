"""Segmentation inference: model(s) + TTA on the device, post-processing in worker threads or inline.

The device loop only produces probabilities at the model size; upsampling to the original size,
thresholding and RLE (one class at a time) run in a thread pool while the next image is on the device,
at most ``2 x workers`` images in flight, so memory does not grow with the number of test images. With
no workers (the default on a CPU with few cores, :func:`engine.device.post_workers`) they run in the
loop, one image at a time, and leave every core to the forward pass.
"""
from __future__ import annotations

import os
import time
import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from engine.checkpoint import load_model_state, open_checkpoint
from engine.cli import Output
from engine.config import Config, build_config
from engine.sliding_window import MODE_RESIZE, SlidingWindowSource
from engine.tta import View, tta_predict, views_name
from models import create_model
from tasks.formats.atomic import atomic_write
from tasks.formats.handbones import HandboneSample, list_samples
from tasks.formats.images import read_grey, resize_grey
from tasks.registry import Registry, get_task_class
from tasks.segmentation import encode_probs, split_folds
from tasks.submission import AtomicCSVWriter


# Task -> ``predict_run(cfg, ckpt, *, out_csv, split, tta, save_probs_dir, device, workers, progress)``, which
# predicts one trained run and returns {"images", "seconds", "images_per_s", "csv"}.
PREDICTORS = Registry("predictor")


@dataclass
class LoadedModel:
    """A trained member: its torch module, resolved config and where it came from."""

    model: torch.nn.Module
    cfg: Config
    source: Path

    @property
    def image_size(self) -> int:
        return self.cfg.data.image_size


def load_model(ckpt: str | os.PathLike, device: torch.device, cfg: Config | None = None) -> LoadedModel:
    """Build the architecture recorded in the checkpoint and load its weights (clear error on mismatch).

    ``ckpt``: the file, or a :class:`engine.checkpoint.Checkpoint` already read (for its config), so the
    file is read once."""
    ckpt = open_checkpoint(ckpt)
    ckpt_path, state = ckpt.path, ckpt.state
    if "external_weights" in state:  # a YOLO run of an older harness: weights in ultralytics' pickled file
        raise ValueError(f"{ckpt_path}: its weights are not in the checkpoint but in "
                         f"{ckpt_path.parent / str(state['external_weights'])} (external_weights); weights load only "
                         "as tensors from the checkpoint itself, never from another file: train the run again")
    for key in ("config", "model_name", "num_outputs", "model"):
        if key not in state:
            raise ValueError(f"{ckpt_path}: not a harness checkpoint (no '{key}')")
    if cfg is None:
        cfg = build_config(state["config"], str(ckpt_path))
    elif cfg.model.name != state["model_name"]:
        raise ValueError(f"{ckpt_path}: checkpoint holds {state['model_name']!r} but the config asks for {cfg.model.name!r}")
    task = get_task_class(cfg.task)(cfg)
    if state["num_outputs"] != task.num_outputs:
        raise ValueError(f"{ckpt_path}: checkpoint has {state['num_outputs']} output channels, task "
                         f"{cfg.task} needs {task.num_outputs}")
    model = create_model(cfg.model.name, task=cfg.task, num_outputs=task.num_outputs, in_channels=task.in_channels,
                         **cfg.model.options)
    if isinstance(model, torch.nn.Module):
        load_model_state(model, state["model"], str(ckpt_path))
    else:  # an external learner (e.g. YOLO) builds its module from what its checkpoint records
        model = model.load(state, str(ckpt_path))
    return LoadedModel(model.to(device).eval(), cfg, ckpt_path)


def split_samples(cfg: Config, split: str) -> list[HandboneSample]:
    """Images to predict: the test folder (``data.test_root``) or the run's validation fold."""
    if split == "test":
        if not cfg.data.test_root:
            raise ValueError("data.test_root is not set: nothing to predict for --split test")
        return list_samples(cfg.data.test_root, labels=None)
    samples = list_samples(cfg.data.root)
    _, val_idx = split_folds(samples, cfg.data.n_folds, cfg.data.fold)
    return [samples[i] for i in val_idx]


class ProbabilitySource:
    """Mean sigmoid probabilities of one or more members (each with its own input size) under TTA views."""

    mode = MODE_RESIZE  # whole image resized to the model size (engine.sliding_window: tiles at the original size)

    def __init__(self, members: list[LoadedModel], views: list[View], device: torch.device,
                 weights: np.ndarray | None = None, amp: torch.dtype | None = None) -> None:
        self.members = members
        self.views = views
        self.device = device
        self.amp = amp
        if weights is None:
            weights = np.ones((len(members), 1), np.float32)
        self.weights = np.asarray(weights, np.float32).reshape(len(members), -1)
        self.out_size = max(m.image_size for m in members)
        self.unweighted = len(members) == 1 and bool(np.all(self.weights == 1))  # x * 1 / 1 == x: skip both passes

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> np.ndarray:
        """``(C, s, s)`` float32 probabilities at the largest member size for one uint8 image."""
        total = None
        for m, w in zip(self.members, self.weights):
            # float32 in numpy: the one copy .float() would make, and a decoded image may be read-only (PIL's
            # arrays are), which torch.from_numpy warns about when the size already matches
            x = torch.from_numpy(resize_grey(image, m.image_size, m.image_size).astype(np.float32)).div_(255)[None, None]
            x = x.to(self.device)
            ctx = torch.autocast(self.device.type, dtype=self.amp) if self.amp else torch.autocast("cpu", enabled=False)
            with ctx:
                prob = tta_predict(m.model, x, self.views, out_size=(self.out_size, self.out_size))[0]
            if self.unweighted:
                return prob.float().cpu().numpy()
            prob = prob.float() * torch.as_tensor(w, device=prob.device).view(-1, 1, 1)
            total = prob if total is None else total + prob
        return (total / torch.as_tensor(self.weights.sum(0), device=total.device).view(-1, 1, 1)).cpu().numpy()


def _postprocess(name: str, probs: np.ndarray, size: tuple[int, int], thresholds: np.ndarray,
                 cache: Output | None, mode: str = MODE_RESIZE, tta: str = "identity") -> tuple[str, list[str]]:
    if cache is not None:
        cache(save_probs, cache.path / f"{name}.npz", probs, size, mode, tta)
    return name, encode_probs(probs, size, thresholds)


def save_probs(path: Path, probs: np.ndarray, size: tuple[int, int], mode: str = MODE_RESIZE,
               tta: str = "identity") -> None:
    """Prediction cache entry: uint8-quantised probabilities (p*255) + original size + how they were made
    (``mode``: ``resize``, at the model size; ``sliding_window``, at the original size; ``tta``: the views
    averaged, :func:`engine.tta.views_name`). Read back, checked, by ``ensembles.runner.load_cached``."""
    q = probs if probs.dtype == np.uint8 else np.clip(np.rint(probs * 255), 0, 255).astype(np.uint8)
    with atomic_write(path, "wb") as f:
        np.savez(f, probs=q, orig_size=np.asarray(size, np.int64), mode=np.asarray(mode), tta=np.asarray(tta))


def predict_rows(samples: Iterable[HandboneSample], source: Callable[[np.ndarray], np.ndarray],
                 thresholds: np.ndarray, workers: int = 2, cache: Output | None = None,
                 progress: bool = True, expected_size: tuple[int, int] | None = None) -> Iterator[tuple[str, list[str]]]:
    """Yield ``(image_name, rles)`` in input order.

    ``workers`` threads post-process while the next forward pass runs (at most ``2 x workers`` images in
    flight); 0: each image is post-processed in this loop right after its forward pass.
    ``cache`` (:func:`prediction_cache`): the folder the probabilities of each image are also saved in.
    """
    mode, tta = getattr(source, "mode", MODE_RESIZE), views_name(getattr(source, "views", []))
    jobs = ((s.name, probs, shape, thresholds, cache, mode, tta)
            for s, shape, probs in _forward(list(samples), source, progress, expected_size))
    if workers == 0:
        for job in jobs:
            yield _postprocess(*job)
        return
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for job in jobs:
            pending.append(pool.submit(_postprocess, *job))
            while len(pending) > 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _forward(samples: list[HandboneSample], source: Callable[[np.ndarray], np.ndarray], progress: bool,
             expected_size: tuple[int, int] | None) -> Iterator[tuple[HandboneSample, tuple[int, int], np.ndarray]]:
    """Each sample with its original size and probabilities, images read one at a time."""
    for s in tqdm(samples, desc="predict", disable=not progress, dynamic_ncols=True):
        image = read_grey(s.image_path)
        if expected_size and image.shape != expected_size:
            warnings.warn(f"{s.image_path}: size {image.shape[1]}x{image.shape[0]} differs from the usual "
                          f"{expected_size[1]}x{expected_size[0]}; predicted at its own size", stacklevel=2)
        yield s, image.shape, source(image)


def write_submission(rows: Iterable[tuple[str, list[str]]], out_csv: str | Path) -> int:
    """Stream rows into an atomic CSV; returns the number of images written."""
    n = 0
    with AtomicCSVWriter(out_csv) as writer:
        for name, rles in rows:
            writer.write_image(name, rles)
            n += 1
    return n


def timed(fn: Callable[[], int]) -> tuple[int, float]:
    t0 = time.perf_counter()
    n = fn()
    return n, time.perf_counter() - t0


@PREDICTORS.register("segmentation")
def predict_run(cfg: Config | None, ckpt: str | os.PathLike, *, out_csv: str | Path, split: str = "test", tta: bool = False,
                save_probs_dir: str | Path | None = None, device: str = "auto", workers: int | None = None,
                progress: bool = True) -> dict:
    """Predict one trained run; returns ``{"images", "seconds", "images_per_s", "csv"}``."""
    from engine.device import amp_dtype, pick_device, post_workers
    from engine.tta import views_from_config

    dev = pick_device(device)
    member = load_model(ckpt, dev, cfg)
    cfg = member.cfg
    if cfg.data.roi is not None:
        raise ValueError(f"{ckpt}: a stage-2 wrist-ROI run (data.roi) predicts crops of its stage 1's box: "
                         "give --stage1 <stage-1 run>/best.pt (engine.roi_predictor)")
    samples = split_samples(cfg, split)
    views = views_from_config(cfg.inference.tta, enabled=tta)
    amp = amp_dtype(cfg.train.amp, dev)
    if cfg.inference.sliding_window:
        source = SlidingWindowSource(member.model, member.image_size, views, dev, cfg.inference.tile_overlap,
                                     cfg.inference.batch_size, amp)
    else:
        source = ProbabilitySource([member], views, dev, amp=amp)
    key = "images_per_s_tta" if tta and len(views) > 1 else "images_per_s"
    key += "_sliding_window" if cfg.inference.sliding_window else ""  # not the whole-image speed the leaderboard shows
    return write_predictions(cfg, ckpt, samples, source, out_csv=out_csv, split=split, save_probs_dir=save_probs_dir,
                             workers=post_workers(cfg.inference.post_workers if workers is None else workers, dev),
                             progress=progress, speed_key=key)


def write_predictions(cfg: Config, ckpt: str | os.PathLike, samples: list[HandboneSample],
                      source: Callable[[np.ndarray], np.ndarray], *, out_csv: str | Path, split: str,
                      save_probs_dir: str | Path | None, workers: int, progress: bool, speed_key: str,
                      **summary: str) -> dict:
    """The submission CSV (and cache) of ``source`` over ``samples`` at the run's thresholds, post-processed by
    ``workers`` threads (:func:`engine.device.post_workers`); records the speed under ``speed_key`` (and
    ``summary``) in the run's summary.json. Returns ``{"images", "seconds", "images_per_s", "csv"}``."""
    from engine.summary import record_summary
    from tasks.formats.images import image_size
    from tasks.segmentation import resolve_thresholds

    rows = predict_rows(samples, source, resolve_thresholds(cfg.inference.threshold),
                        workers, prediction_cache(save_probs_dir, ckpt, split), progress,
                        expected_size=image_size(samples[0].image_path))
    n, seconds = timed(lambda: write_submission(rows, out_csv))
    stats = {"images": n, "seconds": round(seconds, 3), "images_per_s": round(n / seconds, 3), "csv": str(out_csv)}
    run_dir = Path(ckpt).parent
    if (run_dir / "summary.json").is_file():  # inference speed, whichever split was predicted
        record_summary(run_dir, speed={speed_key: stats["images_per_s"]}, **summary)
    return stats


def prediction_cache(save_probs_dir: str | Path | None, ckpt: str | os.PathLike, split: str) -> Output | None:
    """Where ``--save-probs`` puts the prediction cache, and whether a failure to write it is an error.

    ``"auto"``: ``<run>/preds/<split>``, bookkeeping of the run folder (a read-only run folder warns, the
    submission is still written); a folder the user named is an output asked for (its failure is an error).
    """
    if save_probs_dir is None:
        return None
    if save_probs_dir == "auto":
        return Output(Path(ckpt).parent / "preds" / split, required=False)
    return Output(save_probs_dir, required=True)
