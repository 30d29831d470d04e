"""One rendered hand: a patient drawn, the hand built and rendered with exact labels."""
from __future__ import annotations

import numpy as np

from phantom.anatomy import build_hand, sample_patient
from phantom.render import HandPhantom, render


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
