"""Synthetic hand radiographs with exact ground truth for the three tasks, in the real formats.

* :func:`generate` writes a dataset (hand-bone segmentation in the boostcamp layout, bone age in the
  RSNA layout, joints in the SHS_NET and DHA layouts), see :mod:`phantom.writer`.
* :func:`render_hand` renders one hand and returns a :class:`HandPhantom` (image, polygons, masks,
  keypoints, age, sex, side).
* :mod:`phantom.anatomy` holds the bone numbering, landmark names (``SHS15_NAMES``,
  ``DHA37_NAMES``, ``LANDMARKS``), the fitted hand-shape model and the growth tables.

Command line: ``python tools/phantom.py --out DIR --n-train N --n-test M --size S --seed K``.
"""
from __future__ import annotations

import numpy as np

from phantom.anatomy import (CARPALS, DHA37_NAMES, LANDMARKS, RAY_BONES, SHS15_NAMES, Patient, build_hand,
                             landmark_bones, sample_patient)
from phantom.render import HandPhantom, render
from phantom.writer import generate

__all__ = ["generate", "render_hand", "HandPhantom", "SHS15_NAMES", "DHA37_NAMES", "LANDMARKS", "CARPALS",
           "RAY_BONES", "landmark_bones", "sample_patient", "build_hand", "Patient"]


def render_hand(rng_or_seed=0, size: int = 512, age_months: float | None = None, male: bool | None = None,
                side: str = "L", film: float = 0.0) -> HandPhantom:
    """Render one hand: ``size`` x ``size`` uint8 radiograph with exact labels.

    ``rng_or_seed``: a ``numpy.random.Generator`` or an int seed. ``age_months`` (0-228) and ``male``
    are drawn when None. ``side``: ``'L'`` (canonical, thumb on the right) or ``'R'`` (mirrored).
    ``film``: the chance of a scanned-film look (grey background), see :func:`phantom.render.render`.
    """
    rng = rng_or_seed if isinstance(rng_or_seed, np.random.Generator) else np.random.default_rng(rng_or_seed)
    patient = sample_patient(rng, age_months, male)
    hand = build_hand(patient, rng)
    return render(hand, size, rng, side, film)
