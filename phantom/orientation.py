"""Phantom radiographs for the orientation classes (SHS_NET: ``4 * side + rotation``).

Each phantom patient gives a left hand (class 4), a right hand in its own pose (class 8) and both side
by side as one film (class 0: the left hand on the image's left, thumbs inward, as the shared real
two-hand films). :func:`orientation_phantoms` returns them upright; :func:`write_orientation` writes a
labelled folder of them (``labels.csv`` + ``images/``) turned and mirrored at random, each with the label its
view implies (``tasks.orientation.heuristic.dihedral_label``), the layout of the real SHS_NET orientation set.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from phantom.hand import render_hand
from core.atomic import write_text
from tasks.formats.images import write_png
from tasks.orientation.heuristic import DIHEDRAL, dihedral_label, dihedral_view

TWO, LEFT, RIGHT = 0, 4, 8


def orientation_phantoms(n_patients: int, size: int = 96, seed: int = 0) -> list[tuple[str, np.ndarray, int]]:
    """``(name, upright image, class)``: three films per patient (left, right, both hands)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_patients):
        left = render_hand(rng, size=size, side="L")
        right = render_hand(rng, size=size, age_months=left.age_months, male=left.male, side="R")
        out += [(f"phantom{i}_L", left.image, LEFT), (f"phantom{i}_R", right.image, RIGHT),
                (f"phantom{i}_LR", np.hstack([left.image, right.image]), TWO)]
    return out


def write_orientation(folder: str | Path, n_patients: int, size: int = 96, seed: int = 0, prefix: str = "") -> int:
    """Write ``folder/labels.csv`` (``img_id,label,patient``) and ``folder/images/<img_id>.png``: every film of
    :func:`orientation_phantoms` in a random one of its eight quarter turns and mirrors. Returns the films."""
    folder = Path(folder)
    rng = np.random.default_rng([seed, 7])
    rows = ["img_id,label,patient"]
    films = orientation_phantoms(n_patients, size, seed)
    for name, image, label in films:
        k, mirror = DIHEDRAL[int(rng.integers(len(DIHEDRAL)))]
        img_id = f"{prefix}{name}"
        write_png(folder / "images" / f"{img_id}.png", dihedral_view(image, k, mirror))
        rows.append(f"{img_id},{dihedral_label(label, k, mirror)},{prefix}{name.split('_')[0]}")
    write_text(folder / "labels.csv", "\n".join(rows) + "\n")
    return len(films)
