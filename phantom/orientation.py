"""Upright phantom radiographs for the orientation classes (SHS_NET: ``4 * side + rotation``).

Each phantom patient gives a left hand (class 4), a right hand in its own pose (class 8) and both side
by side as one film (class 0: the left hand on the image's left, thumbs inward, as the shared real
two-hand films). All are upright; the other nine classes are their quarter turns and mirrors, which the
trainer draws (``tasks.orientation.dihedral_orientation`` gives their labels).
"""
from __future__ import annotations

import numpy as np

from phantom import render_hand

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
