"""The bone-age prediction cache: ``<run>/preds/<split>/boneage.csv`` (``id,boneage`` months), read by ensembles
and selection. Standard library and numpy only."""
from __future__ import annotations

CACHE_FILE = "boneage.csv"
