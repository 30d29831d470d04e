"""Interactive keypoint refinement: hint maps, simulated clicks, pinned points, the click-curve protocol on a
toy model with known behaviour, the hint: model family, AASCE readers and flip pairs, and a tiny
train → click-curve run on the phantom."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from engine.config import load_config
from engine.trainer import train
from models import UnknownModelError, create_model
from models.hinted import HintedModel
from tasks.formats import FormatError, aasce
from tasks.formats.images import write_png
from tasks.interactive import ClickSettings, click_curve, pick_clicks, pin, render_hints, simulate_clicks
from tasks.keypoint_sets import AASCE68, SHS15
from tasks.keypoints.task import KeypointDataset, KeypointTask
from tasks.keypoint_labels import list_keypoint_samples
from tasks.augment import build_augment
from tools import interactive_eval


# --------------------------------------------------------------------------------------------------
# Hints, clicks, pinning
# --------------------------------------------------------------------------------------------------

def test_hint_maps_hold_a_unit_gaussian_at_each_clicked_point_and_zeros_elsewhere():
    xy = torch.tensor([[[10.0, 20.0], [30.0, 5.0], [7.0, 7.0]]])
    clicked = torch.tensor([[True, False, True]])
    maps = render_hints(xy, clicked, 32, 40, sigma=2.0)
    assert maps.shape == (1, 3, 32, 40)
    assert maps[0, 1].abs().max() == 0                                   # not clicked: an all-zero channel
    assert maps[0, 0, 20, 10] == pytest.approx(1.0) and maps[0, 2, 7, 7] == pytest.approx(1.0)
    assert maps[0, 0].argmax().item() == 20 * 40 + 10
    assert maps[0, 0, 20, 13].item() == pytest.approx(math.exp(-9 / 8), rel=1e-5)   # 3 px away, sigma 2
    nan = render_hints(torch.full((1, 3, 2), float("nan")), torch.ones(1, 3, dtype=torch.bool), 8, 8, 1.0)
    assert torch.isfinite(nan).all() and nan.abs().max() == 0


def test_the_worst_unclicked_allowed_point_is_picked():
    errors = torch.tensor([[1.0, 5.0, 3.0, 9.0], [2.0, 2.0, 1.0, 0.5], [1.0, 1.0, 1.0, 1.0]])
    clicked = torch.tensor([[False, False, False, True], [False, False, False, False], [True, True, True, True]])
    picked = pick_clicks(errors, clicked)
    assert picked.tolist() == [1, 0, -1]                  # 9 already clicked; a tie goes to the lower index; none left
    allowed = torch.tensor([[True, False, True, True]] * 3)
    assert pick_clicks(errors, clicked, allowed=allowed).tolist() == [2, 0, -1]


def test_one_of_the_worst_n_is_picked_uniformly_and_reproducibly():
    errors = torch.arange(20.0)[None].repeat(4000, 1)     # worst: 19, 18, 17
    clicked = torch.zeros_like(errors, dtype=torch.bool)
    gen = torch.Generator().manual_seed(0)
    picked = pick_clicks(errors, clicked, worst_of=3, generator=gen)
    counts = np.bincount(picked.numpy(), minlength=20)
    assert counts[:17].sum() == 0 and (counts[17:] > 1200).all()
    again = pick_clicks(errors, clicked, worst_of=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(picked, again)
    few = pick_clicks(torch.tensor([[4.0, 3.0, 2.0]]), torch.tensor([[True, True, False]]), worst_of=10)
    assert few.tolist() == [2]                            # fewer free points than worst_of


def test_clicked_points_are_pinned_to_their_hint():
    pred = np.array([[[1.0, 1.0], [2.0, 2.0]]])
    hints = np.array([[[9.0, 9.0], [8.0, 8.0]]])
    clicked = np.array([[False, True]])
    assert pin(pred, hints, clicked).tolist() == [[[1.0, 1.0], [8.0, 8.0]]]
    out = pin(torch.from_numpy(pred), torch.from_numpy(hints), torch.from_numpy(clicked))
    assert out.tolist() == [[[1.0, 1.0], [8.0, 8.0]]]


# --------------------------------------------------------------------------------------------------
# The click protocol on a toy model whose revisions are known exactly
# --------------------------------------------------------------------------------------------------

def toy_truth(n_images: int = 2, k: int = 4) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.uniform(10, 90, (n_images, k, 2))


def toy_model(true: np.ndarray):
    """Point k is off by (k + 1) px along (0.6, 0.8); every click divides the remaining errors by 1 + clicks."""
    k = true.shape[1]
    offset = (np.arange(k) + 1)[None, :, None] * np.array([0.6, 0.8])

    def predict(hints: np.ndarray, clicked: np.ndarray) -> np.ndarray:
        return true + offset / (1 + clicked.sum(1))[:, None, None]
    return predict


def test_click_curve_of_a_toy_model_matches_the_hand_computed_values():
    true = toy_truth()
    curve = click_curve(toy_model(true), true, n_clicks=5, spacing_mm=[0.5, 0.5])
    # manual: errors 1,2,3,4 -> the worst goes to 0 each click
    assert curve.manual_px.mean(0) == pytest.approx([2.5, 1.5, 0.75, 0.25, 0.0])
    # model: click 1 pins point 3, the others become 1/2, 2/2, 3/2; click 2 pins point 2 (1.0), others /3; ...
    assert curve.model_px.mean(0) == pytest.approx([2.5, 0.75, 0.25, 1 / 16, 0.0])
    assert curve.clicked[0].tolist() == [3, 2, 1, 0]      # capped at K clicks
    assert curve.n_clicks == 4 and curve.model_wins((1, 2, 3))
    rows = {(r["mode"], r["clicks"]): r for r in curve.rows()}
    assert rows[("model", 1)]["mre_mm"] == pytest.approx(0.375) and rows[("manual", 0)]["images"] == 2


def test_a_model_that_ignores_hints_gives_the_manual_curve():
    true = toy_truth()
    fixed = true + (np.arange(4) + 1)[None, :, None] * np.array([0.6, 0.8])
    curve = click_curve(lambda hints, clicked: fixed, true, n_clicks=3)
    assert np.allclose(curve.model_px, curve.manual_px) and not curve.model_wins()
    assert curve.spacing_mm is None and "mre_mm" not in curve.rows()[0]
    with pytest.raises(ValueError, match="n_clicks must be 0 or more, got -1"):
        click_curve(lambda hints, clicked: fixed, true, n_clicks=-1)


# --------------------------------------------------------------------------------------------------
# The hint: family and the simulated user of training
# --------------------------------------------------------------------------------------------------

def tiny_hinted(k: int = 5) -> nn.Module:
    return create_model("hint:shsnet:unet", task="keypoints", num_outputs=k, base_channels=4, depth=2, leaky_relu=0.1)


def test_hinted_model_takes_one_hint_channel_per_landmark():
    torch.manual_seed(0)
    model = tiny_hinted().eval()
    assert isinstance(model, HintedModel) and model.num_hints == 5
    assert model.inner.down[0][0].in_channels == 6                      # image + 5 hint maps
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())      # leaky_relu replaced them all
    x = torch.rand(2, 1, 32, 32)
    hints = render_hints(torch.full((2, 5, 2), 16.0), torch.tensor([[True] + [False] * 4] * 2), 32, 32, 2.0)
    with torch.no_grad():
        plain, zero, hinted = model(x), model(x, torch.zeros(2, 5, 32, 32)), model(x, hints)
    assert torch.equal(plain, zero) and not torch.allclose(plain, hinted)
    with pytest.raises(ValueError, match="hints .* do not match 5 maps"):
        model(x, torch.zeros(2, 4, 32, 32))
    with pytest.raises(UnknownModelError, match="unknown model"):
        create_model("hint:nope:unet", task="keypoints", num_outputs=5)
    with pytest.raises(UnknownModelError, match="inner model must be"):
        create_model("hint:hint:shsnet:unet", task="keypoints", num_outputs=5)
    with pytest.raises(UnknownModelError, match="does not serve task 'segmentation'"):
        create_model("hint:shsnet:unet", task="segmentation", num_outputs=5)


def test_plain_keypoint_weights_load_into_a_hinted_model_except_the_first_conv(tmp_path):
    plain = create_model("shsnet:unet", task="keypoints", num_outputs=5, base_channels=4, depth=2)
    torch.save(plain.state_dict(), tmp_path / "plain.pt")
    hinted = create_model("hint:shsnet:unet", task="keypoints", num_outputs=5, base_channels=4, depth=2,
                          weights=str(tmp_path / "plain.pt"))
    assert torch.equal(hinted.inner.head.weight, plain.head.weight)
    assert hinted.inner.down[0][0].weight.shape[1] == 6


class FixedPredictor(nn.Module):
    """Heatmaps peaked at fixed wrong points: point k sits (k + 1) * 3 px right of its truth, whatever the hints."""

    def __init__(self, truth: torch.Tensor, size: int) -> None:
        super().__init__()
        self.truth, self.size, self.calls = truth, size, []

    def forward(self, x, hints=None):
        self.calls.append(None if hints is None else hints.detach().clone())
        k = self.truth.shape[1]
        wrong = self.truth.clone()
        wrong[..., 0] += (torch.arange(k) + 1) * 3.0
        return 20 * render_hints(wrong, torch.ones(wrong.shape[:2], dtype=torch.bool), self.size, self.size, 1.0)


def test_simulated_user_hints_the_worst_visible_points_one_per_round():
    truth = torch.tensor([[[4.0, 4.0], [4.0, 10.0], [4.0, 16.0], [4.0, 22.0]]])
    visible = torch.tensor([[1.0, 1.0, 1.0, 0.0]])                     # the worst point (3) is off the input
    model = FixedPredictor(truth, 32)

    def decode(logits):
        flat = logits.flatten(-2).argmax(-1)
        return torch.stack([flat % 32, flat // 32], -1).float()

    settings = ClickSettings(train_clicks=2, worst_of=1)
    for seed in range(6):
        model.calls.clear()
        hints = simulate_clicks(model, torch.zeros(1, 1, 32, 32), truth, visible, decode, settings, 1.5,
                                torch.Generator().manual_seed(seed))
        rounds = len(model.calls)
        hinted = hints.flatten(-2).amax(-1)[0] > 0.99
        assert 0 <= rounds <= 2 and hinted.sum() == rounds
        assert hinted.tolist() == [False, rounds >= 2, rounds >= 1, False]   # 2 then 1; never the invisible 3
        if rounds:
            assert hints[0, 2].argmax().item() == 16 * 32 + 4                # the hint sits at the TRUE point
    none = simulate_clicks(model, torch.zeros(1, 1, 32, 32), truth, visible, decode, ClickSettings(train_clicks=0), 1.5)
    assert none.abs().max() == 0
    first = simulate_clicks(model, torch.zeros(1, 1, 32, 32), truth, torch.ones(1, 4),
                            decode, ClickSettings(train_clicks=0, initial_hints=4), 1.5, torch.Generator().manual_seed(1))
    assert 0 <= int((first.flatten(-2).amax(-1) > 0.99).sum()) <= 4


# --------------------------------------------------------------------------------------------------
# AASCE readers and flip pairs
# --------------------------------------------------------------------------------------------------

def write_spine_folder(root, names, coords, sizes):
    for n, (h, w) in zip(names, sizes):
        write_png(root / "images" / n, np.full((h, w), 90, np.uint8))
    aasce.write_csv_labels(root, names, coords, sizes)
    for n, xy in zip(names, coords):
        aasce.write_mat(root / "labels_mat" / f"{n}.mat", xy)


def spine_coords(rng, h, w):
    centre = np.linspace(0.15, 0.85, 17) * h
    out = []
    for y in centre:
        x0 = w / 2 + rng.uniform(-5, 5)
        out += [[x0 - 12, y - 8], [x0 + 12, y - 8], [x0 - 12, y + 8], [x0 + 12, y + 8]]
    return np.asarray(out)


def test_aasce_csv_and_mat_round_trip_through_the_keypoint_folder(tmp_path):
    rng = np.random.default_rng(0)
    names = ["case 1 A AP.jpg", "case 2 B AP.png"]
    sizes = [(300, 120), (260, 100)]
    coords = np.stack([spine_coords(rng, h, w) for h, w in sizes])
    write_spine_folder(tmp_path, names, coords, sizes)
    assert aasce.read_filenames(tmp_path / "filenames.csv") == names        # spaces kept
    via_csv = list_keypoint_samples(tmp_path, AASCE68)
    via_mat = list_keypoint_samples(tmp_path, AASCE68, labels="labels_mat")
    assert [s.name for s in via_csv] == names and [s.name for s in via_mat] == names
    for a, b, xy in zip(via_csv, via_mat, coords):
        assert np.abs(a.coords - xy).max() < 0.01 and np.array_equal(b.coords, xy)


def test_aasce_bad_input_names_the_file_and_line(tmp_path):
    (tmp_path / "landmarks.csv").write_text(",".join(["0.5"] * 136) + "\n" + ",".join(["0.5"] * 135) + "\n")
    with pytest.raises(FormatError, match=r"landmarks.csv: line 2: 135 values, expected 136"):
        aasce.read_landmarks(tmp_path / "landmarks.csv")
    (tmp_path / "landmarks.csv").write_text(",".join(["0.5"] * 67 + ["412"] + ["0.5"] * 68) + "\n")
    with pytest.raises(FormatError, match=r"line 1, value 68: 412 is not a normalised coordinate"):
        aasce.read_landmarks(tmp_path / "landmarks.csv")
    (tmp_path / "filenames.csv").write_text("a b.jpg\nc.jpg\na b.jpg\n")
    with pytest.raises(FormatError, match=r"line 3: image 'a b.jpg' listed twice"):
        aasce.read_filenames(tmp_path / "filenames.csv")
    (tmp_path / "filenames.csv").write_text("a b.jpg\nc.jpg\n")
    (tmp_path / "landmarks.csv").write_text(",".join(["0.5"] * 136) + "\n")
    with pytest.raises(FormatError, match="1 rows but .*filenames.csv lists 2 images"):
        aasce.read_csv_labels(tmp_path, {"a b.jpg": (10, 10), "c.jpg": (10, 10)})
    from scipy.io import savemat
    savemat(tmp_path / "x.mat", {"pts": np.zeros((68, 2))})
    with pytest.raises(FormatError, match=r"x.mat: no key 'p2' \(keys: pts\)"):
        aasce.read_mat(tmp_path / "x.mat")
    savemat(tmp_path / "y.mat", {"p2": np.zeros((60, 2))})
    with pytest.raises(FormatError, match=r"p2 has shape \(60, 2\), expected \(68, 2\)"):
        aasce.read_mat(tmp_path / "y.mat")


def test_aasce_patients_stay_in_one_fold():
    patient = AASCE68.patient_of
    assert patient("sunhl-1th-03-Jan-2017-165 A AP.jpg") == patient("sunhl-1th-04-Jan-2017-165 B AP.jpg") == "patient-165"
    assert patient("sunhl-1th-03-Jan-2017-164 A AP.jpg") != patient("sunhl-1th-03-Jan-2017-165 A AP.jpg")
    assert SHS15.patient_of("test_img5_L.png") == SHS15.patient_of("test_img5_R.png") == "test_img5"


def corners_in_order(xy: np.ndarray) -> float:
    """Fraction of vertebrae whose left corners lie left of their right corners (TL<TR, BL<BR)."""
    v = xy.reshape(17, 4, 2)
    return float(((v[:, 0, 0] < v[:, 1, 0]) & (v[:, 2, 0] < v[:, 3, 0])).mean())


def test_a_horizontal_flip_swaps_left_and_right_corners(tmp_path):
    rng = np.random.default_rng(1)
    names, sizes = ["s 1 A AP.png"], [(256, 96)]
    coords = spine_coords(rng, 256, 96)[None]
    write_spine_folder(tmp_path, names, coords, sizes)
    samples = list_keypoint_samples(tmp_path, AASCE68)
    cfg = load_config(None, {"task": "keypoints", "data": {"root": str(tmp_path), "landmarks": "aasce68"},
                             "augment": {"hflip": 1.0}})
    flipped = KeypointDataset(samples, 128, AASCE68, augment=build_augment(cfg.augment, keypoints=True))[0]
    plain = KeypointDataset(samples, 128, AASCE68)[0]
    xy, base = flipped["keypoints"].numpy(), plain["keypoints"].numpy()
    assert corners_in_order(base) == 1.0 and corners_in_order(xy) == 1.0        # still TL left of TR after the flip
    mirrored = base.copy()
    mirrored[:, 0] = 127 - mirrored[:, 0]
    assert np.abs(xy - mirrored[AASCE68.flip_perm]).max() < 1e-3
    assert corners_in_order(mirrored) == 0.0                                      # without the swap: all wrong


# --------------------------------------------------------------------------------------------------
# Train a tiny hinted model, then the click curve and the summary entry
# --------------------------------------------------------------------------------------------------

def hinted_config(root, out, **data):
    return load_config(None, {
        "task": "keypoints", "name": "hinted",
        "data": {"root": str(root), "landmarks": "dha37", "image_size": 64, "sigma": 2.0, "n_folds": 3,
                 "cache_dir": str(out / "cache"), "clicks": {"train_clicks": 2, "worst_of": 5, "eval_clicks": 3}, **data},
        "model": {"name": "hint:shsnet:unet", "options": {"base_channels": 4, "depth": 2, "out_stride": 2}},
        "loss": {"weights": {"kl": 1.0}},
        "train": {"epochs": 1, "batch_size": 4, "lr": 3e-3, "warmup_epochs": 0},
        "inference": {"batch_size": 4, "tta": {"hflip": True, "scales": [1.0]}},
        "logging": {"out_dir": str(out / "runs"), "progress": False},
    })


@pytest.mark.slow
def test_training_feeds_hints_and_the_click_curve_lands_in_the_run(phantom, tmp_path, capsys):
    cfg = hinted_config(phantom / "joints", tmp_path)
    task = KeypointTask(cfg)
    seen = []

    class Spy(nn.Module):
        num_hints = 37

        def forward(self, x, hints=None):
            seen.append(hints)
            return torch.zeros(x.shape[0], 37, 32, 32, requires_grad=True)

    spy = Spy().train()
    batch = {"image": torch.zeros(2, 1, 64, 64), "keypoints": torch.full((2, 37, 2), 30.0), "visible": torch.ones(2, 37)}
    torch.manual_seed(0)
    task.forward(spy, batch)
    assert seen[-1] is not None and seen[-1].shape == (2, 37, 64, 64)     # the loss pass gets the hint maps
    task.forward(spy.eval(), batch)
    assert seen[-1] is None                                              # evaluation: no hints
    summary = train(cfg)
    assert np.isfinite(summary["val"]["mre_px"])
    ckpt = cfg.run_dir / "best.pt"
    assert interactive_eval.main(["--ckpt", str(ckpt), "--split", "val", "--tta"]) == 0
    out = capsys.readouterr().out
    assert "model px" in out and "manual px" in out
    import json
    entry = json.loads((cfg.run_dir / "summary.json").read_text())["interactive"]
    assert entry["clicks"] == [0, 1, 2, 3] and entry["takes_hints"] and entry["tta"]
    assert entry["model_mre_px"][0] == pytest.approx(entry["manual_mre_px"][0])   # both start from one prediction
    assert entry["manual_mre_px"] == sorted(entry["manual_mre_px"], reverse=True)  # manual never gets worse
    assert len(entry["model_mre_mm"]) == 4                                         # the phantom has spacing.csv
    table = (cfg.run_dir / "interactive" / "val_clicks.csv").read_text().splitlines()
    assert table[0] == "mode,clicks,mre_px,images,mre_mm" and len(table) == 1 + 8
    assert (cfg.run_dir / "interactive" / "val_clicks.png").stat().st_size > 1000
