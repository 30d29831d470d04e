"""TTA views: exact inverses for maps and coordinates, left/right swaps, quarter turns, probability-space merging."""
from __future__ import annotations

import pytest
import torch

from engine.config import TTAConfig
from engine.predictor import view_mean
from tasks.segmentation.task import SegmentationTask
from tasks.tta import View, views_from_config


def tta_predict(model, x, views):
    """The segmentation task's TTA step (its inputs, inverse and sigmoid need no config)."""
    return view_mean(model, SegmentationTask.__new__(SegmentationTask), {"image": x}, views)


@pytest.mark.parametrize("view", [View(hflip=True), View(vflip=True), View(hflip=True, vflip=True), View()])
def test_flip_views_invert_exactly(view):
    x = torch.randn(2, 3, 8, 12)
    y = view.apply(x)
    assert y.shape == x.shape
    assert torch.equal(view.invert(y, (8, 12)), x)
    if view.hflip:
        assert torch.equal(y[..., 0], x[..., -1] if not view.vflip else x.flip(-2)[..., -1])


def test_scale_view_maps_back_to_the_base_size():
    view = View(scale=2.0)
    x = torch.full((1, 2, 32, 32), 0.25)
    y = view.apply(x)
    assert y.shape[-2:] == (64, 64) and view.input_size((32, 32)) == (64, 64)
    back = view.invert(y, (32, 32))
    assert back.shape == x.shape and torch.allclose(back, x)
    # half scale then flipped: both undone
    view = View(hflip=True, scale=0.5)
    ramp = torch.arange(64, dtype=torch.float32).repeat(64, 1)[None, None]
    back = view.invert(view.apply(ramp), (64, 64))
    assert back.shape == ramp.shape
    assert (back[..., 1:] - back[..., :-1]).mean() > 0  # orientation restored (increasing to the right)


def test_invert_points_undoes_flip_and_scale_exactly():
    size = (32, 48)
    xy = torch.tensor([[5.0, 7.0], [40.0, 20.0], [0.0, 31.0]], dtype=torch.float64)
    for view in (View(hflip=True), View(vflip=True), View(hflip=True, scale=2.0), View(scale=0.5)):
        # a point drawn on the original image lands here on the view ...
        image = torch.zeros(1, 3, *size)
        for k, (x, y) in enumerate(xy.long().tolist()):
            image[0, k, y, x] = 1.0
        seen = view.apply(image)
        vh, vw = seen.shape[-2:]
        if view.scale == 1.0:
            found = torch.stack([torch.tensor([float(i % vw), float(i // vw)]) for i in seen[0].flatten(1).argmax(1)])
        else:  # a scaled view's pixel centres: x_view = (x + 0.5) * s - 0.5
            found = torch.stack([(xy[:, 0] + 0.5) * vw / size[1] - 0.5, (xy[:, 1] + 0.5) * vh / size[0] - 0.5], 1)
            if view.hflip:
                found[:, 0] = vw - 1 - found[:, 0]
        # ... and invert_points brings it back to where it was
        back = view.invert_points(found.double(), (vh, vw), size)
        assert torch.allclose(back, xy, atol=1e-9), view.name


def test_flip_perm_swaps_left_right_channels_for_maps_and_points():
    perm = [1, 0, 2]  # channels 0 and 1 are a left/right pair, 2 is on the midline
    view = View(hflip=True)
    maps = torch.zeros(1, 3, 4, 4)
    maps[0, 0, 1, 0] = 1.0  # "left" seen at x=0 on the flipped view
    back = view.invert(maps, (4, 4), flip_perm=perm)
    assert back[0, 1, 1, 3] == 1.0 and back[0, 0].sum() == 0
    pts = torch.tensor([[0.0, 1.0], [3.0, 2.0], [1.0, 1.0]])
    out = view.invert_points(pts, (4, 4), (4, 4), flip_perm=perm)
    assert torch.equal(out, torch.tensor([[0.0, 2.0], [3.0, 1.0], [2.0, 1.0]]))


def test_views_from_config_defaults_have_no_vflip():
    assert views_from_config(TTAConfig(), enabled=False) == [View()]
    assert views_from_config(TTAConfig()) == [View(), View(hflip=True)]
    views = views_from_config(TTAConfig(hflip=True, vflip=True, scales=[1.0, 1.5]))
    assert len(views) == 6 and View(vflip=True, scale=1.5) in views


def test_tta_merges_in_probability_space_by_default():
    logits = {0: -15.0, 1: 1.0, 2: 1.0}
    calls = []

    def model(x):  # view k (in call order) answers logits[k] everywhere
        k = len(calls)
        calls.append(k)
        return torch.full_like(x, logits[k])

    x = torch.zeros(1, 1, 2, 2)
    views = [View(), View(hflip=True), View(vflip=True)]
    prob = tta_predict(model, x, views)
    expected = (torch.sigmoid(torch.tensor(-15.0)) + 2 * torch.sigmoid(torch.tensor(1.0))) / 3
    assert torch.allclose(prob, expected.expand_as(prob))
    assert prob.mean() > 0.48  # two of three views say "bone": the probability mean keeps it near 0.49
    assert prob.mean() > torch.sigmoid(torch.tensor(-13.0 / 3)) + 0.4  # the logit mean would say 0.013


def test_tta_identity_model_returns_the_activation_of_the_input():
    x = torch.randn(1, 2, 32, 32)
    views = [View(), View(hflip=True), View(vflip=True), View(hflip=True, vflip=True)]
    assert torch.allclose(tta_predict(lambda t: t, x, views), torch.sigmoid(x), atol=1e-6)


@pytest.mark.parametrize("quarters", [1, 2, 3])
@pytest.mark.parametrize("hflip", [False, True])
def test_quarter_turns_invert_exactly_for_maps_and_points(quarters, hflip):
    view = View(hflip=hflip, quarters=quarters)
    x = torch.randn(1, 2, 8, 8)
    assert torch.equal(view.invert(view.apply(x), (8, 8)), x)
    assert view.mirrored == hflip and view.name.startswith(f"rot{90 * quarters}")
    image = torch.zeros(1, 1, 8, 8)
    image[0, 0, 2, 5] = 1.0  # the point (x=5, y=2)
    seen = view.apply(image)[0, 0]
    y, x_ = divmod(int(seen.flatten().argmax()), 8)
    assert view.invert_points(torch.tensor([[float(x_), float(y)]]), (8, 8), (8, 8)).tolist() == [[5.0, 2.0]]


def test_one_clockwise_turn_is_clockwise():
    image = torch.zeros(1, 1, 4, 4)
    image[0, 0, 0, 0] = 1.0  # top-left goes to top-right under a clockwise turn
    assert View(quarters=1).apply(image)[0, 0, 0, 3] == 1.0


def test_rot90_in_the_config_adds_the_turns_of_every_view():
    views = views_from_config(TTAConfig(hflip=True, rot90=True))
    assert len(views) == 8 and {v.quarters for v in views} == {0, 1, 2, 3}
