"""Export a trained run to ONNX or TorchScript, checked against PyTorch on images of the run's data.

:func:`export_run` loads the checkpoint as inference does (tensors only, :func:`engine.predictor.load_model`),
exports the model on the CPU at the run's input size with a dynamic batch and, where the model allows,
dynamic height and width, runs the export (onnxruntime, or torch.jit for TorchScript) and PyTorch on the
same inputs, and writes the file and a report beside it (``<file>.json``): inputs and outputs, what is
dynamic, and the max abs difference of the outputs at each checked size.

The exported inputs are the task's (:meth:`tasks.base.Task.model_inputs`): ``image`` ``(B, 1, H, W)`` in
[0, 1] as the datasets feed it; bone-age regressors with the sex input also ``male`` ``(B,)`` (0/1);
interactive keypoint models (``hint:``) also ``hints`` ``(B, K, H, W)``. The output is the model's raw
output (segmentation logits, heatmap logits, the normalised age). ONNX goes through
``torch.onnx.export(dynamo=False)``, the TorchScript-based exporter (the one ultralytics uses; the
torch.export-based one needs onnxscript and took several times longer on these models); TorchScript is
``torch.jit.trace``. YOLO runs go through ultralytics' own exporter (:mod:`engine.yolo_export`).

Height and width count as dynamic only when the export also runs at a second size (the run's size plus
one step of the model's stride, one image) within tolerance; otherwise an ONNX file is exported again
with fixed height and width (a traced TorchScript file stays as traced) and the report says why.
Checked on the first N validation images of the run's fold; where the run's data is not at hand, on N
phantom hands rendered by ``phantoms`` (the command passes :func:`phantom.render_hand`: the engine does
not import the phantom package).
"""
from __future__ import annotations

import errno
import io
import json
import math
import os
import re
import sys
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.checkpoint import open_checkpoint
from core.cli import describe
from engine.predictor import load_model
from models import input_size
from tasks.base import Task
from core.atomic import atomic_write, write_text
from tasks.formats.images import resize_grey
from tasks.schema import image_hw

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript"}
FORMAT_NAMES = {"onnx": "ONNX", "torchscript": "TorchScript"}
SECOND_SIZE_STEP = 32  # the second checked size is the run's size plus the smallest multiple of the stride >= this

Inputs = dict[str, torch.Tensor]
#: ``render(seed, size)`` -> an object with ``image`` (uint8, H x W) and ``male`` (bool): a phantom hand.
PhantomRenderer = Callable[[int, int], Any]


class Graph(Protocol):
    """A run's model as the graph that is exported: named inputs from a batch, its exporter, its PyTorch outputs."""

    output_names: list[str]

    def exporter(self, fmt: str) -> str: ...

    def inputs(self, batch: dict) -> Inputs: ...

    def export(self, fmt: str, example: Inputs, dynamic_hw: bool) -> bytes: ...

    def reference(self, inputs: Inputs) -> list[torch.Tensor]: ...

    def reexports_fixed(self, fmt: str) -> bool: ...


@dataclass(frozen=True)
class Check:
    """One comparison of the export with PyTorch: ``images`` at ``size`` (height, width)."""

    images: int
    size: tuple[int, int]
    max_abs_diff: float
    passed: bool
    problem: str | None = None  # why it could not run (a fixed-size export at another size), else None
    shapes: tuple[tuple[int, ...], ...] = ()  # of PyTorch's outputs


@dataclass
class ExportResult:
    """What :func:`export_run` wrote and measured; ``to_dict`` is the report beside the export."""

    path: Path
    report: Path
    fmt: str
    model: str
    task: str
    checkpoint: str
    exporter: str
    input_size: tuple[int, int]
    inputs: dict[str, list]
    outputs: dict[str, list]
    dynamic_hw: bool
    fixed_why: str | None
    source: str
    checks: list[Check]
    atol: float
    rtol: float
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def max_abs_diff(self) -> float:
        return max(c.max_abs_diff for c in self.checks)

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(path=str(self.path), report=str(self.report), format=out.pop("fmt"), max_abs_diff=self.max_abs_diff)
        return out

    def lines(self) -> list[str]:
        """What the command prints: the file and its signature, the check, the report."""
        sig = ", ".join(f"{name} [{', '.join(map(str, shape))}]" for name, shape in self.inputs.items())
        outs = ", ".join(f"{name} [{', '.join(map(str, shape))}]" for name, shape in self.outputs.items())
        dynamic = "batch, height and width dynamic" if self.dynamic_hw else \
            f"batch dynamic; height x width fixed at {self.input_size[0]}x{self.input_size[1]} ({self.fixed_why})"
        checks = ", ".join(f"{c.max_abs_diff:.3g} at {c.size[0]}x{c.size[1]} ({c.images} image{'s' * (c.images > 1)})"
                           for c in self.checks)
        return [f"{self.path}: {FORMAT_NAMES[self.fmt]} of {self.model} ({self.task}): {sig} -> {outs} "
                f"(at {self.input_size[0]}x{self.input_size[1]}); {dynamic}",
                f"check against PyTorch on {self.source}: max abs difference {checks}; "
                f"within atol {self.atol:g} + rtol {self.rtol:g} x the largest output",
                f"report: {self.report}"]


@contextmanager
def quiet() -> Iterator[None]:
    """Tracing and exporting warn about every Python value they freeze and about their own deprecation; the
    checks at a second size are what tells whether a frozen value matters."""
    with warnings.catch_warnings():
        for category in (torch.jit.TracerWarning, DeprecationWarning, FutureWarning, UserWarning):
            warnings.simplefilter("ignore", category)
        yield


@contextmanager
def native_stdout_silenced() -> Iterator[None]:
    """The process's stdout (file descriptor 1) sent to the null device: torch.onnx's TorchScript-based exporter
    prints its whole IR graph there, from C++, when an export fails (``_jit_onnx_log``), and a failed attempt at
    dynamic height and width is reported in one line instead."""
    import ctypes

    sys.stdout.flush()
    saved, null = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    try:
        yield
    finally:
        ctypes.CDLL(None).fflush(None)  # what C stdio buffered goes to the null device, not after the restore
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)


def _axes(ndim: int, dynamic_hw: bool, prefix: str = "") -> dict[int, str]:
    return {0: "batch", **({2: f"{prefix}height", 3: f"{prefix}width"} if dynamic_hw and ndim == 4 else {})}


class TorchGraph:
    """A harness ``nn.Module``: the task's named inputs in, its one output (``output``) out."""

    output_names = ["output"]

    def __init__(self, model: nn.Module, task: Task) -> None:
        self.model = model
        self.task = task

    def exporter(self, fmt: str) -> str:
        return "torch.onnx.export (dynamo=False)" if fmt == "onnx" else "torch.jit.trace"

    def inputs(self, batch: dict) -> Inputs:
        return self.task.model_inputs(batch, model=self.model)

    @torch.no_grad()
    def reference(self, inputs: Inputs) -> list[torch.Tensor]:
        return [self.model(*inputs.values())]

    def reexports_fixed(self, fmt: str) -> bool:
        return fmt == "onnx"  # a trace is a trace: TorchScript has no fixed-size variant to export instead

    @torch.no_grad()
    def export(self, fmt: str, example: Inputs, dynamic_hw: bool) -> bytes:
        args = tuple(example.values())
        buf = io.BytesIO()
        if fmt == "torchscript":
            torch.jit.save(torch.jit.trace(self.model, args, check_trace=False), buf)
            return buf.getvalue()
        out = self.model(*args)
        axes = {name: _axes(v.ndim, dynamic_hw) for name, v in example.items()}
        axes["output"] = _axes(out.ndim, dynamic_hw, "out_")
        with native_stdout_silenced():
            torch.onnx.export(self.model, args, buf, dynamo=False, input_names=list(example), output_names=["output"],
                              dynamic_axes=axes)
        return buf.getvalue()


def runtime(fmt: str, data: bytes) -> Callable[[Inputs], list[np.ndarray]]:
    """The exported model, loaded from its bytes: named inputs in, its outputs as arrays out."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
        return lambda inputs: session.run(None, {k: v.numpy() for k, v in inputs.items()})
    with quiet():
        module = torch.jit.load(io.BytesIO(data), map_location="cpu")

    @torch.no_grad()
    def run(inputs: Inputs) -> list[np.ndarray]:
        out = module(*inputs.values())
        return [o.numpy() for o in (out if isinstance(out, (tuple, list)) else [out])]

    return run


def example_size(inputs: Inputs) -> tuple[int, int]:
    """Height and width of the first input (the image)."""
    image = next(iter(inputs.values()))
    return int(image.shape[-2]), int(image.shape[-1])


def compare(run: Callable[[Inputs], list[np.ndarray]], graph: Graph, inputs: Inputs, atol: float,
            rtol: float) -> Check:
    """Run the export and PyTorch on ``inputs``; the max abs difference over all outputs. It passes within
    ``atol + rtol x`` the largest magnitude of each output: float32 rounding grows with the activations
    inside the network, so a value that cancels to near zero carries the error of its large parts."""
    image = next(iter(inputs.values()))
    size = example_size(inputs)
    ref = [r.float().numpy() for r in graph.reference(inputs)]
    got = run(inputs)
    shapes = tuple(tuple(r.shape) for r in ref)
    if tuple(tuple(g.shape) for g in got) != shapes:
        return Check(len(image), size, math.inf, False, f"output shapes {[tuple(g.shape) for g in got]}, PyTorch's "
                     f"{list(shapes)}", shapes)
    diffs = [float(np.abs(g.astype(np.float64) - r).max()) if r.size else 0.0 for g, r in zip(got, ref)]
    passed = all(d <= atol + rtol * (float(np.abs(r).max()) if r.size else 0.0) for d, r in zip(diffs, ref))
    return Check(len(image), size, max(diffs), passed, shapes=shapes)


def try_compare(run: Callable[[Inputs], list[np.ndarray]], graph: Graph, inputs: Inputs, atol: float,
                rtol: float) -> Check:
    """:func:`compare` where the export may refuse the inputs (a size it was traced or exported fixed at)."""
    try:
        return compare(run, graph, inputs, atol, rtol)
    except Exception as err:  # onnxruntime, torch.jit and the model raise many types for a size they cannot take
        return Check(len(next(iter(inputs.values()))), example_size(inputs), math.inf, False, _first_line(err))


def _first_line(err: BaseException) -> str:
    """The first sentence of an error (exporters append advice, graphs and links); of an error in the TorchScript
    interpreter, its last line, which names the failure after the traced call stack."""
    lines = str(err).strip().splitlines()
    if not lines:
        return type(err).__name__
    line = lines[-1] if "failed in the TorchScript interpreter" in lines[0] else lines[0]
    return re.split(r"(?<=[.;])\s", line)[0][:300]


def resized(inputs: Inputs, size: tuple[int, int], images: int = 1) -> Inputs:
    """The first ``images`` of ``inputs`` with every map (4-D input) resized to ``size``."""
    out = {}
    for name, value in inputs.items():
        value = value[:images]
        if value.ndim == 4 and tuple(value.shape[-2:]) != size:
            value = F.interpolate(value, size=size, mode="bilinear", align_corners=False)
        out[name] = value
    return out


def example_of(inputs: Inputs) -> Inputs:
    """Two copies of the first item: exported at batch 2, so no size of 1 is frozen into the graph."""
    return {name: torch.cat([value[:1]] * 2) for name, value in inputs.items()}


def phantom_batch(render: PhantomRenderer, n: int, size: tuple[int, int], channels: int) -> dict:
    """``n`` phantom hands as a model batch: ``image`` ``(n, channels, H, W)`` in [0, 1], ``male`` ``(n,)``."""
    images, male = [], []
    for seed in range(n):
        hand = render(seed, max(size))
        grey = torch.from_numpy(resize_grey(hand.image, *size).astype(np.float32) / 255.0)
        images.append(grey.expand(channels, *size))
        male.append(float(hand.male))
    return {"image": torch.stack(images), "male": torch.tensor(male)}


def check_batch(task: Task, n: int, phantoms: PhantomRenderer | None) -> tuple[dict, str]:
    """The first ``n`` validation items of the run's fold as one batch, or phantoms where the data is absent."""
    from engine.trainer import collate

    cfg = task.cfg
    try:
        val = task.datasets()[1]
        items = [val[i] for i in range(min(n, len(val)))]
        reason = f"{cfg.data.root}: fold {cfg.data.fold} has no validation images"
    except (OSError, ValueError) as err:
        items, reason = [], describe(err)
    if items:
        return collate(items), (f"{len(items)} validation image{'s' * (len(items) > 1)} of fold {cfg.data.fold} "
                                f"({cfg.data.root})")
    if phantoms is None:
        raise ValueError(f"{reason}; no images to check the export on")
    size = image_hw(cfg.data.input_size)
    return phantom_batch(phantoms, n, size, task.in_channels), \
        f"{n} phantom hand{'s' * (n > 1)} (the run's data is not at hand: {reason})"


def check_output(path: Path, ckpt: Path) -> None:
    """Before any work: the export goes to a file name in a folder that can be written, not over the checkpoint."""
    if path.resolve() == ckpt.resolve():
        raise ValueError(f"{path}: is the checkpoint itself; give another output name (-o)")
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a folder; give a file name (-o)", str(path))
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not os.access(folder, os.W_OK) or not os.access(folder, os.X_OK):
        raise PermissionError(errno.EACCES, "Permission denied (the output folder cannot be written)", str(folder))


def second_size(size: tuple[int, int], multiple: int) -> tuple[int, int]:
    step = -(-SECOND_SIZE_STEP // multiple) * multiple
    return size[0] + step, size[1] + step


def _versions(fmt: str) -> dict[str, str]:
    versions = {"torch": torch.__version__}
    if fmt == "onnx":
        import onnx
        import onnxruntime

        versions.update(onnx=onnx.__version__, onnxruntime=onnxruntime.__version__)
    return versions


def _signature(inputs: Inputs, dynamic_hw: bool) -> dict[str, list]:
    return {name: [_axes(v.ndim, dynamic_hw).get(i, int(d)) for i, d in enumerate(v.shape)]
            for name, v in inputs.items()}


def _export(graph: Graph, fmt: str, example: Inputs, dynamic_hw: bool) -> bytes:
    try:
        with quiet():
            return graph.export(fmt, example, dynamic_hw)
    except Exception as err:  # the exporters raise many types (SymbolicValueError, RuntimeError, AssertionError, ...)
        raise ValueError(f"{FORMAT_NAMES[fmt]} export failed: {_first_line(err)}") from None


def _required(check: Check, fmt: str) -> Check:
    """The check at the run's own size must pass: an export that differs there is not written."""
    if not check.passed:
        raise ValueError(f"the {FORMAT_NAMES[fmt]} export differs from PyTorch at {check.size[0]}x{check.size[1]}: "
                         f"max abs difference {check.max_abs_diff:.3g}"
                         + (f" ({check.problem})" if check.problem else " beyond --atol + --rtol x the largest output")
                         + "; nothing written")
    return check


def export_checked(graph: Graph, fmt: str, inputs: Inputs, other: tuple[int, int] | None, atol: float,
                   rtol: float) -> tuple[bytes, list[Check], str | None]:
    """The export and its checks: at the run's size (all images), then at ``other`` (one image) when height and
    width may be dynamic, else at the run's size with one image (the batch is dynamic either way).
    Returns the bytes, the checks and why height and width are fixed (None: they are dynamic)."""
    example = example_of(inputs)
    size = example_size(inputs)
    why = "the model takes only this size"
    if other is not None:
        try:
            with quiet():
                data = graph.export(fmt, example, dynamic_hw=True)
        except Exception as err:  # as in _export; a fixed-size export may still work
            if not graph.reexports_fixed(fmt):
                raise ValueError(f"{FORMAT_NAMES[fmt]} export failed: {_first_line(err)}") from None
            why = f"the exporter cannot make them dynamic: {_first_line(err)}"
        else:
            run = runtime(fmt, data)
            first = _required(compare(run, graph, inputs, atol, rtol), fmt)
            second = try_compare(run, graph, resized(inputs, other), atol, rtol)
            if second.passed:
                return data, [first, second], None
            why = f"at {other[0]}x{other[1]} the export " + (
                f"fails: {second.problem}" if second.problem else f"differs by {second.max_abs_diff:.3g}")
            if not graph.reexports_fixed(fmt):
                return data, [first, compare(run, graph, resized(inputs, size), atol, rtol)], why
    data = _export(graph, fmt, example, dynamic_hw=False)
    run = runtime(fmt, data)
    first = _required(compare(run, graph, inputs, atol, rtol), fmt)
    return data, [first, compare(run, graph, resized(inputs, size), atol, rtol)], why


def graph_of(member: Any, task: Task) -> tuple[Graph, int | None]:
    """The graph to export and the stride step of its height and width (None: one fixed size)."""
    from models.yolo import YoloProbModel

    if isinstance(member.model, YoloProbModel):
        from engine.yolo_export import YoloGraph

        return YoloGraph(member.model), member.model.stride
    cfg = member.cfg
    sizes = input_size(cfg.model.name, cfg.task, cfg.model.options)
    return TorchGraph(member.model, task), None if sizes.fixed is not None else sizes.multiple


def export_run(ckpt: str | os.PathLike, fmt: str, out: str | os.PathLike | None = None, check: int = 4,
               atol: float = 1e-3, rtol: float = 1e-3, phantoms: PhantomRenderer | None = None) -> ExportResult:
    """Export the run of ``ckpt`` as ``fmt`` (``onnx`` or ``torchscript``) to ``out`` (default: beside the
    checkpoint, ``best.onnx`` / ``best.torchscript``), checked on ``check`` images; writes ``<out>.json``."""
    if fmt not in FORMATS:
        raise ValueError(f"--format: unknown format {fmt!r}; choose {' or '.join(FORMATS)}")
    if check < 1:
        raise ValueError(f"--check: {check}: the export is checked on at least 1 image")
    if not (atol >= 0 and rtol >= 0):
        raise ValueError(f"--atol/--rtol: tolerances must be >= 0 (got {atol:g}, {rtol:g})")
    checkpoint = open_checkpoint(ckpt)
    path = Path(out) if out else checkpoint.path.with_suffix(FORMATS[fmt])
    check_output(path, checkpoint.path)
    member = load_model(checkpoint, torch.device("cpu"))
    cfg = member.cfg
    task = member.task
    graph, multiple = graph_of(member, task)
    batch, source = check_batch(task, check, phantoms)
    inputs = graph.inputs(batch)
    size = example_size(inputs)
    other = second_size(size, multiple) if multiple else None
    try:
        data, checks, why = export_checked(graph, fmt, inputs, other, atol, rtol)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    report = path.with_name(path.name + ".json")
    outputs = {name: ["batch", *shape[1:]] for name, shape in zip(graph.output_names, checks[0].shapes)}
    result = ExportResult(
        path=path, report=report, fmt=fmt, model=cfg.model.name, task=cfg.task, checkpoint=str(checkpoint.path),
        exporter=graph.exporter(fmt), input_size=size, inputs=_signature(inputs, why is None),
        outputs=outputs, dynamic_hw=why is None, fixed_why=why, source=source, checks=checks,
        atol=atol, rtol=rtol, versions=_versions(fmt))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as f:
        f.write(data)
    write_text(report, json.dumps(result.to_dict(), indent=2))
    return result
