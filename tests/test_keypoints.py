"""Keypoint track: heatmap encode/decode, letterbox + augmentation round trips, flip TTA with pairs,
MRE/SDR, readers and bad input, losses, the SHS_NET U-Net, and train → predict → score on the phantom."""
from pathlib import Path

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import inference
from engine.config import ConfigError, load_config
from tasks.keypoints.cache import load_cache
from engine.predictor import view_mean
from ensembles.values import fuse_values
from engine.trainer import train
from tasks.tta import View
from models import UnknownModelError, create_model
from tasks.formats import FormatError
from tasks.formats.images import write_png
from tasks.heatmaps import (HeatmapLoss, activate, decode_heatmaps, decode_one_dark, heatmap_to_input,
                            input_to_heatmap, render_gaussians)
from tasks.keypoint_sets import AASCE68, DHA37, SHS15, LandmarkSet, get_set
from tasks.keypoint_labels import list_keypoint_samples, read_labels, read_wide, write_wide
from tasks.keypoints.task import KeypointDataset, KeypointTask
from tasks.metrics import keypoint_metrics
from tasks.keypoints.scoring import score as score_submission
from tasks.letterbox import Letterbox
from tasks.augment import build_augment
from tools import score


def kp_config(root: Path, out: Path, **overrides):
    base = {
        "task": "keypoints", "name": "kp",
        "data": {"root": str(root), "landmarks": "shs15", "image_size": 64, "sigma": 2.0, "n_folds": 3,
                 "cache_dir": str(out / "cache")},
        "model": {"name": "shsnet:unet", "options": {"base_channels": 8, "depth": 3, "out_stride": 2}},
        "loss": {"weights": {"awing": 1.0}},
        "train": {"epochs": 1, "batch_size": 4, "lr": 3e-3, "warmup_epochs": 0},
        "augment": {"rotate": 10, "scale": 0.1, "shift": 0.05, "hflip": 0.5},
        "inference": {"batch_size": 4, "tta": {"hflip": True, "scales": [1.0]}},
        "logging": {"out_dir": str(out / "runs"), "progress": False},
    }
    for section, values in overrides.items():
        base[section] = {**base.get(section, {}), **values} if isinstance(values, dict) else values
    return load_config(None, base)


# --------------------------------------------------------------------------------------------------
# Heatmaps
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("stride", [1, 2, 4])
def test_perfect_gaussian_decodes_within_a_tenth_of_a_pixel(stride):
    gen = torch.Generator().manual_seed(0)
    size = 128
    xy = torch.rand(3, 37, 2, generator=gen) * (size - 24) + 12   # sub-pixel offsets everywhere
    h = w = size // stride
    uv = input_to_heatmap(xy, stride, stride)
    heatmaps = render_gaussians(uv, h, w, sigma=max(2.0 / stride, 0.6))
    assert heatmaps.amax().item() <= 1.0 + 1e-6
    decoded, conf = decode_heatmaps(heatmaps, "dark")
    err = (heatmap_to_input(decoded, stride, stride) - xy).norm(dim=-1)
    assert err.max().item() < 0.1
    assert conf.min().item() > 0.5
    integer, _ = decode_heatmaps(heatmaps, "argmax")
    assert (integer == integer.round()).all()
    assert (heatmap_to_input(integer, stride, stride) - xy).norm(dim=-1).max() > 0.1   # DARK does better than argmax
    soft, _ = decode_heatmaps(heatmaps, "softargmax")
    assert (heatmap_to_input(soft, stride, stride) - xy).norm(dim=-1).mean() < 0.5 * stride


def test_vectorised_decode_matches_the_per_landmark_loop():
    gen = torch.Generator().manual_seed(1)
    uv = torch.rand(2, 5, 2, generator=gen) * 40 + 4
    heatmaps = render_gaussians(uv, 48, 48, 1.5) + 0.05 * torch.rand(2, 5, 48, 48, generator=gen)
    coords, conf = decode_heatmaps(heatmaps, "dark")
    for b in range(2):
        for k in range(5):
            x, y, c = decode_one_dark(heatmaps[b, k].numpy())
            assert coords[b, k].tolist() == pytest.approx([x, y], abs=1e-4)
            assert conf[b, k].item() == pytest.approx(c)


def test_dark_falls_back_to_argmax_at_the_border():
    heatmaps = render_gaussians(torch.tensor([[[0.0, 10.3]]]), 20, 20, 1.5)
    coords, _ = decode_heatmaps(heatmaps, "dark")
    assert coords[0, 0, 0].item() == 0.0 and abs(coords[0, 0, 1].item() - 10.3) < 0.6


def test_softmax_activation_peaks_at_one_and_sigmoid_is_sigmoid():
    logits = torch.randn(2, 3, 8, 8)
    soft = activate(logits, "softmax")
    assert torch.allclose(soft.flatten(-2).amax(-1), torch.ones(2, 3))
    assert torch.equal(soft.flatten(-2).argmax(-1), logits.flatten(-2).argmax(-1))
    assert torch.allclose(activate(logits, "sigmoid"), torch.sigmoid(logits))


@pytest.mark.parametrize("kind", ["mse", "bce", "awing", "kl"])
def test_each_loss_prefers_the_target_and_ignores_invisible_points(kind):
    loss = HeatmapLoss({kind: 1.0})
    xy = torch.tensor([[[20.0, 30.0], [40.0, 10.0]]])
    target = render_gaussians(input_to_heatmap(xy, 2, 2), 32, 32, 1.0)
    good = torch.logit(target.clamp(1e-4, 1 - 1e-4)) if kind != "kl" else torch.log(target.clamp_min(1e-8))
    shifted = torch.roll(good, shifts=(3, 3), dims=(-2, -1))
    both = torch.ones(1, 2)
    assert loss(good, xy, both, (64, 64), 2.0) < loss(shifted, xy, both, (64, 64), 2.0)
    # channel 1 wrong, but marked invisible: only channel 0 counts
    mixed = torch.cat([good[:, :1], shifted[:, 1:]], 1)
    only_first = torch.tensor([[1.0, 0.0]])
    assert loss(mixed, xy, only_first, (64, 64), 2.0).item() == pytest.approx(loss(good, xy, only_first, (64, 64), 2.0).item(),
                                                                              rel=1e-5, abs=1e-7)


def test_loss_config_errors():
    with pytest.raises(ValueError, match="unknown keypoint loss.*dice"):
        HeatmapLoss({"dice": 1.0})
    with pytest.raises(ValueError, match="cannot be mixed"):
        HeatmapLoss({"kl": 1.0, "bce": 1.0})
    with pytest.raises(ValueError, match="positive weight"):
        HeatmapLoss({"mse": 0.0})


# --------------------------------------------------------------------------------------------------
# Landmark sets
# --------------------------------------------------------------------------------------------------

def test_landmark_sets_match_the_phantom_and_flip_as_documented():
    from phantom import anatomy

    assert SHS15.names == anatomy.SHS15_NAMES and DHA37.names == anatomy.DHA37_NAMES
    assert SHS15.flip_perm == list(range(15)) and DHA37.flip_perm == list(range(37))   # one hand: no pairs
    perm = AASCE68.flip_perm
    assert len(AASCE68) == 68 and AASCE68.names[:4] == ("T1_TL", "T1_TR", "T1_BL", "T1_BR")
    assert perm[:4] == [1, 0, 3, 2] and sorted(perm) == list(range(68))
    assert all(perm[perm[i]] == i for i in range(68))
    assert SHS15.columns()[:2] == ["IP_x", "PIP2_x"] and SHS15.columns()[15] == "IP_y"
    with pytest.raises(ValueError, match="unknown landmark set 'shs16'.*shs15"):
        get_set("shs16")
    with pytest.raises(ValueError, match="unknown landmark"):
        LandmarkSet("bad", ("a", "b"), flip_pairs=(("a", "c"),))


# --------------------------------------------------------------------------------------------------
# Letterbox and augmentation
# --------------------------------------------------------------------------------------------------

def blob_image(height: int, width: int, points: np.ndarray, sigma: float = 4.0) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    img = sum(np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2)) for x, y in points)
    return (img / img.max() * 255).astype(np.uint8)


def centroid(image: np.ndarray, point: np.ndarray, radius: int = 5) -> np.ndarray:
    x0, y0 = int(round(point[0])), int(round(point[1]))
    ys, xs = np.mgrid[y0 - radius:y0 + radius + 1, x0 - radius:x0 + radius + 1]
    values = image[ys.clip(0, image.shape[0] - 1), xs.clip(0, image.shape[1] - 1)].astype(float)
    w = np.maximum(values - 0.05 * values.max(), 0)
    return np.array([(w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()])


@pytest.mark.parametrize("mode", ["letterbox", "stretch"])
@pytest.mark.parametrize("shape", [(180, 300), (910, 630), (97, 97)])
def test_letterbox_inverse_is_exact_and_image_follows_coordinates(shape, mode):
    h, w = shape
    pts = np.array([[0.2 * w + 0.3, 0.3 * h + 0.7], [0.8 * w - 0.4, 0.25 * h + 0.1], [0.5 * w + 0.6, 0.7 * h - 0.2]])
    lb = Letterbox.fit(h, w, 128, mode)
    fwd = lb.forward(pts)
    assert np.abs(lb.inverse(fwd) - pts).max() < 1e-9
    assert lb.inside(fwd).all()
    image = lb.image(blob_image(h, w, pts, sigma=max(h, w) / 60))
    assert image.shape == (128, 128)
    for p in fwd:
        assert np.linalg.norm(centroid(image, p) - p) < 0.5
    if mode == "letterbox" and h != w:
        assert min(lb.pad_x, lb.pad_y) == 0 and max(lb.pad_x, lb.pad_y) > 0
        assert not lb.inside(np.array([[-0.6, 64.0]])).any()


@pytest.fixture
def blob_folder(tmp_path):
    """A non-square image with bright blobs at its labelled points (wide CSV labels, 3-landmark set)."""
    root = tmp_path / "blobs"
    pts = np.array([[60.3, 50.6], [240.7, 70.2], [150.1, 150.9]])
    write_png(root / "images" / "a.png", blob_image(200, 300, pts, sigma=5.0))
    lmset = LandmarkSet("tri", ("A", "B", "C"))
    write_wide(root / "labels.csv", ["a.png"], pts[None], lmset)
    return root, pts, lmset


def test_augmented_keypoints_follow_the_image_and_invert_within_half_a_pixel(blob_folder):
    root, pts, lmset = blob_folder
    samples = list_keypoint_samples(root, lmset, labels="labels.csv")
    assert samples[0].name == "a.png" and np.allclose(samples[0].coords, pts, atol=1e-3)
    cfg_aug = kp_config(root, root, augment={"rotate": 25, "scale": 0.15, "shift": 0.08, "hflip": 0.5}).augment
    plain = KeypointDataset(samples, 96, lmset)
    item = plain[0]
    back = plain.letterbox(0).inverse(item["keypoints"].numpy().astype(np.float64))
    assert np.abs(back - samples[0].coords).max() < 1e-3
    augmented = KeypointDataset(samples, 96, lmset, augment=build_augment(cfg_aug, keypoints=True))
    flips = 0
    for epoch in range(6):
        augmented.set_epoch(epoch)
        it = augmented[0]
        image = (it["image"][0].numpy() * 255)
        kp = it["keypoints"].numpy()
        flips += int(kp[0, 0] > kp[1, 0])    # A is left of B unless the image was flipped
        for k in range(3):
            if it["visible"][k]:
                assert np.linalg.norm(centroid(image, kp[k], radius=4) - kp[k]) < 0.5
    assert 0 < flips < 6


def test_points_pushed_off_the_input_are_invisible(blob_folder):
    root, _, lmset = blob_folder
    samples = list_keypoint_samples(root, lmset, labels="labels.csv")
    cfg_aug = kp_config(root, root, augment={"rotate": 0, "scale": 0.0, "shift": 0.0, "hflip": 0.0,
                                             "extra": [{"name": "Affine", "translate_px": {"x": 30, "y": 0}, "p": 1.0}]}).augment
    it = KeypointDataset(samples, 96, lmset, augment=build_augment(cfg_aug, keypoints=True))[0]
    assert it["visible"].tolist() == [1.0, 0.0, 1.0]   # B (x ~ 77 + 30) left the 96-px input, C (48 + 30) stays
    assert it["keypoints"][1, 0] > 95


def test_flip_augmentation_swaps_declared_pairs(tmp_path):
    root = tmp_path / "pairs"
    pts = np.array([[30.0, 40.0], [90.0, 42.0]])
    write_png(root / "images" / "s.png", blob_image(128, 128, pts))
    lmset = LandmarkSet("pair", ("L", "R"), flip_pairs=(("L", "R"),))
    write_wide(root / "labels.csv", ["s.png"], pts[None], lmset)
    samples = list_keypoint_samples(root, lmset, labels="labels.csv")
    cfg_aug = kp_config(root, root, augment={"rotate": 0, "scale": 0.0, "shift": 0.0, "hflip": 1.0}).augment
    it = KeypointDataset(samples, 128, lmset, augment=build_augment(cfg_aug, keypoints=True))[0]
    kp = it["keypoints"].numpy()
    # flipped: the left corner (channel L) is now the mirror of R, still on the left
    assert kp[0] == pytest.approx([127 - 90.0, 42.0], abs=1e-3) and kp[1] == pytest.approx([127 - 30.0, 40.0], abs=1e-3)


# --------------------------------------------------------------------------------------------------
# TTA
# --------------------------------------------------------------------------------------------------

class CornerModel(nn.Module):
    """An exactly equivariant "network": the intensity centroid of the left and right halves of the input;
    channel 0 = the left one, channel 1 = the right one ("left corner", "right corner"), rendered as
    heatmap logits at ``stride``."""

    def __init__(self, stride: int = 1) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        half = w // 2
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
        pts = []
        for cols in (slice(0, half), slice(half, w)):
            part = x[:, 0, :, cols]
            total = part.sum((-1, -2))
            pts.append(torch.stack([(part * xs[:, cols]).sum((-1, -2)) / total,
                                    (part * ys[:, cols]).sum((-1, -2)) / total], -1))
        xy = torch.stack(pts, 1)
        s = self.stride
        hm = render_gaussians(input_to_heatmap(xy, s, s), h // s, w // s, 1.5)
        return torch.logit(hm.clamp(1e-4, 1 - 1e-4))


class Corners:
    """The keypoint task's TTA hooks for a set of two landmarks that swap under a mirror (``flip_perm``)."""

    model_inputs = KeypointTask.model_inputs
    invert = KeypointTask.invert
    activate = staticmethod(torch.sigmoid)

    def __init__(self, flip_perm):
        self.lmset = SimpleNamespace(flip_perm=flip_perm)


@pytest.mark.parametrize("stride", [1, 4])
def test_flip_tta_unflips_coordinates_and_swaps_pairs(stride):
    x = torch.zeros(1, 1, 64, 64)
    x[0, 0, 20, 10] = 1.0   # left corner at (10, 20)
    x[0, 0, 30, 50] = 1.0   # right corner at (50, 30)
    model = CornerModel(stride)
    views = [View(), View(hflip=True)]
    with_pairs = view_mean(model, Corners([1, 0]), {"image": x}, views)
    uv, _ = decode_heatmaps(with_pairs, "dark")
    xy = heatmap_to_input(uv, stride, stride)[0]
    assert xy.tolist() == [pytest.approx([10, 20], abs=0.05), pytest.approx([50, 30], abs=0.05)]
    without = view_mean(model, Corners(None), {"image": x}, views)   # wrong for a set with pairs: peaks mix
    assert without[0, 0].max() < 0.6 * with_pairs[0, 0].max()     # two half-height peaks instead of one
    single = view_mean(model, Corners([1, 0]), {"image": x}, [View(hflip=True)])
    assert torch.allclose(single, with_pairs, atol=1e-5)


def test_multiscale_tta_keeps_coordinates():
    centres = torch.tensor([[10.3, 22.6], [45.2, 34.1]])
    x = render_gaussians(centres[None], 64, 64, 2.0).sum(1, keepdim=True)
    model = CornerModel(1)
    for views in ([View()], [View(), View(scale=1.5)], [View(scale=0.5), View(hflip=True, scale=1.5)]):
        uv, _ = decode_heatmaps(view_mean(model, Corners([1, 0]), {"image": x}, views), "dark")
        assert (uv[0] - centres).norm(dim=-1).max() < 0.15


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------

def test_mre_and_sdr_against_hand_computed_values():
    true = np.zeros((2, 2, 2))
    pred = np.array([[[3.0, 4.0], [0.0, 1.0]],      # errors 5, 1
                     [[0.0, 2.0], [6.0, 8.0]]])     # errors 2, 10
    m = keypoint_metrics(pred, true, ["a", "b"], spacing_mm=[0.5, 2.0], radii_px=(2, 4), radii_mm=(2, 4))
    assert m["mre_px"] == pytest.approx(4.5) and m["score"] == m["mre_px"]
    assert m["sdr_2px"] == pytest.approx(0.5) and m["sdr_4px"] == pytest.approx(0.5)   # 1 and 2 within 2 (inclusive)
    assert m["per_item"] == {"a": pytest.approx(3.5), "b": pytest.approx(5.5)}
    # mm: 2.5, 0.5, 4, 20
    assert m["mre_mm"] == pytest.approx(6.75)
    assert m["sdr_2mm"] == pytest.approx(0.25) and m["sdr_4mm"] == pytest.approx(0.75)   # 4 is within 4
    assert "mre_mm" not in keypoint_metrics(pred, true, ["a", "b"], [0.5, None], (2, 4), (2, 4))


# --------------------------------------------------------------------------------------------------
# Readers and bad input
# --------------------------------------------------------------------------------------------------

def test_wide_csv_round_trip_and_set_inference(tmp_path):
    coords = np.random.default_rng(0).uniform(0, 200, (3, 15, 2))
    write_wide(tmp_path / "p.csv", ["a.png", "b.png", "c.png"], coords, SHS15)
    header = (tmp_path / "p.csv").read_text().splitlines()[0].split(",")
    assert header[0] == "image_name" and header[1:] == SHS15.columns()
    names, back, lmset = read_wide(tmp_path / "p.csv")
    assert names == ["a.png", "b.png", "c.png"] and lmset is SHS15
    assert np.abs(back - coords).max() <= 5e-4
    with pytest.raises(FormatError, match="NaN"):
        write_wide(tmp_path / "bad.csv", ["a"], np.full((1, 15, 2), np.nan), SHS15)
    assert not (tmp_path / "bad.csv").exists()


def test_dha_labels_read_by_stem(tmp_path):
    root = tmp_path / "dha"
    coords = np.random.default_rng(1).uniform(5, 90, (2, 37, 2))
    for i in ("7", "8"):
        write_png(root / "images" / f"{i}.png", np.zeros((100, 120), np.uint8))
    lines = [",".join(["7"] + [f"{v:.3f}" for v in coords[0].ravel()]),
             ",".join(["8"] + [f"{v:.3f}" for v in coords[1].ravel()]),
             ",".join(["999"] + ["1"] * 74)]                       # an atlas row without its image: skipped
    (root / "all.csv").write_text("\n".join(lines) + "\n")
    (root / "spacing.csv").write_text("id,spacing_mm\n7,0.1\n8,0.2\n")
    samples = list_keypoint_samples(root, DHA37)
    assert [s.name for s in samples] == ["7", "8"] and [s.spacing_mm for s in samples] == [0.1, 0.2]
    assert np.abs(samples[1].coords - coords[1]).max() < 1e-3


def write_shs(root: Path, coords: np.ndarray, names=("a.png",), header=None, size=(100, 80)):
    for n in names:
        write_png(root / "images" / n, np.zeros(size, np.uint8))
    header = header or ["img_id"] + SHS15.columns()
    rows = [",".join([n] + [str(v) for v in c[:, 0]] + [str(v) for v in c[:, 1]]) for n, c in zip(names, coords)]
    (root / "coord_list.csv").write_text(",".join(header) + "\n" + "\n".join(rows) + "\n")


def test_bad_labels_name_the_file_and_problem(tmp_path):
    ok = np.full((1, 15, 2), 40.0)
    write_shs(tmp_path / "missing", ok, header=["img_id"] + SHS15.columns()[:-1] + ["W6_y"])
    with pytest.raises(FormatError, match=r"coord_list.csv.*missing column.*W5_y"):
        list_keypoint_samples(tmp_path / "missing", SHS15)
    nan = ok.copy()
    nan[0, 3, 1] = np.nan
    write_shs(tmp_path / "nan", nan)
    with pytest.raises(FormatError, match=r"coord_list.csv.*PIP4_y.*NaN"):
        list_keypoint_samples(tmp_path / "nan", SHS15)
    outside = ok.copy()
    outside[0, 14] = [95.0, 20.0]          # x = 95 on an 80-px wide image
    write_shs(tmp_path / "outside", outside)
    with pytest.raises(FormatError, match=r"coord_list.csv: image a.png: W5 at \(95.0, 20.0\) lies outside the 80x100"):
        list_keypoint_samples(tmp_path / "outside", SHS15)
    write_shs(tmp_path / "unlabelled", ok)
    write_png(tmp_path / "unlabelled" / "images" / "b.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(FormatError, match="no label row for image b.png"):
        list_keypoint_samples(tmp_path / "unlabelled", SHS15)
    with pytest.raises(FormatError, match="label file not found"):
        list_keypoint_samples(tmp_path / "unlabelled", DHA37)
    with pytest.raises(FormatError, match="37 x,y pairs"):
        (tmp_path / "short.csv").write_text("1,2,3\n")
        read_labels(tmp_path / "short.csv", DHA37)


def test_bad_config_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match="sigmaa.*did you mean 'data.sigma'"):
        kp_config(tmp_path, tmp_path, data={"sigmaa": 2.0})
    cfg = kp_config(tmp_path, tmp_path, data={"landmarks": "aasce68"}, augment={"vflip": 0.5})
    from tasks.keypoints.task import KeypointTask

    with pytest.raises(ValueError, match="vflip.*aasce68"):
        KeypointTask(cfg)


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("out_stride", [1, 2, 4])
def test_shsnet_unet_shapes(out_stride):
    model = create_model("shsnet:unet", task="keypoints", num_outputs=15, base_channels=4, depth=3, out_stride=out_stride)
    for size in (64, 72):
        y = model(torch.zeros(1, 1, size, size))
        assert y.shape == (1, 15, -(-size // out_stride), -(-size // out_stride))
    with pytest.raises(ValueError, match="out_stride"):
        create_model("shsnet:unet", task="keypoints", num_outputs=15, depth=2, out_stride=8)
    with pytest.raises(UnknownModelError, match="shsnet:unet"):
        create_model("shsnet:unett", task="keypoints", num_outputs=15)


def test_smp_models_serve_keypoints():
    model = create_model("smp:unet/resnet18", task="keypoints", num_outputs=37)
    assert model(torch.zeros(1, 1, 64, 64)).shape == (1, 37, 64, 64)


# --------------------------------------------------------------------------------------------------
# End to end on the phantom
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def kp_run(phantom, tmp_path_factory):
    out = tmp_path_factory.mktemp("kp")
    cfg = kp_config(phantom / "joints", out, train={"epochs": 2, "batch_size": 4, "max_steps_per_epoch": 3})
    summary = train(cfg)
    return cfg, summary


def test_train_writes_keypoint_metrics(kp_run):
    cfg, summary = kp_run
    assert summary["metric"] == "mre_px" and summary["mode"] == "min"
    val = summary["val"]
    assert set(val["per_item"]) == set(SHS15.names)
    assert np.isfinite(val["score"]) and val["score"] == pytest.approx(val["mre_px"])
    assert {"sdr_5px", "sdr_10px", "sdr_20px", "mre_mm", "sdr_2mm", "loss"} <= set(val)   # shs15's radii
    assert 0 <= val["sdr_20px"] <= 1


@pytest.mark.slow
def test_predict_score_and_ensemble(kp_run, phantom, tmp_path, capsys):
    cfg, _ = kp_run
    ckpt = cfg.run_dir / "best.pt"
    out = tmp_path / "kp.csv"
    assert inference.main(["--ckpt", str(ckpt), "--tta", "-o", str(out), "--save-probs"]) == 0
    names, coords, lmset = read_wide(out)
    split = (phantom / "joints" / "split.csv").read_text().splitlines()[1:]
    assert sorted(names) == sorted(r.split(",")[0] for r in split if r.endswith(",test"))
    assert lmset is SHS15 and np.isfinite(coords).all()
    cached_names, cached, conf, landmarks = load_cache(cfg.run_dir / "preds" / "test" / "keypoints.npz")
    assert cached_names == names and landmarks == "shs15" and np.abs(cached - coords).max() < 1e-3
    assert conf.shape == (len(names), 15) and (conf > 0).all()
    result = score_submission(out, phantom / "joints")
    assert result["images"] == len(names) and result["metric"] == "mre_px"
    truth = {r.split(",")[0]: r for r in (phantom / "joints" / "coord_list.csv").read_text().splitlines()[1:]}
    manual = np.mean([np.hypot(*(c - np.array(truth[n].split(",")[1:], float).reshape(2, 15).T).T)
                      for n, c in zip(names, coords)])
    assert result["score"] == pytest.approx(manual, rel=1e-6)
    assert score.main([str(out), "--gt", str(phantom / "joints"), "--quiet"]) == 0
    assert "mre_px" in capsys.readouterr().out
    # an ensemble of a model with itself is that model, for every method (soft: the same TTA heatmaps)
    for method in ("mean", "median", "soft", "hard"):
        yaml = tmp_path / f"{method}.yaml"
        yaml.write_text(f"task: keypoints\nmethod: {method}\nout_dir: {tmp_path / 'ens'}\n"
                        f"members: [{{name: a, run: {cfg.run_dir}}}, {{name: b, run: {cfg.run_dir}}}]\n"
                        + ("radius: 1.0\n" if method == "hard" else ""))
        ens = tmp_path / f"{method}.csv"
        assert inference.main(["--ensemble", str(yaml), "--tta", "-o", str(ens)]) == 0
        assert np.abs(read_wide(ens)[1] - coords).max() < 2e-3
    # bad submissions
    lines = out.read_text().splitlines()
    (tmp_path / "short.csv").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(FormatError, match="ground-truth images have no prediction"):
        score_submission(tmp_path / "short.csv", phantom / "joints")
    (tmp_path / "nan.csv").write_text("\n".join(lines[:1] + [lines[1].replace(lines[1].split(",")[3], "nan", 1)] + lines[2:]))
    with pytest.raises(FormatError, match="NaN"):
        score_submission(tmp_path / "nan.csv", phantom / "joints")


def test_coordinate_fusion_mean_median_and_per_landmark_weights():
    preds = np.array([[[[0.0, 0.0], [10.0, 10.0]]],
                      [[[2.0, 2.0], [20.0, 20.0]]],
                      [[[9.0, 9.0], [30.0, 30.0]]]])          # (M=3, N=1, K=2, 2)
    assert fuse_values(preds, "mean")[0].tolist() == [[pytest.approx(11 / 3)] * 2, [20.0, 20.0]]
    assert fuse_values(preds, "median")[0].tolist() == [[2.0, 2.0], [20.0, 20.0]]
    one_hot = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])  # landmark 0 from member 0, landmark 1 from member 2
    assert fuse_values(preds, "weighted", one_hot, channel_axis=1)[0].tolist() == [[0.0, 0.0], [30.0, 30.0]]
    assert fuse_values(preds, "weighted", [1.0, 1.0, 2.0], channel_axis=1)[0, 1].tolist() == [22.5, 22.5]
