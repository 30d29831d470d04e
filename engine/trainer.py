"""One training loop for every torch model and task.

AdamW, linear warmup + cosine decay per optimiser step, AMP (bf16/fp16) and channels_last on CUDA,
gradient accumulation and clipping, optional EMA, early stopping, ``best.pt`` (the epoch the rule of
:mod:`engine.checkpoint_select` picks; with ``data.fold: all``, which holds no image out, the last epoch)
and ``last.pt`` every epoch, validation in tiles at the original size for a task that trains on patches
(``Task.validation_tile``),
exact ``resume`` (model, optimiser, scheduler, scaler, EMA, RNG states and the data order), tqdm with
images/s, ``metrics.jsonl``, ``summary.json``, W&B, and DDP under torchrun (only rank 0 writes, and only
rank 0 holds the run folder's claim, :func:`engine.run_folder.claim_run`, from before its checks to the end).
"""
from __future__ import annotations

import math
import random
import time
from contextlib import nullcontext
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from engine import distributed
from engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from engine.checkpoint_select import CheckpointSelector
from engine.config import Config, ConfigError
from engine.cost import run_flops
from engine.device import amp_dtype, autocast, autocast_factory, pick_device
from engine.run_folder import check_dataset, check_run_folder, claim_run, open_run_folder
from engine.run_logging import RunLogger
from engine.sliding_window import TiledModel
from engine.status import data_check_line, status
from engine.summary import base_summary, split_model_name, write_summary
from models import ModelOptionsError, check_options, create_model, input_size
from models.output_prior import set_output_prior
from models.weights import load_local_weights
from tasks.base import Task

EpochCallback = Callable[[int, dict], None]
LAST_EPOCH_RULE = "last epoch (fold all: no validation)"  # summary.json's selected_by of a run on all data


class StopTraining(Exception):
    """Raised by a callback to end training after the current epoch (the run folder stays valid)."""


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def lr_lambda(total_steps: int, warmup_steps: int, min_ratio: float) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def collate(items: list[dict]) -> dict:
    out = {}
    for key in items[0]:
        values = [it[key] for it in items]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else torch.as_tensor(values) \
            if isinstance(values[0], (int, float)) else values
    return out


def check_model_config(cfg: Config) -> None:
    """Everything the model section says, checked before the data is listed or the run folder touched: option
    names the model takes (``models.check_options``: ``model.options: unknown option ...``) and the input size."""
    check_options(cfg.model.name, cfg.task, cfg.model.options)
    check_image_size(cfg)


def check_image_size(cfg: Config) -> None:
    """``data.image_size`` (and a patch-trained run's ``data.patch_size``) must be a size the model takes
    (``models.input_size``: a multiple of its encoder's output stride, a minimum, or one fixed size); a ConfigError
    names the key and the valid sizes nearest to it."""
    sizes = {"data.image_size": cfg.data.image_size}
    if cfg.data.trains_on_patches:
        sizes["data.patch_size"] = cfg.data.input_size
    takes = input_size(cfg.model.name, cfg.task, cfg.model.options)
    for key, size in sizes.items():
        problem = takes.problem(size, cfg.model.name)
        if problem:
            raise ConfigError(f"{key}: {problem}")


def build_model(cfg: Config, task: Task) -> nn.Module:
    """The model to train: the registry's build, with the output prior set before any weights file loads.

    The prior goes in first so that a whole-model weights file (a fine-tune) keeps its own head, while
    encoder-only weights (ImageNet) leave the prior in place.
    """
    prior = cfg.model.output_prior if cfg.spec.sigmoid_outputs else None
    try:
        model = create_model(cfg.model.name, task=cfg.task, num_outputs=task.num_outputs,
                             in_channels=task.in_channels, weights=None if prior else cfg.model.weights,
                             **cfg.model.options)
    except ModelOptionsError as err:  # at training, unlike inference, the options are the user's to change
        raise ModelOptionsError(f"{err} (--model.options={{}} clears them)") from err
    if prior:
        set_output_prior(model, task.num_outputs, prior)
        load_local_weights(model, cfg.model.weights)
    return model


def train_loader(dataset: Dataset, sampler: DistributedSampler, cfg: Config, pin_memory: bool,
                 generator: torch.Generator) -> DataLoader:
    """The training loader. Its workers (``data.num_workers``) persist across epochs: the datasets read their
    epoch from shared memory (:class:`tasks.augment.SeededDataset`), the sampler is told the epoch in the main
    process. The items depend only on (run seed, epoch, index), never on the workers' seeds, which
    ``generator`` draws (:meth:`Trainer.train_one_epoch` seeds it each epoch), not the global torch RNG."""
    workers = cfg.data.num_workers
    return DataLoader(dataset, batch_size=cfg.train.batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=collate, drop_last=False, pin_memory=pin_memory, persistent_workers=workers > 0,
                      generator=generator)


class Trainer:
    """Checks the run folder, the whole dataset and the model before the run folder is created or touched
    (:mod:`engine.run_folder`); ``overwrite`` replaces a run that already lives there."""

    def __init__(self, cfg: Config, resume: bool = False, callbacks: list[EpochCallback] | None = None,
                 overwrite: bool = False) -> None:
        check_model_config(cfg)  # before the data is listed or the run folder touched
        self.cfg = cfg
        self.callbacks = callbacks or []
        check_run_folder(cfg, resume, overwrite)
        self.rank, self.local_rank, self.world = distributed.setup()
        self.is_main = self.rank == 0
        seed_everything(cfg.train.seed + self.rank, cfg.train.deterministic)
        self.device = pick_device(cfg.train.device, self.local_rank)
        self.amp = amp_dtype(cfg.train.amp, self.device)
        self.task = cfg.spec.task_class()(cfg)
        self.train_set, self.val_set = self.task.datasets()
        self._check_data()
        self.run_dir = cfg.run_dir
        status(cfg, f"building {cfg.model.name}")
        self.model = build_model(cfg, self.task).to(self.device)
        if cfg.train.channels_last and self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.params = sum(p.numel() for p in self.model.parameters())
        self.flops: int | None = None  # per image at the input size, counted when the run finishes (engine.cost)
        self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.train.ema), use_buffers=True) \
            if cfg.train.ema else None
        self.net = DistributedDataParallel(self.model, device_ids=[self.local_rank] if self.device.type == "cuda" else None) \
            if self.world > 1 else self.model
        self.sampler = DistributedSampler(self.train_set, num_replicas=self.world, rank=self.rank, shuffle=True,
                                          seed=cfg.train.seed, drop_last=False)
        self.loader_generator = torch.Generator()
        self.loader = train_loader(self.train_set, self.sampler, cfg, pin_memory=self.device.type == "cuda",
                                   generator=self.loader_generator)
        steps = len(self.loader)
        if cfg.train.max_steps_per_epoch:
            steps = min(steps, cfg.train.max_steps_per_epoch)
        self.steps_per_epoch = steps
        self.optim_steps = math.ceil(steps / cfg.train.accumulate)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        total = self.optim_steps * cfg.train.epochs
        warmup = max(1, int(cfg.train.warmup_epochs * self.optim_steps)) if cfg.train.warmup_epochs > 0 else 0
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(total, warmup, cfg.train.min_lr_ratio) if warmup else
            lr_lambda(total, 0, cfg.train.min_lr_ratio))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16)
        self.start_epoch = 0
        self.last_epoch = -1  # the last epoch trained (a resumed run: set from last.pt)
        self.selector = CheckpointSelector(cfg.spec.mode, cfg.train.select_ema, cfg.train.select_min_spread)
        self.bad_epochs = 0
        self.train_time = 0.0
        self.images_seen = 0
        self.best_val: dict | None = None
        if self.is_main:
            open_run_folder(cfg, resume, overwrite)
        distributed.barrier()
        self.logger = RunLogger(self.run_dir, cfg, enabled=self.is_main)
        if resume:
            self._resume()
        else:
            self.logger.start_fresh()

    def _check_data(self) -> None:
        """Every sample loads (rank 0 reads, the verdict reaches every rank, so all fail together)."""
        fault = None
        if self.is_main:
            status(self.cfg, data_check_line(self.cfg, len(self.train_set), len(self.val_set)))
            try:
                check_dataset([self.train_set, self.val_set], workers=max(1, self.cfg.data.num_workers),
                              progress=self.cfg.logging.progress)
            except (ValueError, OSError) as err:
                fault = err
        verdict = distributed.broadcast_object(None if fault is None else str(fault))
        if fault is not None:
            raise fault
        if verdict is not None:
            raise ValueError(verdict)

    def _resume(self) -> None:
        path = self.run_dir / "last.pt"
        ckpt = load_checkpoint(path)
        if ckpt.get("model_name") != self.cfg.model.name:
            raise ValueError(f"{path}: checkpoint of {ckpt.get('model_name')!r}, config asks for {self.cfg.model.name!r}")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None and ckpt.get("ema") is not None:
            self.ema.load_state_dict(ckpt["ema"])
        self.start_epoch = ckpt["epoch"] + 1
        self.last_epoch = ckpt["epoch"]
        self.selector.load_state_dict(ckpt.get("select") or {  # a last.pt written before the selection rules
            "smoothed": ckpt["best_score"], "best": ckpt["best_score"], "best_epoch": ckpt["best_epoch"]})
        self.bad_epochs, self.train_time = ckpt["bad_epochs"], ckpt["train_time"]
        self.images_seen = ckpt["images_seen"]
        self.best_val = ckpt.get("best_val")
        set_rng_state(ckpt["rng"])
        self.logger.truncate_after(ckpt["epoch"])

    def _payload(self, epoch: int, metrics: dict, full: bool) -> dict:
        eval_model = self.ema.module if self.ema is not None else self.model
        payload = {
            "model": eval_model.state_dict(),
            "model_name": self.cfg.model.name,
            "task": self.cfg.task,
            "num_outputs": self.task.num_outputs,
            "config": self.cfg.to_dict(),
            "epoch": epoch,
            "metrics": metrics,
        }
        if full:
            payload.update({
                "model": self.model.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": rng_state(),
                "select": self.selector.state_dict(), "bad_epochs": self.bad_epochs,
                "train_time": self.train_time, "images_seen": self.images_seen, "best_val": self.best_val,
            })
        return payload

    def train_one_epoch(self, epoch: int) -> float:
        cfg = self.cfg
        self.net.train()
        self.sampler.set_epoch(epoch)
        if hasattr(self.train_set, "set_epoch"):  # before the epoch's iterator: workers fetch with this epoch
            self.train_set.set_epoch(epoch)
        # The loader's generator makes its workers' seeds, so the global torch RNG (dropout's) advances the same with
        # or without workers and in a resumed run (whose persistent workers start at a later epoch). One draw of it
        # per epoch seeds that generator: a loader that makes its iterator each epoch (torch's default, this trainer
        # before persistent workers) drew that one number, so runs keep the numbers they had.
        self.loader_generator.manual_seed(int(torch.empty((), dtype=torch.int64).random_()))
        total_loss, count = 0.0, 0
        t0 = time.perf_counter()
        bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", leave=False,
                   disable=not (self.is_main and cfg.logging.progress), dynamic_ncols=True)
        self.optimizer.zero_grad(set_to_none=True)
        for step, batch in enumerate(self.loader):
            if step >= self.steps_per_epoch:
                break
            batch = {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            if cfg.train.channels_last and self.device.type == "cuda":
                batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
            last_of_group = (step + 1) % cfg.train.accumulate == 0 or step + 1 == self.steps_per_epoch
            sync = nullcontext() if last_of_group or self.world == 1 else self.net.no_sync()
            with sync:
                with autocast(self.device, self.amp):
                    output = self.task.forward(self.net, batch)
                loss = self.task.loss(output, batch)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"epoch {epoch + 1} step {step}: loss is {loss.item()} (lower train.lr?)")
                self.scaler.scale(loss / cfg.train.accumulate).backward()
            if last_of_group:
                if cfg.train.clip_grad:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.train.clip_grad)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                if self.ema is not None:
                    self.ema.update_parameters(self.model)
            n = batch["image"].shape[0]
            total_loss += loss.item() * n
            count += n
            elapsed = time.perf_counter() - t0
            bar.set_postfix(loss=f"{total_loss / count:.4f}", img_s=f"{count * self.world / max(elapsed, 1e-9):.1f}")
            bar.update(1)
        bar.close()
        self.train_time += time.perf_counter() - t0
        self.images_seen += count * self.world
        return total_loss / max(1, count)

    def fit(self) -> dict:
        cfg = self.cfg
        stop = False
        status(cfg, f"training epochs {self.start_epoch + 1}-{cfg.train.epochs} of {self.steps_per_epoch} steps "
                    f"(batch {cfg.train.batch_size} x {self.world} process(es)) on {self.device}")
        for epoch in range(self.start_epoch, cfg.train.epochs):
            train_loss = self.train_one_epoch(epoch)
            row = {"epoch": epoch, "train/loss": train_loss, "lr": self.optimizer.param_groups[0]["lr"],
                   "time_s": round(self.train_time, 3)}
            validate = cfg.data.has_validation and ((epoch + 1) % cfg.train.val_every == 0 or epoch + 1 == cfg.train.epochs)
            metrics = None
            if validate and self.is_main:
                metrics = self.task.evaluate(self._validation_model(), self.val_set, self.device,
                                             autocast=autocast_factory(self.device, self.amp),
                                             batch_size=cfg.inference.batch_size)
            metrics = distributed.broadcast_object(metrics)
            if metrics is not None:
                row.update({"val/loss": metrics.get("loss"), "val/score": metrics["score"],
                            f"val/{cfg.spec.metric}": metrics["score"]})
                row.update({f"val/{k}": v for k, v in metrics.items() if k not in ("score", "loss", "per_item")
                            and isinstance(v, (int, float))})
                if self.selector.update(epoch, metrics):
                    self.bad_epochs = 0
                    self.best_val = metrics
                    if self.is_main:
                        save_checkpoint(self.run_dir / "best.pt", self._payload(epoch, metrics, full=False))
                else:
                    self.bad_epochs += 1
                if cfg.train.select_ema:
                    row["val/ema_score"] = self.selector.smoothed
                patience = cfg.train.early_stop_patience
                if patience and self.bad_epochs >= patience:
                    stop = True
            self.logger.log(row)
            if self.is_main:
                save_checkpoint(self.run_dir / "last.pt", self._payload(epoch, metrics or {}, full=True))
                score = f"{metrics['score']:.4f}" if metrics else "-"
                if metrics and cfg.train.select_ema:
                    score += f" (EMA {self.selector.smoothed:.4f})"
                tqdm.write(f"epoch {epoch + 1}/{cfg.train.epochs}  train/loss {train_loss:.4f}  "
                           f"val/{cfg.spec.metric} {score}  ({self.train_time:.0f}s)")
            try:
                for callback in self.callbacks:
                    callback(epoch, row)
            except StopTraining:
                stop = True
            self.last_epoch = epoch
            if stop:
                break
        if not cfg.data.has_validation and self.is_main:  # no validation: best.pt is the last epoch trained
            save_checkpoint(self.run_dir / "best.pt", self._payload(self.last_epoch, {}, full=False))
        if self.is_main:
            self.flops = run_flops(self.model, self.task, cfg.data.input_size)
        summary = self.summary()
        if self.is_main:
            write_summary(self.run_dir, summary)
            self.logger.finish(summary)
        distributed.barrier()
        return summary

    def _validation_model(self) -> nn.Module:
        """What validation runs: the (EMA) model, in tiles at the original size where the task trains on patches."""
        model = self.ema.module if self.ema is not None else self.model
        tile = self.task.validation_tile
        if tile is None:
            return model
        inference = self.cfg.inference
        return TiledModel(model, tile, inference.tile_overlap, inference.batch_size)

    def summary(self) -> dict:
        cfg = self.cfg
        best = self.best_val or {}
        if cfg.data.has_validation:
            best_epoch, rule = self.selector.best_epoch, self.selector.rule
            val = {"score": best.get("score"), "per_item": best.get("per_item"),
                   **{k: v for k, v in best.items() if k not in ("score", "per_item")}} if best else None
        else:  # no validation score, not a zero: the leaderboard shows none
            best_epoch, rule, val = self.last_epoch, LAST_EPOCH_RULE, {"score": None}
        return base_summary(
            name=cfg.run_name, task=cfg.task, kind="run", model=cfg.model.name, **split_model_name(cfg.model.name),
            config_id=cfg.config_id, image_size=cfg.data.input_size, fold=cfg.data.fold, n_folds=cfg.data.n_folds,
            epochs=cfg.train.epochs, params=self.params, flops=self.flops, train_time_s=round(self.train_time, 2),
            train_images_per_s=round(self.images_seen / self.train_time, 2) if self.train_time else None,
            metric=cfg.spec.metric, mode=cfg.spec.mode, best_epoch=best_epoch, selected_by=rule, val=val,
            train_images=len(self.train_set),
        )


def train(cfg: Config, resume: bool = False, callbacks: list[EpochCallback] | None = None,
          overwrite: bool = False) -> dict:
    """Train one run and return its summary (also written to ``<run_dir>/summary.json``), holding the run
    folder's claim from before its checks to the end (rank 0 under torchrun)."""
    with claim_run(cfg.run_dir):
        trainer = Trainer(cfg, resume=resume, callbacks=callbacks, overwrite=overwrite)
        try:
            return trainer.fit()
        finally:
            distributed.cleanup()
