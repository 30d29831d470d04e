"""Local leaderboard: load run folders (``table``), render them as text/CSV/Markdown (``table``) and as
one self-contained HTML report (``html``); ``publish`` does all of it for a folder of runs. ``fake``
writes realistic fake run folders for demos and tests; ``chromium`` checks and screenshots the report
with headless Chromium. CLI: ``tools/leaderboard.py``."""
