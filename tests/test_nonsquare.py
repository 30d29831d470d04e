"""Non-square inputs, ``data.image_size: [height, width]``: the config round trip, the sizes a model refuses (its
stride rule, the key, the nearest valid sizes), a keypoint run whose points land at hand-computed original pixels
(x scales by the widths, y by the heights), a segmentation run whose cache and CSV round-trip, sliding-window tiles
of ``height x width``, and the leaderboard's ``HxW``. An int size reads as before (``tests/test_predict_rows.py``
holds the byte digests of the square path)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from torch import nn

import inference
from engine.config import ConfigError, build_config, load_config, save_config
from engine.predictor import Predictor
from engine.sliding_window import gaussian_importance, sliding_window_predict, tile_grid
from engine.trainer import check_image_size, train
from tasks.formats.images import write_png
from tasks.keypoint_labels import read_wide
from tasks.letterbox import Letterbox
from tasks.rle import decode
from tasks.schema import image_hw, size_text
from tasks.segmentation.cache import CacheSpec, load_cached
from tasks.segmentation.masks import encode_probs, resolve_thresholds
from tasks.submission import iter_images
from tasks.tta import View


def config(tmp_path, task: str = "segmentation", **data):
    return build_config({"task": task, "data": {"root": str(tmp_path), **data}})


# --------------------------------------------------------------------------------------------------
# The config
# --------------------------------------------------------------------------------------------------

def test_a_yaml_list_round_trips_through_the_saved_config(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("task: keypoints\ndata: {root: x, image_size: [800, 1000]}\n")
    cfg = load_config(path)
    assert cfg.data.image_size == (800, 1000)
    save_config(cfg, tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["data"]["image_size"] == [800, 1000]          # a YAML list, as written
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg and again.data.image_size == (800, 1000)
    override = load_config(path, ["--data.image_size=[640, 512]"])
    assert override.data.image_size == (640, 512)


def test_an_int_size_reads_and_saves_as_before(tmp_path):
    cfg = config(tmp_path, image_size=512)
    assert cfg.data.image_size == 512 and isinstance(cfg.data.image_size, int)
    save_config(cfg, tmp_path / "config.yaml")
    assert "image_size: 512\n" in (tmp_path / "config.yaml").read_text()
    # a square pair is its side: one size for cache keys, ensembles' frames and the leaderboard
    assert config(tmp_path, image_size=[512, 512]).data.image_size == 512
    assert image_hw(512) == (512, 512) and image_hw((800, 1000)) == (800, 1000)
    assert (size_text(512), size_text((800, 1000))) == ("512", "800x1000")


@pytest.mark.parametrize("value, message", [
    ([4, 100], "'data.image_size': each side should be greater than or equal to 8 (got [4, 100])"),
    ([8, 16, 32], "'data.image_size': [height, width] takes two sides, got 3"),
    ("big", "'data.image_size': Input should be a valid integer, or [height, width] (got 'big')"),
    (4, "'data.image_size': Input should be greater than or equal to 8 (got 4)"),
])
def test_a_malformed_size_names_the_key(tmp_path, value, message):
    with pytest.raises(ConfigError) as err:
        config(tmp_path, image_size=value)
    assert message in str(err.value)


# --------------------------------------------------------------------------------------------------
# Refused where the model or the mode does not allow it
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model, size, message", [
    ("smp:fpn/resnet18", [100, 1000], "data.image_size: 100x1000 (height x width): height 100, width 1000 do not fit "
     "(smp:fpn/resnet18 needs each side divisible by 32); use 96x992 or 128x1024"),
    ("smp:fpn/resnet18", [800, 1000], "data.image_size: 800x1000 (height x width): width 1000 does not fit "
     "(smp:fpn/resnet18 needs each side divisible by 32); use 800x992 or 800x1024"),
    ("smp:pan/resnet18", [64, 256], "data.image_size: 64x256 (height x width): height 64 does not fit "
     "(smp:pan/resnet18 needs each side divisible by 16 and at least 128); use 128x256"),
    ("smp:dpt/tu-vit_tiny_patch16_224", [224, 256], "data.image_size: 224x256: smp:dpt/tu-vit_tiny_patch16_224 "
     "takes only 224x224 inputs"),
    ("yolo:yolo11n-seg", [800, 1000], "data.image_size: 800x1000: yolo:yolo11n-seg takes only square inputs "
     "(ultralytics trains at one square imgsz); give one side, use 800 or 992"),
])
def test_a_size_the_model_cannot_take_names_the_key_and_the_nearest_sizes(tmp_path, model, size, message):
    cfg = build_config({"task": "segmentation", "data": {"root": str(tmp_path), "image_size": size},
                        "model": {"name": model}})
    with pytest.raises(ConfigError) as err:
        check_image_size(cfg)
    assert str(err.value).startswith(message)


def test_sizes_the_model_takes_pass():
    for model, size in (("smp:fpn/resnet18", [800, 1024]), ("yolo:yolo11n-seg", 640), ("smp:unet/resnet18", [64, 96])):
        check_image_size(build_config({"task": "segmentation", "data": {"root": "x", "image_size": size},
                                       "model": {"name": model}}))


def test_quarter_turns_and_wrist_crops_need_a_square_input(tmp_path):
    with pytest.raises(ConfigError, match=r"inference.tta.rot90: quarter turns need a square input; data.image_size "
                                          r"is 64x96 \(height x width\), a turned view would be 96x64"):
        build_config({"task": "orientation", "data": {"root": "x", "image_size": [64, 96]},
                      "inference": {"tta": {"rot90": True}}})
    assert build_config({"task": "orientation", "data": {"root": "x", "image_size": 96},
                         "inference": {"tta": {"rot90": True}}}).inference.tta.rot90
    with pytest.raises(ConfigError, match=r"'data.roi': a stage-2 wrist-ROI run crops square boxes, so "
                                          r"data.image_size is one side, not 64x96"):
        config(tmp_path, image_size=[64, 96], roi={})


def test_an_ensembles_quarter_turns_refuse_a_non_square_member(tmp_path):
    from ensembles.config import load_ensemble_config
    from ensembles.members import resolve_members

    run = tmp_path / "runs" / "segmentation" / "wide-f0"
    run.mkdir(parents=True)
    save_config(config(tmp_path, image_size=[64, 96]), run / "config.yaml")
    path = tmp_path / "e.yaml"
    path.write_text(f"task: segmentation\nname: e\nmethod: soft\ntta: {{rot90: true}}\nmembers: [{{name: a, run: {run}}}]\n")
    with pytest.raises(ConfigError, match=r"ensemble e: tta.rot90: member run run-f0: quarter turns need a square "
                                          r"input; data.image_size is 64x96"):
        resolve_members(load_ensemble_config(path), need_models=False)
    path.write_text(f"task: segmentation\nname: e\nmethod: soft\nmembers: [{{name: a, run: {run}}}]\n")
    assert resolve_members(load_ensemble_config(path), need_models=False)[0].image_size == (64, 96)


# --------------------------------------------------------------------------------------------------
# Geometry at height x width
# --------------------------------------------------------------------------------------------------

def test_letterbox_into_a_non_square_input_by_hand():
    lb = Letterbox.fit(80, 200, (48, 96))              # an 80 x 200 image into a 48 x 96 input
    # scale min(48/80, 96/200) = 0.48: 38 x 96 content, 5 rows of padding above
    assert (lb.in_h, lb.in_w, lb.new_h, lb.new_w, lb.pad_y, lb.pad_x) == (48, 96, 38, 96, 5, 0)
    xy = lb.forward(np.array([[100.0, 40.0]]))
    assert xy[0] == pytest.approx([(100.5 * 0.48) - 0.5, (40.5 * 38 / 80) - 0.5 + 5])
    assert lb.inverse(xy) == pytest.approx(np.array([[100.0, 40.0]]))
    assert lb.image(np.full((80, 200), 200, np.uint8)).shape == (48, 96)
    stretch = Letterbox.fit(80, 200, (48, 96), "stretch")
    assert (stretch.sx, stretch.sy) == (96 / 200, 48 / 80)


def test_sliding_window_tiles_of_height_x_width_stitch_the_image_back():
    image = torch.rand(1, 1, 70, 150)
    assert tile_grid(70, 150, (32, 64), 0.5) == [(y, x) for y in (0, 13, 25, 38) for x in (0, 29, 57, 86)]
    assert gaussian_importance((32, 64)).shape == (32, 64)
    assert np.array_equal(gaussian_importance((48, 48)), gaussian_importance(48))
    seen = []

    def echo(tiles: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(tiles.shape[-2:]))
        return tiles

    out = sliding_window_predict(echo, image, (32, 64), overlap=0.5, batch_size=5)
    assert set(seen) == {(32, 64)} and out.shape == (1, 70, 150)
    assert torch.allclose(out, image[0], atol=1e-6)                    # every pixel the weighted mean of itself
    small = sliding_window_predict(echo, image[..., :20, :40], (32, 64))   # padded up to the tile, cropped back
    assert torch.allclose(small, image[0, :, :20, :40], atol=1e-6)


# --------------------------------------------------------------------------------------------------
# Bone age and orientation at height x width
# --------------------------------------------------------------------------------------------------

def test_bone_age_films_are_letterboxed_into_height_x_width(phantom):
    from tasks.boneage.samples import list_samples
    from tasks.boneage.task import BoneAgeDataset

    root = phantom / "boneage"
    train_samples = list_samples(root / "boneage-training-dataset.csv", root / "boneage-training-dataset",
                                 require_age=True)[:3]
    for resize in ("letterbox", "stretch"):
        ds = BoneAgeDataset(train_samples, (40, 32), resize=resize)
        assert {tuple(ds[i]["image"].shape) for i in range(3)} == {(1, 40, 32)}
        assert ds.cache_tag.startswith(f"boneage|40x32|{resize}|")
    assert BoneAgeDataset(train_samples, 40).cache_tag.startswith("boneage|40|")     # an int size: the key as before


def test_orientation_training_turns_a_non_square_film_and_resizes_it_back(tmp_path):
    import cv2

    from phantom.orientation import write_orientation
    from tasks.augment import sample_seed
    from tasks.orientation.heuristic import DIHEDRAL, dihedral_label, dihedral_view
    from tasks.orientation.labels import list_samples
    from tasks.orientation.task import OrientationDataset, OrientationTask, to_input

    write_orientation(tmp_path / "films", 6, size=48, seed=0, prefix="f_")
    samples = list_samples(tmp_path / "films")
    plain = OrientationDataset(samples, (32, 48))
    train_set = OrientationDataset(samples, (32, 48), seed=3, train=True, crop=1.0)
    turned = 0
    for i, sample in enumerate(samples):
        k, mirror = DIHEDRAL[int(np.random.default_rng(sample_seed(3, 0, i)).integers(len(DIHEDRAL)))]
        item = train_set[i]
        view = dihedral_view(plain.load(i), k, mirror)                  # 48 x 32 after an odd turn
        want = cv2.resize(view, (48, 32), interpolation=cv2.INTER_LINEAR)
        assert item["image"].shape == (1, 32, 48) and torch.equal(item["image"], to_input(want))
        assert int(item["label"]) == dihedral_label(sample.label, k, mirror)
        turned += k % 2
    assert turned > 0                                                   # some films were turned on their side
    assert OrientationTask.image_batch(np.zeros((90, 70), np.uint8), (32, 48))["image"].shape == (1, 1, 32, 48)


# --------------------------------------------------------------------------------------------------
# A keypoint run at 48 x 96
# --------------------------------------------------------------------------------------------------

class PeakModel(nn.Module):
    """Heatmap logits at output stride 2 with one peak, at heatmap column ``u``, row ``v``, for every landmark."""

    def __init__(self, channels: int, u: int, v: int) -> None:
        super().__init__()
        self.channels, self.u, self.v = channels, u, v

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        out = torch.full((image.shape[0], self.channels, image.shape[-2] // 2, image.shape[-1] // 2), -10.0)
        out[..., self.v, self.u] = 10.0
        return out


@pytest.fixture(scope="module")
def wide_kp_run(phantom, tmp_path_factory):
    """A keypoint run trained two steps at 48 x 96 (height x width) on the phantom, plus a test folder holding one
    80 x 200 film."""
    out = tmp_path_factory.mktemp("wide-kp")
    write_png(out / "films" / "images" / "wide.png", np.full((80, 200), 90, np.uint8))
    cfg = load_config(None, {
        "task": "keypoints", "name": "wide",
        "data": {"root": str(phantom / "joints"), "test_root": str(out / "films"), "landmarks": "shs15",
                 "image_size": [48, 96], "n_folds": 3, "decode": "argmax", "cache_dir": str(out / "cache")},
        "model": {"name": "shsnet:unet", "options": {"base_channels": 8, "depth": 3, "out_stride": 2}},
        "train": {"epochs": 1, "batch_size": 4, "max_steps_per_epoch": 2, "warmup_epochs": 0},
        "augment": {"rotate": 10, "scale": 0.1, "shift": 0.05, "hflip": 0.5},
        "logging": {"out_dir": str(out / "runs"), "progress": False},
    })
    return cfg, train(cfg)


def test_a_non_square_keypoint_run_trains_and_shows_its_size(wide_kp_run):
    from leaderboard.table import load_runs

    cfg, summary = wide_kp_run
    assert summary["image_size"] == (48, 96) and np.isfinite(summary["val"]["score"])
    assert summary["flops"] > 0
    assert load_config(cfg.run_dir / "config.yaml").data.image_size == (48, 96)
    row = load_runs(cfg.run_dir.parent.parent).set_index("name").loc[cfg.run_name]
    assert row["image_size"] == "48x96"


@pytest.mark.parametrize("resize, expected", [
    # peak at heatmap (u 20, v 10), stride 96/48 = 2 across and 48/24 = 2 down: input (40.5, 20.5)
    # letterbox of 80 x 200 into 48 x 96: scale 0.48, content 38 x 96, pad_y 5: x = (40.5 + 0.5) / (96/200) - 0.5,
    # y = (20.5 - 5 + 0.5) / (38/80) - 0.5
    ("letterbox", (41 / 0.48 - 0.5, 16 / 0.475 - 0.5)),
    # stretch: x = (40.5 + 0.5) / (96/200) - 0.5, y = (20.5 + 0.5) / (48/80) - 0.5 = 34.5
    ("stretch", (41 / 0.48 - 0.5, 34.5)),
])
def test_a_non_square_keypoint_run_predicts_a_known_point_in_original_pixels(wide_kp_run, tmp_path, resize, expected):
    from engine.predictor import predict_run

    cfg, _ = wide_kp_run
    run_cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"resize": resize})})

    def peak_predictor(member, device):
        member.model = PeakModel(15, u=20, v=10)
        return Predictor(member, [View()], device)

    out = tmp_path / "points.csv"
    stats = predict_run(run_cfg, cfg.run_dir / "best.pt", out_csv=out, make_predictor=peak_predictor, progress=False)
    names, coords, _ = read_wide(out)
    assert stats["images"] == 1 and names == ["wide.png"]
    assert coords[0] == pytest.approx(np.tile(expected, (15, 1)), abs=1e-3)


# --------------------------------------------------------------------------------------------------
# A segmentation run at 64 x 96
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def wide_seg_run(phantom, tmp_path_factory):
    out = tmp_path_factory.mktemp("wide-seg")
    cfg = load_config(None, {
        "task": "segmentation", "name": "wide",
        "data": {"root": str(phantom / "handbones" / "train"), "test_root": str(phantom / "handbones" / "test"),
                 "image_size": [64, 96], "n_folds": 3, "cache_dir": str(out / "cache")},
        "model": {"name": "smp:fpn/resnet18"},
        "train": {"epochs": 1, "batch_size": 4, "max_steps_per_epoch": 2},
        "logging": {"out_dir": str(out / "runs"), "progress": False},
    })
    return cfg, train(cfg)


def test_a_non_square_segmentation_run_round_trips_its_cache_and_csv(wide_seg_run, tmp_path):
    from engine.predictor import load_model

    cfg, summary = wide_seg_run
    assert summary["image_size"] == (64, 96)
    out = tmp_path / "seg.csv"
    assert inference.main(["--ckpt", str(cfg.run_dir / "best.pt"), "-o", str(out), "--save-probs"]) == 0
    rows = dict(iter_images(out))
    spec = CacheSpec.of(cfg)
    assert spec.image_size == (64, 96)
    thresholds = resolve_thresholds(cfg.inference.threshold)
    cache = cfg.run_dir / "preds" / "test"
    assert sorted(p.stem for p in cache.glob("*.npz")) == sorted(rows)
    # the model's own maps, predicted again: the cache holds them (uint8 p*255) and the CSV their masks
    member = load_model(cfg.run_dir / "best.pt", torch.device("cpu"))
    predictor = Predictor(member, [View()], torch.device("cpu"))
    seen = 0
    for batch, maps in predictor.batches(member.task.samples("test")):
        name, probs = batch["samples"][0].name, maps[0].float().numpy()
        assert probs.shape == (29, 64, 96)                                  # at the 64 x 96 input
        entry = load_cached(cache / f"{name}.npz", "wide", spec)
        assert entry.size == (128, 128) and entry.probs.shape == (29, 64, 96)
        assert np.abs(entry.probs / 255.0 - probs).max() <= 0.5 / 255 + 1e-6
        assert rows[name] == encode_probs(probs, entry.size, thresholds)
        masks = [decode(r, 128, 128) for r in rows[name]]
        assert sum(int(m.sum()) for m in masks) > 0                        # the rows hold masks, not only empties
        seen += 1
    assert seen == len(rows) == 8
    # a square run's spec refuses these maps, naming the size they should have
    with pytest.raises(ValueError, match=r"the run predicts 64x64 maps, at the model's 64 px input"):
        load_cached(next(cache.glob("*.npz")), "square", CacheSpec(29, spec.mode, 64))
    # and a spec of the other orientation (96 x 64) refuses them too
    with pytest.raises(ValueError, match=r"the run predicts 96x64 maps, at the model's 96x64 px input"):
        load_cached(next(cache.glob("*.npz")), "tall", CacheSpec(29, spec.mode, (96, 64)))


def test_a_non_square_run_counts_its_flops_and_exports_at_height_x_width(wide_seg_run, tmp_path):
    import json

    from engine.checkpoint import load_checkpoint, save_checkpoint
    from engine.cost import count_flops
    from engine.export import export_run
    from models import create_model
    from phantom import render_hand

    cfg, _ = wide_seg_run
    summary = json.loads((cfg.run_dir / "summary.json").read_text())
    assert summary["image_size"] == [64, 96]
    model = create_model("smp:fpn/resnet18", task="segmentation", num_outputs=29, in_channels=1)
    at_size = count_flops(model, {"image": torch.zeros(1, 1, 64, 96)})
    assert summary["flops"] == at_size and at_size != count_flops(model, {"image": torch.zeros(1, 1, 64, 64)})
    # checked on phantoms where the run's data is absent: rendered, then resized to 64 x 96
    state = load_checkpoint(cfg.run_dir / "best.pt")
    state["config"]["data"]["root"] = str(tmp_path / "absent")
    save_checkpoint(tmp_path / "moved" / "best.pt", state)
    result = export_run(tmp_path / "moved" / "best.pt", "torchscript", out=tmp_path / "wide.torchscript", check=1,
                        phantoms=render_hand)
    assert result.input_size == (64, 96) and result.inputs["image"][2:] in ([64, 96], ["height", "width"])
    assert [c.size for c in result.checks][0] == (64, 96) and result.checks[0].passed
    assert result.source.startswith("1 phantom hand")
