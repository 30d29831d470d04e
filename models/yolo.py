"""``yolo:<model>``: ultralytics YOLO instance segmentation, an external family of the model registry.

Any ``-seg`` model YAML shipped with ultralytics (``yolo:yolov8n-seg``, ``yolo:yolo11s-seg``,
``yolo:yolo26n-seg``, ...) or a path to a custom one (``yolo:path/to/my-seg.yaml``); ``model.weights``
optionally names a local file to start from (never downloaded): a state dict of tensors (e.g. another YOLO
run's ``best.pt``), or an ultralytics ``.pt`` (a pickled module, whose loading runs code named in the file)
only with ``model.options.trust_pickle: true``.

The registry builds a :class:`YoloModel`: the network's description (architecture, classes, prediction
options, start weights). Ultralytics trains it (``engine/yolo_learner.py``, the family's learner); this
module only builds networks. The run folder's ``best.pt``/``last.pt`` are plain dicts
(``torch.load(weights_only=True)``) holding the network's state dict and its model YAML (``yolo``:
``yaml``, ``names``). :meth:`YoloModel.load` rebuilds the network from that YAML (after checking that it
names only layer classes, see :func:`check_model_yaml`) and loads the tensors: nothing is unpickled.
Loaded, a run is a :class:`YoloProbModel`: an ``nn.Module`` that maps our ``(B, 1, h, w)`` input in
[0, 1] to per-class logits, so TTA, the prediction cache and soft/weighted/hard ensembles treat it like
any smp member.
"""
from __future__ import annotations

import copy
import re
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

from models.registry import InputSize, UnknownModelError, close_matches, refuse_unknown, register_family
from models.weights import read_state_dict
from tasks.schema import Section
from tasks.formats.tensors import PickledFileError

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
            refuse_unknown("a yolo model", [key], list(YoloOptions.model_fields))
        raise ValueError(f"model.options.{key}: {first['msg']} (got {first.get('input')!r})") from None
    for key in parsed.train_args:
        if key in MAPPED_ARGS:
            raise ValueError(f"model.options.train_args.{key}: set by the config ({MAPPED_ARGS[key]}); set it there")
        if key in FIXED_ARGS:
            raise ValueError(f"model.options.train_args.{key}: fixed by the harness for YOLO runs")
    return parsed


def check_options(options: dict[str, Any]) -> None:
    """:func:`parse_options`, and every ``train_args`` key an argument of ultralytics' trainer (its default.yaml,
    read without importing ultralytics), so that a typo is refused before the run folder exists."""
    parsed = parse_options(options)
    refuse_unknown("ultralytics' trainer", parsed.train_args, ultralytics_arguments(), " (model.options.train_args)")


@lru_cache(maxsize=1)
def ultralytics_arguments() -> frozenset[str]:
    """The arguments ultralytics' trainer takes: the keys of its ``cfg/default.yaml``."""
    spec = find_spec("ultralytics")
    if spec is None or spec.origin is None:
        return frozenset()
    return frozenset(yaml.safe_load((Path(spec.origin).parent / "cfg" / "default.yaml").read_text()) or {})


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
    return [f"yolo:{name}" for name in architectures()]


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


@dataclass
class YoloModel:
    """What ``yolo:<arch>`` builds: the network's description; ``load`` turns a run's checkpoint into a module
    (``engine.yolo_learner.YoloLearner`` trains it)."""

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


@register_family("yolo", tasks=("segmentation",), kind="external", list_names=list_names, validate=validate,
                 note=lambda: "+ yolo:<path/to/model-seg.yaml>: any ultralytics -seg model YAML",
                 input_size=lambda rest, options: InputSize(multiple=32, square=True,
                                                            note="ultralytics trains at one square imgsz"),
                 check_options=lambda rest, options: check_options(options),
                 examples=("yolo:yolo11n-seg", "yolo:yolov8n-seg", "yolo:yolo26n-seg", "yolo:yolo11s-seg"))
def build_yolo(rest: str, *, task: str, num_outputs: int, in_channels: int = 1, weights: str | None = None,
               **options: Any) -> YoloModel:
    """Ultralytics YOLO instance segmentation (ultralytics trains it; our Dice scores it)."""
    return YoloModel(arch=rest, num_classes=num_outputs, options=parse_options(options), weights=weights)
