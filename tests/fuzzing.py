"""Mutations of valid input files and the property every reader keeps under them (the fuzz tests' helpers).

Two kinds of change:

- :func:`equivalent` — a change that keeps the content (a UTF-8 byte-order mark as spreadsheets write it,
  Windows line ends, a trailing blank line): the reader must return what it returned for the original;
- :func:`corrupted` — a change that may break the file: truncation, flipped/inserted/deleted bytes,
  repeated or swapped lines, swapped fields, a number replaced by a huge/negative/NaN/inf/odd one, a name
  replaced by a path-like one (``../x``, ``/etc/passwd``, ``a/b``, control characters), or the text
  re-encoded (UTF-16, latin-1, a BOM): the reader returns a well-formed result or raises one error of its
  documented type whose one-line message names the file (:func:`outcome`).
"""
from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

# Names a hostile or careless file may hold where an id or file name belongs.
PATH_NAMES = ("../outside", "../../outside.png", "/etc/passwd", "a/b.png", "a\\b", "..", ".", "C:x", "x\ty",
              "x\ny", "x\x00y", "x\x1by", "", " ", "\u202e.png", "é.png", "x" * 300)
# Text where a number belongs.
NUMBERS = ("nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e309", "-1e309", "1e300", "-1e300", "-5", "-1", "0",
           "-0", "99999999999999999999999", "-99999999999999999999999", "1e-320", "0x10", "1_000", "+", "-", ".",
           "", " ", "True", "None", "null", "[]", "{}", "1,5", "٣")
ENCODINGS = ("utf-8-sig", "utf-16", "utf-16-le", "utf-32", "latin-1", "cp1252")
_NUMBER_RE = re.compile(rb"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_FIELD_RE = re.compile(rb"[^,\n\r]+")


def equivalent(data: bytes) -> st.SearchStrategy[bytes]:
    """``data`` changed only in ways a reader must not see: a BOM, CRLF line ends, a trailing blank line."""
    bom = st.sampled_from([b"", b"\xef\xbb\xbf"])
    crlf = st.booleans()
    tail = st.sampled_from([b"", b"\n", b"\n\n"])

    def build(prefix: bytes, windows: bool, end: bytes) -> bytes:
        body = data + end
        if windows:
            body = body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        return prefix + body

    return st.builds(build, bom, crlf, tail)


@st.composite
def corrupted(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with one change that may break it (see the module docstring)."""
    n = len(data)
    kind = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "repeat_line", "swap_lines",
                                 "swap_fields", "number", "name", "encoding"]))
    at = draw(st.integers(0, max(0, n - 1)))
    if kind == "truncate":
        return data[:at]
    if kind == "flip":
        return data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1:] if n else data
    if kind == "insert":
        return data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
    if kind == "delete":
        return data[:at] + data[at + draw(st.integers(1, 16)):]
    lines = data.split(b"\n")
    if kind == "repeat_line":
        i = draw(st.integers(0, len(lines) - 1))
        return b"\n".join(lines[:i + 1] + [lines[i]] + lines[i + 1:])
    if kind == "swap_lines":
        i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
        lines[i], lines[j] = lines[j], lines[i]
        return b"\n".join(lines)
    if kind == "swap_fields":
        i = draw(st.integers(0, len(lines) - 1))
        fields = lines[i].split(b",")
        a, b = draw(st.integers(0, len(fields) - 1)), draw(st.integers(0, len(fields) - 1))
        fields[a], fields[b] = fields[b], fields[a]
        lines[i] = b",".join(fields)
        return b"\n".join(lines)
    if kind == "number":
        return _replace_match(draw, data, _NUMBER_RE, draw(st.sampled_from(NUMBERS)).encode())
    if kind == "name":
        name = draw(st.sampled_from(PATH_NAMES)).encode("utf-8", "surrogateescape")
        return _replace_match(draw, data, _FIELD_RE, name)
    text = data.decode("utf-8", "replace") + draw(st.sampled_from(["", "é", "ü", "\u2603"]))
    return text.encode(draw(st.sampled_from(ENCODINGS)), "replace")


def _replace_match(draw: st.DrawFn, data: bytes, pattern: re.Pattern, new: bytes) -> bytes:
    matches = list(pattern.finditer(data))
    if not matches:
        return data
    m = draw(st.sampled_from(matches))
    return data[:m.start()] + new + data[m.end():]


def outcome(read: Callable[[], Any], names: str | Path, errors: tuple[type[BaseException], ...]) -> Any:
    """``read()``'s result, or None when it raised one of ``errors`` with a one-line message that holds
    ``names`` (the file, or the key). Any other exception propagates, failing the test."""
    try:
        return read()
    except errors as err:
        message = str(err)
        assert str(names) in message, f"the message does not name {names}: {message!r}"
        assert "\n" not in message and "Traceback" not in message, f"not one line: {message!r}"
        return None


def inside(root: Path, name: str) -> bool:
    """Whether ``root/name`` (a name a reader returned, to be joined to a folder) stays directly in ``root``."""
    from tasks.formats.names import name_problem

    return name_problem(name) is None and (root / name).resolve().parent == root.resolve()
