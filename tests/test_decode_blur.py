"""DARK's modulation: the heatmap blur before the sub-pixel step, on by default at the target's sigma."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from engine.config import build_config
from tasks.heatmaps import _blur_conv, _blur_cv2, decode_heatmaps, gaussian_blur, render_gaussians
from tasks.keypoints.task import KeypointTask


def noisy_peaks(noise: float, sigma: float = 2.0, n: int = 4, k: int = 37, size: int = 64, seed: int = 0):
    """Known sub-pixel peaks ``(n, k, 2)`` and their Gaussians with pixel noise of std ``noise``, in [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    uv = torch.rand(n, k, 2, generator=gen) * (size - 20) + 10
    maps = render_gaussians(uv, size, size, sigma)
    return uv, (maps + noise * torch.randn(maps.shape, generator=gen)).clamp(0, 1)


def mean_error(uv: torch.Tensor, maps: torch.Tensor, blur: float) -> float:
    coords, _ = decode_heatmaps(maps, "dark", blur)
    return float((coords - uv).norm(dim=-1).mean())


def test_blur_is_opencv_gaussian_blur_on_cpu_and_the_convolution_agrees():
    maps = torch.rand(2, 3, 20, 24)
    for sigma in (0.5, 2.0):
        radius = int(np.ceil(3 * sigma))
        expected = cv2.GaussianBlur(maps[1, 2].numpy(), (2 * radius + 1,) * 2, sigma,
                                    borderType=cv2.BORDER_REPLICATE)
        np.testing.assert_allclose(gaussian_blur(maps, sigma)[1, 2].numpy(), expected, atol=1e-6)
        np.testing.assert_allclose(_blur_conv(maps, sigma, radius).numpy(), _blur_cv2(maps, sigma, radius).numpy(),
                                   atol=1e-5)
    constant = torch.full((1, 1, 9, 9), 0.25)   # normalised kernel, replicated edges: a flat map stays flat
    np.testing.assert_allclose(gaussian_blur(constant, 2.0).numpy(), 0.25, atol=1e-6)


def test_blur_cuts_the_subpixel_error_on_noisy_heatmaps():
    uv, maps = noisy_peaks(noise=0.05)
    plain, blurred = mean_error(uv, maps, 0.0), mean_error(uv, maps, 2.0)
    # measured 0.26 vs 0.05 px (benchmarks/keypoint_decode.py: 5x at every noise level)
    assert plain > 0.15
    assert blurred < 0.1
    assert blurred < plain / 3


def test_without_noise_both_decodes_are_near_exact():
    uv, maps = noisy_peaks(noise=0.0)
    assert mean_error(uv, maps, 0.0) < 1e-3
    assert mean_error(uv, maps, 2.0) < 1e-3   # a blurred Gaussian is a wider Gaussian: same peak


def test_confidence_is_the_unblurred_peak_value():
    maps = render_gaussians(torch.tensor([[[20.0, 14.0]]]), 32, 40, 1.0)   # integer peak: value 1
    _, conf = decode_heatmaps(maps, "dark", 2.0)
    assert conf.item() == pytest.approx(1.0, abs=1e-6)
    assert gaussian_blur(maps, 2.0).amax().item() < 0.3   # the smoothed peak would be far lower


def kp_task(tmp_path, **data) -> KeypointTask:
    raw = {"task": "keypoints", "data": {"root": str(tmp_path), "sigma": 4.0, **data},
           "model": {"name": "shsnet:unet"}, "loss": {"weights": {"mse": 1.0}}}
    return KeypointTask(build_config(raw, "kp.yaml"))


def test_default_blur_is_the_target_sigma_at_the_output_stride(tmp_path):
    auto = kp_task(tmp_path)
    assert auto.cfg.data.decode_blur == "auto"
    assert auto.decode_blur(stride=1) == 4.0
    assert auto.decode_blur(stride=2) == 2.0
    assert auto.decode_blur(stride=16) == 0.5   # the target is never narrower than half a pixel either
    assert kp_task(tmp_path, decode_blur=1.5).decode_blur(stride=2) == 1.5
    assert kp_task(tmp_path, decode_blur=0).decode_blur(stride=2) == 0.0
    assert kp_task(tmp_path, decode_blur=None).decode_blur(stride=2) == 0.0
