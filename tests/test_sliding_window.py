"""Sliding-window inference: tiles cover the image, stitching is exact for location-free models, TTA per
tile keeps the geometry, the prediction cache records how it was made."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from engine.predictor import view_mean
from engine.sliding_window import GAUSSIAN_FLOOR, gaussian_importance, sliding_window_predict, tile_grid, tile_starts
from tasks.segmentation.task import SegmentationTask
from tasks.spec import MODE_RESIZE, MODE_SLIDING
from tasks.tta import View

SIZES = [(64, 64), (150, 97), (200, 331), (40, 50), (30, 90)]  # exact, not a multiple, smaller than the tile


class Constant(nn.Module):
    """Logits ``bias[c]`` everywhere, whatever the input."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.linspace(-2, 2, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.view(1, -1, 1, 1).expand(x.shape[0], -1, *x.shape[-2:])


def pointwise(channels: int = 3, seed: int = 0) -> nn.Conv2d:
    """A 1x1 convolution: a fixed linear function of each pixel, free of location."""
    torch.manual_seed(seed)
    conv = nn.Conv2d(1, channels, 1)
    nn.init.normal_(conv.weight, std=4.0)
    return conv.eval()


def tiled_probs(model, x, tile, overlap=0.5, views=(View(),), batch_size=4) -> torch.Tensor:
    """Sliding-window probabilities of ``x`` with the segmentation task's TTA step per batch of tiles."""
    task = SegmentationTask.__new__(SegmentationTask)  # its TTA hooks need no config
    with torch.no_grad():
        return sliding_window_predict(lambda tiles: view_mean(model, task, {"image": tiles}, views), x, tile,
                                      overlap, batch_size)


def ramp(h: int, w: int) -> torch.Tensor:
    """An asymmetric image: no flip maps it onto itself."""
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return ((0.7 * xx / w + 0.3 * (yy / h) ** 2) + 0.05 * torch.sin(xx * yy / 17))[None, None]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("make", [Constant, pointwise], ids=["constant", "1x1conv"])
def test_tiled_prediction_equals_whole_image(size, make):
    model = make()
    x = ramp(*size)
    with torch.no_grad():
        whole = torch.sigmoid(model(x))[0]
    tiled = tiled_probs(model, x, tile=64, overlap=0.5, batch_size=3)
    assert tiled.shape == whole.shape == (3, *size)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=0)


@pytest.mark.parametrize("length, tile, overlap", [(64, 64, 0.5), (65, 64, 0.5), (1000, 64, 0.5), (331, 64, 0.25),
                                                   (331, 64, 0.0), (500, 96, 0.9), (30, 64, 0.5)])
def test_tiles_cover_every_pixel_and_end_on_the_edge(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0 and starts == sorted(set(starts))
    if length >= tile:
        assert starts[-1] == length - tile  # the last tile ends exactly on the edge, never beyond
        assert all(s + tile <= length for s in starts)
    gaps = np.diff(starts)
    assert (gaps <= max(1, tile * (1 - overlap)) + 1).all()  # at least the asked overlap (rounding: 1 px)
    covered = np.zeros(max(length, tile), int)
    for s in starts:
        covered[s:s + tile] += 1
    assert (covered[:length] >= 1).all()


def test_gaussian_weights_sum_above_zero_everywhere():
    g = gaussian_importance(64)
    assert g.shape == (64, 64) and g.max() == pytest.approx(1.0) and g.min() >= GAUSSIAN_FLOOR
    assert g[32, 32] > g[32, 8] > g[0, 0]  # the centre counts more than the border
    h, w = 200, 331
    weight = np.zeros((h, w), np.float32)
    for y, x in tile_grid(h, w, 64, 0.5):
        weight[y:y + 64, x:x + 64] += g
    assert weight.min() > 0


def test_tta_per_tile_keeps_the_geometry_of_an_asymmetric_image():
    """An identity model (logit = pixel) under flips and a rescale: the stitched map is sigmoid(image),
    not a mirror of it; the source's uint8 map has the image's own (non-square) size."""
    identity = nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        identity.weight.fill_(1.0)
        identity.bias.zero_()
    x = ramp(150, 97) * 4 - 2
    views = [View(), View(hflip=True), View(vflip=True), View(hflip=True, vflip=True)]
    tiled = tiled_probs(identity, x, tile=64, overlap=0.5, views=views)
    torch.testing.assert_close(tiled, torch.sigmoid(x[0]), atol=1e-5, rtol=0)
    scaled = tiled_probs(Constant(), x, tile=64, views=[View(), View(scale=1.5), View(hflip=True)])
    torch.testing.assert_close(scaled, torch.sigmoid(Constant()(x))[0].detach(), atol=1e-5, rtol=0)


def test_the_predictor_tiles_a_sliding_window_run_at_the_original_size():
    """A run with inference.sliding_window predicts the image at its own (non-square) size through the one
    predictor; the writer keeps it as uint8 p * 255."""
    from engine.config import load_config
    from engine.predictor import LoadedModel, Predictor
    from tasks.segmentation.task import quantize

    identity = nn.Conv2d(1, 29, 1)
    with torch.no_grad():
        identity.weight.fill_(1.0)
        identity.bias.zero_()
    cfg = load_config(None, {"task": "segmentation", "data": {"root": "x", "image_size": 64},
                             "inference": {"sliding_window": True}})
    predictor = Predictor(LoadedModel(identity, cfg, "s"), [View(), View(hflip=True)], torch.device("cpu"))
    assert predictor.mode == MODE_SLIDING and predictor.input_size is None
    image = np.tile(np.arange(97, dtype=np.uint8)[None] * 2, (150, 1))
    probs = predictor(predictor.task.image_batch(image, predictor.input_size))
    assert probs.shape == (1, 29, 150, 97)
    q = quantize(probs[0])
    expected = np.rint(torch.sigmoid(torch.from_numpy(image).float() / 255).numpy() * 255)
    np.testing.assert_array_equal(q[0], expected)


def test_bad_overlap_is_refused():
    with pytest.raises(ValueError, match="overlap"):
        tile_starts(100, 64, 1.0)


def test_cache_records_the_mode_and_refuses_the_other(tmp_path):
    from tasks.segmentation.cache import CacheSpec, load_cached, save_probs
    from tasks.formats import FormatError

    p = np.random.default_rng(0).random((3, 20, 30)).astype(np.float32)
    save_probs(tmp_path / "tiled.npz", p, (20, 30), MODE_SLIDING)
    save_probs(tmp_path / "resized.npz", p[:, :20, :20], (40, 60))
    tiled, resized = CacheSpec(3, MODE_SLIDING, 20), CacheSpec(3, MODE_RESIZE, 20)
    entry = load_cached(tmp_path / "tiled.npz", "member a", tiled)
    assert entry.size == (20, 30) and entry.probs.shape == (3, 20, 30) and entry.mode == MODE_SLIDING
    assert load_cached(tmp_path / "resized.npz", "member a", resized).size == (40, 60)
    with pytest.raises(FormatError, match="tiled.npz was predicted with sliding_window.*asks for resize"):
        load_cached(tmp_path / "tiled.npz", "member a", resized)
    with pytest.raises(FormatError, match="resized.npz was predicted with resize"):
        load_cached(tmp_path / "resized.npz", "member a", tiled)

