"""What train.py says before its first epoch (engine/status.py): a line at once, before torch loads, then what it
checks (every sample, with a bar), builds and trains; nothing of it with logging.progress false."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from engine.status import progress_asked

ROOT = Path(__file__).resolve().parents[1]


def test_progress_is_read_from_the_command_line_then_the_yaml(tmp_path):
    quiet = tmp_path / "quiet.yaml"
    quiet.write_text(yaml.safe_dump({"task": "segmentation", "logging": {"progress": False}}))
    loud = tmp_path / "loud.yaml"
    loud.write_text(yaml.safe_dump({"task": "segmentation", "logging": {"out_dir": "runs"}}))
    assert progress_asked(str(loud), []) is True
    assert progress_asked(str(quiet), []) is False
    assert progress_asked(str(quiet), ["--logging.progress=true"]) is True
    assert progress_asked(str(loud), ["--train.lr=0.1", "--logging.progress=false"]) is False
    assert progress_asked(str(loud), ["--logging.progress", "false", "--train.lr=0.1"]) is False
    assert progress_asked(str(loud), ["--logging.progress=false", "--logging.progress=true"]) is True  # last wins
    assert progress_asked(None, ["--logging.progress=off"]) is False  # as the config's boolean check reads it
    assert progress_asked(None, ["--logging.progress=maybe"]) is True  # no boolean: the config check reports it
    broken = tmp_path / "broken.yaml"
    broken.write_text("task: [unclosed")
    assert progress_asked(str(broken), []) is True and progress_asked(str(tmp_path / "missing.yaml"), []) is True


def test_the_first_line_comes_before_torch_is_imported(tmp_path):
    """-X importtime reports every import on stderr as it happens; merged with stdout (unbuffered), the starting
    line stands before the import of torch. A missing config then ends the command with its one error line."""
    missing = tmp_path / "missing.yaml"
    proc = subprocess.run([sys.executable, "-u", "-X", "importtime", str(ROOT / "train.py"), "-c", str(missing)],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = proc.stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("train.py: "))
    torch_import = next(i for i, line in enumerate(lines) if line.startswith("import time:") and line.split("|")[-1].strip() == "torch")
    assert first < torch_import
    assert lines[first].startswith(f"train.py: {missing}: loading the config and torch/smp/timm")
    assert proc.returncode == 2 and lines[-1].startswith(f"error: {missing}")


def _train_args(phantom: Path, tmp_path: Path, progress: bool) -> list[str]:
    hb = phantom / "handbones"
    return ["-c", str(ROOT / "configs/segmentation/demo_unet.yaml"), f"--data.root={hb / 'train'}",
            f"--data.test_root={hb / 'test'}", "--data.image_size=64", f"--data.cache_dir={tmp_path / 'cache'}",
            "--data.num_workers=0", "--train.epochs=1", "--train.max_steps_per_epoch=1", "--train.device=cpu",
            f"--logging.out_dir={tmp_path / 'runs'}", f"--logging.progress={str(progress).lower()}"]


@pytest.mark.parametrize("progress", [True, False])
def test_train_says_what_it_checks_builds_and_trains_in_order(phantom, tmp_path, capsys, progress):
    import train

    assert train.main(_train_args(phantom, tmp_path, progress)) == 0
    out, err = capsys.readouterr()
    run = tmp_path / "runs" / "segmentation" / "demo_unet-f0"
    steps = ["train.py: ", f"{run}: smp:unet/resnet18 for segmentation, fold 0 of 5, 64 px",
             "checking 18 training + 6 validation samples (each image decoded, its labels read; decoded images not yet "
             f"cached are cached at the training size in {tmp_path / 'cache'})",
             "building smp:unet/resnet18", "training epochs 1-1 of 1 steps (batch 4 x 1 process(es)) on cpu",
             "epoch 1/1  train/loss"]
    lines = out.splitlines()
    if progress:
        found = [next(i for i, line in enumerate(lines) if line.startswith(step)) for step in steps]
        assert found == sorted(found) and found[0] == 0
        assert "checking samples:   0%|          | 0/24 " in err  # a bar over every sample
    else:
        assert not [line for line in lines if line.startswith(tuple(steps[:-1]))]  # the epoch lines stay
        assert "checking samples" not in err and "epoch 1/1" not in err
    assert lines[-1].startswith(f"{run}: best val/dice = ")
