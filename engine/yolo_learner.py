"""The learner of the ``yolo`` model family: ultralytics trains a :class:`models.yolo.YoloModel` into a
harness run folder.

Training goes through ultralytics' own trainer (``YoloTrainer``) with the harness config mapped onto its
arguments (:func:`ultralytics_args`), on the dataset that ``tools/convert.py yolo`` makes from the
same fold (:func:`tasks.formats.yolo.yolo_dataset`). Its run directory is ``<run_dir>/ultralytics`` and
its validation score is the harness Dice per class (``SegmentationTask.evaluate``), not mAP, so
``best.pt`` is chosen by Dice and the run sits on the same leaderboard as the smp models.

The run folder's ``best.pt``/``last.pt`` are plain dicts (``torch.load(weights_only=True)``) holding the
network's state dict (fp16, as ultralytics keeps it) and its model YAML (``yolo``: ``yaml``, ``names``),
written by the trainer each epoch (:func:`harness_checkpoint`); :meth:`models.yolo.YoloModel.load` reads
them back. ``last.pt`` also holds the training state (EMA, optimiser, scaler, best fitness, early-stopping
counters: :func:`train_state`) that ``--resume`` and ultralytics' NaN recovery continue from. Ultralytics'
own checkpoints, pickled modules whose loading runs code named in the file, are never written nor read.

Multi-GPU: ultralytics starts its own DDP workers when ``train.device`` lists several GPUs
(``--train.device=0,1,2,3``); do not wrap ``train.py`` in torchrun for a YOLO run.
"""
from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml
from torch import nn
from tqdm import tqdm

from engine.checkpoint import load_checkpoint, save_checkpoint
from engine.config import Config, build_config
from core.offline import CACHE_DIR, provide_yolo_fonts
from engine.cost import count_flops
from engine.run_folder import RunFolderError, check_run, open_run_folder
from engine.run_logging import RunLogger, clear_run_logs
from engine.status import status
from engine.summary import base_summary, split_model_name, write_summary
from engine.trainer import check_image_size
from models.weights import load_local_weights
from models.yolo import YoloModel, YoloOptions, YoloProbModel, parse_options
from tasks.formats.tensors import read_tensors
from tasks.formats.yolo import yolo_dataset
from tasks.schema import image_hw

provide_yolo_fonts()  # ultralytics' check_font() must find Arial.ttf offline when it plots

ULTRALYTICS_DIR = "ultralytics"  # ultralytics' run directory inside the harness run folder


def harness_checkpoint(harness: Config, net: nn.Module, epoch: int | None, metrics: dict) -> dict[str, Any]:
    """A YOLO run's ``best.pt``/``last.pt``: ``net`` as tensors (fp16 and NaN-free, as ultralytics saves it)
    beside its model YAML and class names, so that loading it never unpickles anything."""
    state = {k: torch.nan_to_num(v.detach().to("cpu", torch.half)).contiguous() if v.is_floating_point()
             else v.detach().cpu().clone() for k, v in net.state_dict().items()}
    names = getattr(net, "names", None) or {}
    return {"model_name": harness.model.name, "task": harness.task, "num_outputs": int(net.model[-1].nc),
            "config": harness.to_dict(), "model": state,
            "yolo": {"yaml": copy.deepcopy(net.yaml), "names": [str(names[i]) for i in sorted(names)]},
            "epoch": epoch, "metrics": metrics}


def ultralytics_device(device: str) -> str:
    """Our ``train.device`` (``auto``, ``cpu``, ``cuda``, ``cuda:1``, ``0,1,2,3``) as ultralytics spells it."""
    if device == "auto":
        return "0" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        return device.partition(":")[2] or "0"
    return device


def torch_device(device: str) -> torch.device:
    """Where the harness itself evaluates: the first GPU of an ultralytics device list, or the CPU."""
    name = ultralytics_device(device)
    return torch.device(name) if name in ("cpu", "mps") else torch.device(f"cuda:{name.split(',')[0]}")


def ultralytics_args(cfg: Config, data_yaml: Path, model: str, options: YoloOptions, weights: Path | None,
                     resume: bool = False) -> dict[str, Any]:
    """Arguments of ultralytics' trainer: the harness config, radiograph defaults, ``train_args``, the contract.
    ``resume``: continue the run folder's ``last.pt`` (:meth:`YoloTrainer.resume_training`)."""
    t, a, d = cfg.train, cfg.augment, cfg.data
    device = ultralytics_device(t.device)
    return {
        "epochs": t.epochs, "imgsz": d.image_size, "batch": t.batch_size, "nbs": t.batch_size * t.accumulate,
        "lr0": t.lr, "lrf": t.min_lr_ratio, "weight_decay": t.weight_decay, "warmup_epochs": t.warmup_epochs,
        "seed": t.seed, "deterministic": t.deterministic, "device": device, "workers": d.num_workers,
        # amp=True would run ultralytics' AMP check, which downloads weights; bf16 skips the check.
        "amp": "bf16" if t.amp == "bf16" else False,
        "channels_last": t.channels_last and device not in ("cpu", "mps"),
        "patience": t.early_stop_patience or 0, "cache": "ram" if d.cache else False,
        "fliplr": a.hflip, "flipud": a.vflip, "degrees": a.rotate, "scale": a.scale, "translate": a.shift,
        "hsv_v": a.brightness_contrast,
        # grey radiographs, the harness' optimiser and schedule, no mosaic; train_args may change these
        "optimizer": "AdamW", "cos_lr": True, "mosaic": 0.0, "close_mosaic": 0, "hsv_h": 0.0, "hsv_s": 0.0,
        "plots": False,
        **options.train_args,
        "model": model, "data": str(data_yaml), "task": "segment", "mode": "train", "val": True, "save": True,
        "project": str(cfg.run_dir.resolve()), "name": ULTRALYTICS_DIR, "exist_ok": True,
        "pretrained": str(weights) if weights else False, "overlap_mask": False,
        "resume": resume,
    }


class BatchProgress:
    """The per-batch bar of a YOLO epoch, as the torch trainer shows it: steps, running train loss and images/s.

    Ultralytics' own bar is off (``YOLO_VERBOSE=false``, see engine/offline.py); its callbacks
    ``on_train_epoch_start``, ``on_train_batch_end`` and ``on_train_epoch_end`` drive this one, on rank 0 only
    and only with ``logging.progress``.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.bar: tqdm | None = None
        self.steps = 0
        self.start = 0.0
        self.clock = clock

    def callbacks(self) -> dict[str, Callable[[Any], None]]:
        """Ultralytics event -> the method it calls (``trainer.add_callback(event, fn)``)."""
        return {"on_train_epoch_start": self.epoch_start, "on_train_batch_end": self.batch_end,
                "on_train_epoch_end": self.epoch_end}

    def epoch_start(self, trainer: Any) -> None:
        self.epoch_end(trainer)  # an epoch restarted by ultralytics (smaller batch after out-of-memory): a new bar
        self.bar = tqdm(total=len(trainer.train_loader), desc=f"epoch {trainer.epoch + 1}/{trainer.epochs}",
                        leave=False, dynamic_ncols=True)
        self.steps, self.start = 0, self.clock()

    def batch_end(self, trainer: Any) -> None:
        if self.bar is None:
            return
        self.steps += 1
        world = max(1, int(trainer.world_size or 1))  # trainer.batch_size is per process under DDP
        images = min(self.steps * trainer.batch_size * world, len(trainer.train_loader.dataset))
        loss = float(sum(trainer.tloss.values())) if trainer.tloss else float("nan")
        elapsed = max(self.clock() - self.start, 1e-9)
        self.bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{images / elapsed:.1f}")
        self.bar.update(1)

    def epoch_end(self, trainer: Any) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def read_rows(path: Path) -> list[dict]:
    """The rows of a run's ``metrics.jsonl`` (empty when there is none yet)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def train_state(trainer: Any) -> dict[str, Any]:
    """What ``--resume`` continues from, as tensors and primitives (``last.pt["train_state"]``): the EMA at full
    precision (ultralytics resumes the model from it too), its update count, optimiser, scaler, best fitness,
    early-stopping counters and the epoch."""
    stopper = trainer.stopper
    return {
        "epoch": int(trainer.epoch), "updates": int(trainer.ema.updates),
        "ema": {k: v.detach().cpu().clone() for k, v in trainer.ema.ema.state_dict().items()},
        "optimizer": trainer.optimizer.state_dict(), "scaler": trainer.scaler.state_dict(),
        "best_fitness": None if trainer.best_fitness is None else float(trainer.best_fitness),
        "stopper": {"best_fitness": None if stopper.best_fitness is None else float(stopper.best_fitness),
                    "best_epoch": int(stopper.best_epoch)},
    }


def resume_state(path: Path) -> dict[str, Any]:
    """The training state in a YOLO run's ``last.pt`` (read as tensors; nothing is unpickled)."""
    state = load_checkpoint(path).get("train_state")
    if not isinstance(state, dict) or not {"epoch", "ema", "optimizer"} <= set(state):
        raise RunFolderError(f"{path}: holds no training state to resume (a YOLO run of an older harness, which "
                             "resumed from ultralytics' pickled checkpoint); start it afresh with --overwrite")
    return state


@lru_cache(maxsize=1)
def _trainer_class() -> type:
    """Ultralytics' segmentation trainer, validated by the harness Dice (built on first use, see ``__getattr__``)."""
    import torch.distributed as dist
    from ultralytics.models.yolo.segment import SegmentationTrainer
    from ultralytics.utils import DEFAULT_CFG, LOGGER, RANK
    from ultralytics.utils.torch_utils import ModelEMA, unwrap_model

    class YoloTrainer(SegmentationTrainer):
        """Reads the harness config from its ``project`` (the run folder), also in ultralytics' DDP workers,
        which rebuild the trainer from its arguments alone; scores each epoch's EMA model by Dice; saves and
        resumes through the run folder's tensors-only ``last.pt``, never through a pickled checkpoint."""

        def __init__(self, cfg=DEFAULT_CFG, overrides: dict | None = None, _callbacks: dict | None = None) -> None:
            super().__init__(cfg, overrides, _callbacks)
            self.run_dir = Path(self.args.project)
            config_path = self.run_dir / "config.yaml"
            self.harness = build_config(yaml.safe_load(config_path.read_text()), str(config_path))
            self.options = parse_options(self.harness.model.options)
            self.task = self.harness.spec.task_class()(self.harness)
            self.val_set = self.task.datasets()[1]
            self.logger: RunLogger | None = None
            self.val_time = 0.0
            self.time_offset = 0.0
            if self.harness.logging.progress and RANK in {-1, 0}:
                for event, callback in BatchProgress().callbacks().items():
                    self.add_callback(event, callback)

        def _run_logger(self) -> RunLogger:
            if self.logger is None:
                self.logger = RunLogger(self.run_dir, self.harness)
            return self.logger

        def check_resume(self, overrides: dict) -> None:
            """``resume`` continues the run folder's ``last.pt`` (:meth:`resume_training`) with the arguments the
            harness config gives; ultralytics' own resume would unpickle its checkpoint to read them."""
            self.resume = bool(self.args.resume)

        def get_model(self, cfg: dict | str | None = None, weights: nn.Module | None = None,
                      verbose: bool = True) -> nn.Module:
            """The network; a fresh one starts from ``model.weights`` read as tensors (a trusted pickle arrives
            from ultralytics as ``weights``; a resumed one gets its weights in :meth:`resume_training`)."""
            model = super().get_model(cfg, weights, verbose)
            if weights is None and self.harness.model.weights and not self.resume:
                load_local_weights(model, self.harness.model.weights, encoder_attr="model")
            return model

        def save_model(self) -> bool:
            """The run folder's best.pt and last.pt as tensors, last.pt with the training state. A poisoned EMA
            tensor is first taken from the live model where that is finite, as ultralytics does."""
            ema, live = self.ema.ema.state_dict(), unwrap_model(self.model).state_dict()
            for k, v in ema.items():
                if v.is_floating_point() and not torch.isfinite(v).all() and torch.isfinite(live[k]).all():
                    v.copy_(live[k])
            payload = harness_checkpoint(self.harness, self.ema.ema, self.epoch, {})
            save_checkpoint(self.run_dir / "last.pt", {**payload, "train_state": train_state(self)})
            if self.best_fitness == self.fitness:
                save_checkpoint(self.run_dir / "best.pt", payload)
            return True

        def _restore(self, state: dict[str, Any]) -> None:
            """Model (from the EMA, as ultralytics resumes), optimiser, scaler, EMA, best fitness, early stopping."""
            unwrap_model(self.model).load_state_dict(state["ema"])
            for saved, group in zip(state["optimizer"]["param_groups"], self.optimizer.param_groups):
                saved["fused"] = group.get("fused")  # the device running now picks the kernel
            self.optimizer.load_state_dict(state["optimizer"])
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            self.ema = ModelEMA(self.model)
            self.ema.ema.load_state_dict(state["ema"])
            self.ema.updates = state["updates"]
            self.best_fitness = state["best_fitness"]
            self.stopper.__dict__.update(state["stopper"])

        def resume_training(self, ckpt) -> None:
            """Continue from the run folder's ``last.pt`` (checked by :meth:`YoloLearner.fit` before training)."""
            if not self.resume:
                return
            state = resume_state(self.run_dir / "last.pt")
            self._restore(state)
            self.start_epoch = int(state["epoch"]) + 1
            model = unwrap_model(self.model)
            if getattr(model.model[-1], "one2one_cv2", None) is not None:  # both head losses resume, as in ultralytics
                model.criterion = model.init_criterion()
                model.criterion.updates = self.start_epoch - 1
                model.criterion.update()
            if RANK in {-1, 0}:
                self._run_logger().truncate_after(self.start_epoch - 1)
                rows = read_rows(self.run_dir / "metrics.jsonl")
                self.time_offset = rows[-1]["time_s"] if rows else 0.0

        def _handle_nan_recovery(self, epoch: int) -> bool:
            """Ultralytics' recovery from a NaN/Inf loss or fitness (back to the last saved epoch, at most three
            times in a row), from the run folder's ``last.pt`` instead of its pickled checkpoint."""
            corrupted = RANK in {-1, 0} and ((self.loss is not None and not self.loss.isfinite())
                                            or (self.fitness is not None and not np.isfinite(self.fitness)))
            if RANK != -1:
                holder = [corrupted if RANK == 0 else None]
                dist.broadcast_object_list(holder, 0)
                corrupted = holder[0]
            if not corrupted:
                return False
            if epoch == self.start_epoch:
                LOGGER.warning("NaN/Inf loss or fitness, but no earlier epoch to recover from")
                return False
            self.nan_recovery_attempts += 1
            if self.nan_recovery_attempts > 3:
                raise RuntimeError(f"training failed: NaN persisted for {self.nan_recovery_attempts} epochs")
            LOGGER.warning(f"NaN/Inf loss or fitness (attempt {self.nan_recovery_attempts}/3): back to the last "
                           "saved epoch")
            self._model_train()
            state = resume_state(self.run_dir / "last.pt")
            if not all(torch.isfinite(v).all() for v in state["ema"].values() if v.is_floating_point()):
                raise RuntimeError(f"{self.run_dir / 'last.pt'}: holds NaN/Inf weights; nothing to recover from")
            self._restore(state)
            self.scheduler.last_epoch = epoch - 1
            return True

        def validate(self):
            if self.ema and self.world_size > 1:
                for buffer in self.ema.ema.buffers():
                    dist.broadcast(buffer, src=0)
            if RANK > 0:
                return self.metrics, None
            every = self.harness.train.val_every
            if (self.epoch + 1) % every and self.epoch + 1 < self.epochs:
                self._log(None)
                return self.metrics, None
            start = time.perf_counter()
            module = YoloProbModel(self.ema.ema, self.options.conf, self.options.iou, self.options.max_det)
            result = self.task.evaluate(module, self.val_set, self.device,
                                        batch_size=self.harness.inference.batch_size)
            self.val_time += time.perf_counter() - start
            score = result["score"]
            if self.best_fitness is None or score > self.best_fitness:
                self.best_fitness = score
            self._log(result)
            return {"metrics/dice": round(score, 5), "val/loss": round(result["loss"], 5)}, score

        def _log(self, result: dict | None) -> None:
            train_loss = float(sum(self.tloss.values())) if self.tloss else float("nan")
            elapsed = self.time_offset + time.time() - self.train_time_start - self.val_time
            row = {"epoch": self.epoch, "train/loss": train_loss, "lr": self.optimizer.param_groups[0]["lr"],
                   "time_s": round(elapsed, 3)}
            if result is not None:
                row.update({"val/loss": result["loss"], "val/score": result["score"], "val/dice": result["score"]})
            self._run_logger().log(row)
            if self.harness.logging.progress:
                score = f"{result['score']:.4f}" if result else "-"
                print(f"epoch {self.epoch + 1}/{self.epochs}  train/loss {train_loss:.4f}  val/dice {score}  "
                      f"({elapsed:.0f}s)", flush=True)

        def final_eval(self) -> None:
            """The harness scores best.pt itself (no mAP pass)."""
            if self.logger is not None:
                self.logger.finish({"val/best_score": self.best_fitness})

    YoloTrainer.__module__ = __name__
    YoloTrainer.__qualname__ = YoloTrainer.__name__
    return YoloTrainer


def __getattr__(name: str) -> Any:
    """``engine.yolo_learner.YoloTrainer`` on demand (PEP 562): ``import engine.yolo_learner`` stays free of ultralytics, and
    ultralytics' DDP workers, which import the trainer class by name, still find it."""
    if name == "YoloTrainer":
        return _trainer_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class YoloLearner:
    """The external learner of ``yolo:`` models: ``fit`` trains ``model`` into a run folder with ultralytics."""

    model: YoloModel

    def check(self, cfg: Config, resume: bool) -> tuple[Path | None, bool]:
        """What this learner refuses, checked before the run folder is touched: a torchrun launch, a size YOLO
        cannot take, training on all data or on patches, ``model.weights`` (a pickle without ``trust_pickle``), and
        for ``resume`` a ``last.pt`` with the training state. Returns :meth:`models.yolo.YoloModel.start_weights`."""
        if "LOCAL_RANK" in os.environ:
            raise RuntimeError("YOLO runs start their own DDP workers (--train.device=0,1,2,3): "
                               "run train.py without torchrun")
        if not cfg.data.has_validation:
            raise ValueError("data.fold: 'all' is not available for YOLO runs (ultralytics trains with a validation "
                             "split, and best.pt is scored on it); give a fold number 0..data.n_folds-1")
        if cfg.data.pseudo_roots:
            raise ValueError("data.pseudo_roots: YOLO runs train from ultralytics' converted dataset, which holds no "
                             "pseudo-labels; leave data.pseudo_roots empty")
        if cfg.data.trains_on_patches:
            raise ValueError("data.patch_size: YOLO runs train on whole images resized by ultralytics' own loader; "
                             "leave data.patch_size unset")
        check_image_size(cfg)
        weights = self.model.start_weights()
        if resume and (cfg.run_dir / "last.pt").is_file():
            resume_state(cfg.run_dir / "last.pt")
        return weights

    def fit(self, cfg: Config, resume: bool = False, overwrite: bool = False) -> dict:
        """Check (:meth:`check`, the run folder, every sample of the fold), convert the fold for ultralytics
        (into the cache), only then create the run folder (:mod:`engine.run_folder`'s order); train with
        ultralytics in ``<run_dir>/ultralytics``, score its best.pt by Dice and write the summary. Hold the run
        folder's claim around it (``train.py`` does)."""
        weights, pickled = self.check(cfg, resume)
        check_run(cfg, resume, overwrite)
        cache_root = Path(cfg.data.cache_dir) if cfg.data.cache_dir else CACHE_DIR
        status(cfg, f"converting fold {cfg.data.fold} to ultralytics' layout under {cache_root / 'yolo'} "
                    "(once per fold; cached)")
        data_yaml = yolo_dataset(cfg.data.root, cache_root, cfg.data.fold, cfg.data.n_folds)
        open_run_folder(cfg, resume, overwrite)
        if not resume:  # a fresh run starts its epoch logs afresh, as ultralytics does with its results.csv
            clear_run_logs(cfg.run_dir)
        if not resume or int(resume_state(cfg.run_dir / "last.pt")["epoch"]) + 1 < cfg.train.epochs:
            args = ultralytics_args(cfg, data_yaml, self.model.model_arg, self.model.options,
                                    weights if pickled else None, resume)
            status(cfg, f"ultralytics: building {self.model.arch}, reading the fold's labels, then training "
                        f"{cfg.train.epochs} epochs on {args['device']}")
            _trainer_class()(overrides=args).train()
        return self._finish(cfg)

    def _finish(self, cfg: Config) -> dict:
        run_dir = cfg.run_dir
        best_path = run_dir / "best.pt"
        if not best_path.is_file():
            raise RuntimeError(f"{best_path}: ultralytics finished without a best model (see its log above)")
        best = read_tensors(best_path, "checkpoint")
        device = torch_device(cfg.train.device)
        module = self.model.load(best, str(best_path)).to(device)
        task = cfg.spec.task_class()(cfg)
        train_set, val_set = task.datasets()
        val = task.evaluate(module, val_set, device, batch_size=cfg.inference.batch_size)
        save_checkpoint(best_path, {**best, "metrics": val})
        rows = read_rows(run_dir / "metrics.jsonl")
        scored = [r for r in rows if "val/score" in r]
        best_epoch = max(scored, key=lambda r: r["val/score"])["epoch"] if scored else None
        last_epoch = rows[-1]["epoch"] if rows else None
        train_time = rows[-1]["time_s"] if rows else None
        images = len(train_set) * (last_epoch + 1) if last_epoch is not None else 0
        summary = base_summary(
            name=cfg.run_name, task=cfg.task, kind="run", model=cfg.model.name, **split_model_name(cfg.model.name),
            config_id=cfg.config_id, image_size=cfg.data.image_size, fold=cfg.data.fold, n_folds=cfg.data.n_folds,
            epochs=cfg.train.epochs, params=sum(p.numel() for p in module.parameters()),
            flops=count_flops(module.net, {"images": torch.zeros((1, module.in_channels, *image_hw(cfg.data.image_size)),
                                                                 device=device)}),
            train_time_s=train_time, train_images_per_s=round(images / train_time, 2) if train_time else None,
            metric=cfg.spec.metric, mode=cfg.spec.mode, best_epoch=best_epoch,
            val={"score": val["score"], "per_item": val["per_item"], "loss": val["loss"]},
        )
        write_summary(run_dir, summary)
        return summary
