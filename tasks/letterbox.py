"""Fit an image of any aspect ratio into the network input (square, or ``height x width``), with the exact inverse
for coordinates.

Convention: ``(x, y)`` pixel coordinates with pixel centres at integers (pixel ``i`` covers
``[i - 0.5, i + 0.5)``), as in the label files and albumentations. Resizing scales the continuous
frame (``x + 0.5``), exactly as OpenCV's ``resize`` (area and bilinear, half-pixel centres) does, so an
image point and its coordinate stay together: ``x' = (x + 0.5) * sx - 0.5 + pad_x``. ``sx`` and ``sy``
are the real ratios of the resized to the original size (they differ by the rounding of the new size),
which is what makes :meth:`Letterbox.inverse` exact.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from tasks.formats.images import resize_grey
from tasks.schema import ResizeMode, image_hw, size_text



@dataclass(frozen=True)
class Letterbox:
    """The map from an ``height x width`` original to an ``in_h x in_w`` input (``letterbox`` keeps the
    aspect ratio and pads with black, centred; ``stretch`` resizes each axis on its own). ``x`` scales with the
    widths, ``y`` with the heights."""

    height: int
    width: int
    in_h: int
    in_w: int
    new_h: int
    new_w: int
    pad_y: int
    pad_x: int

    @classmethod
    def fit(cls, height: int, width: int, size: int | tuple[int, int], mode: ResizeMode = "letterbox") -> "Letterbox":
        """The map of a ``height x width`` image onto the input ``size`` (``data.image_size``: one side, or
        ``(height, width)``)."""
        in_h, in_w = image_hw(size)
        if height < 1 or width < 1 or in_h < 1 or in_w < 1:
            raise ValueError(f"letterbox: bad sizes (image {width}x{height}, input {size_text(size)})")
        if mode == "stretch":
            return cls(height, width, in_h, in_w, in_h, in_w, 0, 0)
        if mode != "letterbox":
            raise ValueError(f"resize mode must be 'letterbox' or 'stretch', got {mode!r}")
        scale = min(in_h / height, in_w / width)
        new_h = min(in_h, max(1, round(height * scale)))
        new_w = min(in_w, max(1, round(width * scale)))
        return cls(height, width, in_h, in_w, new_h, new_w, (in_h - new_h) // 2, (in_w - new_w) // 2)

    @property
    def sx(self) -> float:
        return self.new_w / self.width

    @property
    def sy(self) -> float:
        return self.new_h / self.height

    def image(self, image: np.ndarray) -> np.ndarray:
        """The ``in_h x in_w`` uint8 network input of a ``(height, width)`` grey image."""
        if image.shape[:2] != (self.height, self.width):
            raise ValueError(f"letterbox for {self.width}x{self.height} given an image of {image.shape[1]}x{image.shape[0]}")
        small = resize_grey(image, self.new_h, self.new_w)
        if (self.new_h, self.new_w) == (self.in_h, self.in_w):
            return np.ascontiguousarray(small)
        bottom = self.in_h - self.new_h - self.pad_y
        right = self.in_w - self.new_w - self.pad_x
        return cv2.copyMakeBorder(small, self.pad_y, bottom, self.pad_x, right, cv2.BORDER_CONSTANT, value=0)

    def forward(self, xy: np.ndarray) -> np.ndarray:
        """Original-frame ``(..., 2)`` coordinates → input-frame coordinates (NaN stays NaN)."""
        xy = np.asarray(xy, np.float64)
        out = np.empty_like(xy)
        out[..., 0] = (xy[..., 0] + 0.5) * self.sx - 0.5 + self.pad_x
        out[..., 1] = (xy[..., 1] + 0.5) * self.sy - 0.5 + self.pad_y
        return out

    def inverse(self, xy: np.ndarray) -> np.ndarray:
        """Input-frame ``(..., 2)`` coordinates → original-frame coordinates (the exact inverse of :meth:`forward`)."""
        xy = np.asarray(xy, np.float64)
        out = np.empty_like(xy)
        out[..., 0] = (xy[..., 0] - self.pad_x + 0.5) / self.sx - 0.5
        out[..., 1] = (xy[..., 1] - self.pad_y + 0.5) / self.sy - 0.5
        return out

    def inside(self, xy: np.ndarray) -> np.ndarray:
        """Which input-frame points lie on the image content (not on the padding or off the input)."""
        xy = np.asarray(xy, np.float64)
        x, y = xy[..., 0], xy[..., 1]
        return ((x >= self.pad_x - 0.5) & (x < self.pad_x + self.new_w - 0.5)
                & (y >= self.pad_y - 0.5) & (y < self.pad_y + self.new_h - 0.5))
