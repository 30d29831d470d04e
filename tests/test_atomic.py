"""The one atomic-write helper (core.atomic) and what commands do when a bookkeeping write fails."""
from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from core.cli import Output, run_main
from core import atomic
from core.atomic import atomic_write, remove_stale_temps, write_bytes, write_text

ROOT = Path(__file__).resolve().parents[1]


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_write_replaces_and_keeps_permissions(tmp_path):
    path = tmp_path / "sub" / "a.json"
    write_text(path, "one")
    os.chmod(path, 0o640)
    write_text(path, "two")
    assert path.read_text() == "two" and stat.S_IMODE(path.stat().st_mode) == 0o640
    assert _temps(path.parent) == []


def test_disk_full_mid_write_keeps_the_old_file_and_names_the_target(tmp_path):
    path = tmp_path / "last.pt"
    write_bytes(path, b"old checkpoint")
    seen = []
    with pytest.raises(OSError) as info:
        with atomic_write(path, "wb") as f:
            seen.append(Path(f.name))
            f.write(b"half a new checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert seen[0].name.startswith(".last.pt.") and seen[0].parent == tmp_path  # the temp was beside it
    assert path.read_bytes() == b"old checkpoint"
    assert _temps(tmp_path) == []


def test_disk_full_in_a_real_writer_is_one_error_line(tmp_path, monkeypatch, capsys):
    """torch.save running out of space: the previous last.pt stays loadable, the command says which file."""
    import torch

    from engine.checkpoint import load_checkpoint, save_checkpoint

    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 3})

    def full_disk(obj, f):
        f.write(b"\x80\x02partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)

    def main(argv: list[str]) -> int:
        save_checkpoint(path, {"epoch": 4})
        return 0

    assert run_main(main, []) == 2
    assert capsys.readouterr().err == f"error: {path}: No space left on device\n"
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 3
    assert _temps(tmp_path) == []


@pytest.fixture
def read_only(monkeypatch):
    """Folders whose files cannot be written (EROFS), as on a read-only mount; returns the set to fill."""
    folders: list[Path] = []
    real_open = open

    def guarded(file, *args, **kwargs):
        if any(Path(file).is_relative_to(f) for f in folders):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(atomic, "open", guarded, raising=False)
    return folders


def test_read_only_folder_names_the_target_not_the_temp(tmp_path, read_only):
    read_only.append(tmp_path)
    with pytest.raises(OSError) as info:
        write_text(tmp_path / "summary.json", "{}")
    assert info.value.errno == errno.EROFS and info.value.filename == str(tmp_path / "summary.json")
    assert not (tmp_path / "summary.json").exists()


def test_an_error_in_the_body_removes_the_temp_and_passes_through(tmp_path):
    path = tmp_path / "a.csv"
    with pytest.raises(ValueError, match="bad row"):
        with atomic_write(path) as f:
            f.write("id,x\n")
            raise ValueError("bad row")
    assert not path.exists() and _temps(tmp_path) == []


KILLED_MID_WRITE = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
from core.atomic import atomic_write
with atomic_write(sys.argv[2]) as f:
    f.write("new but never finished")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_temp_of_a_killed_process_is_cleaned_by_the_next_write(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text("old")
    proc = subprocess.Popen([sys.executable, "-c", KILLED_MID_WRITE, str(ROOT), str(path)])
    assert proc.wait(60) == -9
    stale = _temps(tmp_path)
    assert stale == [f".summary.json.{proc.pid}.0.tmp"] and path.read_text() == "old"
    alive = tmp_path / f".other.csv.{os.getppid()}.0.tmp"  # a write of a process that still runs
    alive.write_text("in progress")
    unrelated = tmp_path / "notes.tmp"
    unrelated.write_text("mine")
    write_text(path, "new")
    assert path.read_text() == "new"
    assert _temps(tmp_path) == sorted([alive.name, unrelated.name])
    assert remove_stale_temps(tmp_path) == []


def test_fifo_target_is_written_in_place(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    reader.start()
    write_text(fifo, "image_name,class,rle\n")
    reader.join(10)
    assert got == ["image_name,class,rle\n"]
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and _temps(tmp_path) == []


def test_devices_are_written_in_place(capfd):
    write_text("/dev/null", "nothing")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    write_text("/dev/stdout", "to the screen\n")
    assert capfd.readouterr().out == "to the screen\n"
    if os.path.exists("/dev/full"):
        with pytest.raises(OSError) as info:
            write_text("/dev/full", "x")
        assert info.value.errno == errno.ENOSPC and info.value.filename == "/dev/full"


def test_symlink_is_kept_and_its_target_replaced(tmp_path):
    real = tmp_path / "runs" / "sub.csv"
    write_text(real, "old")
    link = tmp_path / "latest.csv"
    link.symlink_to(real)
    write_text(link, "new")
    assert link.is_symlink() and link.resolve() == real and real.read_text() == "new"
    assert _temps(tmp_path) == [] and _temps(real.parent) == []


def test_optional_output_warns_once_and_required_output_fails(tmp_path, capsys):
    calls = []

    def fail(name: str) -> None:
        calls.append(name)
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), name)

    cache = Output(tmp_path / "preds", required=False)
    assert cache(fail, "a") is False and cache(fail, "b") is False
    assert calls == ["a"]  # the second write is not tried
    assert capsys.readouterr().err == f"warning: {tmp_path / 'preds'}: could not update (Permission denied)\n"
    with pytest.raises(PermissionError):
        Output(tmp_path / "out", required=True)(fail, "c")


# --------------------------------------------------------------------------- a read-only run folder


def test_read_only_run_folder_does_not_fail_inference(tiny_run, phantom, tmp_path, capsys, read_only):
    import inference
    from tools import score

    summary = (tiny_run / "summary.json").read_bytes()
    cached = sorted((tiny_run / "preds").rglob("*"))  # the session's run: other tests may have filled it
    read_only.append(tiny_run)
    out = tmp_path / "sub.csv"
    assert run_main(inference.main, ["--ckpt", str(tiny_run / "best.pt"), "-o", str(out), "--save-probs"]) == 0
    n_test = len(list((phantom / "handbones" / "test" / "DCM").rglob("*.png")))
    assert len(out.read_text().splitlines()) == 1 + 29 * n_test
    err = capsys.readouterr().err  # the progress bar shares stderr: look for the lines inside it
    assert f"warning: {tiny_run / 'preds' / 'test'}: could not update (Read-only file system)\n" in err
    assert f"warning: {tiny_run / 'summary.json'}: could not update (Read-only file system)\n" in err
    assert err.count("warning:") == 2  # one per output, not one per image

    gt = phantom / "handbones" / "test_gt"
    assert run_main(score.main, [str(out), "--gt", str(gt), "--run", str(tiny_run), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "public" in captured.out
    assert captured.err == f"warning: {tiny_run / 'summary.json'}: could not update (Read-only file system)\n"
    assert (tiny_run / "summary.json").read_bytes() == summary
    assert sorted((tiny_run / "preds").rglob("*.npz")) == [p for p in cached if p.suffix == ".npz"]
    assert not list(tiny_run.rglob("*.tmp"))


def test_a_cache_folder_the_user_named_is_a_required_output(tmp_path):
    from engine.predictor import prediction_cache

    ckpt = tmp_path / "runs" / "a" / "best.pt"
    assert prediction_cache(None, ckpt, "test") is None
    auto = prediction_cache("auto", ckpt, "val")
    assert auto.path == tmp_path / "runs" / "a" / "preds" / "val" and not auto.required
    named = prediction_cache(tmp_path / "probs", ckpt, "test")
    assert named.path == tmp_path / "probs" and named.required
