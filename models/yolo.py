"""``yolo:<model>``: ultralytics YOLO instance segmentation as an external learner of the harness.

Any ``-seg`` model YAML shipped with ultralytics (``yolo:yolov8n-seg``, ``yolo:yolo11s-seg``,
``yolo:yolo26n-seg``, ...) or a path to a custom one (``yolo:path/to/my-seg.yaml``); ``model.weights``
optionally names a local file to start from (never downloaded): a state dict of tensors (e.g. another YOLO
run's ``best.pt``), or an ultralytics ``.pt`` (a pickled module, whose loading runs code named in the file)
only with ``model.options.trust_pickle: true``.

Training goes through ultralytics' own trainer (``YoloTrainer``) with the harness config mapped onto its
arguments (:func:`ultralytics_args`), on the dataset that ``tools/convert.py yolo`` makes from the
same fold. Its run directory is ``<run_dir>/ultralytics`` and its validation score is the harness Dice
per class (``SegmentationTask.evaluate``), not mAP, so ``best.pt`` is chosen by Dice and the run sits
on the same leaderboard as the smp models.

The run folder's ``best.pt``/``last.pt`` are plain dicts (``torch.load(weights_only=True)``) holding the
network's state dict (fp16, as ultralytics keeps it) and its model YAML (``yolo``: ``yaml``, ``names``),
written by the trainer each epoch. Loading rebuilds the network from that YAML (after checking that it
names only layer classes, see :func:`check_model_yaml`) and loads the tensors: nothing is unpickled.
Ultralytics' own pickled checkpoints in ``<run>/ultralytics/weights/`` serve only its ``--resume``.
Loaded, a run is a :class:`YoloProbModel`: an ``nn.Module`` that maps our ``(B, 1, h, w)`` input in
[0, 1] to per-class logits, so TTA, the prediction cache and soft/weighted/hard ensembles treat it like
any smp member.

Multi-GPU: ultralytics starts its own DDP workers when ``train.device`` lists several GPUs
(``--train.device=0,1,2,3``); do not wrap ``train.py`` in torchrun for a YOLO run.
"""
from __future__ import annotations

import copy
import json
import os
import re
import time
from dataclasses import dataclass
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from pydantic import Field, ValidationError
from torch import nn

from engine.checkpoint import save_checkpoint
from engine.config import Config, build_config, save_config
from engine.offline import CACHE_DIR, provide_yolo_fonts
from engine.run_logging import RunLogger
from engine.summary import base_summary, split_model_name, write_summary
from models.registry import UnknownModelError, close_matches, register_family
from models.weights import load_local_weights, read_state_dict
from tasks.base import Section
from tasks.formats.tensors import PickledFileError, read_tensors
from tasks.registry import get_task_class

provide_yolo_fonts()  # before any ultralytics import: its check_font() must find Arial.ttf offline

ULTRALYTICS_DIR = "ultralytics"  # ultralytics' run directory inside the harness run folder

# Ultralytics arguments set from the harness config; model.options.train_args may not repeat them.
MAPPED_ARGS = {
    "epochs": "train.epochs", "imgsz": "data.image_size", "batch": "train.batch_size",
    "nbs": "train.batch_size x train.accumulate", "lr0": "train.lr", "lrf": "train.min_lr_ratio",
    "weight_decay": "train.weight_decay", "warmup_epochs": "train.warmup_epochs", "seed": "train.seed",
    "deterministic": "train.deterministic", "device": "train.device", "workers": "data.num_workers",
    "amp": "train.amp", "channels_last": "train.channels_last", "patience": "train.early_stop_patience",
    "cache": "data.cache", "fliplr": "augment.hflip", "flipud": "augment.vflip", "degrees": "augment.rotate",
    "scale": "augment.scale", "translate": "augment.shift", "hsv_v": "augment.brightness_contrast",
    "val": "train.val_every", "model": "model.name", "pretrained": "model.weights", "data": "data.root",
    "project": "logging.out_dir", "name": "logging.run_name", "resume": "train.py --resume",
}
# Fixed by the contract with the harness (run folder, separate instances for overlapping bones).
FIXED_ARGS = ("task", "mode", "exist_ok", "overlap_mask", "save")


class YoloOptions(Section):
    """``model.options`` of a YOLO run: prediction settings and extra ultralytics training arguments."""

    conf: float = Field(0.01, ge=0.0, le=1.0)
    iou: float = Field(0.7, ge=0.0, le=1.0)
    max_det: int = Field(100, ge=1)
    train_args: dict[str, Any] = Field(default_factory=dict)
    trust_pickle: bool = False  # model.weights may be a pickled ultralytics .pt (loading it runs its code)


def parse_options(options: dict[str, Any]) -> YoloOptions:
    """Validate ``model.options``; an unknown key or a train_arg the config already sets is a clear error."""
    try:
        parsed = YoloOptions.model_validate(options)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            raise ValueError(f"model.options: unknown key '{key}' for a yolo model "
                             f"(valid: {', '.join(YoloOptions.model_fields)})") from None
        raise ValueError(f"model.options.{key}: {first['msg']} (got {first.get('input')!r})") from None
    for key in parsed.train_args:
        if key in MAPPED_ARGS:
            raise ValueError(f"model.options.train_args.{key}: set by the config ({MAPPED_ARGS[key]}); set it there")
        if key in FIXED_ARGS:
            raise ValueError(f"model.options.train_args.{key}: fixed by the harness for YOLO runs")
    return parsed


@lru_cache(maxsize=1)
def architectures() -> dict[str, Path]:
    """``yolo11n-seg`` → its ultralytics YAML, for every scale of every ``-seg`` YAML shipped with ultralytics.

    Read from the package's files, so ``--list-models`` does not import ultralytics. Open-vocabulary
    ``yoloe`` models are left out: they need text encoders that are downloaded.
    """
    spec = find_spec("ultralytics")
    if spec is None or spec.origin is None:
        return {}
    names: dict[str, Path] = {}
    for path in sorted((Path(spec.origin).parent / "cfg" / "models").rglob("*-seg*.yaml")):
        if path.stem.startswith("yoloe"):
            continue
        scales = (yaml.safe_load(path.read_text()) or {}).get("scales") or {}
        match = re.match(r"^(yolov?\d+)(-seg.*)$", path.stem)
        if scales and match:
            names.update({f"{match[1]}{scale}{match[2]}": path for scale in scales})
        else:
            names[path.stem] = path
    return names


def list_names() -> list[str]:
    return [f"yolo:{name}" for name in architectures()] + ["yolo:<path/to/custom-seg.yaml>"]


def validate(rest: str) -> None:
    if rest in architectures():
        return
    if rest.endswith((".yaml", ".yml")):
        if not Path(rest).is_file():
            raise UnknownModelError(f"yolo:{rest}: no model YAML at {rest}")
        return
    hits = close_matches(rest, list(architectures()))
    hint = f"; did you mean: {', '.join(hits)}" if hits else ""
    raise UnknownModelError(f"unknown YOLO segmentation model {rest!r}{hint} (any ultralytics -seg model, "
                            "e.g. yolo11n-seg, or a path to a -seg YAML)")


class YoloProbModel(nn.Module):
    """Per-class probability maps of an ultralytics segmentation model, returned as logits.

    ``forward`` takes our ``(B, 1, h, w)`` float input in [0, 1] (any size: it is padded to the stride)
    and returns ``(B, C, h, w)`` logits ``logit(p.clamp(eps, 1 - eps))``, where ``p`` of a class is the
    maximum over that class's detections of ``confidence x sigmoid(mask logit)`` inside the box, at the
    full input resolution. A sigmoid recovers ``p``, so TTA and ensembles need nothing YOLO-specific.
    """

    def __init__(self, net: nn.Module, conf: float = 0.01, iou: float = 0.7, max_det: int = 100,
                 eps: float = 1e-4) -> None:
        super().__init__()
        self.net = net
        self.conf, self.iou, self.max_det, self.eps = conf, iou, max_det, eps
        self.num_classes = int(net.model[-1].nc)
        self.in_channels = int(net.yaml.get("channels", 3))
        self.stride = int(net.stride.max())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from ultralytics.utils.nms import non_max_suppression

        batch, _, height, width = x.shape
        pad_h, pad_w = -height % self.stride, -width % self.stride
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        if x.shape[1] != self.in_channels:
            x = x.repeat(1, self.in_channels // x.shape[1], 1, 1)
        out = self.net(x)
        head = out[0] if isinstance(out[0], (tuple, list)) else out
        with torch.autocast(x.device.type, enabled=False):  # the network may run in bf16; boxes and masks in fp32
            preds, protos = head[0].float(), head[1].float()
            detections = non_max_suppression(preds, self.conf, self.iou, max_det=self.max_det, nc=self.num_classes,
                                             end2end=bool(getattr(self.net, "end2end", False)))
            probs = preds.new_zeros((batch, self.num_classes, *x.shape[-2:]))
            for b, det in enumerate(detections):
                if len(det):
                    self._paint(probs[b], det, protos[b])
        probs = probs[..., :height, :width]
        return torch.logit(probs.clamp(self.eps, 1 - self.eps))

    @staticmethod
    def _paint(out: torch.Tensor, det: torch.Tensor, protos: torch.Tensor) -> None:
        """Max into ``out`` (C, H, W) of confidence-weighted soft masks, in chunks bounded to ~16M pixels."""
        from ultralytics.utils.ops import crop_mask

        channels, mh, mw = protos.shape
        size = tuple(out.shape[-2:])
        chunk = max(1, 16_000_000 // (size[0] * size[1]))
        for start in range(0, len(det), chunk):
            d = det[start:start + chunk]
            logits = (d[:, 6:] @ protos.reshape(channels, -1)).view(-1, mh, mw)
            masks = F.interpolate(logits[None], size, mode="bilinear", align_corners=False)[0].sigmoid_()
            masks = crop_mask(masks, d[:, :4]) * d[:, 4, None, None]
            classes = d[:, 5].long()
            for c in classes.unique().tolist():
                out[c] = torch.maximum(out[c], masks[classes == c].amax(0))


# Where the layer classes a stored model YAML may name are defined: building blocks whose constructors only
# make layers from numbers. Anything else (a whole model that reads another YAML, TorchVision, which fetches
# weights) is refused. An ``activation`` is evaluated as Python by ultralytics: only ``nn.<Layer>(<number>)``.
LAYER_MODULES = ("torch.nn.modules.", "torchvision.ops.", "ultralytics.nn.modules.")
REFUSED_LAYERS = ("TorchVision",)
ACTIVATION_RE = re.compile(r"^(?:torch\.)?nn\.([A-Za-z]\w*)\((?:\d+(?:\.\d*)?)?\)$")


def _layer_class(name: Any) -> type | None:
    """The class a layer name resolves to, looked up as ultralytics' ``parse_model`` does; None if not a class."""
    import torchvision
    from ultralytics.nn import tasks

    if not isinstance(name, str):
        return None
    if name.startswith("nn."):
        found = getattr(nn, name[3:], None)
    elif name.startswith("torchvision.ops."):
        found = getattr(torchvision.ops, name[16:], None)
    else:
        found = getattr(tasks, name, None)
    return found if isinstance(found, type) else None


def check_model_yaml(spec: Any, source: str) -> None:
    """Refuse a stored model YAML that would make ultralytics run more than layer constructors.

    Every layer of ``backbone`` and ``head`` must name an ``nn.Module`` class from :data:`LAYER_MODULES`
    (not :data:`REFUSED_LAYERS`), and ``activation``, if set, must be ``nn.<Module>()`` with at most one number.
    """
    if not isinstance(spec, dict) or not all(isinstance(spec.get(k), list) for k in ("backbone", "head")):
        raise ValueError(f"{source}: the stored YOLO model YAML has no 'backbone' and 'head' lists")
    for index, layer in enumerate(spec["backbone"] + spec["head"]):
        name = layer[2] if isinstance(layer, list) and len(layer) == 4 else None
        found = _layer_class(name)
        if (found is None or not issubclass(found, nn.Module) or found.__name__ in REFUSED_LAYERS
                or not found.__module__.startswith(LAYER_MODULES)):
            raise ValueError(f"{source}: layer {index} of the stored YOLO model YAML names {name!r}, "
                             "not a layer class; refused")
    activation = spec.get("activation")
    if activation is not None:
        match = ACTIVATION_RE.match(str(activation).strip())
        found = getattr(nn, match[1], None) if match else None
        if not (isinstance(found, type) and issubclass(found, nn.Module)):
            raise ValueError(f"{source}: the stored YOLO model YAML sets activation {activation!r}, which "
                             "ultralytics would run as Python; only nn.<Module>() is accepted")


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
                     resume_from: Path | None = None) -> dict[str, Any]:
    """Arguments of ultralytics' trainer: the harness config, radiograph defaults, ``train_args``, the contract."""
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
        "resume": str(resume_from) if resume_from else False,
    }


def read_rows(path: Path) -> list[dict]:
    """The rows of a run's ``metrics.jsonl`` (empty when there is none yet)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@lru_cache(maxsize=1)
def _trainer_class() -> type:
    """Ultralytics' segmentation trainer, validated by the harness Dice (built on first use, see ``__getattr__``)."""
    import torch.distributed as dist
    from ultralytics.models.yolo.segment import SegmentationTrainer
    from ultralytics.utils import DEFAULT_CFG, LOCAL_RANK, RANK
    from ultralytics.utils.torch_utils import strip_optimizer, torch_distributed_zero_first

    class YoloTrainer(SegmentationTrainer):
        """Reads the harness config from its ``project`` (the run folder), also in ultralytics' DDP workers,
        which rebuild the trainer from its arguments alone; scores each epoch's EMA model by Dice."""

        def __init__(self, cfg=DEFAULT_CFG, overrides: dict | None = None, _callbacks: dict | None = None) -> None:
            super().__init__(cfg, overrides, _callbacks)
            self.run_dir = Path(self.args.project)
            config_path = self.run_dir / "config.yaml"
            self.harness = build_config(yaml.safe_load(config_path.read_text()), str(config_path))
            self.options = parse_options(self.harness.model.options)
            self.task = get_task_class(self.harness.task)(self.harness)
            self.val_set = self.task.datasets()[1]
            self.logger: RunLogger | None = None
            self.val_time = 0.0
            self.time_offset = 0.0

        def _run_logger(self) -> RunLogger:
            if self.logger is None:
                self.logger = RunLogger(self.run_dir, self.harness)
            return self.logger

        def get_model(self, cfg: dict | str | None = None, weights: nn.Module | None = None,
                      verbose: bool = True) -> nn.Module:
            """The network; a fresh one starts from ``model.weights`` read as tensors (a trusted pickle, or
            the run resumed, arrives from ultralytics as ``weights``)."""
            model = super().get_model(cfg, weights, verbose)
            if weights is None and self.harness.model.weights:
                load_local_weights(model, self.harness.model.weights, encoder_attr="model")
            return model

        def save_model(self) -> bool | None:
            """Ultralytics' checkpoints (its --resume reads them), then the run folder's best.pt/last.pt as tensors."""
            saved = super().save_model()
            payload = harness_checkpoint(self.harness, self.ema.ema, self.epoch, {})
            save_checkpoint(self.run_dir / "last.pt", payload)
            if self.best_fitness == self.fitness:
                save_checkpoint(self.run_dir / "best.pt", payload)
            return saved

        def resume_training(self, ckpt) -> None:
            super().resume_training(ckpt)
            if self.resume and ckpt is not None and RANK in {-1, 0}:
                self._run_logger().truncate_after(self.start_epoch - 1)
                rows = read_rows(self.run_dir / "metrics.jsonl")
                self.time_offset = rows[-1]["time_s"] if rows else 0.0

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
            """Strip the optimiser from the checkpoints; the harness scores best.pt itself (no mAP pass)."""
            with torch_distributed_zero_first(LOCAL_RANK):
                if RANK in {-1, 0}:
                    for weights in (self.last, self.best):
                        if weights.exists():
                            strip_optimizer(weights)
            if self.logger is not None:
                self.logger.finish({"val/best_score": self.best_fitness})

    YoloTrainer.__module__ = __name__
    YoloTrainer.__qualname__ = YoloTrainer.__name__
    return YoloTrainer


def __getattr__(name: str) -> Any:
    """``models.yolo.YoloTrainer`` on demand (PEP 562): ``import models`` stays free of ultralytics, and
    ultralytics' DDP workers, which import the trainer class by name, still find it."""
    if name == "YoloTrainer":
        return _trainer_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class YoloLearner:
    """An external learner: ``fit`` trains a run folder, ``load`` turns a run's checkpoint into a module."""

    arch: str
    num_classes: int
    options: YoloOptions
    weights: str | None = None

    @property
    def model_arg(self) -> str:
        """What ultralytics builds: a shipped YAML by name (it reads the scale from the name) or a file."""
        return self.arch if self.arch.endswith((".yaml", ".yml")) else f"{self.arch}.yaml"

    def start_weights(self) -> tuple[Path | None, bool]:
        """``model.weights`` checked before training: the file (or None) and whether ultralytics must unpickle it.

        A state dict of tensors (a plain one, or a harness checkpoint such as another YOLO run's best.pt) is
        loaded by the trainer; a pickled ultralytics ``.pt`` goes to ultralytics only with ``trust_pickle``.
        """
        if not self.weights:
            return None, False
        path = Path(self.weights).expanduser()
        try:
            read_state_dict(str(path), f"torch.save(YOLO('{self.arch}.pt').model.state_dict(), NAME)")
        except PickledFileError:
            if self.options.trust_pickle:
                return path, True
            raise PickledFileError(
                f"model.weights: {path} is a pickled checkpoint (an ultralytics .pt), and loading it runs code named "
                "in the file; set model.options.trust_pickle: true if you trust it, or give a state dict of tensors "
                f"(torch.save(YOLO('{path.name}').model.state_dict(), ...))") from None
        return path, False

    def load(self, checkpoint: dict[str, Any], source: str) -> YoloProbModel:
        """The fused network of a harness YOLO checkpoint: rebuilt from its checked model YAML, then its tensors."""
        from ultralytics.nn.tasks import SegmentationModel

        spec, state = checkpoint.get("yolo"), checkpoint.get("model")
        if not isinstance(spec, dict) or not isinstance(state, dict):
            raise ValueError(f"{source}: no YOLO network in this checkpoint (it needs the weights under 'model' and "
                             "the model YAML under 'yolo'); train the run again")
        yaml_spec = spec.get("yaml")
        check_model_yaml(yaml_spec, source)
        try:
            net = SegmentationModel(copy.deepcopy(yaml_spec), ch=int(yaml_spec.get("channels", 3)),
                                    nc=yaml_spec.get("nc"), verbose=False)
            net.load_state_dict(state)
        except Exception as err:  # a malformed YAML or state dict fails in ultralytics or torch with many types
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"{source}: the YOLO weights and model YAML stored in it do not make a network "
                             f"({first})") from None
        module = YoloProbModel(net.float().fuse(verbose=False).eval(), self.options.conf, self.options.iou,
                               self.options.max_det)
        if module.num_classes != self.num_classes:
            raise ValueError(f"{source}: the model has {module.num_classes} classes, the task needs {self.num_classes}")
        return module

    def fit(self, cfg: Config, resume: bool = False) -> dict:
        """Train with ultralytics in ``<run_dir>/ultralytics``, score its best.pt by Dice, write the run folder."""
        from tools.convert import yolo_dataset

        if "LOCAL_RANK" in os.environ:
            raise RuntimeError("YOLO runs start their own DDP workers (--train.device=0,1,2,3): "
                               "run train.py without torchrun")
        if cfg.data.image_size % 32:
            raise ValueError(f"data.image_size={cfg.data.image_size}: YOLO needs a multiple of 32")
        weights, pickled = self.start_weights()
        run_dir = cfg.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        cache_root = Path(cfg.data.cache_dir) if cfg.data.cache_dir else CACHE_DIR
        data_yaml = yolo_dataset(cfg.data.root, cache_root, cfg.data.fold, cfg.data.n_folds)
        last = run_dir / ULTRALYTICS_DIR / "weights" / "last.pt"
        if resume and not last.is_file():
            raise FileNotFoundError(f"{last}: nothing to resume (no ultralytics last.pt in the run folder)")
        if not resume:  # a fresh run starts its epoch log afresh, as ultralytics does with its results.csv
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        args = ultralytics_args(cfg, data_yaml, self.model_arg, self.options, weights if pickled else None,
                                last if resume else None)
        _trainer_class()(overrides=args).train()
        return self._finish(cfg)

    def _finish(self, cfg: Config) -> dict:
        run_dir = cfg.run_dir
        best_path = run_dir / "best.pt"
        if not best_path.is_file():
            raise RuntimeError(f"{best_path}: ultralytics finished without a best model (see its log above)")
        best = read_tensors(best_path, "checkpoint")
        device = torch_device(cfg.train.device)
        module = self.load(best, str(best_path)).to(device)
        task = get_task_class(cfg.task)(cfg)
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
            train_time_s=train_time, train_images_per_s=round(images / train_time, 2) if train_time else None,
            metric=task.metric, mode=task.mode, best_epoch=best_epoch,
            val={"score": val["score"], "per_item": val["per_item"], "loss": val["loss"]},
        )
        write_summary(run_dir, summary)
        return summary


@register_family("yolo", tasks=("segmentation",), kind="external", list_names=list_names, validate=validate,
                 examples=("yolo:yolo11n-seg", "yolo:yolov8n-seg", "yolo:yolo26n-seg", "yolo:yolo11s-seg"))
def build_yolo(rest: str, *, task: str, num_outputs: int, in_channels: int = 1, weights: str | None = None,
               **options: Any) -> YoloLearner:
    """Ultralytics YOLO instance segmentation (ultralytics trains it; our Dice scores it)."""
    return YoloLearner(arch=rest, num_classes=num_outputs, options=parse_options(options), weights=weights)
