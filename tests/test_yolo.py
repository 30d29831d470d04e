"""YOLO-seg plugin: label conversion, fold split, probability maps, config mapping, and an offline
end-to-end run (train.py → run folder scored by our Dice → inference.py --tta → ensemble with an smp
member) with no network access and nothing written to the home directory."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import inference
import train
from engine.checkpoint import load_checkpoint, save_checkpoint
from engine.config import Config, build_config, save_config
from engine.cost import count_flops
from engine.predictor import load_model
from ensembles.select import find_candidates
from core.cli import run_main
from engine.yolo_learner import YoloLearner, ultralytics_args, ultralytics_device
from models import create_model, list_models
from models.registry import UnknownModelError
from models.weights import load_local_weights
from models.yolo import YoloOptions, YoloProbModel, parse_options
from tasks.formats import yolo as yolo_format
from tasks.formats.handbones import CLASSES, list_samples, rasterize, read_polygons, split_folds, write_polygons
from tasks.formats.images import write_png
from tasks.formats.tensors import PickledFileError
from tasks.segmentation.scoring import validate as check_segmentation_csv
from tasks.segmentation.task import SegmentationTask
from tools import convert


def _hand_dataset(root: Path, n_patients: int, size: int) -> Path:
    """A boostcamp-layout folder of phantom hands (two per patient) at ``size`` px."""
    from phantom import render_hand

    for p in range(n_patients):
        for k, side in enumerate("LR"):
            hand = render_hand(10 * p + k, size=size, side=side)
            stem = f"ID{p + 1:03d}/image{1660000000000 + 10 * p + k}_{side}"
            write_png(root / "DCM" / f"{stem}.png", hand.image)
            write_polygons(root / "outputs_json" / f"{stem}.json", hand.polygons)
    return root


def test_label_round_trip_keeps_masks(tmp_path):
    """polygon JSON → ultralytics label file → polygons → mask matches the original mask (IoU > 0.98 at 256 px)."""
    root = _hand_dataset(tmp_path / "hb", n_patients=2, size=256)
    out = tmp_path / "yolo"
    yolo_format.convert_yolo(root, out, fold=0, n_folds=2)
    manifest = yolo_format.read_manifest(out)
    samples = {str(s.image_path.relative_to(root)): s for s in list_samples(root)}
    pairs = [(samples[rel], split) for split in ("train", "val") for rel in manifest[split]]
    assert sorted(str(s.image_path.relative_to(root)) for s, _ in pairs) == sorted(samples)
    for sample, split in pairs:
        label = (out / "labels" / split / yolo_format.converted_name(sample, root)).with_suffix(".txt")
        original = rasterize(read_polygons(sample.label_path, 256, 256), 256, 256)
        back = rasterize(yolo_format.read_yolo_labels(label, 256, 256), 256, 256)
        n_polygons = sum(len(v) for v in read_polygons(sample.label_path).values())
        assert len(label.read_text().splitlines()) == n_polygons  # one instance per polygon, overlaps kept
        for c, name in enumerate(CLASSES):
            union = np.logical_or(original[c], back[c]).sum()
            if union:
                iou = np.logical_and(original[c], back[c]).sum() / union
                assert iou > 0.98, f"{label}: {name} IoU {iou:.4f}"


def test_conversion_uses_the_smp_fold_and_is_cached(phantom, tmp_path, capsys):
    root = phantom / "handbones" / "train"
    out = tmp_path / "conv"
    assert convert.main(["yolo", "--root", str(root), "--out", str(out), "--fold", "1", "--n-folds", "5"]) == 0
    assert "dataset.yaml" in capsys.readouterr().out
    samples = list_samples(root)
    train_idx, val_idx = split_folds(samples, 5, 1)
    manifest = yolo_format.read_manifest(out)
    assert manifest["val"] == [str(samples[i].image_path.relative_to(root)) for i in val_idx]
    assert manifest["train"] == [str(samples[i].image_path.relative_to(root)) for i in train_idx]
    assert len(list((out / "labels" / "val").glob("*.txt"))) == len(val_idx)
    linked = sorted((out / "images" / "val").iterdir())
    assert [p.resolve() for p in linked] == sorted(samples[i].image_path.resolve() for i in val_idx)
    dataset = yaml.safe_load((out / "dataset.yaml").read_text())
    assert dataset["nc"] == 29 and [dataset["names"][i] for i in range(29)] == list(CLASSES)
    assert Path(dataset["path"]) == out.resolve()

    stamp = (out / "manifest.json").stat().st_mtime_ns
    assert yolo_format.convert_yolo(root, out, fold=1, n_folds=5) == out / "dataset.yaml"
    assert (out / "manifest.json").stat().st_mtime_ns == stamp  # unchanged inputs: not converted again
    yolo_format.convert_yolo(root, out, fold=2, n_folds=5)
    assert yolo_format.read_manifest(out)["fold"] == 2  # another fold replaces the earlier conversion
    copied = tmp_path / "copied"
    yolo_format.convert_yolo(root, copied, fold=1, n_folds=5, copy=True)
    assert not any(p.is_symlink() for p in (copied / "images" / "val").iterdir())

    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("keep me")
    assert run_main(convert.main, ["yolo", "--root", str(root), "--out", str(stranger)]) == 2
    assert "not a YOLO conversion" in capsys.readouterr().err
    assert (stranger / "notes.txt").is_file()


def _random_net():
    from ultralytics.nn.tasks import SegmentationModel

    torch.manual_seed(0)
    return SegmentationModel("yolo11n-seg.yaml", nc=29, ch=3, verbose=False).eval()


@pytest.mark.slow
def test_probability_maps_shape_and_range():
    model = YoloProbModel(_random_net(), conf=0.0, iou=0.7, max_det=50).eval()
    with torch.no_grad():
        for shape in ((2, 1, 64, 96), (1, 1, 70, 50)):  # the second is not a multiple of the stride: padded
            logits = model(torch.rand(shape))
            assert logits.shape == (shape[0], 29, *shape[2:])
            probs = torch.sigmoid(logits)
            assert torch.isfinite(logits).all()
            assert probs.min() >= 1e-4 - 1e-7 and probs.max() <= 1 - 1e-4 + 1e-7
            assert probs.max() > 1e-4  # conf=0 keeps detections: some pixels carry probability


def test_probability_is_max_of_confidence_weighted_masks():
    """Two detections of one class: each pixel gets max(conf x mask); outside both boxes and other classes: 0."""
    protos = torch.zeros(32, 16, 16)
    protos[0] = 1.0
    coeffs = torch.zeros(32)
    coeffs[0] = 20.0  # mask logit 20 everywhere: sigmoid ~ 1 inside the box
    det = torch.stack([
        torch.cat([torch.tensor([0.0, 0.0, 32.0, 32.0, 0.9, 3.0]), coeffs]),
        torch.cat([torch.tensor([16.0, 16.0, 64.0, 64.0, 0.5, 3.0]), coeffs]),
        torch.cat([torch.tensor([40.0, 0.0, 64.0, 24.0, 0.7, 28.0]), coeffs]),
    ])
    out = torch.zeros(29, 64, 64)
    YoloProbModel._paint(out, det, protos)
    assert out[3, 8, 8] == pytest.approx(0.9, abs=1e-4)
    assert out[3, 20, 20] == pytest.approx(0.9, abs=1e-4)  # both boxes: the larger weighted mask
    assert out[3, 50, 50] == pytest.approx(0.5, abs=1e-4)
    assert out[3, 60, 4] == 0.0  # outside both boxes
    assert out[28, 10, 50] == pytest.approx(0.7, abs=1e-4)
    assert out[[c for c in range(29) if c not in (3, 28)]].abs().max() == 0.0


def _config(**sections) -> Config:
    raw = {"task": "segmentation", "name": "yolo_test",
           "data": {"root": "data/x/train", "image_size": 64},
           "model": {"name": "yolo:yolo11n-seg"}}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return build_config(raw)


def test_config_maps_onto_ultralytics_arguments(tmp_path):
    cfg = _config(train={"epochs": 7, "batch_size": 4, "accumulate": 3, "lr": 2e-3, "seed": 5, "amp": "auto",
                         "device": "cpu", "min_lr_ratio": 0.05},
                  augment={"hflip": 0.5, "rotate": 15.0, "shift": 0.1, "brightness_contrast": 0.3},
                  logging={"out_dir": str(tmp_path)},
                  model={"options": {"conf": 0.2, "train_args": {"mosaic": 0.5, "box": 5.0}}})
    options = parse_options(cfg.model.options)
    args = ultralytics_args(cfg, tmp_path / "dataset.yaml", "yolo11n-seg.yaml", options, None)
    assert (args["epochs"], args["imgsz"], args["batch"], args["nbs"], args["lr0"], args["lrf"], args["seed"]) == \
        (7, 64, 4, 12, 2e-3, 0.05, 5)
    assert (args["fliplr"], args["degrees"], args["translate"], args["hsv_v"]) == (0.5, 15.0, 0.1, 0.3)
    assert args["amp"] is False and args["device"] == "cpu" and args["overlap_mask"] is False
    assert args["project"] == str(cfg.run_dir.resolve()) and args["name"] == "ultralytics"
    assert args["mosaic"] == 0.5 and args["box"] == 5.0 and args["plots"] is False and args["pretrained"] is False
    bf16 = _config(train={"amp": "bf16"})
    assert ultralytics_args(bf16, tmp_path, "m.yaml", YoloOptions(), None)["amp"] == "bf16"
    assert ultralytics_device("cuda:1") == "1" and ultralytics_device("0,1,2,3") == "0,1,2,3"


def test_batch_progress_shows_steps_loss_and_images_per_second(capsys):
    """Driven by ultralytics' callbacks with a trainer of 10 images in batches of 4 and a batch every 0.5 s: three
    steps, the running loss, images/s over the 10 images (the last batch holds 2), a new bar when an epoch restarts."""
    from types import SimpleNamespace

    from engine.yolo_learner import BatchProgress

    loader = type("Loader", (), {"__len__": lambda self: 3, "dataset": list(range(10))})()
    trainer = SimpleNamespace(train_loader=loader, epoch=0, epochs=2, batch_size=4, world_size=0, tloss=None)
    ticks = iter([0.0, 100.0, 100.5, 101.0, 101.5])
    progress = BatchProgress(clock=lambda: next(ticks))
    callbacks = progress.callbacks()
    assert sorted(callbacks) == ["on_train_batch_end", "on_train_epoch_end", "on_train_epoch_start"]
    callbacks["on_train_epoch_start"](trainer)
    first = progress.bar
    callbacks["on_train_epoch_start"](trainer)  # restarted (out of memory): the first bar closed, a new one
    assert first.disable and progress.bar is not first  # tqdm disables a bar it closed
    seen = []
    for loss in ({"box": 0.5, "seg": 0.25}, {"box": 0.25, "seg": 0.25}, {"box": 0.25, "seg": 0.125}):
        trainer.tloss = loss
        callbacks["on_train_batch_end"](trainer)
        seen.append((progress.bar.n, progress.bar.postfix))
    bar = progress.bar
    callbacks["on_train_epoch_end"](trainer)
    assert progress.bar is None and bar.desc == "epoch 1/2" and bar.total == 3
    assert seen == [(1, "img_s=8.0, loss=0.7500"), (2, "img_s=8.0, loss=0.5000"), (3, "img_s=6.7, loss=0.3750")]
    err = capsys.readouterr().err
    assert "epoch 1/2" in err and "img_s=6.7, loss=0.3750" in err


def test_bad_names_and_options_are_clear_errors(tmp_path):
    names = list_models("segmentation")["yolo"]
    assert {"yolo:yolov8n-seg", "yolo:yolo11n-seg", "yolo:yolo26n-seg"} <= set(names)
    with pytest.raises(UnknownModelError, match="yolo11n-seg"):
        create_model("yolo:yolo11n-sg", task="segmentation", num_outputs=29)
    with pytest.raises(ValueError, match="unknown option 'cnf' for a yolo model; did you mean 'conf'"):
        parse_options({"cnf": 0.1})
    with pytest.raises(ValueError, match="train.epochs"):
        parse_options({"train_args": {"epochs": 3}})
    learner = YoloLearner(create_model("yolo:yolo11n-seg", task="segmentation", num_outputs=29))
    with pytest.raises(ValueError, match="multiple of 32"):
        learner.fit(_config(data={"image_size": 100}, logging={"out_dir": str(tmp_path)}))
    with pytest.raises(ValueError, match="data.fold: 'all' is not available for YOLO runs"):
        learner.fit(_config(data={"fold": "all"}, logging={"out_dir": str(tmp_path)}))
    with pytest.raises(ValueError, match="data.patch_size: YOLO runs train on whole images"):
        learner.fit(_config(data={"patch_size": 64}, inference={"sliding_window": True},
                            logging={"out_dir": str(tmp_path)}))
    assert not any(tmp_path.iterdir())  # refused before the run folder is made
    missing = YoloLearner(create_model("yolo:yolo11n-seg", task="segmentation", num_outputs=29,
                                       weights=str(tmp_path / "w.pt")))
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        missing.fit(_config(logging={"out_dir": str(tmp_path)}))


def test_crafted_files_are_refused_and_never_run(tmp_path, capsys, planted):
    """A pickle as the run's best.pt, as ultralytics' file behind external_weights (inside or outside the run
    folder), a model YAML naming a loader or Python, and model.weights without trust_pickle: all refused,
    and the code planted in them never runs."""
    from ultralytics.nn.tasks import yaml_model_load

    marker = planted.marker
    evil = planted.write(tmp_path / "evil.pt")
    cfg = _config(logging={"out_dir": str(tmp_path / "runs")})
    run = cfg.run_dir
    (run / "ultralytics" / "weights").mkdir(parents=True)
    save_config(cfg, run / "config.yaml")
    plain = {"model_name": cfg.model.name, "task": "segmentation", "num_outputs": 29, "config": cfg.to_dict()}
    cpu = torch.device("cpu")

    shutil.copy(evil, run / "best.pt")
    with pytest.raises(PickledFileError, match="pickled Python objects"):
        load_model(run / "best.pt", cpu)
    assert inference.main(["--ckpt", str(run / "best.pt"), "-o", str(tmp_path / "a.csv")]) == 2
    assert "pickled Python objects" in capsys.readouterr().err

    shutil.copy(evil, run / "ultralytics" / "weights" / "best.pt")
    for where in ("ultralytics/weights/best.pt", str(evil), "../../evil.pt"):
        save_checkpoint(run / "best.pt", {**plain, "external_weights": where})
        with pytest.raises(ValueError, match="external_weights") as err:
            load_model(run / "best.pt", cpu)
        assert str(run / where) in str(err.value)

    good = yaml_model_load("yolo11n-seg.yaml")
    crafted = {"loader layer": {**good, "head": good["head"][:-1] + [[-1, 1, "load_checkpoint", [str(evil)]]]},
               "whole model": {**good, "backbone": [[-1, 1, "SegmentationModel", ["x.yaml"]]] + good["backbone"][1:]},
               "python": {**good, "activation": f"__import__('os').mkdir({str(marker)!r})"}}
    for what, spec in crafted.items():
        save_checkpoint(run / "best.pt", {**plain, "model": {}, "yolo": {"yaml": spec, "names": list(CLASSES)}})
        with pytest.raises(ValueError, match="refused|only nn"):
            load_model(run / "best.pt", cpu)

    learner = YoloLearner(create_model("yolo:yolo11n-seg", task="segmentation", num_outputs=29, weights=str(evil)))
    fresh = _config(logging={"out_dir": str(tmp_path / "fresh")})
    with pytest.raises(PickledFileError, match="model.options.trust_pickle: true") as err:
        learner.fit(fresh)
    assert "\n" not in str(err.value) and str(evil) in str(err.value)
    assert not fresh.run_dir.exists()  # refused before the run folder is made
    fresh_config = tmp_path / "fresh.yaml"
    fresh_config.write_text(yaml.safe_dump(fresh.to_dict()))
    assert train.main(["-c", str(fresh_config), f"--model.weights={evil}"]) == 2  # through train.py too:
    assert "model.options.trust_pickle: true" in capsys.readouterr().err
    assert not fresh.run_dir.exists()  # no folder holding a config.yaml of the refused run
    trusting = create_model("yolo:yolo11n-seg", task="segmentation", num_outputs=29, weights=str(evil),
                            trust_pickle=True)
    assert trusting.start_weights() == (evil, True)  # handed to ultralytics as the user's own file
    assert not marker.exists()


def _smp_run(run_dir: Path, yolo_cfg) -> Path:
    """An (untrained) smp run folder on the same data, at another input size, to mix into an ensemble."""
    raw = yolo_cfg.to_dict()
    raw["model"] = {"name": "smp:unet/resnet18"}
    raw["data"]["image_size"] = 96
    cfg = build_config(raw)
    model = create_model(cfg.model.name, task="segmentation", num_outputs=29, in_channels=1)
    save_config(cfg, run_dir / "config.yaml")
    save_checkpoint(run_dir / "best.pt", {"model": model.state_dict(), "model_name": cfg.model.name,
                                         "task": "segmentation", "num_outputs": 29, "config": cfg.to_dict()})
    return run_dir


@pytest.mark.slow
def test_train_offline_then_predict_and_ensemble(phantom, tmp_path, monkeypatch, no_network, capsys,
                                                tensorboard_scalars):
    """train.py on CPU with no network and an empty HOME; Dice by our metric; --tta submission; YOLO+smp ensemble;
    the per-batch bar and the TensorBoard log; the validation cache that ensemble selection takes it from."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME"):
        monkeypatch.delenv(var, raising=False)
    hb = phantom / "handbones"
    runs = tmp_path / "runs"
    assert train.main(["-c", "configs/segmentation/yolo11n_seg.yaml", f"--data.root={hb / 'train'}",
                       f"--data.test_root={hb / 'test'}", "--data.image_size=64", "--data.num_workers=0",
                       f"--data.cache_dir={tmp_path / 'cache'}", "--train.epochs=1", "--train.batch_size=6",
                       "--train.device=cpu", f"--logging.out_dir={runs}",
                       "--logging.progress=true", "--logging.tensorboard=true"]) == 0
    run = runs / "segmentation" / "yolo11n_seg-f0"
    out, err = capsys.readouterr()
    said = [line.split(":")[0] for line in out.splitlines()]
    assert said.index("train.py") < said.index(str(run)) < said.index("converting fold 0 to ultralytics' layout under "
                                                                       f"{tmp_path / 'cache' / 'yolo'} (once per fold; cached)")
    assert "ultralytics" in said and any(line.startswith("epoch 1/1  train/loss ") for line in out.splitlines())
    assert "epoch 1/1:" in err and "img_s=" in err  # the per-batch bar (ultralytics' own is off)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    events = tensorboard_scalars(run / "tensorboard")
    assert set(events) == {"train/loss", "lr", "time_s", "val/loss", "val/score", "val/dice"}
    for key, logged in events.items():
        assert logged == [(r["epoch"], pytest.approx(r[key], rel=1e-6)) for r in rows if key in r], key
    assert {"config.yaml", "summary.json", "metrics.jsonl", "best.pt", "last.pt"} <= {p.name for p in run.iterdir()}
    assert not list(run.rglob("ultralytics/**/*.pt"))  # ultralytics' own pickled checkpoints are never written
    for name in ("best.pt", "last.pt"):  # the network itself as tensors: torch.load(weights_only=True)
        ckpt = load_checkpoint(run / name)
        assert "external_weights" not in ckpt and ckpt["num_outputs"] == 29 and ckpt["epoch"] == 0
        assert ckpt["yolo"]["yaml"]["nc"] == 29 and ckpt["yolo"]["names"] == list(CLASSES)
        assert ckpt["model"] and all(isinstance(v, torch.Tensor) for v in ckpt["model"].values())

    summary = json.loads((run / "summary.json").read_text())
    assert (summary["family"], summary["arch"], summary["metric"]) == ("yolo", "yolo11n-seg", "dice")
    assert summary["best_epoch"] == 0 and summary["params"] > 1_000_000
    assert summary["val"]["score"] == pytest.approx(np.mean(list(summary["val"]["per_item"].values())))

    member = load_model(run / "best.pt", torch.device("cpu"))
    assert summary["flops"] == count_flops(member.model.net, {"images": torch.zeros(1, 3, 64, 64)}) > 10**7  # per image
    task = SegmentationTask(member.cfg)
    again = task.evaluate(member.model, task.datasets()[1], torch.device("cpu"))
    assert again["score"] == pytest.approx(summary["val"]["score"], abs=1e-9)  # our Dice, through load_model
    assert load_checkpoint(run / "best.pt")["metrics"]["score"] == summary["val"]["score"]

    # a run's best.pt is a state dict of tensors: another run may start from it without trust_pickle
    learner = create_model("yolo:yolo11n-seg", task="segmentation", num_outputs=29, weights=str(run / "best.pt"))
    assert learner.start_weights() == (run / "best.pt", False)
    fresh = _random_net()
    load_local_weights(fresh, str(run / "best.pt"), encoder_attr="model")  # as the trainer's get_model does
    stored = load_checkpoint(run / "best.pt")["model"]
    assert all(torch.equal(v, stored[k].float()) for k, v in fresh.state_dict().items() if v.is_floating_point())

    # the validation cache, as the torch runs write it (engine.predictor.save_probs): selection takes the run
    assert inference.main(["--ckpt", str(run / "best.pt"), "--split", "val", "--save-probs",
                           "-o", str(tmp_path / "yolo-val.csv")]) == 0
    val_names = {s.name for s in member.task.samples("val")}
    assert {p.name[:-4] for p in (run / "preds" / "val").glob("*.npz")} == val_names
    for name in val_names:
        with np.load(run / "preds" / "val" / f"{name}.npz") as cached:
            assert set(cached.files) == {"probs", "orig_size", "mode", "tta"}
            assert cached["probs"].dtype == np.uint8 and cached["probs"].shape == (29, 64, 64)
            assert tuple(cached["orig_size"]) == (128, 128) and str(cached["mode"]) == "resize"
            assert str(cached["tta"]) == "identity"
    task_name, candidates, _ = find_candidates(runs / "segmentation")
    assert task_name == "segmentation"
    assert [(c.label, c.runs, c.folds) for c in candidates] == [("yolo11n_seg", [run], [0])]

    sub = tmp_path / "yolo.csv"
    assert inference.main(["--ckpt", str(run / "best.pt"), "--tta", "-o", str(sub)]) == 0
    assert check_segmentation_csv(sub, hb / "test") == len(list_samples(hb / "test", labels=None))

    smp = _smp_run(runs / "segmentation" / "smp_mate-f0", member.cfg)
    ens_yaml = tmp_path / "ens.yaml"
    ens_yaml.write_text(yaml.safe_dump({
        "task": "segmentation", "method": "soft", "name": "yolo_smp", "out_dir": str(runs), "thresholds": 0.5,
        "members": [{"name": "yolo", "run": str(run)}, {"name": "unet", "run": str(smp)}]}))
    ens_csv = tmp_path / "ens.csv"
    assert inference.main(["--ensemble", str(ens_yaml), "--tta", "-o", str(ens_csv)]) == 0
    assert check_segmentation_csv(ens_csv, hb / "test") == len(list_samples(hb / "test", labels=None))

    assert not any(home.iterdir()), f"written into HOME: {sorted(p.name for p in home.iterdir())}"
    # core.offline put a font where ultralytics looks, so check_font() never asks the network
    assert (Path(os.environ["YOLO_CONFIG_DIR"]) / "Ultralytics" / "Arial.ttf").is_file()


@pytest.mark.slow
def test_resume_continues_the_tensors_only_last_pt_and_never_unpickles(phantom, tmp_path, monkeypatch, capsys,
                                                                      planted):
    """An interrupted YOLO run resumes from its run folder's last.pt (tensors and primitives) through
    ``train.py -c <run>/config.yaml --resume``: a pickle planted where ultralytics keeps its own checkpoint (which
    its resume would unpickle) is never loaded, and the run never writes such a file itself."""
    from engine.yolo_learner import _trainer_class

    hb = phantom / "handbones"
    runs = tmp_path / "runs"
    trainer = _trainer_class()
    original = trainer.save_model

    def interrupted(self):  # a kill right after the first epoch's checkpoint
        saved = original(self)
        if self.epoch == 0:
            raise KeyboardInterrupt
        return saved

    monkeypatch.setattr(trainer, "save_model", interrupted)
    assert train.main(["-c", "configs/segmentation/yolo11n_seg.yaml", f"--data.root={hb / 'train'}",
                       f"--data.test_root={hb / 'test'}", "--data.image_size=64", "--data.num_workers=0",
                       f"--data.cache_dir={tmp_path / 'cache'}", "--train.epochs=2", "--train.batch_size=6",
                       "--train.device=cpu", f"--logging.out_dir={runs}", "--logging.progress=false"]) == 130
    run = runs / "segmentation" / "yolo11n_seg-f0"
    last = load_checkpoint(run / "last.pt")
    assert last["epoch"] == 0 and last["train_state"]["epoch"] == 0 and not (run / "summary.json").exists()
    assert sorted(p.name for p in (run / "ultralytics").rglob("*.pt")) == []  # no pickled checkpoint written
    weights = run / "ultralytics" / "weights"
    weights.mkdir(parents=True, exist_ok=True)
    planted.write(weights / "last.pt")
    planted.write(weights / "best.pt")
    monkeypatch.setattr(trainer, "save_model", original)

    assert train.main(["-c", str(run / "config.yaml"), "--resume"]) == 0
    assert not planted.marker.exists()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]  # continued at the second epoch, the first kept
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    assert json.loads((run / "summary.json").read_text())["best_epoch"] in (0, 1)
    assert sorted(p.name for p in weights.iterdir()) == ["best.pt", "last.pt"]  # only the planted ones

    state = load_checkpoint(run / "last.pt")
    del state["train_state"]
    save_checkpoint(run / "last.pt", state)  # a last.pt of an older harness: nothing to resume from
    capsys.readouterr()
    assert train.main(["-c", str(run / "config.yaml"), "--resume"]) == 2
    assert capsys.readouterr().err == (f"error: {run / 'last.pt'}: holds no training state to resume (a YOLO run of "
                                       "an older harness, which resumed from ultralytics' pickled checkpoint); start "
                                       "it afresh with --overwrite\n")
    assert not planted.marker.exists()
