"""Schema of ``configs/ensembles/*.yaml``, one for all three tasks: members (run folders), method, weights,
thresholds (segmentation) or vote radius (keypoints), fitting.

```yaml
task: segmentation
method: weighted                 # the task's spec lists its methods (segmentation: soft | hard | weighted;
                                 # keypoints: soft | mean | median | weighted | hard; boneage: mean | median | weighted)
members:                         # run folders: <run>/best.pt, <run>/config.yaml, <run>/preds/<split>/
  - run: runs/segmentation/demo_unet-f0
  - {name: fpn, run: runs/segmentation/demo_fpn-f0}
  - {name: u3p, runs: [runs/segmentation/demo_unet3plus-f0, runs/segmentation/demo_unet3plus-f1]}  # fold runs
weights: fit                     # [w, ...] | {member: w} | fit   (weighted; normalised, >= 0, not all zero)
class_weights:                   # per-class rows of the weight table; classes or groups (wrist, fingers, forearm)
  wrist: {u3p: 1}                # one-hot: the wrist classes come from u3p only (members not named get 0)
                                 # (keypoints: landmark names, e.g. {MCP2: {a: 1}})
thresholds: fit                  # segmentation only: 0.5 | [29 values] | {class: t} | fit
min_votes: 2                     # hard: votes needed (default: strict majority)
radius: 4.0                      # keypoints hard: agreement radius, original-image pixels (required)
tta: {hflip: true, vflip: false, scales: [1.0]}   # absent: each member uses its own run's inference.tta
fit: {per_class: true, folds: 5, grid_step: 0.1}   # what 'fit' searches (tools/fit_ensemble.py);
                                 # per_class: per class (segmentation) / per landmark (keypoints)
postprocess: fit                 # segmentation: {class: [largest_component, fill_holes, min_area:<px>]} | fit
```

A member with ``runs`` (the folds of one configuration) predicts the test set as the mean of its fold
models and the validation set out-of-fold (each image from the fold model that did not train on it).
``fit`` in ``weights``/``thresholds``/``postprocess`` reads the values that ``tools/fit_ensemble.py`` stored in the
ensemble's run folder (``<out_dir>/<task>/<name>/fit.json``).
"""
from __future__ import annotations

import difflib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, ValidationError, field_validator, model_validator

from engine.config import (Config, ConfigError, TTAConfig, field_message, folder_name, read_yaml_mapping,
                           threshold_in_range)
from tasks.schema import Section, Threshold, check_thresholds, quarter_turn_problem
from tasks.formats.tables import TEXT_ENCODING
from tasks.spec import TaskSpec, specs, task_spec


class MemberConfig(Section):
    """One member: a run folder, or several (the folds of one configuration, averaged at test time)."""

    run: str | None = None
    runs: list[str] | None = None
    name: str | None = None
    checkpoint: str = "best.pt"
    threshold: Threshold | None = None

    _threshold = field_validator("threshold")(threshold_in_range)

    @model_validator(mode="after")
    def _one_source(self) -> "MemberConfig":
        if (self.run is None) == (self.runs is None):
            raise ValueError("give exactly one of 'run' (a run folder) or 'runs' (fold run folders)")
        if self.runs is not None and not self.runs:
            raise ValueError("'runs' is empty")
        return self

    @property
    def run_dirs(self) -> list[Path]:
        return [Path(r) for r in (self.runs if self.runs is not None else [self.run])]

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        first = self.run_dirs[0].name
        return first.rsplit("-f", 1)[0] if self.runs is not None else first


class FitConfig(Section):
    """How ``tools/fit_ensemble.py`` fits weights and thresholds on validation predictions."""

    per_class: bool = True
    folds: int = Field(5, ge=2)
    grid_step: float = Field(0.1, gt=0, le=0.5)
    max_candidates: int = Field(300, ge=1)
    threshold_range: tuple[float, float] = (0.05, 0.95)
    fit_size: int | None = Field(256, ge=16)
    seed: int = 0

    @field_validator("threshold_range")
    @classmethod
    def _range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] < value[1] < 1:
            raise ValueError(f"needs 0 < low < high < 1, got {list(value)}")
        return value


class EnsembleConfig(Section):
    task: str
    method: Literal["soft", "hard", "weighted", "mean", "median"]
    members: list[MemberConfig]
    name: str | None = None
    weights: list[float] | dict[str, float] | Literal["fit"] | None = None
    class_weights: dict[str, dict[str, float]] = Field(default_factory=dict)
    thresholds: Threshold | Literal["fit"] = 0.5
    postprocess: dict[str, list[str]] | Literal["fit"] = Field(default_factory=dict)
    min_votes: int | None = None
    radius: float | None = Field(None, gt=0)
    tta: TTAConfig = Field(default_factory=TTAConfig)
    fit: FitConfig = Field(default_factory=FitConfig)
    test_root: str | None = None
    out_dir: str = "runs"
    workers: int = Field(2, ge=0)
    max_in_flight_mb: float = Field(1024, gt=0)  # member maps held by images waiting or being fused

    _name = field_validator("name")(folder_name)

    @field_validator("members")
    @classmethod
    def _members(cls, members: list[MemberConfig]) -> list[MemberConfig]:
        if not members:
            raise ValueError("an ensemble needs at least one member")
        labels = [m.label for m in members]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ValueError(f"member names must be unique, {dup} repeats; give each a 'name'")
        return members

    @field_validator("task")
    @classmethod
    def _known_task(cls, value: str) -> str:
        task_spec(value)
        return value

    @field_validator("thresholds")
    @classmethod
    def _thresholds(cls, value: Threshold | Literal["fit"]) -> Threshold | Literal["fit"]:
        return value if value == "fit" else threshold_in_range(value)

    @model_validator(mode="after")
    def _method_options(self) -> "EnsembleConfig":
        n = len(self.members)
        spec = self.spec
        if self.method not in spec.fusion:
            raise ValueError(f"method {self.method!r} is not one for {self.task}; valid: {', '.join(spec.fusion)}")
        if not spec.thresholded:
            if "thresholds" in self.model_fields_set or any(m.threshold is not None for m in self.members):
                raise ValueError(f"thresholds are for {tasks_with(lambda s: s.thresholded)}; a {self.task} ensemble "
                                 "has nothing to threshold")
        if self.postprocess and not spec.postprocess:
            raise ValueError(f"postprocess is for {tasks_with(lambda s: s.postprocess)} masks; a {self.task} ensemble "
                             "has none")
        if self.postprocess == "fit" and self.method == "hard":
            raise ValueError("postprocess: fit is fitted with the soft/weighted fit (tools/fit_ensemble.py); "
                             "give a hard vote its operations per class")
        if isinstance(self.postprocess, dict):
            from tasks.postprocess import check_postprocess

            try:
                check_postprocess(self.postprocess, spec.classes)
            except ValueError as err:
                raise ValueError(f"postprocess: {err}") from None
        unit = getattr(spec.ensemble_side(), "radius_unit", None)
        if self.method == "hard" and unit is not None:
            if self.radius is None:
                raise ValueError(f"{self.task} method 'hard' needs 'radius': the distance ({unit} of the original "
                                 "image) within which members agree on a point")
        elif self.radius is not None:
            raise ValueError(f"radius is for {tasks_with(lambda s: s.ensemble_side().radius_unit is not None)} "
                             "method 'hard'")
        if self.method != "hard" and self.min_votes is not None:
            raise ValueError(f"min_votes is for method 'hard', not {self.method!r}")
        if self.method == "hard" and self.min_votes is not None and not 1 <= self.min_votes <= n:
            raise ValueError(f"min_votes={self.min_votes} must be between 1 and {n} (the number of members)")
        if self.method != "weighted" and (self.weights is not None or self.class_weights):
            raise ValueError(f"weights/class_weights are for method 'weighted', not {self.method!r}")
        if self.weights == "fit" and self.class_weights:
            raise ValueError("weights: fit and class_weights cannot be combined (fitted per-class weights would be "
                             "overwritten); fit with per_class, or fix the weights")
        if self.method == "hard" and self.thresholds == "fit":
            raise ValueError("method 'hard' thresholds each member with its own thresholds; 'fit' is for soft/weighted")
        labels = [m.label for m in self.members]
        classes = spec.classes if spec.thresholded else ()
        for where, value in [("thresholds", self.thresholds)] + [(f"members.{m.label}.threshold", m.threshold)
                                                                 for m in self.members]:
            if classes and value is not None and value != "fit":
                try:
                    check_thresholds(value, classes)
                except ValueError as err:
                    raise ValueError(f"{where}: {err}") from None
        if isinstance(self.weights, list) and len(self.weights) != n:
            raise ValueError(f"weights: {len(self.weights)} values for {n} members ({', '.join(labels)})")
        values = self.weights if isinstance(self.weights, list) else \
            list(self.weights.values()) if isinstance(self.weights, dict) else []
        rows = [values] + [list(row.values()) for row in self.class_weights.values()]
        if any(v < 0 or v != v for row in rows for v in row):
            raise ValueError("weights must be >= 0 (a member with weight 0 is left out)")
        if values and isinstance(self.weights, list) and not any(v > 0 for v in values):
            raise ValueError("weights are all zero: at least one member needs a positive weight")
        named = [self.weights] if isinstance(self.weights, dict) else []
        for group, row in self.class_weights.items():
            named.append(row)
        for row in named:
            unknown = sorted(set(row) - set(labels))
            if unknown:
                near = difflib.get_close_matches(unknown[0], labels, n=1)
                hint = f"; did you mean {near[0]!r}?" if near else ""
                raise ValueError(f"weights name unknown member(s) {unknown}{hint}"
                                 + f" (members: {', '.join(labels)})")
        return self

    @property
    def labels(self) -> list[str]:
        return [m.label for m in self.members]

    @property
    def spec(self) -> TaskSpec:
        return task_spec(self.task)

    @property
    def run_name(self) -> str:
        return self.name or "ensemble"

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.task / self.run_name

    @property
    def fit_path(self) -> Path:
        return self.run_dir / "fit.json"

    def member_tta(self, cfg: Config) -> TTAConfig:
        """The TTA views' settings for a member run's config ``cfg``: the ensemble's ``tta`` when the
        YAML gives one, else the run's own ``inference.tta``. The ensemble's quarter turns (``tta.rot90``) of a
        member with a non-square input are a ConfigError naming the member's run."""
        if "tta" not in self.model_fields_set:
            return cfg.inference.tta
        turns = quarter_turn_problem(cfg.data.image_size) if self.tta.rot90 else None
        if turns:
            raise ConfigError(f"ensemble {self.run_name}: tta.rot90: member run {cfg.run_name}: {turns}")
        return self.tta


def tasks_with(has: Callable[[TaskSpec], bool]) -> str:
    """The tasks whose spec ``has`` something, for messages ("thresholds are for segmentation")."""
    return " and ".join(s.name for s in specs() if has(s)) or "no task"


def load_ensemble_config(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> EnsembleConfig:
    """Read and validate an ensemble YAML; errors name the file and the key."""
    path = Path(path)
    raw = read_yaml_mapping(path, "ensemble config")
    raw.setdefault("name", path.stem)
    raw.update(overrides or {})
    try:
        return EnsembleConfig.model_validate(raw)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"])
            if e["type"] == "extra_forbidden":
                parent_fields = _fields_at(e["loc"][:-1])
                near = difflib.get_close_matches(str(e["loc"][-1]), parent_fields, n=1, cutoff=0.4)
                lines.append(f"unknown key '{key}'" + (f"; did you mean '{near[0]}'?" if near else "")
                             + f" (valid: {', '.join(parent_fields)})")
            else:   # a check across keys (no location) names its keys itself
                lines.append(f"'{key}': {field_message(e)}" if key else field_message(e))
        raise ConfigError(f"{path}: " + "; ".join(lines)) from None


def _fields_at(loc: Sequence) -> list[str]:
    model: Any = EnsembleConfig
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        ann = field.annotation
        inner = getattr(ann, "__args__", ())
        candidates = [ann, *inner, *(a for x in inner for a in getattr(x, "__args__", ()))]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, Section)), None)
        if model is None:
            return []
    return list(model.model_fields)


def expand_classes(key: str, classes: Sequence[str], groups: dict[str, tuple[str, ...]] | None = None,
                   where: str = "class_weights") -> list[int]:
    """Indices of a class name or of a named group of them (segmentation: ``wrist``, ``fingers``, ``forearm``)."""
    groups = groups or {}
    if key in classes:
        return [list(classes).index(key)]
    if key in groups and all(c in classes for c in groups[key]):
        return [list(classes).index(c) for c in groups[key]]
    options = list(classes) + [g for g in groups if all(c in classes for c in groups[g])]
    near = difflib.get_close_matches(key, options, n=1)
    raise ConfigError(f"{where}: unknown class or group {key!r}" + (f"; did you mean {near[0]!r}?" if near else ""))


def read_fit(ens: EnsembleConfig) -> dict:
    """The fitted values stored by ``tools/fit_ensemble.py`` (clear error when absent or for other members)."""
    path = ens.fit_path
    if not path.is_file():
        raise ConfigError(f"{path}: no fitted values; the config asks for 'fit' — run "
                          f"`python tools/fit_ensemble.py <this config>` first")
    try:
        fit = json.loads(path.read_text(encoding=TEXT_ENCODING))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: not a readable fit.json ({err}); run `python tools/fit_ensemble.py <this config>` "
                          "again") from None
    if not isinstance(fit, dict):
        raise ConfigError(f"{path}: not a fit.json (a JSON object expected); run `python tools/fit_ensemble.py "
                          "<this config>` again")
    if fit.get("members") != ens.labels:
        raise ConfigError(f"{path}: fitted for members {fit.get('members')}, the config has {ens.labels}; refit")
    return fit


def weight_table(ens: EnsembleConfig, classes: Sequence[str]) -> np.ndarray:
    """The ``(M, C)`` weight table (rows: members, columns: classes), not yet normalised.

    ``weights`` gives every class's default row (equal when absent); each ``class_weights`` entry
    replaces the column(s) of its class or group, members it does not name getting 0.
    """
    labels = ens.labels
    n, c = len(labels), len(classes)
    if ens.weights == "fit":
        table = np.asarray(read_fit(ens)["weights"], np.float64)
        if table.shape != (n, c):
            raise ConfigError(f"{ens.fit_path}: weights of shape {table.shape}, expected ({n}, {c})")
    elif isinstance(ens.weights, list):
        table = np.repeat(np.asarray(ens.weights, np.float64)[:, None], c, axis=1)
    elif isinstance(ens.weights, dict):
        table = np.repeat(np.array([ens.weights.get(m, 0.0) for m in labels], np.float64)[:, None], c, axis=1)
    else:
        table = np.ones((n, c))
    for key, row in ens.class_weights.items():
        column = np.array([row.get(m, 0.0) for m in labels], np.float64)
        for idx in expand_classes(key, classes, getattr(ens.spec.ensemble_side(), "class_groups", None)):
            table[:, idx] = column
    return table


def postprocess_spec(ens: EnsembleConfig) -> dict[str, list[str]]:
    """Per-class post-processing operations (``fit``: from fit.json)."""
    if ens.postprocess != "fit":
        return dict(ens.postprocess)
    fit = read_fit(ens)
    if "postprocess" not in fit:
        raise ConfigError(f"{ens.fit_path}: holds no fitted post-processing; the config asks for "
                          f"'postprocess: fit' — run `python tools/fit_ensemble.py <this config>` again")
    return fit["postprocess"]


def threshold_vector(ens: EnsembleConfig, classes: Sequence[str]) -> np.ndarray:
    """Per-class thresholds of the fused probabilities (``fit``: from fit.json)."""
    value = ens.thresholds
    if value == "fit":
        value = read_fit(ens)["thresholds"]
    try:
        return ens.spec.ensemble_side().thresholds(value, classes)
    except ValueError as err:
        raise ConfigError(f"ensemble thresholds: {err}") from None
