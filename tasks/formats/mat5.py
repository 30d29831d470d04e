"""A strict reader of the numeric matrices in a MATLAB v5 ``.mat`` file (the AASCE labels), without scipy.

``scipy.io.loadmat`` trusts the sizes written in the file: a corrupted element tag (found by the fuzz
tests) crashes the whole process with a segmentation fault. This reader checks every size against the
bytes that are there before it reads, inflates compressed elements up to a bound, and turns anything it
cannot read into a :class:`FormatError` naming the file. It reads real numeric matrices (the classes
double, single and the integer ones, stored in any numeric type as MATLAB does); a variable of another
class (cell, struct, char, sparse, complex) is listed by name with the value None.
"""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np

from tasks.formats import FormatError

HEADER_BYTES = 128
MAX_INFLATED_BYTES = 64 << 20   # one compressed variable; the AASCE labels inflate to under 2 KB
_MATRIX, _COMPRESSED = 14, 15
# Element types (storage) and matrix classes (meaning) of the MAT v5 format.
_TYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8"}
_NUMERIC_CLASSES = {6, 7, 8, 9, 10, 11, 12, 13, 14, 15}
_COMPLEX_FLAG = 0x0800


class _Reader:
    """Elements of one byte buffer in the file's byte order; every read checks its bounds."""

    def __init__(self, data: bytes, order: str, path: Path) -> None:
        self.data, self.order, self.path = data, order, path

    def fail(self, what: str) -> FormatError:
        return FormatError(f"{self.path}: not a readable MATLAB v5 file ({what})")

    def element(self, at: int) -> tuple[int, bytes, int]:
        """``(type, payload, start of the next element)`` of the element at byte ``at``."""
        if at + 8 > len(self.data):
            raise self.fail(f"element tag at byte {at} runs past the end")
        kind, size = struct.unpack(self.order + "II", self.data[at:at + 8])
        if kind >> 16:   # small data element: type and size in the first word, up to 4 bytes of payload
            kind, size = kind & 0xFFFF, kind >> 16
            if size > 4:
                raise self.fail(f"small element at byte {at} claims {size} bytes (at most 4)")
            return kind, self.data[at + 4:at + 4 + size], at + 8
        end = at + 8 + size
        if end > len(self.data):
            raise self.fail(f"element at byte {at} claims {size} bytes, {len(self.data) - at - 8} are there")
        step = size if kind == _COMPRESSED else (size + 7) // 8 * 8
        return kind, self.data[at + 8:end], at + 8 + step

    def numbers(self, kind: int, payload: bytes) -> np.ndarray:
        if kind not in _TYPES:
            raise self.fail(f"element type {kind} is not numeric")
        dtype = np.dtype(_TYPES[kind]).newbyteorder(self.order)
        if len(payload) % dtype.itemsize:
            raise self.fail(f"{len(payload)} bytes of {dtype.name} values")
        return np.frombuffer(payload, dtype)


def _matrix(reader: _Reader, payload: bytes) -> tuple[str, np.ndarray | None]:
    """Name and value of one miMATRIX element (None for a class this reader does not read)."""
    inner = _Reader(payload, reader.order, reader.path)
    parts, at = [], 0
    while at < len(payload) and len(parts) < 4:
        kind, data, at = inner.element(at)
        parts.append((kind, data))
    if len(parts) < 3:
        return "", None   # an empty matrix ([]) may stop after its flags
    flags = inner.numbers(parts[0][0], parts[0][1])
    dims = inner.numbers(parts[1][0], parts[1][1]).astype(np.int64)
    name = parts[2][1].decode("latin-1")
    if flags.size < 1 or (int(flags[0]) & 0xFF) not in _NUMERIC_CLASSES or int(flags[0]) & _COMPLEX_FLAG:
        return name, None
    if len(parts) < 4 or (dims < 0).any() or dims.size < 2:
        raise inner.fail(f"variable {name!r} has no values or bad dimensions {dims.tolist()}")
    values = inner.numbers(*parts[3])
    if values.size != int(np.prod(dims)):
        raise inner.fail(f"variable {name!r} holds {values.size} values for dimensions {dims.tolist()}")
    return name, values.astype(np.float64).reshape(tuple(dims), order="F")


def read_mat5(path: str | os.PathLike) -> dict[str, np.ndarray | None]:
    """The variables of a MATLAB v5 ``.mat`` file by name: float64 arrays for real numeric matrices, None for
    any other class. A file that is not a complete v5 file raises :class:`FormatError` naming it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise FormatError(f"{path}: cannot read ({err.strerror or err})") from None
    reader = _Reader(data, "<", path)
    if len(data) < HEADER_BYTES or data[126:128] not in (b"IM", b"MI"):
        raise reader.fail("no v5 header")
    reader.order = "<" if data[126:128] == b"IM" else ">"
    variables: dict[str, np.ndarray | None] = {}
    at = HEADER_BYTES
    while at < len(data):
        kind, payload, at = reader.element(at)
        if kind == _COMPRESSED:
            inflate = zlib.decompressobj()
            try:
                payload = inflate.decompress(payload, MAX_INFLATED_BYTES)
            except zlib.error as err:
                raise reader.fail(f"compressed element: {err}") from None
            if inflate.unconsumed_tail:
                raise reader.fail(f"a compressed element inflates beyond {MAX_INFLATED_BYTES} bytes")
            kind, payload, _ = _Reader(payload, reader.order, path).element(0)
        if kind == _MATRIX:
            name, value = _matrix(reader, payload)
            variables[name] = value
    return variables
