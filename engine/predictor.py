"""The one predictor: images → a task's output, for every task and mode.

:class:`Predictor` runs one trained run (:class:`LoadedModel`) under TTA views: per batch of the task's
inputs (:meth:`tasks.base.Task.batches`) and per view, ``model(*task.model_inputs(batch, view).values())``, mapped back
by :meth:`~tasks.base.Task.invert` and made probabilities (or values) by :meth:`~tasks.base.Task.activate`,
averaged over the views, in the run's precision (:func:`engine.device.autocast`). Modes: the whole image
resized to the run's input size, or — where the task's spec allows it and the run's
``inference.sliding_window`` asks — overlapping tiles at the original resolution (:mod:`engine.sliding_window`);
the two-stage wrist ROI (:mod:`engine.roi_predictor`) chains two predictors; an ensemble runs one per member.

:func:`predict_run` is the whole of ``inference.py --ckpt``: the samples of a split, the predictor, the task's
writer (submission CSV and prediction cache), the speed recorded in the run's summary.json.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from engine.checkpoint import load_model_state, open_checkpoint
from core.cli import Output
from engine.config import Config, build_config
from engine.device import amp_dtype, autocast, pick_device, post_workers
from engine.sliding_window import sliding_window_predict
from models import create_model
from tasks.base import Task
from tasks.spec import MODE_SLIDING
from tasks.tta import View, views_from_config


@dataclass
class LoadedModel:
    """A trained run ready to predict: its torch module, resolved config, task and where it came from."""

    model: torch.nn.Module
    cfg: Config
    source: Path
    task: Task = field(init=False)

    def __post_init__(self) -> None:
        self.task = self.cfg.spec.task_class()(self.cfg)

    @property
    def image_size(self) -> int | tuple[int, int]:
        """The input size the model was trained at (one side, or ``(height, width)``): the resized image's, or a
        patch-trained run's tile."""
        return self.cfg.data.input_size


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
    task = cfg.spec.task_class()(cfg)
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


class Predictor:
    """One run under TTA ``views`` on ``device``: a batch of the task's inputs → the mean over the views of its
    activated outputs in the frame of the plain input (whole images, or tiles stitched at the original size)."""

    def __init__(self, member: LoadedModel, views: Sequence[View], device: torch.device) -> None:
        if not views:
            raise ValueError("a predictor needs at least one TTA view")
        self.member, self.task, self.views, self.device = member, member.task, list(views), device
        self.amp = amp_dtype(member.cfg.train.amp, device)
        self.mode = member.cfg.prediction_mode
        inference = member.cfg.inference
        self.batch_size = 1 if self.mode == MODE_SLIDING else inference.batch_size
        self.input_size: int | tuple[int, int] | None = None if self.mode == MODE_SLIDING else member.image_size

    @torch.no_grad()
    def forward(self, batch: dict) -> torch.Tensor:
        """Mean over the views of ``activate(invert(model(view of batch)))``, float32, in the run's precision."""
        with autocast(self.device, self.amp):
            return view_mean(self.member.model, self.task, batch, self.views)

    def __call__(self, batch: dict) -> torch.Tensor:
        """The task's output for ``batch`` (on the device): whole inputs, or one image in tiles of the run's input
        size (``inference.tile_overlap``; the views apply per tile)."""
        if self.mode != MODE_SLIDING:
            return self.forward(batch)
        inference = self.member.cfg.inference
        with autocast(self.device, self.amp):
            probs = sliding_window_predict(lambda tiles: self.forward({**batch, "image": tiles}), batch["image"],
                                           self.member.image_size, inference.tile_overlap, inference.batch_size)
        return probs[None]

    def inputs(self, samples: Sequence[Any], progress: bool = False) -> Iterator[dict]:
        """The task's input batches of ``samples`` at this run's input size, tensors on the device."""
        bar = tqdm(total=len(samples), desc="predict", disable=not progress, dynamic_ncols=True)
        for batch in self.task.batches(samples, self.input_size, self.batch_size):
            yield to_device(batch, self.device)
            bar.update(len(batch["samples"]))
        bar.close()

    def batches(self, samples: Sequence[Any], progress: bool = False) -> Iterator[tuple[dict, torch.Tensor]]:
        """``(batch, outputs)`` over ``samples``: the task's inputs and this run's outputs for them."""
        for batch in self.inputs(samples, progress):
            yield batch, self(batch)


def view_mean(model: Callable[..., torch.Tensor], task: Any, batch: dict, views: Sequence[View]) -> torch.Tensor:
    """The TTA step of every prediction: per view, the model's output on the view of ``batch``
    (``task.model_inputs``), mapped back to the plain input's frame (``task.invert``) and activated
    (``task.activate``: probabilities, not logits, are averaged); the mean over ``views``."""
    total = None
    for view in views:
        y = task.activate(task.invert(model(*task.model_inputs(batch, view).values()).float(), view, batch))
        total = y if total is None else total + y
    return total if len(views) == 1 else total / len(views)  # x / 1 == x: no pass over the map for one view


def to_device(batch: dict, device: torch.device) -> dict:
    """``batch`` with its tensors on ``device`` (the rest as is)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def check_mode(cfg: Config, where: object) -> None:
    """Refuse a prediction mode the task's spec does not have (sliding window on a task without maps)."""
    if cfg.prediction_mode not in cfg.spec.modes:
        raise ValueError(f"{where}: inference.sliding_window: tiles are for tasks with dense maps, not {cfg.task}")


def check_split(cfg: Config, split: str, where: object) -> None:
    """Refuse the validation split of a run on all data (``data.fold: all``): it holds no image out."""
    if split == "val" and not cfg.data.has_validation:
        raise ValueError(f"{where}: --split val: the run trained on every image of {cfg.data.root} (data.fold=all), so "
                         "it has no validation split; it predicts the test set only")


def predict_run(cfg: Config | None, ckpt: str | os.PathLike, *, out_csv: str | Path, split: str = "test",
                tta: bool = False, save_probs_dir: str | Path | None = None, device: str = "auto",
                workers: int | None = None, progress: bool = True,
                make_predictor: Callable[[LoadedModel, torch.device], Any] | None = None, **summary: Any) -> dict:
    """Predict one trained run (any task) into ``out_csv``; returns ``{"images", "seconds", "images_per_s", "csv"}``.

    ``save_probs_dir``: also write the prediction cache (``"auto"``: ``<run>/preds/<split>/``).
    ``make_predictor(member, device)``: another predictor than the run's own :class:`Predictor` (the two-stage
    ROI, :func:`engine.roi_predictor.predict_two_stage`). ``workers``: the writer's decoding threads
    (``inference.post_workers`` by default; :func:`engine.device.post_workers` sizes ``auto`` for the device, 0
    decodes in the loop). The speed (and ``summary``) is recorded in the run's summary.json (``images_per_s``,
    ``_tta`` with several views, ``_sliding_window`` for tiles)."""
    dev = pick_device(device)
    member = load_model(ckpt, dev, cfg)
    cfg = member.cfg
    check_mode(cfg, ckpt)
    check_split(cfg, split, ckpt)
    views = views_from_config(cfg.inference.tta, enabled=tta)
    if make_predictor is not None:
        predictor: Any = make_predictor(member, dev)
    else:
        if getattr(cfg.data, "roi", None) is not None:
            raise ValueError(f"{ckpt}: a stage-2 wrist-ROI run (data.roi) predicts crops of its stage 1's box: "
                             "give --stage1 <stage-1 run>/best.pt (engine.roi_predictor)")
        predictor = Predictor(member, views, dev)
    samples = member.task.samples(split)
    if not samples:
        raise ValueError(f"{ckpt}: no images to predict in the {split} split")
    cache = prediction_cache(save_probs_dir, ckpt, split)
    t0 = time.perf_counter()
    workers = post_workers(cfg.inference.post_workers if workers is None else workers, dev)
    writer = member.task.writer(out_csv, cache, views=views, workers=workers, mode=predictor.mode)
    with writer:
        for batch, outputs in predictor.batches(samples, progress):
            writer.add(batch, outputs)
    seconds = time.perf_counter() - t0
    n = writer.images
    stats = {"images": n, "seconds": round(seconds, 3), "images_per_s": round(n / max(seconds, 1e-9), 3),
             "csv": str(out_csv)}
    key = "images_per_s_tta" if len(views) > 1 else "images_per_s"
    key += "_sliding_window" if predictor.mode == MODE_SLIDING else ""  # not the whole-image speed the leaderboard shows
    record_speed(Path(ckpt).parent, {key: stats["images_per_s"]}, **summary)
    return stats


def load_classifier(ckpt: str | os.PathLike, device: str = "auto") -> Callable[[Any], Any]:
    """A trained run as a callable on one image, for a task that has one (``Task.classifier``, e.g. the orientation
    fallback of preprocessing): its predictor under the run's own ``inference.tta`` views."""
    dev = pick_device(device)
    member = load_model(ckpt, dev)
    if not hasattr(member.task, "classifier"):
        raise ValueError(f"{ckpt}: a {member.cfg.task} run; this needs a run of a task that classifies images "
                         "(orientation)")
    predictor = Predictor(member, views_from_config(member.cfg.inference.tta), dev)
    return member.task.classifier(lambda batch: predictor(to_device(batch, dev)))


def record_speed(run_dir: Path, speed: dict, **fields: Any) -> None:
    """The inference speed (and ``fields``) in a finished run's summary.json (bookkeeping: a read-only run
    folder only warns)."""
    from engine.summary import record_summary

    if (run_dir / "summary.json").is_file():
        record_summary(run_dir, speed=speed, **fields)


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
