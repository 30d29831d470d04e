"""Looking at data and runs: overlays and contact sheets of any dataset (``overlay``, ``sheets``), the
Streamlit viewer (``viewer_app``) and its logic without Streamlit (``viewer_state``), its headless
screenshots (``screenshot``) and the MRE-vs-clicks plot of interactive runs (``curves``).

Imports the packages to its left (``tasks``, ``engine``, ``ensembles``, ``leaderboard``); only ``tools/``
imports it.
"""
