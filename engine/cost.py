"""What a model costs per image: FLOPs of one forward pass at the run's input size, for summary.json.

Counted by PyTorch's own counter (``torch.utils.flop_counter.FlopCounterMode``), not by hand: 2 FLOPs per
multiply-add of every convolution (transposed too) and matrix product (linear layers, attention), the
convention of fvcore's and ultralytics' "GFLOPs" (2 x MACs). Element-wise work (activations, norms,
resizing, pooling) is not counted; it is small beside the convolutions of these models.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from tasks.base import Task
from tasks.schema import image_hw


def count_flops(model: nn.Module, inputs: dict[str, torch.Tensor]) -> int:
    """FLOPs of ``model(*inputs.values())`` in eval mode without gradients (the model's mode is restored)."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*inputs.values())
    finally:
        model.train(training)
    return int(counter.get_total_flops())


def run_flops(model: nn.Module, task: Task, size: int | tuple[int, int] | list[int]) -> int | None:
    """FLOPs per image of a trained run's model at its input size, with the inputs its task feeds it (one image on
    the model's device). A model the counter cannot run is a warning and None: a finished run keeps its summary."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    image = torch.zeros((1, task.in_channels, *image_hw(size)), device=device)
    try:
        return count_flops(model, task.model_inputs({"image": image}, model=model))
    except (RuntimeError, ValueError) as err:
        warnings.warn(f"FLOPs not counted ({str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__})",
                      stacklevel=2)
        return None
