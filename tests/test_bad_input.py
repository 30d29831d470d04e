"""Bad input ends as one line naming the key or file: config values, reader checks, every command's exit."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from engine.config import ConfigError, load_config
from engine.trainer import Trainer, check_image_size
from ensembles.config import load_ensemble_config
from models.weights import read_state_dict
from tasks.formats import FormatError, rsna
from tasks.formats.handbones import read_polygons
from tasks.formats.images import write_png
from tasks.keypoint_sets import get_set
from tasks.keypoint_labels import list_keypoint_samples

ROOT = Path(__file__).resolve().parents[1]
BASE = {"task": "segmentation", "data": {"root": "x/train"}, "model": {"name": "smp:unet/resnet18"}}


def write_config(tmp_path: Path, raw: dict = BASE) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


CONFIG_FAULTS = [
    (["--train.epochs=-1"], "'train.epochs': Input should be greater than or equal to 1 (got -1)"),
    (["--train.batch_size=0"], "'train.batch_size': Input should be greater than or equal to 1 (got 0)"),
    (["--train.lr=0"], "'train.lr': Input should be greater than 0 (got 0)"),
    (["--train.lr=nan"], "'train.lr': Input should be a finite number (got 'nan')"),
    (["--train.accumulate=0"], "'train.accumulate': Input should be greater than or equal to 1 (got 0)"),
    (["--train.val_every=0"], "'train.val_every': Input should be greater than or equal to 1 (got 0)"),
    (["--train.weight_decay=-0.1"], "'train.weight_decay': Input should be greater than or equal to 0 (got -0.1)"),
    (["--train.warmup_epochs=-1"], "'train.warmup_epochs': Input should be greater than or equal to 0 (got -1)"),
    (["--train.min_lr_ratio=1.5"], "'train.min_lr_ratio': Input should be less than or equal to 1 (got 1.5)"),
    (["--train.ema=1"], "'train.ema': Input should be less than 1 (got 1)"),
    (["--train.clip_grad=0"], "'train.clip_grad': Input should be greater than 0 (got 0)"),
    (["--train.early_stop_patience=0"], "'train.early_stop_patience': Input should be greater than or equal to 1 (got 0)"),
    (["--inference.batch_size=0"], "'inference.batch_size': Input should be greater than or equal to 1 (got 0)"),
    (["--inference.threshold=2"], "'inference.threshold': threshold 2 is outside (0, 1) (got 2)"),
    (["--inference.threshold=[0.5, 1.0]"], "'inference.threshold': threshold 1 is outside (0, 1) (got [0.5, 1.0])"),
    (["--inference.threshold={Radus: 0.3}"],
     "inference.threshold: threshold for unknown class 'Radus'; did you mean 'Radius'? (29 classes: finger-1 ... Ulna)"),
    (["--inference.threshold=[0.3, 0.4]"], "inference.threshold: 2 thresholds for 29 classes (give one per class, in "
                                           "class order, a single number, or {class: threshold})"),
    (["--inference.tta.scales=[1.0, 0]"], "'inference.tta.scales.1': Input should be greater than 0 (got 0)"),
    (["--data.image_size=4"], "'data.image_size': Input should be greater than or equal to 8 (got 4)"),
    (["--data.n_folds=1"], "'data.n_folds': Input should be greater than or equal to 2 (got 1)"),
    (["--data.fold=5"], "'data.fold': fold 5 does not exist with data.n_folds=5 (folds are 0..4, or all: every image, no validation) (got 5)"),
    (["--data.fold=-1"], "'data.fold': a fold number (0..data.n_folds-1) or 'all' (every image, no validation) (got -1)"),
    (["--data.num_workers=-1"], "'data.num_workers': Input should be greater than or equal to 0 (got -1)"),
    (["--loss.weights.dice=-1"], "'loss.weights.dice': Input should be greater than or equal to 0 (got -1)"),
    (["--augment.hflip=1.5"], "'augment.hflip': Input should be less than or equal to 1 (got 1.5)"),
    (["--train.epochs=0", "--train.lr=-1"], "'train.epochs': Input should be greater than or equal to 1 (got 0); "
                                            "'train.lr': Input should be greater than 0 (got -1)"),
]


@pytest.mark.parametrize("overrides, message", CONFIG_FAULTS, ids=[" ".join(o) for o, _ in CONFIG_FAULTS])
def test_a_bad_config_value_is_one_line_naming_its_key(tmp_path, overrides, message):
    path = write_config(tmp_path)
    with pytest.raises(ConfigError) as err:
        load_config(path, overrides)
    assert str(err.value) == f"{path}: {message}"


def test_the_edges_of_each_range_are_valid(tmp_path):
    cfg = load_config(write_config(tmp_path), [
        "--train.ema=null", "--train.clip_grad=null", "--train.min_lr_ratio=1", "--train.warmup_epochs=0",
        "--train.weight_decay=0", "--data.image_size=8", "--data.n_folds=2", "--data.fold=1",
        "--inference.threshold={Radius: 0.7, Ulna: 0.3}"])
    assert (cfg.train.ema, cfg.train.clip_grad, cfg.data.fold, cfg.data.image_size) == (None, None, 1, 8)


@pytest.mark.parametrize("model, size, message", [
    ("smp:fpn/resnet18", 100, "data.image_size: 100 is not a multiple of 32 (smp:fpn/resnet18 needs its input "
                              "divisible by 32); use 96 or 128"),
    ("smp:deeplabv3plus/resnet18", 200, "data.image_size: 200 is not a multiple of 16 (smp:deeplabv3plus/resnet18 "
                                        "needs its input divisible by 16); use 192 or 208"),
    ("hint:smp:fpn/resnet18", 40, "data.image_size: 40 is not a multiple of 32 (hint:smp:fpn/resnet18 needs its "
                                  "input divisible by 32); use 32 or 64"),
    ("smp:fpn/resnet18", 20, "data.image_size: 20 is not a multiple of 32 (smp:fpn/resnet18 needs its input "
                             "divisible by 32); use 32"),
    ("smp:unet/resnet18", 100, None),   # U-Net resizes to its skips: any size
    ("shsnet:unet", 100, None),
])
def test_a_training_image_size_fits_the_model(tmp_path, model, size, message):
    task = "keypoints" if model.startswith(("hint:", "shsnet:")) else "segmentation"
    cfg = load_config(write_config(tmp_path, {**BASE, "task": task}), [f"--model.name={model}", f"--data.image_size={size}"])
    if message is None:
        check_image_size(cfg)
        return
    with pytest.raises(ConfigError) as err:
        Trainer(cfg)   # fails first: before the data is listed or the run folder made
    assert str(err.value) == message


def test_missing_pretrained_weights_name_the_key_and_the_path_to_put_them_at(tmp_path):
    # Checked where they are loaded (training builds the model), not at config load: a run's config.yaml,
    # copied to a machine without that file, must still load for inference from the run's best.pt.
    # (read_state_dict is what every builder calls with model.weights; no model is built here, so no torch thread
    # pool exists before the session's phantom fixture forks its workers.)
    path = tmp_path / "r18.pth"
    cfg = load_config(write_config(tmp_path, {**BASE, "model": {"name": "smp:unet/resnet18", "weights": str(path)}}))
    with pytest.raises(FileNotFoundError) as err:
        read_state_dict(cfg.model.weights)
    assert str(err.value) == (f"model.weights: no file at {path}. Pretrained weights are never downloaded; copy the "
                              "state dict there (e.g. on a machine with internet: torch.save(model.state_dict(), "
                              "'r18.pth')).")


def test_task_data_values_are_checked_where_they_are_read(tmp_path):
    kp = {"task": "keypoints", "data": {"root": "x", "decode_blur": -1}, "model": {"name": "smp:unet/resnet18"}}
    with pytest.raises(ConfigError) as err:
        load_config(write_config(tmp_path, kp))
    assert str(err.value).endswith("'data.decode_blur': Input should be greater than or equal to 0 (got -1)")
    age = {"task": "boneage", "data": {"root": "x", "preprocess": {"minmax_percentiles": [99, 1]}},
           "model": {"name": "timm:resnet18"}}
    with pytest.raises(ConfigError) as err:
        load_config(write_config(tmp_path, age))
    assert str(err.value).endswith("'data.preprocess.minmax_percentiles': needs 0 <= low < high <= 100 (got [99, 1])")


@pytest.mark.parametrize("extra, message", [
    ({"thresholds": 1.5}, "'thresholds': threshold 1.5 is outside (0, 1)"),
    ({"thresholds": {"Radus": 0.3}},
     "thresholds: threshold for unknown class 'Radus'; did you mean 'Radius'? (29 classes: finger-1 ... Ulna)"),
    ({"members": [{"run": "runs/a", "threshold": 0}]}, "'members.0.threshold': threshold 0 is outside (0, 1)"),
    ({"workers": -1}, "'workers': Input should be greater than or equal to 0"),
    ({"fit": {"threshold_range": [0.9, 0.1]}}, "'fit.threshold_range': needs 0 < low < high < 1, got [0.9, 0.1]"),
])
def test_ensemble_config_values(tmp_path, extra, message):
    raw = {"task": "segmentation", "method": "soft", "members": [{"run": "runs/a"}, {"run": "runs/b"}], **extra}
    path = tmp_path / "ens.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as err:
        load_ensemble_config(path)
    assert str(err.value) == f"{path}: {message}"


@pytest.mark.parametrize("override, message", [
    ("--train.epochs=-1", "'train.epochs': Input should be greater than or equal to 1 (got -1)"),
    ("--inference.threshold=2", "'inference.threshold': threshold 2 is outside (0, 1) (got 2)"),
])
def test_train_py_ends_a_bad_value_with_one_line_and_exit_2(tmp_path, override, message):
    path = write_config(tmp_path)
    proc = subprocess.run([sys.executable, "train.py", "-c", str(path), override], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {path}: {message}"]
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_an_option_the_model_does_not_take_is_one_line_and_leaves_no_run_folder(tmp_path, phantom):
    raw = {"task": "keypoints", "data": {"root": str(phantom / "joints"), "landmarks": "shs15", "image_size": 64},
           "model": {"name": "smp:unet/resnet18", "options": {"depth": 4}},
           "train": {"epochs": 1}, "logging": {"out_dir": str(tmp_path / "runs"), "progress": False}}
    proc = subprocess.run([sys.executable, "train.py", "-c", str(write_config(tmp_path, raw))], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: model.options: unknown option 'depth' for smp:unet/resnet18 (not a parameter of smp's unet, and "
        "smp's resnet18 encoder takes none); did you mean 'encoder_depth' (valid: activation, aux_params, "
        "decoder_attention_type, decoder_channels, decoder_interpolation, decoder_use_norm, encoder_depth)"]
    assert not (tmp_path / "runs" / "keypoints" / "exp-f0").exists()  # only the empty lock file of its claim, beside


# ------------------------------------------------------------------------------------------------ readers

def test_a_repeated_bone_annotation_names_the_file_and_label(tmp_path):
    poly = [[1, 1], [20, 1], [10, 15]]
    ann = {"id": "a", "type": "poly_seg", "attributes": {}, "points": poly, "label": "finger-3"}
    path = tmp_path / "image.json"
    path.write_text(json.dumps({"annotations": [ann, {**ann, "id": "b", "label": "Radius"}, {**ann, "id": "c"}]}))
    with pytest.raises(FormatError) as err:
        read_polygons(path, 32, 32)
    assert str(err.value) == (f"{path}: annotation 2 (finger-3): repeats annotation 0 (same label, same points); "
                              "a bone is annotated once")
    # two different pieces of one bone (an unfused epiphysis) are two polygons of one class
    path.write_text(json.dumps({"annotations": [ann, {**ann, "id": "b", "points": [[1, 20], [20, 20], [10, 30]]}]}))
    assert len(read_polygons(path, 32, 32)["finger-3"]) == 2


@pytest.mark.parametrize("age, message", [
    ("NaN", "age is NaN"),
    ("inf", "age inf is not a finite number"),
    ("-3", "age -3 months outside [0, 240]"),
    ("", "missing age"),
])
def test_a_training_age_is_a_finite_number_of_months(tmp_path, age, message):
    path = tmp_path / "labels.csv"
    path.write_text(f"id,boneage,male\n1,100,True\n2,{age},False\n")
    with pytest.raises(FormatError) as err:
        rsna.read_labels(path, require_age=True)
    assert str(err.value) == f"{path}: line 3, column 'boneage': {message}"


def _keypoint_folder(tmp_path: Path, lmset_name: str, bad: tuple[int, int, float]) -> tuple[Path, Path]:
    """Two 40x30 (w x h) images with every point at (5, 5) except ``bad`` = (image, landmark, x)."""
    lmset = get_set(lmset_name)
    root = tmp_path / lmset_name
    for name in ("a", "b"):
        write_png(root / "images" / f"{name}.png", np.zeros((30, 40), np.uint8))
    coords = np.full((2, len(lmset), 2), 5.0)
    image, landmark, x = bad
    coords[image, landmark, 0] = x
    label = root / lmset.label_file
    if lmset_name == "shs15":
        header = ["img_id"] + [f"{n}_x" for n in lmset.names] + [f"{n}_y" for n in lmset.names]
        rows = [[f"{n}.png", *c[:, 0], *c[:, 1]] for n, c in zip("ab", coords)]
        label.write_text("\n".join(",".join(map(str, r)) for r in [header, *rows]) + "\n")
    else:
        label.write_text("\n".join(",".join([n, *map(str, c.reshape(-1))]) for n, c in zip("ab", coords)) + "\n")
    return root, label


@pytest.mark.parametrize("lmset_name, bad, message", [
    ("shs15", (1, 2, -4.0), "image b.png: PIP3 at (-4.0, 5.0) lies outside the 40x30 image (1 points off the image)"),
    ("dha37", (0, 1, 45.0), "image a: ULNA_STYLOID at (45.0, 5.0) lies outside the 40x30 image (1 points off the image)"),
])
def test_a_keypoint_off_its_image_names_file_image_and_landmark(tmp_path, lmset_name, bad, message):
    root, label = _keypoint_folder(tmp_path, lmset_name, bad)
    with pytest.raises(FormatError) as err:
        list_keypoint_samples(root, get_set(lmset_name), spacing=None, split_file=None)
    assert str(err.value) == f"{label}: {message}"


# ------------------------------------------------------------------------------------------------ commands

MISSING = "/nonexistent/input"
TOOL_FAULTS = {
    "cycle": ([f"{MISSING}.yaml", "--dry-run"], f"{MISSING}.yaml: cycle plan file not found"),
    "convert": (["yolo", "--root", MISSING, "--out", "{tmp}/yolo"], f"{MISSING}: no DCM/ folder (expected DCM/IDxxx/<image>.png)"),
    "fit_ensemble": ([f"{MISSING}.yaml"], f"{MISSING}.yaml: ensemble config file not found"),
    "interactive_eval": (["--ckpt", f"{MISSING}.pt"], f"{MISSING}.pt: checkpoint not found"),
    "leaderboard": ([MISSING], f"{MISSING}: does not exist"),
    "orientation_eval": ([MISSING], f"{MISSING}/labels.csv: labels file not found (expected img_id,label)"),
    "phantom": (["--out", "{tmp}/phantom", "--n-train", "-2"], "n_train=-2, n_test=40: image counts are >= 0 and not both 0"),
    "preprocess": ([MISSING, "{tmp}/pre"], f"{MISSING}: input folder not found"),
    "pseudo_label": ([f"{MISSING}.yaml", "--out", "{tmp}/pseudo"], f"{MISSING}.yaml: ensemble config file not found"),
    "score": ([f"{MISSING}.csv", "--gt", MISSING], f"{MISSING}.csv: cannot open submission (No such file or directory)"),
    "validate_submission": ([f"{MISSING}.csv", "--images", "{tmp}"], f"{MISSING}.csv: submission not found"),
    "visualize": (["dha", f"{MISSING}.csv", MISSING], f"{MISSING}.csv: CSV file not found"),
    "viewer_screenshot": (["--runs", MISSING], f"{MISSING}: no such runs folder"),
}


# Runs each command's file as ``__main__`` (its real ``sys.exit(run_main(main))``) one after another in ONE
# fresh interpreter, so torch and friends are imported once, not eleven times.
RUN_ALL = """
import contextlib, io, json, runpy, sys
results = {}
for tool, args in json.loads(sys.argv[1]).items():
    out, err = io.StringIO(), io.StringIO()
    sys.argv = [f"tools/{tool}.py", *args]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_path(f"tools/{tool}.py", run_name="__main__")
            code = 0
        except SystemExit as stop:
            code = stop.code
    results[tool] = [code, err.getvalue()]
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def tool_runs(tmp_path_factory) -> dict[str, tuple[int, str]]:
    """``{tool: (exit status, stderr)}`` of every command on its bad input."""
    tmp = str(tmp_path_factory.mktemp("tools"))
    argv = {tool: [a.replace("{tmp}", tmp) for a in args] for tool, (args, _) in TOOL_FAULTS.items()}
    proc = subprocess.run([sys.executable, "-c", RUN_ALL, json.dumps(argv)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return {tool: (code, err) for tool, (code, err) in json.loads(proc.stdout.splitlines()[-1]).items()}


@pytest.mark.parametrize("tool", sorted(TOOL_FAULTS))
def test_every_command_ends_a_missing_input_with_one_line_and_exit_2(tool_runs, tool):
    code, stderr = tool_runs[tool]
    assert code == 2, stderr
    assert stderr.strip().splitlines() == [f"error: {TOOL_FAULTS[tool][1]}"]


def test_debug_shows_the_traceback_instead(tmp_path):
    proc = subprocess.run([sys.executable, "tools/leaderboard.py", MISSING, "--debug"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "FileNotFoundError" in proc.stderr


OPTION_FAULTS = [
    ("segmentation", "smp:unet/resnet18", {"decoder_atention_type": "scse"},
     "model.options: unknown option 'decoder_atention_type' for smp:unet/resnet18 (not a parameter of smp's unet, "
     "and smp's resnet18 encoder takes none); did you mean 'decoder_attention_type'"),
    ("segmentation", "smp:unet/tu-resnet18", {"decoder_atention_type": "scse"},
     "model.options: unknown option 'decoder_atention_type' for smp:unet/tu-resnet18 (neither smp's unet nor timm's "
     "resnet18 takes it); did you mean 'decoder_attention_type'"),
    ("segmentation", "smp:fpn/resnet18", {"classes": 3}, "model.options: 'classes' is set by the harness"),
    ("segmentation", "custom:unet3plus/resnet18", {"cat_chanels": 16},
     "model.options: unknown option 'cat_chanels' for custom:unet3plus/resnet18; did you mean 'cat_channels' "
     "(valid: cat_channels)"),
    ("keypoints", "shsnet:unet", {"base_channel": 16},
     "model.options: unknown option 'base_channel' for shsnet:unet; did you mean 'base_channels' "
     "(valid: base_channels, depth, out_stride)"),
    ("keypoints", "hint:shsnet:unet", {"leaky_relu": 0.01, "dept": 3},
     "model.options: unknown option 'dept' for shsnet:unet; did you mean 'depth'"),
    ("boneage", "timm:resnet18", {"sex_inptu": True},
     "model.options: unknown option 'sex_inptu' for timm:resnet18; did you mean 'sex_input'"),
    ("segmentation", "yolo:yolo11n-seg", {"max_dets": 5},
     "model.options: unknown option 'max_dets' for a yolo model; did you mean 'max_det'"),
    ("segmentation", "yolo:yolo11n-seg", {"train_args": {"mosaik": 0.5}},
     "model.options: unknown option 'mosaik' for ultralytics' trainer (model.options.train_args); did you mean "
     "'mosaic'"),
]


@pytest.mark.parametrize("task, model, options, message", OPTION_FAULTS, ids=[f"{m} {o}" for _, m, o, _ in OPTION_FAULTS])
def test_every_model_family_refuses_an_unknown_option_before_the_run_folder(tmp_path, capsys, task, model, options,
                                                                           message):
    """smp 0.6 takes **kwargs and its own encoders drop them: a misspelt option would train without it while the
    config records it. Refused by name, with the close ones, before any run folder exists."""
    import train

    raw = {"task": task, "data": {"root": str(tmp_path / "data"), "image_size": 64},
           "model": {"name": model, "options": options}, "logging": {"out_dir": str(tmp_path / "runs")}}
    assert train.main(["-c", str(write_config(tmp_path, raw))]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert not (tmp_path / "runs" / task / "exp-f0").exists()
