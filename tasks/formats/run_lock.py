"""One owner at a time for a run folder: ``with claim(run_dir): ...`` or ``try_claim(run_dir)``.

Whatever creates, resumes or writes into a run folder (training, ``--resume``, each fold of ``--folds``, a
sweep trial, an ensemble's fit/summary/selection, ``tools/score.py --run``, inference writing the run's
prediction cache or speed) holds its claim while it writes. A second claimant is refused at once with
:class:`RunFolderInUse`: ``<run folder>: in use by pid N on <host> since <time>``, which the commands print
as one ``error:`` line (exit 2) before they change anything.

The lock file lies *beside* the run folder, ``<parent>/.<run-name>.lock``, so that a refused or failed run
never creates the folder itself. While held it carries an owner record (one JSON line: pid, host, start
time, command); a clean release empties it. Finding a record when the lock is taken means its owner ended
without releasing (killed, or its machine lost): the claim goes ahead with one ``warning:`` line naming the
dead owner's pid.

Which lock, and why. The competition cycle has workers on several machines claim runs through this lock
on one shared filesystem, so the primitive must (a) work across machines and (b) free a claim whose
holder died without anyone deciding that it is dead. filelock offers two kinds:

- an OS lock (:class:`filelock.UnixFileLock`: ``flock``), which the kernel releases when the holding
  process ends in any way, ``kill -9`` included; on NFS the Linux client takes it as an NFS lock, which
  NFSv4 servers hold by lease and release when the client machine stops renewing it (Lustre mounted with
  ``flock``, CephFS and GPFS do the same). No stale-lock guessing is needed on any host.
- a soft lock (:class:`filelock.SoftFileLock`: the file's existence), which works on any filesystem but
  must judge staleness itself: by pid on one host, and by age or heartbeat across machines, where a slow
  but live holder can be judged dead and two owners then write one folder.

The OS lock is used, with the soft fallback turned off: a filesystem without ``flock`` fails the claim
with an ``error:`` line rather than silently downgrading to existence locks. (An NFS mount with
``nolock`` keeps locks local to each client; it cannot be detected from here, so a shared runs folder
needs a mount with locking, the NFS default.) The lock file is kept after release (filelock's
``preserve_lock_file``), so every claimant locks the same inode; an empty ``.<name>.lock`` is a free
folder.

Reentrant per thread: a claim nested inside another of the same thread for the same folder (``--folds``
claims each fold and the trainer claims it again; a sweep trial; an ensemble runner calling the summary
writer) only counts up. Another thread of the same process is refused like another process. The owner's
descriptor is never opened a second time by the owning process: POSIX locks (NFS' form of ``flock``) are
dropped when a process closes *any* descriptor of the file.

Standard library and filelock only, so the torch-free commands (``tools/score.py``) use it too.
"""
from __future__ import annotations

import datetime as dt
import errno
import json
import os
import shlex
import socket
import sys
import threading
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import Timeout, UnixFileLock

HOST = socket.gethostname()
SETTLE_S = 1.0  # how long a refused claim waits for a holder that is just starting or releasing
_POLL_S = 0.05
_RECORD_BYTES = 4096  # the owner record is one short JSON line; the command is cut to fit


class RunFolderInUse(ValueError):
    """Another process (or thread) owns the run folder; ``str()`` is the one-line message."""

    def __init__(self, run_dir: Path, owner: Owner | None, note: str = "") -> None:
        who = f"pid {owner.pid} on {owner.host} since {owner.since}" if owner else \
            f"another process (no owner record in {lock_path(run_dir)})"
        super().__init__(f"{run_dir}: in use by {who}{note}")
        self.run_dir = run_dir
        self.owner = owner


@dataclass(frozen=True)
class Owner:
    """Who holds a run folder: process id, host name, when it took the folder, and its command line."""

    pid: int
    host: str
    since: str
    command: str

    @classmethod
    def me(cls) -> Owner:
        since = dt.datetime.now().astimezone().isoformat(timespec="seconds")
        command = shlex.join([os.path.basename(sys.executable), *sys.argv])
        return cls(os.getpid(), HOST, since, command[:_RECORD_BYTES // 8])  # escaped, still within the record

    def to_bytes(self) -> bytes:
        return (json.dumps(asdict(self)) + "\n").encode()

    @classmethod
    def parse(cls, data: bytes) -> Owner | None:
        """The record in ``data``; None for an empty or unreadable one (a holder that is still writing it)."""
        try:
            raw = json.loads(data.decode())
            return cls(int(raw["pid"]), str(raw["host"]), str(raw["since"]), str(raw.get("command", "")))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            return None

    def ended(self) -> bool:
        """True when the owner ran on this host and its process is gone (unknown for other hosts: False)."""
        if self.host != HOST or self.pid == os.getpid():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        return False


def lock_path(run_dir: str | os.PathLike) -> Path:
    """``<parent>/.<run-name>.lock``: beside the folder, so claiming never creates the folder."""
    run_dir = Path(os.path.abspath(run_dir))
    return run_dir.parent / f".{run_dir.name}.lock"


def read_owner(run_dir: str | os.PathLike) -> Owner | None:
    """The owner record of ``run_dir``'s lock file (None: free, never claimed, or being written).

    Not for the process that holds the claim (see the module docstring): it knows its own record.
    """
    try:
        with open(lock_path(run_dir), "rb") as f:
            return Owner.parse(f.read(_RECORD_BYTES))
    except OSError:
        return None


@dataclass
class _Hold:
    """This process's hold of one lock file: the thread that owns it, how deeply nested, the lock's descriptor
    (from filelock's ``on_acquired``) and the record of a dead owner found there."""

    thread: int
    owner: Owner
    lock: UnixFileLock | None = None
    fd: int | None = None
    depth: int = 1
    previous: Owner | None = None

    def take(self, fd: int) -> None:
        """filelock's ``on_acquired``: note a record left by a dead owner, then write ours over it."""
        self.previous = Owner.parse(os.pread(fd, _RECORD_BYTES, 0))
        data = self.owner.to_bytes()
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
        os.fsync(fd)  # another machine reads the record from the server, not from this client's cache
        self.fd = fd


_held: dict[str, _Hold] = {}
_held_lock = threading.Lock()
# A forked child holds nothing: releasing the parent's shared flock description there would free the parent's claim.
os.register_at_fork(after_in_child=_held.clear)


class RunClaim:
    """A held claim on a run folder: ``release()`` (idempotent) or use it as a context manager."""

    def __init__(self, run_dir: Path, key: str) -> None:
        self.run_dir = run_dir
        self._key = key
        self._released = False

    def __enter__(self) -> RunClaim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        """Give the claim back; the last release of the thread's nested claims empties the record and unlocks."""
        with _held_lock:
            if self._released:
                return
            self._released = True
            hold = _held[self._key]
            hold.depth -= 1
            if hold.depth:
                return
            del _held[self._key]
            try:
                if hold.fd is not None:
                    os.ftruncate(hold.fd, 0)  # through the lock's own descriptor, still locked: a clean end
            finally:
                hold.lock.release()


def claim(run_dir: str | os.PathLike) -> RunClaim:
    """Take ``run_dir`` for this thread, or raise :class:`RunFolderInUse` (at once: no waiting for the owner)."""
    got = _claim(Path(run_dir))
    if isinstance(got, RunFolderInUse):
        raise got
    return got


def try_claim(run_dir: str | os.PathLike) -> RunClaim | None:
    """:func:`claim` that returns None for a folder in use (a worker then takes another run)."""
    got = _claim(Path(run_dir))
    return None if isinstance(got, RunFolderInUse) else got


def claim_bookkeeping(run_dir: str | os.PathLike) -> AbstractContextManager:
    """:func:`claim` for writes that are bookkeeping (a prediction's speed and cache, a score in summary.json):
    where the lock file cannot be made for lack of write access (a read-only mount), nothing will be written
    there either, so no claim is taken and each write warns as it fails (``engine.cli.Output``)."""
    try:
        return claim(run_dir)
    except OSError as err:
        if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return nullcontext()
        raise


def _claim(run_dir: Path) -> RunClaim | RunFolderInUse:
    path = lock_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(path)
    me = threading.get_ident()
    with _held_lock:
        hold = _held.get(key)
        if hold is not None:
            if hold.thread != me:
                return RunFolderInUse(run_dir, hold.owner, " (another thread of this process)")
            hold.depth += 1
            return RunClaim(run_dir, key)
        hold = _Hold(me, Owner.me())
        hold.lock = UnixFileLock(path, thread_local=False, fallback_to_soft=False, preserve_lock_file=True,
                                 on_acquired=hold.take)
        deadline = time.monotonic() + SETTLE_S
        while True:
            try:
                hold.lock.acquire(blocking=False)
                break
            except Timeout:
                other = read_owner(run_dir)
                if other is not None and not other.ended():
                    return RunFolderInUse(run_dir, other)
                if time.monotonic() >= deadline:  # no record, or a dead owner's record: a holder just starting
                    note = " (that process has ended; a process it started still holds the lock)" if other else ""
                    return RunFolderInUse(run_dir, other, note)
                time.sleep(_POLL_S)
            except OSError as err:
                if err.errno in (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP):
                    raise OSError(err.errno, f"cannot lock it: the filesystem does not support file locks "
                                             f"({err.strerror}); run folders need a filesystem with flock, e.g. "
                                             "a local disk or NFS mounted with locking", str(path)) from None
                raise
        _held[key] = hold
    old = hold.previous
    if old is not None:
        print(f"warning: {run_dir}: taking over the lock of pid {old.pid} on {old.host} (since {old.since}), "
              "which ended without releasing it", file=sys.stderr)
    return RunClaim(run_dir, key)

