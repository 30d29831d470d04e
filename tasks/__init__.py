"""Tasks: readers of the competition formats, targets, losses, metrics, decoding and submissions.

``tasks`` knows nothing of ``models``; the engine joins the two.
"""
