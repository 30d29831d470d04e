"""Hyperparameter sweeps: one W&B-format search space (``sweep_config.yaml``) driven by Optuna or by W&B.

``space`` maps the W&B sweep format onto Optuna distributions, samplers and pruners; ``runner`` runs the
trials (in-process or as ``train.py`` subprocesses), workers, storages and the ranked table; ``budget``
shares ``--n-trials`` among a command's workers (a killed worker's share goes to the others). The CLI is
``python tools/sweep.py sweep_config.yaml``.
"""
from sweeps.space import Param, SweepSpec, SweepSpecError, format_arg, load_sweep, nest, parse_sweep

__all__ = ["Param", "SweepSpec", "SweepSpecError", "format_arg", "load_sweep", "nest", "parse_sweep"]
