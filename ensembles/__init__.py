"""Ensembles and TTA: work on arrays and CSVs, never on training code."""
