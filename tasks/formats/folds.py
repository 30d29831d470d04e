"""Cross-validation folds that keep a group (a patient's two hands, a spine's images) on one side."""
from __future__ import annotations

from collections.abc import Sequence

from core.cli import lazy_module
from tasks.formats import FormatError

np = lazy_module("numpy")  # the task specs load without it


def group_folds(groups: Sequence[str], n_folds: int, fold: int, what: str) -> tuple[list[int], list[int]]:
    """Train/val indices of ``fold`` of ``GroupKFold`` over ``groups`` (one per sample; ``n_folds`` is capped
    at the number of groups). ``what`` names the groups in the error for fewer than two of them."""
    from sklearn.model_selection import GroupKFold

    n_groups = len(set(groups))
    if n_groups < 2:
        raise FormatError(f"need at least 2 {what} to make a validation fold, found {n_groups}")
    n_folds = min(n_folds, n_groups)
    if not 0 <= fold < n_folds:
        raise ValueError(f"data.fold={fold} out of range for {n_folds} folds")
    train_idx, val_idx = list(GroupKFold(n_splits=n_folds).split(np.zeros(len(groups)), groups=groups))[fold]
    return sorted(train_idx.tolist()), sorted(val_idx.tolist())
