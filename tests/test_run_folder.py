"""A run folder never lies: checks before anything is written, no silent overwrite, resume must match,
folds apart, and inference that trusts the checkpoint's own config over an edited config.yaml."""
import hashlib
import shutil
from pathlib import Path

import pytest
import yaml

import inference
import train as train_cmd
from engine.config import load_config
from engine.run_folder import differing_keys, inference_config

RUN_FILES = ("config.yaml", "metrics.jsonl", "best.pt", "last.pt", "summary.json")


def snapshot(run_dir: Path) -> dict[str, str]:
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(run_dir.iterdir()) if p.is_file()}


def write_config(path: Path, data_root: Path, test_root: Path, out: Path, **sections) -> Path:
    raw = {
        "task": "segmentation",
        "data": {"root": str(data_root), "test_root": str(test_root), "image_size": 64, "n_folds": 3,
                 "cache": False},
        "model": {"name": "smp:fpn/resnet18"},
        "train": {"epochs": 1, "batch_size": 4, "max_steps_per_epoch": 1},
        "logging": {"out_dir": str(out), "progress": False},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def finished(phantom, tmp_path_factory):
    """A finished tiny run trained through train.py (module-scoped: the tests below must not change it)."""
    base = tmp_path_factory.mktemp("runfolder")
    config = write_config(base / "tiny.yaml", phantom / "handbones" / "train", phantom / "handbones" / "test",
                          base / "runs")
    assert train_cmd.main(["-c", str(config)]) == 0
    run_dir = base / "runs" / "segmentation" / "tiny-f0"
    assert all((run_dir / name).is_file() for name in RUN_FILES)
    return config, run_dir


def test_second_fresh_run_is_refused_and_changes_nothing(finished, capsys):
    config, run_dir = finished
    before = snapshot(run_dir)
    assert train_cmd.main(["-c", str(config), "--train.lr=0.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {run_dir}: holds a finished run") and "\n" not in err
    assert "--resume" in err and "--logging.run_name" in err and "--overwrite" in err
    assert snapshot(run_dir) == before


def test_resume_with_another_config_names_the_keys(finished, capsys):
    config, run_dir = finished
    before = snapshot(run_dir)
    assert train_cmd.main(["-c", str(config), "--resume", "--train.lr=0.5", "--data.image_size=96"]) == 2
    err = capsys.readouterr().err
    assert "--resume with a different config" in err and "train.lr" in err and "data.image_size" in err
    assert "Traceback" not in err
    assert snapshot(run_dir) == before


def test_bad_dataset_fails_before_the_folder_is_touched(finished, phantom, tmp_path, capsys):
    """Even with --overwrite, a corrupt image is found before the finished run is replaced."""
    config, run_dir = finished
    data = tmp_path / "train"
    shutil.copytree(phantom / "handbones" / "train", data)
    victim = sorted((data / "DCM").rglob("*.png"))[-1]  # the last image: only a full pass finds it
    victim.write_bytes(victim.read_bytes()[:64])
    before = snapshot(run_dir)
    assert train_cmd.main(["-c", str(config), "--overwrite", f"--data.root={data}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and victim.name in err and "Traceback" not in err
    assert snapshot(run_dir) == before

    fresh = tmp_path / "runs"
    assert train_cmd.main(["-c", str(config), f"--data.root={data}", f"--logging.out_dir={fresh}"]) == 2
    assert not (fresh / "segmentation" / "tiny-f0").exists(), "a failed fresh run leaves no run folder behind"
    lock = fresh / "segmentation" / ".tiny-f0.lock"  # its claim's lock file, beside it, released: empty
    assert list((fresh / "segmentation").iterdir()) == [lock] and lock.read_bytes() == b""


@pytest.mark.slow
def test_overwrite_replaces_and_folds_stay_apart(phantom, tmp_path, capsys):
    config = write_config(tmp_path / "x.yaml", phantom / "handbones" / "train", phantom / "handbones" / "test",
                          tmp_path / "runs", logging={"run_name": "mine"})
    assert train_cmd.main(["-c", str(config)]) == 0
    fold0 = tmp_path / "runs" / "segmentation" / "mine-f0"
    assert fold0.is_dir()
    (fold0 / "stray.txt").write_text("left by the old run")
    before = snapshot(fold0)
    assert train_cmd.main(["-c", str(config), "--data.fold=1"]) == 0
    assert (tmp_path / "runs" / "segmentation" / "mine-f1" / "summary.json").is_file()
    assert snapshot(fold0) == before, "training fold 1 under the same run_name must not touch fold 0"
    assert train_cmd.main(["-c", str(config), "--overwrite"]) == 0
    assert not (fold0 / "stray.txt").exists() and (fold0 / "summary.json").is_file()


def test_resume_of_nothing_and_resume_plus_overwrite(phantom, tmp_path, capsys):
    config = write_config(tmp_path / "y.yaml", phantom / "handbones" / "train", phantom / "handbones" / "test",
                          tmp_path / "runs")
    assert train_cmd.main(["-c", str(config), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert train_cmd.main(["-c", str(config), "--resume", "--overwrite"]) == 2
    assert "give one" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "segmentation" / "y-f0").exists()  # only its released claim's lock file, beside


def test_debug_shows_the_traceback(phantom, tmp_path):
    config = write_config(tmp_path / "z.yaml", phantom / "handbones" / "train", phantom / "handbones" / "test",
                          tmp_path / "runs")
    with pytest.raises(ValueError, match="nothing to resume"):
        train_cmd.main(["-c", str(config), "--resume", "--debug"])


@pytest.mark.slow
def test_inference_uses_the_checkpoint_config(finished, tmp_path, capsys):
    """An edited config.yaml (another image size and threshold) must not change the prediction."""
    _, run_dir = finished
    reference = tmp_path / "ref.csv"
    assert inference.main(["--ckpt", str(run_dir / "best.pt"), "-o", str(reference)]) == 0
    capsys.readouterr()

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    saved = yaml.safe_load((copy / "config.yaml").read_text())
    saved["data"]["image_size"] = 96
    saved["inference"]["threshold"] = 0.9
    (copy / "config.yaml").write_text(yaml.safe_dump(saved))
    edited = tmp_path / "edited.csv"
    assert inference.main(["--ckpt", str(copy / "best.pt"), "-o", str(edited)]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "data.image_size" in err and "inference.threshold" in err
    assert edited.read_text() == reference.read_text()


def test_inference_config_takes_locations_from_the_file(finished, tmp_path):
    config, run_dir = finished
    ckpt_config = load_config(run_dir / "config.yaml").to_dict()
    moved = yaml.safe_load((run_dir / "config.yaml").read_text())
    moved["data"]["test_root"] = str(tmp_path / "elsewhere")
    moved["data"]["image_size"] = 128
    (tmp_path / "moved.yaml").write_text(yaml.safe_dump(moved))
    cfg, notes = inference_config(ckpt_config, run_dir / "best.pt", tmp_path / "moved.yaml",
                                  {"inference": {"threshold": 0.3}})
    assert cfg.data.test_root == str(tmp_path / "elsewhere")  # a location: from the file
    assert cfg.data.image_size == 64  # what the weights were trained with: from the checkpoint
    assert cfg.inference.threshold == 0.3  # an explicit override wins
    assert len(notes) == 1 and "data.image_size" in notes[0] and "test_root" not in notes[0]


def test_differing_keys():
    a = {"train": {"lr": 1.0, "epochs": 2}, "data": {"root": "x"}}
    b = {"train": {"lr": 2.0, "epochs": 2}, "data": {"root": "x", "fold": 1}}
    assert differing_keys(a, b) == ["data.fold", "train.lr"]
    assert differing_keys(a, b, ignore=["train.lr"]) == ["data.fold"]


class PlantsMarker:
    """Unpickling this runs code: it would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_crafted_pickle_checkpoint_is_refused_without_running(tmp_path, capsys):
    import torch

    marker = tmp_path / "pwned"
    crafted = tmp_path / "run" / "best.pt"
    crafted.parent.mkdir()
    torch.save({"config": {"task": "segmentation"}, "payload": PlantsMarker(marker)}, crafted)
    assert inference.main(["--ckpt", str(crafted), "-o", str(tmp_path / "out.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {crafted}: holds pickled Python objects") and "Traceback" not in err
    assert not marker.exists() and not (tmp_path / "out.csv").exists()

    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    assert inference.main(["--ckpt", str(text)]) == 2
    assert f"error: {text}: not a readable checkpoint" in capsys.readouterr().err
