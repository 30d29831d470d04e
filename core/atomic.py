"""The one way every output file is written: a temp file in the same folder, renamed over the target.

``atomic_write(path, "w" | "wb")`` yields a file object; anything that writes to a file object goes
through it (``json``/``yaml`` text, ``csv.writer``, ``DataFrame.to_csv``, ``np.savez``, ``torch.save``,
``fig.savefig(f, format="png")``, ``savemat``, ``shutil.copyfileobj``); :func:`write_text` and
:func:`write_bytes` are the one-call forms. The rules:

- The temp file is ``.<name>.<pid>.<n>.tmp`` beside the target, so a reader of the folder never sees a
  half-written ``<name>`` and a leftover is recognisable.
- On any failure (an exception in the ``with`` body, a full disk, a read-only folder) the temp file is
  removed and the target is left as it was. An ``OSError`` about the write is raised again naming the
  *target* (``filename`` set, the temp name never shown), so a command prints
  ``error: <path>: No space left on device``.
- A process killed mid-write (``kill -9``) leaves its temp file behind; the first write into that
  folder by each later process removes every such temp file whose process is gone (one process id
  space: a folder written by one machine at a time). Once per folder and process, not per write: a
  prediction cache of thousands of files is not listed again for each of them.
- A target that exists and is not a regular file (a FIFO, ``/dev/null``), and any path under ``/dev``
  or ``/proc``, is written in place, opened for appending: renaming over it would replace the device
  or pipe by a plain file. ``/dev/stdout``, ``/dev/stderr`` and ``/dev/fd/N`` are this process's own
  streams, even when the shell sent them to a file: they are written through that open descriptor
  (after flushing ``sys.stdout``/``sys.stderr``), so the output lands where the process's prints go,
  neither truncating a ``>> log`` nor overwriting what was printed. Such a write is not atomic (what
  was written before a failure has gone down the pipe).
- A symbolic link is kept: the write goes to the file it points to (temp file beside that file), as
  ``open(path, "w")`` would, so a ``latest.csv -> runs/x/sub.csv`` link still points at the new data.
- A replaced file keeps its permission bits; a new one gets the usual ``0o666 & ~umask``.

Standard library only, so every layer (readers, tasks, engine, the CSV-only tools) can use it.
"""
from __future__ import annotations

import itertools
import os
import re
import stat
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator, NoReturn

_counter = itertools.count()
_swept: set[str] = set()
_swept_lock = threading.Lock()
_TEMP = re.compile(r"^\..+\.(\d+)\.\d+\.tmp$")
_STREAMS = {"/dev/stdin": 0, "/dev/stdout": 1, "/dev/stderr": 2}
_FD_PATH = re.compile(r"^/(?:dev/fd|proc/self/fd)/(\d+)$")


def _temp_name(name: str) -> str:
    """``.<name>.<pid>.<n>.tmp``: the pid tells a later process whether the writer is gone; ``n`` keeps two
    threads writing the same name apart."""
    return f".{name}.{os.getpid()}.{next(_counter)}.tmp"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the temp files in ``folder`` left by processes that no longer run; returns what was removed.

    Best effort: a folder that cannot be listed or a file that cannot be removed is left alone (the
    write that follows reports its own error).
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP.match(entry.name)
        if match is None or _alive(int(match.group(1))):
            continue
        try:
            os.unlink(entry.path)
        except OSError:
            continue
        removed.append(Path(entry.path))
    return removed


def _sweep_once(folder: Path) -> None:
    """Stale temp files are looked for on the first write into a folder in this process: listing a
    prediction cache of thousands of files on every write would cost more than the writes."""
    key = os.path.abspath(folder)
    with _swept_lock:
        if key in _swept:
            return
        _swept.add(key)
    remove_stale_temps(folder)


def _raise_naming(err: OSError, path: Path, temp: Path) -> NoReturn:
    """Raise ``err`` again; one about the temp file, or about no file (a full disk on write), names ``path``."""
    if err.filename not in (None, str(temp)):
        raise err
    raise OSError(err.errno, err.strerror or str(err), str(path)) from err


def _in_place(path: Path) -> bool:
    if path.is_absolute() and path.parts[1] in ("dev", "proc"):
        return True
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False


def _open_in_place(path: Path, mode: str, text: dict) -> IO:
    match = _FD_PATH.match(str(path))
    fd = _STREAMS.get(str(path), int(match.group(1)) if match else None)
    if fd is None:
        return open(path, mode.replace("w", "a"), **text)
    sys.stdout.flush()
    sys.stderr.flush()
    return open(os.dup(fd), mode, **text)


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", *, encoding: str | None = "utf-8",
                 newline: str | None = None) -> Iterator[IO]:
    """A file object whose content replaces ``path`` only when the ``with`` block ends without error.

    ``mode`` is ``"w"`` (text, ``encoding``/``newline`` as for :func:`open`) or ``"wb"``. The parent
    folder is created. See the module docstring for failures, FIFOs/devices and symlinks.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    text = {"encoding": encoding, "newline": newline} if mode == "w" else {}
    if _in_place(path):
        try:
            with _open_in_place(path, mode, text) as f:
                yield f
        except OSError as err:
            _raise_naming(err, path, path)
        return
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    target.parent.mkdir(parents=True, exist_ok=True)
    _sweep_once(target.parent)
    temp = target.with_name(_temp_name(target.name))
    try:
        with open(temp, mode, **text) as f:
            yield f
        try:
            os.chmod(temp, stat.S_IMODE(os.stat(target).st_mode))  # a replaced file keeps its permissions
        except FileNotFoundError:
            pass
        os.replace(temp, target)
    except OSError as err:
        _discard(temp)
        _raise_naming(err, path, temp)
    except BaseException:
        _discard(temp)
        raise


def _discard(temp: Path) -> None:
    try:
        os.unlink(temp)
    except OSError:
        pass


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; returns ``path``."""
    with atomic_write(path, "w", encoding=encoding) as f:
        f.write(text)
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_write(path, "wb") as f:
        f.write(data)
    return Path(path)
