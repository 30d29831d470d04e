"""How every command ends a fault: ``error: <file or key>: <what is wrong>`` on stderr, exit status 2.

``run_main(main)`` wraps a command's ``main(argv) -> int``. Faults of input (``ValueError`` and its
subclasses ``ConfigError``/``FormatError``, and ``OSError`` such as a missing file, a full disk or a
read-only folder) become one line; ``--debug`` anywhere on the command line, or ``BONEHARNESS_DEBUG=1``,
shows the traceback instead. Standard library only: the CSV tools use it without importing torch.
"""
from __future__ import annotations

import os
import sys
from typing import Callable, Sequence

DEBUG_FLAG = "--debug"
DEBUG_ENV = "BONEHARNESS_DEBUG"
EXIT_FAULT = 2


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
