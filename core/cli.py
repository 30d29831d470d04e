"""How every command ends a fault: ``error: <file or key>: <what is wrong>`` on stderr, exit status 2.

``run_main(main)`` wraps a command's ``main(argv) -> int``. Faults of input (``ValueError`` and its
subclasses ``ConfigError``/``FormatError``, and ``OSError`` such as a missing file, a full disk or a
read-only folder) become one line; ``--debug`` anywhere on the command line, or ``BONEHARNESS_DEBUG=1``,
shows the traceback instead. :class:`Output` decides which writes are the command's result and which
are bookkeeping that may fail with a warning. :func:`lazy_module` defers a heavy import to its first use,
so ``--help`` stays instant. Standard library only: the CSV tools use it without importing torch.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Callable, Sequence

DEBUG_FLAG = "--debug"
DEBUG_ENV = "BONEHARNESS_DEBUG"
EXIT_FAULT = 2


def lazy_module(name: str) -> ModuleType:
    """``name`` as a module that is imported on its first attribute access (``importlib.util.LazyLoader``).

    ``pd = lazy_module("pandas")`` at the top of a module costs nothing until a function touches ``pd.``,
    so a command's ``--help`` and its usage errors do not pay for the import. Already imported: returned as is.
    """
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def describe(err: BaseException) -> str:
    """The message of a fault, naming the file first where the exception knows it."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"
    text = str(err).strip()
    if isinstance(err, KeyError):
        return f"missing key {text}"
    return text or type(err).__name__


def debug_requested(argv: Sequence[str]) -> bool:
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def run_main(main: Callable[[list[str]], int], argv: Sequence[str] | None = None) -> int:
    """Call ``main`` with ``argv`` (default ``sys.argv[1:]``) less ``--debug``; faults end as one line, exit 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(args)
    args = [a for a in args if a != DEBUG_FLAG]
    try:
        return main(args)
    except (ValueError, OSError) as err:
        if debug:
            raise
        print(f"error: {describe(err)}", file=sys.stderr)
        return EXIT_FAULT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


class Output:
    """One output of a command, written by one call or many: ``out = Output(path, required=...); out(write, *args)``.

    A required output (the CSV the user asked for) lets an ``OSError`` through: the command fails with
    ``error: <path>: ...``. An optional one is bookkeeping (a run's summary.json, its prediction cache
    under the run folder): its first ``OSError`` (a read-only run folder, a full disk) becomes one line
    ``warning: <path>: could not update (<reason>)`` on stderr and its later calls are skipped, so a
    successful prediction still exits 0 and a cache of a thousand files warns once. Thread-safe (the
    segmentation cache is written by the post-processing threads).
    """

    def __init__(self, path: str | os.PathLike, required: bool) -> None:
        self.path = Path(path)
        self.required = required
        self.failed = False
        self._lock = threading.Lock()

    def __call__(self, write: Callable[..., object], *args: object, **kwargs: object) -> bool:
        """Run ``write(*args, **kwargs)``; False when an optional output could not be (or was no longer) written."""
        if self.failed:
            return False
        try:
            write(*args, **kwargs)
        except OSError as err:
            if self.required:
                raise
            with self._lock:
                if not self.failed:
                    self.failed = True
                    print(f"warning: {self.path}: could not update ({err.strerror or err})", file=sys.stderr)
            return False
        return True
