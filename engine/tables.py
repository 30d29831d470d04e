"""Rich tables folded to the console width: a table too wide is printed as blocks of its columns, each block
repeating the leading key columns (rank, name), so no column is cut off, squashed to ``…`` or hidden.

Used by every command that prints a table on the terminal (``tools/leaderboard.py``, ``tools/sweep.py``).
The width is the console's: the terminal's, or ``COLUMNS`` where it is set (rich reads it).
"""
from __future__ import annotations

import copy
import dataclasses
import os

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

#: The width of a console that writes to a pipe or file and was given no ``COLUMNS``: wide enough for any row.
UNLIMITED = 4000


def table_console(file=None, pipe_width: int = UNLIMITED) -> Console:
    """A console for tables on ``file`` (default stdout): a terminal's width, or ``COLUMNS`` where it is set, else
    ``pipe_width`` (a pipe or file has no width to respect)."""
    probe = Console(file=file)
    return probe if probe.is_terminal or os.environ.get("COLUMNS") else Console(file=file, width=pipe_width)


def natural_width(console: Console, table: Table) -> int:
    """The width ``table`` takes with no limit (every cell on one line where its column allows)."""
    return Measurement.get(console, console.options.update_width(100_000), table).maximum


def select_columns(table: Table, columns: list[int], title: str | None = None, caption: str | None = None) -> Table:
    """A copy of ``table`` with only ``columns`` (indices, in order), the same rows and styles."""
    out = copy.copy(table)
    out.columns = [dataclasses.replace(table.columns[i], _index=k) for k, i in enumerate(columns)]
    out.title, out.caption = title, caption
    return out


def fold_table(console: Console, table: Table, keys: int = 1) -> list[Table]:
    """``table`` as blocks of columns that each fit ``console.width``; the first ``keys`` columns start every block.

    Columns are taken in order, greedily: a column joins the current block while the block still fits, else it
    starts the next one. A block of the key columns and a single column wider than the console is kept as it is
    (rich then wraps the cells that may wrap). The title goes on the first block, the caption on the last.
    """
    if natural_width(console, table) <= console.width or len(table.columns) <= keys + 1:
        return [table]
    head = list(range(min(keys, len(table.columns))))
    blocks: list[list[int]] = []
    block = list(head)
    for index in range(len(head), len(table.columns)):
        grown = block + [index]
        if len(block) > len(head) and natural_width(console, select_columns(table, grown)) > console.width:
            blocks.append(block)
            block = head + [index]
        else:
            block = grown
    blocks.append(block)
    n = len(blocks)
    return [select_columns(table, cols,
                           title=table.title if k == 0 else f"(continued {k + 1}/{n})",
                           caption=table.caption if k == n - 1 else None)
            for k, cols in enumerate(blocks)]


def print_folded(console: Console, table: Table, keys: int = 1) -> None:
    """Print ``table`` folded to the console width (:func:`fold_table`)."""
    for part in fold_table(console, table, keys):
        console.print(part)
