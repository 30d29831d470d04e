"""Segmentation submission CSVs: ``image_name,class,rle``, 29 rows per image in canonical class order.

Written by streaming rows into a temp file that is renamed into place only when complete; read back
image by image so memory never holds more than one image's masks.
"""
from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path

from tasks.formats import FormatError
from core.atomic import atomic_write
from tasks.formats.handbones import CLASSES
from tasks.formats.names import check_name
from tasks.formats.tables import TEXT_ENCODING

HEADER = ("image_name", "class", "rle")


class AtomicCSVWriter:
    """Context manager: rows go to a temp file (:func:`core.atomic.atomic_write`), renamed to
    ``path`` on success, removed on error."""

    def __init__(self, path: str | os.PathLike, header: Iterable[str] = HEADER) -> None:
        self.path = Path(path)
        self.header = list(header)

    def __enter__(self) -> "AtomicCSVWriter":
        self.stack = ExitStack()
        self.file = self.stack.enter_context(atomic_write(self.path, "w", newline=""))
        self.writer = csv.writer(self.file)
        self.writer.writerow(self.header)
        return self

    def writerow(self, row: Iterable) -> None:
        self.writer.writerow(row)

    def write_image(self, image_name: str, rles: list[str], classes: tuple[str, ...] = CLASSES) -> None:
        if len(rles) != len(classes):
            raise ValueError(f"{image_name}: {len(rles)} masks for {len(classes)} classes")
        self.writer.writerows((image_name, c, r) for c, r in zip(classes, rles))

    def __exit__(self, exc_type, exc, tb) -> bool:
        return self.stack.__exit__(exc_type, exc, tb)


def iter_images(path: str | os.PathLike, classes: tuple[str, ...] = CLASSES) -> Iterator[tuple[str, list[str]]]:
    """Yield ``(image_name, [rle per class])`` per image, checking rows and class order as it streams."""
    path = Path(path)
    try:
        f = path.open(newline="", encoding=TEXT_ENCODING)
    except OSError as err:
        raise FormatError(f"{path}: cannot open submission ({err})") from None
    with f:
        try:
            yield from _images(path, csv.reader(f), classes)
        except (UnicodeDecodeError, csv.Error) as err:
            raise FormatError(f"{path}: not a readable CSV ({err})") from None


def _images(path: Path, reader: Iterator[list[str]], classes: tuple[str, ...]) -> Iterator[tuple[str, list[str]]]:
    header = next(reader, None)
    if header is None or [h.strip() for h in header] != list(HEADER):
        raise FormatError(f"{path}: header must be {','.join(HEADER)}, got {header}")
    seen: set[str] = set()
    current: str | None = None
    rles: list[str] = []
    for line_no, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != 3:
            raise FormatError(f"{path}:{line_no}: expected 3 fields, got {len(row)}")
        name, cls, rle = row
        if name != current:
            check_name(name, f"{path}:{line_no}: image_name")
            if current is not None:
                _check_complete(path, line_no, current, rles, classes)
                yield current, rles
            if name in seen:
                raise FormatError(f"{path}:{line_no}: rows of image {name} are not contiguous (or duplicated)")
            seen.add(name)
            current, rles = name, []
        k = len(rles)
        if k >= len(classes):
            raise FormatError(f"{path}:{line_no}: image {name} has more than {len(classes)} rows (duplicate class?)")
        if cls != classes[k]:
            raise FormatError(f"{path}:{line_no}: image {name}: expected class {classes[k]!r} (canonical order), got {cls!r}")
        rles.append(rle)
    if current is None:
        raise FormatError(f"{path}: no rows")
    _check_complete(path, "end", current, rles, classes)
    yield current, rles


def _check_complete(path: Path, line_no, name: str, rles: list[str], classes: tuple[str, ...]) -> None:
    if len(rles) != len(classes):
        raise FormatError(f"{path}:{line_no}: image {name} has {len(rles)} rows, expected {len(classes)} "
                          f"(missing {', '.join(classes[len(rles):][:3])}...)")
