"""The competition cycle (tools/cycle.py, cycle/): plan checks, the choice of what is submitted, claiming across
worker processes with a killed worker's step taken over, and whole tiny cycles on the phantom that resume
after interruptions to the same submission."""
from __future__ import annotations

import json
import os
import runpy
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from core.cli import run_main
from cycle.steps import chosen_members

ROOT = Path(__file__).resolve().parents[1]
TOOL = runpy.run_path(str(ROOT / "tools" / "cycle.py"), run_name="cycle_tool")


def cycle(argv: list[str]) -> int:
    """``tools/cycle.py`` in this process: exit status, faults as one ``error:`` line on stderr."""
    return run_main(TOOL["_main"], [str(a) for a in argv])


def write_plan(path: Path, **plan) -> Path:
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path


def seg_plan(phantom: Path, tmp_path: Path, name: str = "tiny", **extra) -> dict:
    return {
        "name": name, "task": "segmentation", "out_dir": str(tmp_path / "runs"),
        "data": {"root": str(phantom / "handbones" / "train"), "test_root": str(phantom / "handbones" / "test"),
                 "image_size": 64, "n_folds": 3, "cache_dir": str(tmp_path / "cache")},
        "set": {"train.epochs": 2, "train.max_steps_per_epoch": 2, "train.batch_size": 4, "logging.progress": False},
        "models": ["configs/segmentation/demo_fpn.yaml",
                   {"config": "configs/segmentation/demo_unet.yaml", "name": "unet"}],
        "folds": [0], "tta": True, "select": {"folds": 3}, "fit": {"thresholds": True, "folds": 3},
        "submission": str(tmp_path / "submissions" / "{name}.csv"),
        "test_gt": str(phantom / "handbones" / "test_gt"),
        **extra,
    }


# ------------------------------------------------------------------------------------------ plan faults


@pytest.mark.parametrize("change, message", [
    ({"colour": "red"}, "unknown key 'colour'"),
    ({"models": []}, "models / sweep: the plan trains nothing"),
    ({"folds": [0, 0]}, "'folds'"),
    ({"folds": [7]}, "folds: fold 7 does not exist with data.n_folds=3"),
    ({"submission": "out/sub.txt"}, "is not a .csv path"),
    ({"name": "../escape"}, "'name'"),
    ({"task": "segmentaton"}, "'task'"),
    ({"models": ["configs/keypoints/phantom_shs15_shsnet.yaml"]}, "is a keypoints config; the plan's task is segmentation"),
    ({"models": ["configs/segmentation/demo_fpn.yaml", "configs/segmentation/demo_fpn.yaml"]}, "'demo_fpn' names two models"),
    ({"models": ["configs/segmentation/nope.yaml"]}, "configs/segmentation/nope.yaml: training config file not found"),
    ({"set": {"train.epochz": 2}}, "unknown key 'train.epochz'"),
    ({"full_data": {"epochs": 0}}, "'full_data.epochs'"),
    ({"full_data": {"epoch": 3}}, "unknown key 'full_data.epoch'"),
    ({"pseudo_labels": {"precision": 1.5}}, "precision 1.5 is outside (0, 1)"),
    ({"pseudo_labels": {"rounds": 0}}, "'pseudo_labels.rounds'"),
    ({"task": "orientation", "models": ["configs/orientation/phantom_resnet10t.yaml"], "pseudo_labels": True},
     "task orientation has no pseudo-labels"),
    ({"models": ["configs/segmentation/yolo11n_seg.yaml"], "full_data": True},
     "full_data: yolo11n_seg is a yolo model, which trains through its own loader"),
])
def test_a_bad_plan_is_one_error_line_and_nothing_is_written(tmp_path, capsys, change, message):
    plan = write_plan(tmp_path / "plan.yaml", **{**seg_plan(tmp_path / "ph", tmp_path), "test_gt": None, **change})
    assert cycle([plan, "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err
    assert not (tmp_path / "runs").exists()


def test_missing_answers_are_refused_before_the_first_training(phantom, tmp_path, capsys):
    plan = write_plan(tmp_path / "plan.yaml", **{**seg_plan(phantom, tmp_path), "test_gt": "answers/none"})
    assert cycle([plan, "--dry-run"]) == 0   # a plan lists its steps before its data exists (a fresh clone)
    capsys.readouterr()
    assert cycle([plan]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: test_gt: answers/none does not exist") and "\n" not in err
    assert not (tmp_path / "runs").exists()


def test_a_missing_plan_and_a_bad_rates_file_are_one_line(tmp_path, capsys):
    assert cycle([tmp_path / "none.yaml"]) == 2
    assert "none.yaml: cycle plan file not found" in capsys.readouterr().err
    plan = write_plan(tmp_path / "plan.yaml", **{**seg_plan(tmp_path / "ph", tmp_path), "test_gt": None})
    (tmp_path / "rates.json").write_text('{"train_images_per_s": -3}')
    assert cycle([plan, "--dry-run", "--rates", tmp_path / "rates.json"]) == 2
    assert "train_images_per_s must be a positive number" in capsys.readouterr().err


def test_estimates_come_from_the_run_then_another_model_of_the_round_then_the_rates_file(phantom, tmp_path):
    from cycle.estimate import FallbackRates
    from cycle.plan import load_plan
    from cycle.steps import build_cycle, image_counts

    plan = load_plan(write_plan(tmp_path / "plan.yaml", **seg_plan(phantom, tmp_path, set={"train.epochs": 4})))
    cycle_ = build_cycle(plan, FallbackRates(predict_images_per_s=2.0))
    fpn, unet = cycle_.runs["demo_fpn"][0], cycle_.runs["unet"][0]
    train_images, val_images, test_images = image_counts(unet)
    assert cycle_.step("train unet-f0").estimate() is None            # nothing measured, no training rate given
    assert cycle_.step("test unet-f0").estimate() == test_images / 2.0   # the rates file's prediction speed
    unet.run_dir.mkdir(parents=True)
    (unet.run_dir / "metrics.jsonl").write_text('{"epoch": 0, "time_s": 5.0}\n{"epoch": 1, "time_s": 20.0}\n')
    (unet.run_dir / "summary.json").write_text('{"speed": {"images_per_s_tta": 4.0}}')
    # its own: 2 of 4 epochs left at 10 s, then its validation fold at its own 4 img/s
    assert cycle_.step("train unet-f0").estimate() == pytest.approx(2 * 10.0 + val_images / 4.0)
    # the FPN, untrained: the U-Net's images per second (same images: 10 s an epoch), the U-Net's prediction speed
    assert image_counts(fpn)[0] == train_images
    assert cycle_.step("train demo_fpn-f0").estimate() == pytest.approx(4 * 10.0 + val_images / 4.0)
    assert cycle_.step("test demo_fpn-f0").estimate() == pytest.approx(test_images / 4.0)


# --------------------------------------------------------------------------------- what is submitted


def _selection(cf: dict | None, mode: str = "max") -> dict:
    return {"weights": {"a": 0.6, "b": 0.4}, "best_single": "b", "cross_fitted": cf, "mode": mode,
            "metric_label": "Dice"}


def test_the_selection_is_submitted_only_where_it_beats_the_best_single_model_out_of_sample():
    wins = _selection({"selection": 0.81, "best_single": 0.80, "average": 0.79})
    assert chosen_members(wins)[0] == {"a": 0.6, "b": 0.4}
    tie = _selection({"selection": 0.80, "best_single": 0.80, "average": 0.79})
    weights, why = chosen_members(tie)
    assert weights == {"b": 1.0} and "does not beat the best single model" in why
    # lower is better (an error): 4.1 px beats 4.3 px
    assert chosen_members(_selection({"selection": 4.1, "best_single": 4.3, "average": 5.0}, "min"))[0] == wins["weights"]
    assert chosen_members(_selection({"selection": 4.4, "best_single": 4.3, "average": 5.0}, "min"))[0] == {"b": 1.0}
    assert chosen_members(_selection(None))[0] == {"b": 1.0}   # not cross-fitted: never an unchecked blend
    single = {**_selection(None), "weights": {"a": 1.0}, "best_single": "a"}
    assert chosen_members(single)[0] == {"a": 1.0}


# ------------------------------------------------------------------------------ claims across processes

WORKER = textwrap.dedent('''
    import os, sys, time
    from pathlib import Path
    from cycle.schedule import run_cycle
    from cycle.steps import Cycle, Step

    root = Path(sys.argv[1])

    def work(name, seconds):
        def run(log):
            folder = root / name
            folder.mkdir(exist_ok=True)
            with open(root / "log.txt", "a") as f:
                f.write(f"{name} {os.getpid()}\\n")
            resumed = (folder / "started").exists()
            (folder / "started").write_text(str(os.getpid()))
            time.sleep(0.2 if resumed else seconds)
            (folder / "done").write_text(str(os.getpid()))
        return run

    steps = [Step(n, "train", root / n, work(n, s), lambda n=n: (root / n / "done").exists())
             for n, s in [("a", 0.5), ("b", 0.5), ("slow", 600), ("c", 0.5)]]
    steps.append(Step("d", "submit", root / "d", work("d", 0.1), lambda: (root / "d" / "done").exists(),
                      after=("a", "b", "slow", "c")))
    cycle = Cycle(plan=None, rounds=[], steps=steps)
    run_cycle(cycle, out=lambda line: print(line, flush=True), worker=sys.argv[2], workers=2, poll_s=0.2)
''')


def test_worker_processes_run_every_step_once_and_take_over_a_killed_workers_step(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path), f"{i}/2"], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in (1, 2)]
    deadline = time.monotonic() + 120
    while not (tmp_path / "slow" / "started").exists():
        assert time.monotonic() < deadline, "no worker started the slow step"
        time.sleep(0.1)
    holder = int((tmp_path / "slow" / "started").read_text())
    victim = next(p for p in procs if p.pid == holder)
    victim.send_signal(signal.SIGKILL)   # the worker dies mid-step, holding the claim
    survivor = next(p for p in procs if p is not victim)
    out, _ = survivor.communicate(timeout=120)
    victim.wait()
    assert survivor.returncode == 0, out
    runs = [line.split() for line in (tmp_path / "log.txt").read_text().splitlines()]
    by_step = {name: [int(pid) for n, pid in runs if n == name] for name in ("a", "b", "c", "d", "slow")}
    assert all(len(by_step[n]) == 1 for n in ("a", "b", "c", "d")), by_step   # each ran exactly once
    assert by_step["slow"] == [victim.pid, survivor.pid]   # started by the killed worker, taken over once
    assert all((tmp_path / n / "done").read_text() for n in by_step)
    assert int((tmp_path / "slow" / "done").read_text()) == survivor.pid
    assert int((tmp_path / "d" / "done").read_text()) == survivor.pid   # the step after everything, once


# ------------------------------------------------------------------------------------ whole cycles


def _interrupt_once(monkeypatch, module, name: str, when: int = 1):
    """Make ``module.name`` raise KeyboardInterrupt on its ``when``-th call (as if the process were stopped)."""
    real = getattr(module, name)
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == when:
            raise KeyboardInterrupt(f"stopped in {name}")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)


@pytest.mark.slow
def test_a_tiny_cycle_runs_end_to_end_and_an_interrupted_one_resumes_to_the_same_submission(
        phantom, tmp_path, capsys, monkeypatch):
    import engine.folds
    import engine.trainer
    from cycle import steps

    plan = write_plan(tmp_path / "plan.yaml", **seg_plan(phantom, tmp_path))
    assert cycle([plan, "--until", "test"]) == 0   # e.g. the models on a GPU box, the ensemble elsewhere
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("stopped after stage test: 3 steps left")
    assert cycle([plan]) == 0
    out = capsys.readouterr().out
    last = out.strip().splitlines()[-1]
    submission = tmp_path / "submissions" / "tiny.csv"
    assert last.startswith(f"submission: {submission}: valid (8 images") and "test dice" in last and "rank " in last
    folder = tmp_path / "runs" / "cycles" / "tiny" / "segmentation"
    selection = json.loads((folder / "selected" / "selection.json").read_text())
    submitted = yaml.safe_load((folder / "tiny" / "submitted.yaml").read_text())
    assert [m["name"] for m in submitted["members"]] == list(chosen_members(selection)[0])
    summary = json.loads((folder / "tiny" / "summary.json").read_text())
    assert summary["submission"]["valid"] and summary["test"]["score"] is not None
    for run in ("demo_fpn-f0", "unet-f0"):
        run_summary = json.loads((folder / run / "summary.json").read_text())
        assert run_summary["oof"]["tta"] is True and run_summary["test"]["images"] == 8

    # again: everything is done, nothing runs, the same line
    assert cycle([plan]) == 0
    again = capsys.readouterr().out.strip().splitlines()
    assert len(again) == 2 and again[-1] == last
    assert cycle([plan, "--dry-run"]) == 0
    assert "7 of 7 steps done" in capsys.readouterr().out

    # a changed model config is refused as train.py --resume refuses it, naming the key
    assert cycle([plan, "--set", "train.lr=0.1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "train.lr" in err and "\n" not in err

    # the same plan under another name, stopped three times: inside a training (after its first epoch, with
    # last.pt written), between a finished training and its out-of-fold predictions, and at the selection
    real_train = engine.trainer.train
    stopped = {"train": False}

    def train_stopping_once(cfg, resume=False, callbacks=None, overwrite=False):
        def stop(epoch, row):
            if not stopped["train"]:
                stopped["train"] = True
                raise KeyboardInterrupt("stopped after the first epoch")
        return real_train(cfg, resume=resume, callbacks=[*(callbacks or []), stop], overwrite=overwrite)

    monkeypatch.setattr(engine.trainer, "train", train_stopping_once)
    assert cycle([plan, "--name", "again"]) == 130
    _interrupt_once(monkeypatch, engine.folds, "predict_out_of_fold")
    assert cycle([plan, "--name", "again"]) == 130
    _interrupt_once(monkeypatch, steps, "run_select")
    assert cycle([plan, "--name", "again"]) == 130
    assert cycle([plan, "--name", "again"]) == 0
    log = capsys.readouterr().out
    assert "demo_fpn-f0: resuming from epoch 1" in log
    assert "demo_fpn-f0: finished before; predicting its validation fold" in log
    assert (tmp_path / "submissions" / "again.csv").read_bytes() == submission.read_bytes()


@pytest.mark.slow
def test_a_cycle_with_runs_on_all_data_and_a_pseudo_label_round(phantom, tmp_path, capsys):
    """full_data adds each model's run on every image (its epochs from its folds) to the submitted ensemble's
    test prediction; a pseudo-label round trains every model again with the round-0 ensemble's confident test
    predictions in its training split only, and submits its own CSV; stopping after the first submission and
    continuing gives the same cycle."""
    plan = write_plan(tmp_path / "plan.yaml", **seg_plan(
        phantom, tmp_path, models=["configs/segmentation/demo_fpn.yaml"], full_data=True,
        pseudo_labels={"rounds": 1, "precision": 0.9}))
    assert cycle([plan, "--dry-run"]) == 0
    listing = capsys.readouterr().out
    assert "1 model(s) x 1 fold(s) + a run on all data each + 1 pseudo-label round(s), 15 steps" in listing
    for key in ("full demo_fpn", "test demo_fpn-fall", "pseudo r1", "r1 train demo_fpn-f0", "r1 submit"):
        assert f" {key} " in listing, key
    assert cycle([plan, "--until", "submit"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("stopped after stage submit: 8 steps left")
    assert cycle([plan]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    round0, round1 = tmp_path / "runs" / "cycles" / "tiny", tmp_path / "runs" / "cycles" / "tiny-r1"
    assert lines[-2].startswith(f"round 0: {tmp_path / 'submissions' / 'tiny.csv'}: valid (8 images")
    assert lines[-1].startswith(f"submission: {tmp_path / 'submissions' / 'tiny-r1.csv'}: valid (8 images")

    fold = json.loads((round0 / "segmentation" / "demo_fpn-f0" / "summary.json").read_text())
    full = json.loads((round0 / "segmentation" / "demo_fpn-fall" / "summary.json").read_text())
    assert full["fold"] == "all" and full["epochs"] == fold["best_epoch"] + 1 and full["val"]["score"] is None
    assert full["train_images"] > fold["train_images"] and full["test"]["images"] == 8
    for folder in (round0, round1):
        submitted = yaml.safe_load((folder / "segmentation" / folder.name / "submitted.yaml").read_text())
        assert [Path(r).name for r in submitted["members"][0]["runs"]] == ["demo_fpn-f0", "demo_fpn-fall"]

    pseudo = round0 / "pseudo-r1"
    manifest = json.loads((pseudo / "pseudo.json").read_text())
    assert manifest["precision"] == 0.9 and manifest["test"]["images"] == 8
    retrained = yaml.safe_load((round1 / "segmentation" / "demo_fpn-f0" / "config.yaml").read_text())
    assert retrained["data"]["pseudo_roots"] == [str(pseudo)]
    again = json.loads((round1 / "segmentation" / "demo_fpn-f0" / "summary.json").read_text())
    assert again["train_images"] == fold["train_images"] + manifest["test"]["written"]   # training split only
    assert again["oof"]["images"] == fold["oof"]["images"]   # the same validation images, no pseudo-label among them

    assert cycle([plan, "--dry-run"]) == 0
    assert "15 of 15 steps done" in capsys.readouterr().out

    # another precision would make the pseudo-labels again under round 1's finished runs: refused, nothing changed
    labels = sorted(p for p in pseudo.rglob("*") if p.is_file())
    before = {p: p.read_bytes() for p in labels}
    write_plan(plan, **seg_plan(phantom, tmp_path, models=["configs/segmentation/demo_fpn.yaml"], full_data=True,
                                pseudo_labels={"rounds": 1, "precision": 0.8}))
    assert cycle([plan]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {pseudo}: its pseudo-labels would be made again (round 0's submission or "
                   f"pseudo_labels.precision changed), but 2 run(s) of round 1 trained on the ones it holds, e.g. "
                   f"{round1 / 'segmentation' / 'demo_fpn-f0'}; remove {round1} to train round 1 again on new "
                   f"pseudo-labels, or undo the change"]
    assert sorted(p for p in pseudo.rglob("*") if p.is_file()) == labels
    assert all(p.read_bytes() == data for p, data in before.items())


@pytest.mark.parametrize("plan", sorted((ROOT / "configs" / "cycles").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_plan_checks_and_lists_its_steps(plan, capsys):
    assert cycle([plan.relative_to(ROOT), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"cycle {yaml.safe_load(plan.read_text())['name']}: ") and "steps done" in out[-1]
