"""Train one run of a config, whatever trains it: the torch trainer (:mod:`engine.trainer`) or the learner of an
external model family (ultralytics YOLO, :mod:`engine.yolo_learner`). ``train.py``, its ``--folds``
(:mod:`engine.folds`), sweeps and the competition cycle all train through :func:`train_one`."""
from __future__ import annotations

from typing import Any

from engine.config import Config, ConfigError


def external_learner(cfg: Config) -> Any:
    """A learner with its own training loop (kind "external", e.g. ultralytics YOLO) for ``cfg``.

    The model registry builds the family's model (``models/``); its learner (``engine/``) trains it.
    Contract: ``fit(cfg, resume=False, overwrite=False) -> summary`` runs its own checks and those of
    ``engine.run_folder`` (folder, then every sample) before it creates the run folder, then writes it like
    the torch trainer does (config.yaml, metrics.jsonl, best.pt/last.pt as plain dicts, summary.json).
    """
    import models
    from engine.yolo_learner import YoloLearner

    learners = {"yolo": YoloLearner}  # the training loop of each external model family
    family, _ = models.resolve(cfg.model.name, cfg.task)
    if family.name not in learners:
        raise ConfigError(f"model.name: no learner for the external model family {family.name!r}")
    model = models.create_model(cfg.model.name, task=cfg.task, num_outputs=cfg.spec.task_class()(cfg).num_outputs,
                                weights=cfg.model.weights, **cfg.model.options)
    return learners[family.name](model)


def train_one(cfg: Config, resume: bool, overwrite: bool) -> dict:
    """Train one run of ``cfg`` (torch trainer or an external learner), holding the run folder's claim from
    before its checks to the end; returns its summary."""
    import models

    try:
        family, _ = models.resolve(cfg.model.name, cfg.task)
    except ValueError as err:
        raise ConfigError(f"model.name: {err}") from None
    if family.kind == "external":
        from engine.run_folder import claim_run
        from engine.trainer import check_model_config

        with claim_run(cfg.run_dir):
            check_model_config(cfg)
            return external_learner(cfg).fit(cfg, resume=resume, overwrite=overwrite)
    from engine.trainer import train

    return train(cfg, resume=resume, overwrite=overwrite)
