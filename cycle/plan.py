"""A cycle plan: the YAML file ``tools/cycle.py`` runs, checked, and the training configs it stands for.

::

    name: demo                      # the cycle's folder: <out_dir>/cycles/<name>
    task: segmentation
    out_dir: runs
    data: {root: data/phantom/handbones/train, test_root: data/phantom/handbones/test, n_folds: 5}
    set: {train.epochs: 8}          # any other keys of every model (dotted or nested)
    models:                         # training configs: a path, or {config, name, set}
      - configs/segmentation/demo_unet.yaml
      - {config: configs/segmentation/demo_fpn.yaml, name: fpn, set: {train.lr: 1.0e-3}}
    sweep: {study: seg-sweep, storage: runs/sweeps/seg-sweep.db, top_k: 3}   # and/or the best trials of a sweep
    folds: all                      # or [0, 1]: the cross-validation folds each model trains
    tta: true                       # average the runs' TTA views (inference.tta) for validation and test alike
    select: {max_steps: 20, folds: 5}
    fit: {thresholds: true, postprocess: false}
    full_data: true                 # also one model per architecture on every image (data.fold: all), in its
                                    # test predictions beside the folds; or {epochs: 40} (default auto)
    pseudo_labels: {rounds: 1, precision: 0.99}   # rounds retrained with the confident test predictions
    submission: submissions/{name}.csv   # the default; {name}: the cycle's name
    test_gt: data/phantom/handbones/test_gt      # optional: score locally and rank on the leaderboard

Every model's config is its file with the plan's ``data`` and ``set`` over it (then the entry's own ``set``),
named by the entry (default: the file's stem), its runs written under the cycle's folder. Nothing here
imports torch: ``--dry-run`` and the checks stay quick.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from engine.config import Config, ConfigError, build_config, deep_merge, field_message, folder_name, read_yaml_mapping
from tasks.schema import Section
from tasks.spec import task_spec

PLAN_KEYS_HINT = ("name, task, out_dir, data, set, models, sweep, folds, tta, select, fit, full_data, pseudo_labels, "
                  "submission, test_gt")


class ModelEntry(Section):
    """One architecture of the plan: a training config, its label in the cycle and its own overrides."""

    config: str
    name: str | None = None
    set: dict[str, Any] = Field(default_factory=dict)

    _name = field_validator("name")(folder_name)


class SweepSource(Section):
    """The ``top_k`` best finished trials of an Optuna study (``tools/sweep.py``); each trial's run folder holds
    the config it trained (its ``config.yaml``), which the cycle trains again over its folds."""

    study: str
    storage: str | None = None      # as tools/sweep.py --storage (default: runs/sweeps/<study>.db)
    top_k: int = Field(3, ge=1)


class SelectOptions(Section):
    """Greedy selection's options (:func:`ensembles.select.select_ensemble`)."""

    max_steps: int = Field(20, ge=1)
    init: int = Field(0, ge=0)
    patience: int = Field(0, ge=0)
    folds: int = Field(5, ge=2)
    fit_size: int | None = Field(256, ge=8)
    threshold: float = Field(0.5, gt=0, lt=1)
    seed: int = 0


class FitOptions(Section):
    """What is fitted on the selected ensemble's out-of-fold predictions (``tools/fit_ensemble.py``); each fit
    is kept only where it wins out of sample (cross-fitted over patients), so asking costs nothing but time."""

    thresholds: bool = True          # per-class thresholds (tasks with thresholds)
    postprocess: bool = False        # per-class mask post-processing (segmentation)
    per_class: bool = True
    folds: int = Field(5, ge=2)


class FullDataOptions(Section):
    """One more model per architecture trained on every training image (``data.fold: all``, nnU-Net's "all"
    fold) after its folds, for ``epochs`` epochs (``auto``: :func:`engine.folds.full_data_epochs` of its folds);
    its test prediction joins its folds' in the submitted ensemble (validation, fitting and selection use the
    folds: it holds no image out)."""

    epochs: int | Literal["auto"] = "auto"

    @field_validator("epochs")
    @classmethod
    def _positive(cls, value: int | str) -> int | str:
        if value != "auto" and value < 1:
            raise ValueError(f"{value}: 'auto' or a number of epochs from 1")
        return value


class PseudoOptions(Section):
    """Pseudo-label rounds (:mod:`ensembles.pseudo`): after the submission, the submitted ensemble's confident
    test predictions (a threshold fitted on out-of-fold predictions to be right ``precision`` of the time) join
    every fold's training images, every model is trained again and a new ensemble is selected, fitted and
    submitted; ``rounds`` times, each round from the previous round's ensemble."""

    rounds: int = Field(1, ge=1)
    precision: float = 0.99

    @field_validator("precision")
    @classmethod
    def _precision(cls, value: float) -> float:
        from tasks.pseudo import check_precision

        return check_precision(value)


def _switch(value: Any) -> Any:
    """``true`` is the section with its defaults, ``false`` (or nothing) leaves it off."""
    return {} if value is True else None if value is False else value


class CyclePlan(Section):
    name: str
    task: str
    out_dir: str = "runs"
    data: dict[str, Any] = Field(default_factory=dict)
    set: dict[str, Any] = Field(default_factory=dict)
    models: list[str | ModelEntry] = Field(default_factory=list)
    sweep: SweepSource | None = None
    folds: Literal["all"] | list[int] = "all"
    tta: bool = True
    select: SelectOptions = Field(default_factory=SelectOptions)
    fit: FitOptions = Field(default_factory=FitOptions)
    full_data: FullDataOptions | None = None
    pseudo_labels: PseudoOptions | None = None
    submission: str = "submissions/{name}.csv"
    test_gt: str | None = None

    _name = field_validator("name")(folder_name)

    @field_validator("task")
    @classmethod
    def _known_task(cls, value: str) -> str:
        task_spec(value)
        return value

    _switches = field_validator("full_data", "pseudo_labels", mode="before")(_switch)

    @field_validator("pseudo_labels")
    @classmethod
    def _task_has_pseudo_labels(cls, value: PseudoOptions | None, info: ValidationInfo) -> PseudoOptions | None:
        task = info.data.get("task")
        if value is not None and task is not None:
            task_spec(task).pseudo_side()
        return value

    @field_validator("submission")
    @classmethod
    def _csv(cls, value: str) -> str:
        if not value.endswith(".csv"):
            raise ValueError(f"{value!r} is not a .csv path")
        if value.replace("{name}", "").count("{") or value.replace("{name}", "").count("}"):
            raise ValueError(f"{value!r}: the one placeholder a submission path takes is {{name}}")
        return value

    @property
    def submission_csv(self) -> Path:
        """The submission path, ``{name}`` replaced by the cycle's name (so a ``--name`` variant writes its own)."""
        return Path(self.submission.replace("{name}", self.name))

    def pseudo_round(self, number: int, pseudo_root: Path) -> CyclePlan:
        """The plan of pseudo-label round ``number``: named ``<name>-r<number>`` (its own folder, runs and
        submission: ``{name}`` in the path, or ``-r<number>`` before ``.csv``), its models trained with
        ``pseudo_root`` added to ``data.pseudo_roots``. Every round is derived from the plan itself, so a round
        trains on its own pseudo-labels only (made by the round before it), not on those of earlier rounds."""
        submission = self.submission if "{name}" in self.submission else \
            self.submission[:-len(".csv")] + f"-r{number}.csv"
        return self.model_copy(update={"name": f"{self.name}-r{number}", "submission": submission,
                                       "data": {**self.data, "pseudo_roots": [*self.data.get("pseudo_roots", []), str(pseudo_root)]}})

    @field_validator("folds")
    @classmethod
    def _distinct(cls, value: Literal["all"] | list[int]) -> Literal["all"] | list[int]:
        if value != "all" and (not value or len(set(value)) != len(value) or min(value) < 0):
            raise ValueError(f"{value}: 'all' or distinct fold numbers from 0")
        return value

    @model_validator(mode="after")
    def _some_model(self) -> CyclePlan:
        if not self.models and self.sweep is None:
            raise ValueError("models / sweep: the plan trains nothing; list training configs under models, or "
                             "name a finished sweep under sweep")
        return self

    @property
    def folder(self) -> Path:
        """``<out_dir>/cycles/<name>``: every run, ensemble and record of this cycle."""
        return Path(self.out_dir) / "cycles" / self.name

    @property
    def runs_dir(self) -> Path:
        """The task folder of the cycle's runs and ensembles (what selection and the leaderboard read)."""
        return self.folder / self.task


def nest(mapping: dict[str, Any]) -> dict[str, Any]:
    """``{"train.epochs": 8, "data": {"n_folds": 3}}`` → ``{"train": {"epochs": 8}, "data": {"n_folds": 3}}``."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        parts = str(key).split(".")
        node = {parts[-1]: nest(value) if isinstance(value, dict) else value}
        for part in reversed(parts[:-1]):
            node = {part: node}
        out = deep_merge(out, node)
    return out


def load_plan(path: str | os.PathLike, sets: dict[str, Any] | None = None, name: str | None = None) -> CyclePlan:
    """Read and check a plan file; ``sets`` (``--set key=value``) join its ``set``, ``name`` replaces its name."""
    path = Path(path)
    raw = read_yaml_mapping(path, "cycle plan")
    if sets:
        raw["set"] = deep_merge(nest(raw.get("set") or {}), nest(sets))
    if name is not None:
        raw["name"] = name
    try:
        return CyclePlan.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"{path}: " + "; ".join(_message(e) for e in err.errors())) from None


def _message(error: dict) -> str:
    key = ".".join(str(p) for p in error["loc"])
    if error["type"] == "extra_forbidden":
        return f"unknown key '{key}' (valid: {PLAN_KEYS_HINT})"
    return f"'{key}': {field_message(error)}" if key else field_message(error)


def model_entries(plan: CyclePlan) -> list[tuple[str, dict[str, Any]]]:
    """``(label, raw config)`` of every architecture: the plan's models, then the sweep's best trials."""
    entries: list[tuple[str, dict[str, Any]]] = []
    for item in plan.models:
        entry = item if isinstance(item, ModelEntry) else ModelEntry(config=item)
        path = Path(entry.config)
        if not path.is_file():
            raise ConfigError(f"models: {path}: training config file not found (a plan's paths are relative to the "
                              f"current folder, {os.getcwd()})")
        raw = read_yaml_mapping(path, "training config")
        entries.append((entry.name or folder_name(path.stem), deep_merge(raw, nest(entry.set))))
    if plan.sweep is not None:
        entries += sweep_entries(plan.sweep)
    labels = [label for label, _ in entries]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise ConfigError(f"models: {twice[0]!r} names two models; give one a name (models: - {{config: ..., name: ...}})")
    return entries


def sweep_entries(source: SweepSource) -> list[tuple[str, dict[str, Any]]]:
    """The ``top_k`` best COMPLETE trials of the study, as ``(<study>-t<number>, the config its run trained)``."""
    import optuna
    from optuna.trial import TrialState

    from sweeps.runner import open_storage, ranked_trials, resolve_storage

    where = resolve_storage(source.storage, source.study, 1)
    try:
        study = optuna.load_study(study_name=source.study, storage=open_storage(where, heartbeat=None))
    except KeyError:
        raise ConfigError(f"sweep.study: {where.display} holds no study {source.study!r}") from None
    done = [t for t in ranked_trials(study) if t.state == TrialState.COMPLETE and t.user_attrs.get("run_dir")]
    if not done:
        raise ConfigError(f"sweep.study: {source.study!r} has no finished trial with a run folder to take")
    entries = []
    for trial in done[:source.top_k]:
        raw = read_yaml_mapping(Path(trial.user_attrs["run_dir"]) / "config.yaml", "trial config")
        raw.pop("name", None)
        raw.get("logging", {}).pop("run_name", None)
        entries.append((f"{folder_name(source.study)}-t{trial.number}", raw))
    return entries


def model_config(plan: CyclePlan, label: str, raw: dict[str, Any], fold: int | None = None) -> Config:
    """The config of ``label``'s run on ``fold`` (None: the raw config's own fold) inside the cycle."""
    merged = deep_merge(deep_merge(raw, {"data": dict(plan.data)}), nest(plan.set))
    logging = {**merged.get("logging", {}), "out_dir": str(plan.folder), "run_name": None}
    merged = {**merged, "name": label, "logging": logging}
    if fold is not None:
        merged = deep_merge(merged, {"data": {"fold": fold}})
    cfg = build_config(merged, f"{label} (cycle {plan.name})")
    if cfg.task != plan.task:
        raise ConfigError(f"models: {label} is a {cfg.task} config; the plan's task is {plan.task}")
    return cfg


def fold_configs(plan: CyclePlan) -> dict[str, list[Config]]:
    """Every model's run configs, one per fold of the plan, by label."""
    out = {}
    for label, raw in model_entries(plan):
        first = model_config(plan, label, raw)
        folds = range(first.data.n_folds) if plan.folds == "all" else plan.folds
        bad = [f for f in folds if f >= first.data.n_folds]
        if bad:
            raise ConfigError(f"folds: fold {bad[0]} does not exist with data.n_folds={first.data.n_folds} "
                              f"({label})")
        out[label] = [model_config(plan, label, raw, f) for f in folds]
    return out

