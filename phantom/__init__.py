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

from phantom.anatomy import (CARPALS, DHA37_NAMES, LANDMARKS, RAY_BONES, SHS15_NAMES, Patient, build_hand,
                             landmark_bones, sample_patient)
from phantom.hand import render_hand
from phantom.render import HandPhantom
from phantom.writer import generate

__all__ = ["generate", "render_hand", "HandPhantom", "SHS15_NAMES", "DHA37_NAMES", "LANDMARKS", "CARPALS",
           "RAY_BONES", "landmark_bones", "sample_patient", "build_hand", "Patient"]
