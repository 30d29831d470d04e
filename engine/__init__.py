"""Training and inference engine. Importing it makes the process offline-safe first."""
from engine import offline as _offline  # noqa: F401  (side effect: environment for offline use)
