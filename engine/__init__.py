"""Training and inference engine. Importing it makes the process offline-safe first (:mod:`core.offline`)."""
from core import offline as _offline  # noqa: F401  (side effect: environment for offline use)
