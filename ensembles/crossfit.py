"""Cross-fitting folds by patient, shared by every fit on validation predictions (weights, thresholds,
post-processing, selection)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def patient_folds(groups: Sequence[str], n_folds: int, seed: int = 0) -> np.ndarray:
    """Fold index per item, whole groups (patients) per fold, seeded; ``min(n_folds, n_groups)`` folds."""
    unique = sorted(set(groups))
    order = np.random.default_rng(seed).permutation(len(unique))
    k = max(1, min(n_folds, len(unique)))
    fold_of = {unique[i]: rank % k for rank, i in enumerate(order)}
    return np.array([fold_of[g] for g in groups], np.int64)
