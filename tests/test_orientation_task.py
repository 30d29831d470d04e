"""Orientation as a task like the others, through the task table alone: train.py, --folds all, inference.py
with TTA, score.py, ensembles, the leaderboard, and preprocessing's learned side fallback."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

import inference
import train
from phantom.orientation import write_orientation
from tasks.orientation.heuristic import DIHEDRAL, DIHEDRAL_LABELS, dihedral_view
from tasks.orientation.task import view_labels
from tasks.tta import View


@pytest.fixture(scope="module")
def films(tmp_path_factory):
    root = tmp_path_factory.mktemp("orient")
    write_orientation(root / "train", 10, size=48, seed=0, prefix="train_")
    write_orientation(root / "test", 4, size=48, seed=1, prefix="test_")
    return root


@pytest.fixture(scope="module")
def run(films, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    args = ["-c", "configs/orientation/phantom_resnet10t.yaml", f"--data.root={films / 'train'}",
            f"--data.test_root={films / 'test'}", f"--logging.out_dir={out}", "--data.image_size=40",
            "--data.n_folds=3", "--train.epochs=30", "--train.batch_size=16",
            "--logging.progress=false", "--data.cache=false"]
    assert train.main(args) == 0
    return out / "orientation" / "phantom_resnet10t-f0"


@pytest.mark.parametrize("k,mirror", DIHEDRAL)
def test_a_view_and_its_relabelling_follow_the_dihedral_label_algebra(k, mirror):
    image = np.random.default_rng(0).integers(0, 256, (6, 6), dtype=np.uint8)
    view = View(hflip=mirror, quarters=k)
    seen = view.apply(torch.from_numpy(image)[None, None].float())[0, 0].numpy()
    assert np.array_equal(seen, dihedral_view(image, k, mirror))       # the same transform as the label table's
    assert view_labels(view).tolist() == DIHEDRAL_LABELS[DIHEDRAL.index((k, mirror))].tolist()


def test_a_vertical_flip_is_a_half_turn_and_a_mirror():
    assert view_labels(View(vflip=True)).tolist() == view_labels(View(hflip=True, quarters=2)).tolist()


def test_trained_run_beats_chance_on_unseen_films_and_goes_through_every_command(run, films, tmp_path, capsys):
    from tools import fuse, leaderboard, score

    out = tmp_path / "orient.csv"
    assert inference.main(["--ckpt", str(run / "best.pt"), "--tta", "--save-probs", "-o", str(out)]) == 0
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 12 and set(rows[0]) == {"img_id", "label"}
    capsys.readouterr()
    assert score.main([str(out), "--gt", str(films / "test"), "--run", str(run)]) == 0
    printed = capsys.readouterr().out
    result = {line.split()[0]: float(line.split()[1]) for line in printed.splitlines()
              if line.strip().startswith(("accuracy", "rotation_acc", "side_acc"))}
    assert result["rotation_acc"] >= 0.6     # chance: 1/4, on films the run never saw, in random turns/mirrors
    assert result["accuracy"] >= 0.25        # chance: 1/12
    # an ensemble of the run with itself from the cache equals the run
    ens = tmp_path / "ens.yaml"
    ens.write_text(f"task: orientation\nmethod: mean\nout_dir: {tmp_path / 'e'}\n"
                   f"members: [{{name: a, run: {run}}}, {{name: b, run: {run}}}]\n")
    assert inference.main(["--ensemble", str(ens), "--from-cache", "-o", str(tmp_path / "e.csv")]) == 0
    assert (tmp_path / "e.csv").read_text() == out.read_text()
    assert fuse.main(["mean", str(out), str(tmp_path / "e.csv"), "-o", str(tmp_path / "f.csv")]) == 0
    assert (tmp_path / "f.csv").read_text() == out.read_text()
    assert leaderboard.main([str(run.parent.parent), "--task", "orientation"]) == 0
    assert "classifier:resnet10t" in capsys.readouterr().out


def test_the_run_is_preprocessing_s_learned_side_fallback(run, tmp_path):
    from engine.predictor import load_classifier
    from tasks.formats.images import write_png
    from tasks.orientation.heuristic import detect_orientation
    from tests.test_orientation_side import _hand_without_thumb
    from tools.preprocess import main as preprocess_main

    folder = tmp_path / "in"
    write_png(folder / "thumbless.png", _hand_without_thumb())
    assert preprocess_main([str(folder), str(tmp_path / "out"), "--orientation", "rotate_mirror",
                            "--orientation-model", str(run / "best.pt")]) == 0
    row = next(csv.DictReader(open(tmp_path / "out" / "preprocess.csv")))
    expected = detect_orientation(_hand_without_thumb(), classifier=load_classifier(run / "best.pt"))
    assert row["side"] == expected.side and expected.side_source in ("learned", "none")
    from core.cli import run_main

    assert run_main(preprocess_main, [str(folder), str(tmp_path / "out2"), "--orientation-model",
                                      str(folder / "thumbless.png")]) == 2
    assert not (tmp_path / "out2").exists()


def test_a_mirror_in_the_augmentation_is_refused(films, tmp_path):
    from core.cli import run_main

    assert run_main(train.main, ["-c", "configs/orientation/phantom_resnet10t.yaml", f"--data.root={films / 'train'}",
                                 f"--logging.out_dir={tmp_path}", "--augment.hflip=0.5"]) == 2
    assert all(p.name.endswith(".lock") for p in (tmp_path / "orientation").iterdir())  # no run folder, only its claim
