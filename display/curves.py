"""MRE-vs-clicks curves of interactive keypoint runs drawn into a PNG (``tools/interactive_eval.py --plot``),
with the leaderboard report's figure (:func:`leaderboard.html.click_figure`)."""
from __future__ import annotations

from pathlib import Path

from leaderboard.html import RC, click_figure
from core.atomic import atomic_write


def save_click_plot(curves: dict[str, dict], path: str | Path) -> Path:
    """Draw MRE-vs-clicks curves (``summary.json['interactive']`` entries by label) into a PNG, atomically."""
    import matplotlib

    path = Path(path)
    with matplotlib.rc_context(RC):
        fig = click_figure(curves)
        if isinstance(fig, str):
            raise ValueError(fig)
        with atomic_write(path, "wb") as f:
            fig.savefig(f, format="png", facecolor="white")
    return path
