"""A run folder has one owner at a time (tasks/formats/run_lock.py): two processes with one run name, a
killed owner taken over, the claim given back on an exception, the non-blocking claim, and the commands that
write into a run folder refusing one in use."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tasks.formats.run_lock import HOST, RunFolderInUse, claim, lock_path, read_owner, try_claim

HOLDER = """
import sys, time
from tasks.formats.run_lock import claim
c = claim(sys.argv[1])
print("held", flush=True)
sys.stdin.read()  # until the test closes stdin (or kills this process)
c.release()
"""


def in_use(run_dir: Path, pid: int) -> re.Pattern:
    """The exact one-line refusal (the time is the owner's start, read from its record)."""
    since = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d"
    return re.compile(rf"error: {re.escape(str(run_dir))}: in use by pid {pid} on {re.escape(HOST)} since {since}")


class Holder:
    """Another process holding ``run_dir``'s claim until :meth:`stop` (a clean release) or :meth:`kill`."""

    def __init__(self, run_dir: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline() == "held\n"
        self.pid = self.proc.pid

    def stop(self) -> None:
        self.proc.stdin.close()
        assert self.proc.wait(timeout=30) == 0

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc.stdin.close()


@pytest.fixture
def holder():
    started: list[Holder] = []

    def start(run_dir: Path) -> Holder:
        started.append(Holder(run_dir))
        return started[-1]

    yield start
    for h in started:
        if h.proc.poll() is None:
            h.kill()


def test_claim_is_exclusive_reentrant_per_thread_and_released_on_exception(tmp_path, holder):
    run = tmp_path / "runs" / "segmentation" / "a-f0"
    with claim(run) as outer:
        assert lock_path(run) == run.parent / ".a-f0.lock" and not run.exists()  # the folder itself is not made
        with claim(run):  # nested in one thread (--folds, then the trainer): counts up
            pass
        other: list = []
        thread = threading.Thread(target=lambda: other.append(try_claim(run)))
        thread.start()
        thread.join()
        assert other == [None]  # another thread of this process is another owner
        assert outer.run_dir == run
    assert lock_path(run).read_bytes() == b""  # a clean release empties the record

    with pytest.raises(RuntimeError, match="boom"):
        with claim(run):
            raise RuntimeError("boom")
    assert lock_path(run).read_bytes() == b""
    h = holder(run)  # another process gets it at once: the exception gave it back
    owner = read_owner(run)
    assert (owner.pid, owner.host) == (h.pid, HOST) and "-c" in owner.command
    h.stop()
    assert read_owner(run) is None


def test_try_claim_does_not_wait_and_claim_names_the_owner(tmp_path, holder):
    run = tmp_path / "r"
    h = holder(run)
    start = time.monotonic()
    assert try_claim(run) is None
    with pytest.raises(RunFolderInUse) as err:
        claim(run)
    assert time.monotonic() - start < 5  # a live owner is refused at once, not waited for
    assert in_use(run, h.pid).fullmatch(f"error: {err.value}")
    assert err.value.owner.pid == h.pid
    h.stop()
    got = try_claim(run)
    assert got is not None
    got.release()
    got.release()  # idempotent


def test_a_killed_owner_is_taken_over_with_one_warning(tmp_path, holder, capsys):
    run = tmp_path / "runs" / "x"
    h = holder(run)
    since = read_owner(run).since
    h.kill()
    assert read_owner(run).pid == h.pid  # its record stays: it never released
    with claim(run):
        assert capsys.readouterr().err == (f"warning: {run}: taking over the lock of pid {h.pid} on {HOST} "
                                           f"(since {since}), which ended without releasing it\n")
    with claim(run):  # released cleanly this time: no warning
        pass
    assert capsys.readouterr().err == ""


RACER = """
import sys, time, pathlib
import train
pathlib.Path(sys.argv[1]).touch()
while not pathlib.Path(sys.argv[2]).exists():
    time.sleep(0.005)
sys.exit(train.main(sys.argv[3:]))
"""


def _config(path: Path, phantom: Path, out: Path) -> Path:
    raw = {"task": "segmentation", "name": "race",
           "data": {"root": str(phantom / "handbones" / "train"), "test_root": str(phantom / "handbones" / "test"),
                    "image_size": 64, "n_folds": 3, "cache": False},
           "model": {"name": "smp:fpn/resnet18"},
           "train": {"epochs": 2, "batch_size": 4, "max_steps_per_epoch": 1},
           "logging": {"out_dir": str(out), "progress": False}}
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.slow
def test_two_trainings_with_one_run_name_one_trains_the_other_is_refused(phantom, tmp_path, holder, capsys):
    """Both processes import first and start together: the one that claims trains; the other ends with the
    one-line refusal (exit 2) and leaves nothing of its own in the folder: its lr is nowhere."""
    config = _config(tmp_path / "race.yaml", phantom, tmp_path / "runs")
    run = tmp_path / "runs" / "segmentation" / "race-f0"
    go = tmp_path / "go"
    procs = {}
    for lr in ("0.001", "0.002"):
        ready = tmp_path / f"ready-{lr}"
        procs[lr] = (subprocess.Popen([sys.executable, "-c", RACER, str(ready), str(go), "-c", str(config),
                                       f"--train.lr={lr}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
                     ready)
    deadline = time.monotonic() + 300
    while not all(ready.exists() for _, ready in procs.values()):
        assert time.monotonic() < deadline and all(p.poll() is None for p, _ in procs.values())
        time.sleep(0.05)
    go.touch()
    results = {lr: (p.wait(timeout=600), *p.communicate()) for lr, (p, _) in procs.items()}
    assert sorted(rc for rc, _, _ in results.values()) == [0, 2], results
    won = next(lr for lr, (rc, _, _) in results.items() if rc == 0)
    lost = next(lr for lr in results if lr != won)
    err = results[lost][2].strip().splitlines()
    assert in_use(run, procs[won][0].pid).fullmatch(err[-1]), err
    assert not any(line.startswith(("Traceback", "error:")) for line in err[:-1])

    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["lr"] == float(won)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]  # one run's epochs, once each
    from engine.checkpoint import load_checkpoint

    last = load_checkpoint(run / "last.pt")
    assert last["epoch"] == 1 and last["config"]["train"]["lr"] == float(won)
    assert json.loads((run / "summary.json").read_text())["name"] == "race-f0"
    assert lock_path(run).read_bytes() == b""

    # every command that writes into a run folder refuses it while another process holds it, changing nothing
    import inference
    from core.cli import run_main
    from tools import score

    h = holder(run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    refusal = in_use(run, h.pid)
    assert inference.main(["--ckpt", str(run / "best.pt"), "--save-probs", "-o", str(tmp_path / "a.csv")]) == 2
    assert run_main(score.main, [str(tmp_path / "a.csv"), "--gt", str(phantom / "handbones" / "test_gt"),
                                 "--run", str(run), "--quiet"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(refusal.fullmatch(line) for line in lines), lines
    for cmd in (["-c", str(config), "--train.lr=0.001", "--resume"], ["-c", str(config), "--overwrite"]):
        done = subprocess.run([sys.executable, "train.py", *cmd], capture_output=True, text=True, timeout=300)
        assert done.returncode == 2 and refusal.fullmatch(done.stderr.strip().splitlines()[-1]), done.stderr
    assert not (tmp_path / "a.csv").exists()
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    h.stop()


@pytest.mark.slow
def test_a_refused_training_creates_no_folder(phantom, tmp_path, holder):
    config = _config(tmp_path / "race.yaml", phantom, tmp_path / "runs")
    run = tmp_path / "runs" / "segmentation" / "race-f0"
    h = holder(run)
    done = subprocess.run([sys.executable, "train.py", "-c", str(config)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [f"error: {RunFolderInUse(run, read_owner(run))}"]
    assert in_use(run, h.pid).fullmatch(done.stderr.strip())
    assert not run.exists()
    h.stop()


def test_folds_hold_each_folds_folder_while_it_trains(phantom, tmp_path):
    from engine.config import load_config
    from engine.folds import run_folds

    cfgs = [load_config(_config(tmp_path / "f.yaml", phantom, tmp_path / "runs"), {"data": {"fold": f}})
            for f in (0, 1)]
    seen = []

    def train_one(cfg, resume, overwrite):
        other: list = []
        thread = threading.Thread(target=lambda: other.append(try_claim(cfg.run_dir)))
        thread.start()
        thread.join()
        seen.append((cfg.data.fold, other[0]))
        return {"metric": "dice"}

    rows = run_folds(cfgs, train_one, log=lambda _: None)
    assert seen == [(0, None), (1, None)] and [r["fold"] for r in rows] == [0, 1]
    for cfg in cfgs:
        assert lock_path(cfg.run_dir).read_bytes() == b""


def test_ensemble_fit_and_prediction_claim_the_ensemble_folder(tmp_path, holder):
    from ensembles.api import fit_ensemble, predict_ensemble

    ens = SimpleNamespace(run_dir=tmp_path / "runs" / "segmentation" / "ens")
    h = holder(ens.run_dir)
    for call in (lambda: fit_ensemble(ens, progress=False),
                 lambda: predict_ensemble(ens, out_csv=tmp_path / "e.csv", split="test")):
        with pytest.raises(RunFolderInUse) as err:
            call()
        assert in_use(ens.run_dir, h.pid).fullmatch(f"error: {err.value}")
    h.stop()
    assert os.listdir(tmp_path / "runs" / "segmentation") == [".ens.lock"]


def test_under_torchrun_only_rank_0_claims(tmp_path, monkeypatch, holder):
    from engine.run_folder import claim_run

    run = tmp_path / "runs" / "ddp"
    h = holder(run)
    monkeypatch.setenv("RANK", "1")
    with claim_run(run):  # the other ranks hold nothing (rank 0 holds the folder for them)
        pass
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(RunFolderInUse):
        claim_run(run)
    h.stop()
