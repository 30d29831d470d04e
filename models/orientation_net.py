"""The learned orientation classifier: a small timm CNN that reads the 12 SHS_NET classes (rotation x
side, :mod:`tasks.orientation.heuristic`) off a whole radiograph at low resolution.

The image is resized to ``size x size`` (each axis on its own: a quarter turn and resizing commute, so
the dihedral views of the small input are exactly those of the image) and scaled to [-2, 2]. At
prediction the eight turns and mirrors of the input are classified and their probabilities mapped back
through the label algebra (:data:`tasks.orientation.DIHEDRAL_LABELS`) and averaged. The side is
reported ``"uncertain"`` when its probability (summed over the rotations) is below ``min_side_prob``.
"""
from __future__ import annotations

import numpy as np
import timm
import torch
from torch import nn

from tasks.formats.images import resize_grey
from tasks.orientation.heuristic import DIHEDRAL, DIHEDRAL_LABELS, SIDES, Orientation, dihedral_view

DEFAULT_ARCH = "resnet10t"
DEFAULT_WIDTH = 16
DEFAULT_SIZE = 96


def build_orientation_net(arch: str = DEFAULT_ARCH, width: int | None = DEFAULT_WIDTH) -> nn.Module:
    """A randomly initialised timm classifier, one input channel, 12 classes (no weights are downloaded).

    ``width`` narrows a timm ResNet to stages of ``width, 2 width, 4 width, 8 width`` channels (16: a
    quarter of resnet10t, 0.3 M parameters, which trains in minutes on a CPU; on the shared CPU
    lcnet_035 did not learn in the same number of steps); None keeps the architecture's own widths."""
    kwargs = {} if width is None else {"channels": tuple(width * 2 ** i for i in range(4)), "stem_width": width}
    return timm.create_model(arch, pretrained=False, num_classes=12, in_chans=1, **kwargs)


def network_input(image: np.ndarray, size: int) -> np.ndarray:
    """The ``(size, size)`` uint8 input of a radiograph of any shape."""
    return resize_grey(image, size, size)


def to_tensor(batch: np.ndarray) -> torch.Tensor:
    """``(N, S, S)`` uint8 -> ``(N, 1, S, S)`` float in [-2, 2]."""
    return (torch.from_numpy(np.ascontiguousarray(batch)).float().unsqueeze(1) / 255.0 - 0.5) * 4.0


class LearnedOrientation:
    """A trained network as an orientation classifier: ``LearnedOrientation(net, size)(image)``."""

    def __init__(self, net: nn.Module, size: int = DEFAULT_SIZE, arch: str = DEFAULT_ARCH,
                 width: int | None = DEFAULT_WIDTH, min_side_prob: float = 0.5) -> None:
        self.net, self.size, self.arch, self.width, self.min_side_prob = net.eval(), size, arch, width, min_side_prob

    @torch.no_grad()
    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """Class probabilities (12) of ``image``, averaged over its eight dihedral views."""
        small = network_input(image, self.size)
        views = np.stack([dihedral_view(small, k, m) for k, m in DIHEDRAL])
        probs = torch.softmax(self.net(to_tensor(views)), dim=1).numpy()
        # view v of an image of class c has class DIHEDRAL_LABELS[v, c]: read each view's vote for c there
        return np.take_along_axis(probs, DIHEDRAL_LABELS, axis=1).mean(axis=0)

    def __call__(self, image: np.ndarray) -> Orientation:
        probs = self.probabilities(image).reshape(3, 4)   # side x rotation
        side_probs, rot_probs = probs.sum(axis=1), probs.sum(axis=0)
        side_index = int(np.argmax(side_probs))
        confident = bool(side_probs[side_index] >= self.min_side_prob)
        return Orientation(rotation=int(np.argmax(rot_probs)), side=SIDES[side_index] if confident else "uncertain",
                           confident=confident, side_source="learned" if confident else "none")
