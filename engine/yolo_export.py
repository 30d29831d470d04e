"""A YOLO run exported by ultralytics' own exporter, for :mod:`engine.export`.

What is exported is the network of the run (``YoloProbModel.net``) as ultralytics deploys it: input
``images`` ``(B, 3, H, W)`` in [0, 1] (the grey radiograph repeated over the network's channels, as the
harness feeds it), outputs ``output0`` (boxes, class scores and mask coefficients per anchor) and
``output1`` (the mask prototypes); non-maximum suppression and the per-class probability maps of
:class:`models.yolo.YoloProbModel` stay outside, as in any ultralytics export. Batch, height and width are
dynamic (ultralytics' ``dynamic=True``); the ONNX file is not simplified (``onnxslim`` is not a dependency).
Offline: ultralytics checks that ``onnx`` is installed and, with ``YOLO_AUTOINSTALL=false``
(:mod:`engine.offline`), never installs anything; the export downloads nothing.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

from models.yolo import YoloProbModel

Inputs = dict[str, torch.Tensor]


class YoloGraph:
    """The network of a YOLO run: ``images`` in, ``output0`` and ``output1`` out (see the module docstring)."""

    output_names = ["output0", "output1"]

    def __init__(self, model: YoloProbModel) -> None:
        self.net = model.net
        self.channels = model.in_channels
        self.traced: nn.Module | None = None  # the network as ultralytics prepared it for the export

    def exporter(self, fmt: str) -> str:
        import ultralytics

        return f"ultralytics {ultralytics.__version__} Exporter (format={fmt}, dynamic=True)"

    def inputs(self, batch: dict) -> Inputs:
        image = batch["image"]
        return {"images": image.repeat(1, self.channels // image.shape[1], 1, 1)}

    def reexports_fixed(self, fmt: str) -> bool:
        return False  # ultralytics fixes the batch together with the size: keep the dynamic export

    @torch.no_grad()
    def reference(self, inputs: Inputs) -> list[torch.Tensor]:
        if self.traced is None:
            raise RuntimeError("export first: the reference is the network ultralytics exported")
        out = self.traced(inputs["images"])
        return list(out) if isinstance(out, (tuple, list)) else [out]

    def export(self, fmt: str, example: Inputs, dynamic_hw: bool) -> bytes:
        """Ultralytics' exporter into a temporary folder; the file's bytes. ``dynamic_hw`` is always honoured as
        True: ultralytics makes the batch dynamic only together with height and width."""
        from ultralytics.engine.exporter import Exporter

        images = example["images"]
        with tempfile.TemporaryDirectory(prefix="yolo-export-") as tmp:
            self.net.task = "segment"  # what ultralytics reads off a model it built itself
            self.net.pt_path = str(Path(tmp) / "model.pt")  # the exporter names its file after this
            args = {"format": fmt, "imgsz": list(images.shape[-2:]), "batch": int(images.shape[0]), "dynamic": True,
                    "device": "cpu", "verbose": False, **({"simplify": False} if fmt == "onnx" else {})}
            exporter = Exporter(overrides=args)
            path = exporter(self.net)
            self.traced = exporter.model
            return Path(path).read_bytes()
