"""Experiment config: one YAML file per run, strictly validated, overridable with ``--section.key=value``.

Sections: ``task, data, model, loss, train, augment, inference, logging``. ``data`` is validated by the
task's own schema (``Task.Data``). The override form is exactly what a W&B sweep agent passes.
"""
from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from tasks.schema import DataBase, Section, Threshold, check_thresholds, quarter_turn_problem
from core.atomic import write_text
from tasks.spec import MODE_RESIZE, MODE_SLIDING, TaskSpec, task_names, task_spec
from tasks.formats.names import name_problem
from tasks.formats.tables import TEXT_ENCODING


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file/key and the nearest valid key."""


class ModelConfig(Section):
    name: str = "smp:unet/resnet34"
    weights: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    # Tasks with sigmoid outputs (segmentation): the output bias starts at this probability
    # (models/output_prior.py); None keeps the architecture's own init.
    output_prior: float | None = Field(0.01, gt=0, lt=1)


class LossConfig(Section):
    # None: the task's own default (Task.default_loss: bce + dice, kl, l1), filled in when the config is validated.
    weights: dict[str, Annotated[float, Field(ge=0)]] | None = None
    focal_gamma: float = Field(2.0, ge=0)
    tversky_alpha: float = Field(0.3, ge=0)
    tversky_beta: float = Field(0.7, ge=0)


class TrainConfig(Section):
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    min_lr_ratio: float = Field(0.01, ge=0, le=1)
    accumulate: int = Field(1, ge=1)
    clip_grad: float | None = Field(1.0, gt=0)          # None: no clipping
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    channels_last: bool = True
    ema: float | None = Field(None, gt=0, lt=1)         # decay of the weight average; None: no EMA
    early_stop_patience: int | None = Field(None, ge=1)  # validations without a new best.pt
    select_ema: float | None = Field(None, ge=0, lt=1)   # best.pt by an EMA of the val score (engine/checkpoint_select.py)
    select_min_spread: float | None = Field(None, gt=0, lt=1)  # regression: best.pt never a (near-)constant predictor
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    val_every: int = Field(1, ge=1)
    max_steps_per_epoch: int | None = Field(None, ge=1)
    # The validation score this run should reach, in its task's headline metric (mre_px, dice, mae_months; the
    # direction is the task's): a fine-tune starting from this run's checkpoint warns when it was missed
    # (engine/pretraining.py). None: no target (the fine-tune warns only about a run that stopped early).
    target: float | None = None


Probability = Annotated[float, Field(ge=0, le=1)]


class AugmentConfig(Section):
    hflip: Probability = 0.0
    vflip: Probability = 0.0
    rotate: float = Field(10.0, ge=0, le=180)            # degrees either way
    scale: float = Field(0.1, ge=0, lt=1)                # zoom in [1 - scale, 1 + scale]
    shift: float = Field(0.05, ge=0, le=1)               # fraction of the side
    brightness_contrast: Probability = 0.2
    gamma: float = Field(0.2, ge=0, lt=1)                # gamma in [1 - gamma, 1 + gamma]
    blur: Probability = 0.0
    noise: Probability = 0.0
    extra: list[dict[str, Any]] = Field(default_factory=list)


class TTAConfig(Section):
    hflip: bool = True
    vflip: bool = False
    rot90: bool = False               # also the three quarter turns of every view (orientation: the dihedral views)
    scales: list[Annotated[float, Field(gt=0)]] = Field(default_factory=lambda: [1.0])


def threshold_in_range(value: Threshold | None) -> Threshold | None:
    """Validator of a threshold setting (every value in (0, 1); None: not set); the task's classes are checked by
    the config."""
    if value is not None:
        check_thresholds(value)
    return value


def folder_name(value: str | None) -> str | None:
    """Validator of a name that becomes a folder (a run's, an ensemble's): one path component
    (:func:`tasks.formats.names.name_problem`), so the folder stays inside ``out_dir``."""
    problem = None if value is None else name_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


class InferenceConfig(Section):
    batch_size: int = Field(4, ge=1)
    threshold: Threshold = 0.5
    tta: TTAConfig = Field(default_factory=TTAConfig)
    post_workers: Annotated[int, Field(ge=0)] | Literal["auto"] = "auto"  # threads; auto: engine.device.post_workers
    sliding_window: bool = False          # tiles of data.image_size at the original resolution (engine/sliding_window.py)
    tile_overlap: float = Field(0.5, ge=0, lt=1)  # fraction of a tile shared with the next one

    _threshold = field_validator("threshold")(threshold_in_range)


class LoggingConfig(Section):
    out_dir: str = "runs"
    run_name: str | None = None
    wandb: Literal["off", "offline", "online"] = "off"
    wandb_project: str = "bone-harness"
    tensorboard: bool = False             # also write metrics.jsonl's scalars to <run>/tensorboard/ (engine/run_logging.py)
    progress: bool = True

    _run_name = field_validator("run_name")(folder_name)


class Config(Section):
    task: str
    data: DataBase
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    name: str | None = None

    @field_validator("task")
    @classmethod
    def _known_task(cls, value: str) -> str:
        task_spec(value)
        return value
    _name = field_validator("name")(folder_name)

    @field_validator("data", mode="before")
    @classmethod
    def _task_data(cls, value: Any, info) -> Any:
        task = info.data.get("task")
        if task is None or not isinstance(value, dict):
            return value
        return task_spec(task).data.model_validate(value)

    @model_validator(mode="after")
    def _task_checks(self) -> "Config":
        """What depends on the task's spec: threshold class names, the default loss, regression-only and
        map-only settings, quarter-turn views of a square input only (the model's input-size needs:
        ``engine.trainer.check_image_size``)."""
        spec = self.spec
        try:
            check_thresholds(self.inference.threshold, spec.classes)
        except ValueError as err:
            raise ValueError(f"inference.threshold: {err}") from None
        if self.loss.weights is None:
            self.loss.weights = dict(spec.default_loss)
        if self.train.select_min_spread and not spec.regression:
            raise ValueError(f"train.select_min_spread: only for regression tasks; task {self.task!r} "
                             "reports no prediction spread")
        if self.data.pseudo_roots and spec.pseudo is None:
            raise ValueError(f"data.pseudo_roots: task {self.task!r} has no pseudo-labels")
        if self.inference.sliding_window and "sliding_window" not in spec.modes:
            raise ValueError(f"inference.sliding_window: tiles are for tasks with dense maps, not {self.task}")
        turns = quarter_turn_problem(self.data.input_size) if self.inference.tta.rot90 else None
        if turns:
            raise ValueError(f"inference.tta.rot90: {turns}")
        if self.data.trains_on_patches and not self.inference.sliding_window:
            raise ValueError(f"inference.sliding_window: a patch-trained run (data.patch_size={self.data.input_size}) "
                             "validates and predicts in tiles at the original size; set inference.sliding_window: true")
        if not self.data.has_validation:
            for key in ("early_stop_patience", "select_ema", "select_min_spread"):
                if getattr(self.train, key) is not None:
                    raise ValueError(f"train.{key}: needs validation scores, and data.fold=all holds no image out "
                                     "(best.pt is the last epoch); set it to null")
        return self

    @property
    def spec(self) -> TaskSpec:
        """Everything the task of this config declares (:mod:`tasks.spec`)."""
        return task_spec(self.task)

    @property
    def prediction_mode(self) -> str:
        """How the run predicts (and so what a dense task's prediction cache holds): the whole image resized
        to ``data.image_size``, or tiles at the original size (``inference.sliding_window``)."""
        return MODE_SLIDING if self.inference.sliding_window else MODE_RESIZE

    @property
    def run_name(self) -> str:
        """``<logging.run_name or name>-f<fold>`` (``-fall`` for ``data.fold: all``): folds of one configuration never
        share a folder (a name that already ends in its own fold suffix keeps it once)."""
        base = self.logging.run_name or self.name or "run"
        suffix = f"-f{self.data.fold}"
        return base if base.endswith(suffix) else base + suffix

    @property
    def config_id(self) -> str:
        """Shared by runs of the same configuration over different folds (cross-validation view); a run on all
        data (``data.fold: all``) is no fold of it and has its own (its run name)."""
        return (self.name or self.logging.run_name or "run") if self.data.has_validation else self.run_name

    @property
    def run_dir(self) -> Path:
        return Path(self.logging.out_dir) / self.task / self.run_name

    def to_dict(self) -> dict:
        return self.model_dump(mode="json", serialize_as_any=True)


def _fields_at(path: list[str], task: str | None) -> list[str]:
    """Valid keys of the (nested) section at ``path``: ``[]`` → top level, ``["data"]`` → the task's data
    keys, ``["data", "clicks"]`` → that sub-section's keys; ``[]`` where ``path`` is not a section."""
    cls: type | None = Config
    for depth, name in enumerate(path):
        if depth == 0 and name == "data" and task in task_names():
            cls = task_spec(task).data
            continue
        field = cls.model_fields.get(name) if isinstance(cls, type) and issubclass(cls, BaseModel) else None
        cls = field.annotation if field is not None else None
    return list(cls.model_fields) if isinstance(cls, type) and issubclass(cls, BaseModel) else []


def _explain(err: ValidationError, raw: dict, source: str) -> str:
    lines = []
    task = raw.get("task")
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        key = ".".join(loc)
        if e["type"] == "extra_forbidden":
            parent = loc[:-1]
            valid = _fields_at(parent, task)
            near = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.4)
            hint = f"; did you mean '{'.'.join(parent + near)}'?" if near else ""
            lines.append(f"unknown key '{key}'{hint} (valid in '{'.'.join(parent) or 'top level'}': {', '.join(valid)})")
        elif not key:   # a check across keys: its message names them
            lines.append(field_message(e))
        else:
            lines.append(f"'{key}': {field_message(e)} (got {e.get('input')!r})")
    return f"{source}: " + "; ".join(lines)


def field_message(error: dict) -> str:
    """A pydantic error's message without pydantic's ``Value error, `` prefix on our own validators' text."""
    return str(error["ctx"]["error"]) if error["type"] == "value_error" and error.get("ctx") else error["msg"]


_FLOAT_RE = re.compile(r"^[-+]?\d+(\.\d*)?[eE][-+]?\d+$")


def parse_value(text: str) -> Any:
    """A command-line value: YAML scalars/lists, but ``off``/``yes`` stay strings, ``None`` is null, ``1e-05`` a float."""
    if text == "" or text in ("None", "null"):
        return None
    if _FLOAT_RE.match(text):
        return float(text)
    parsed = yaml.safe_load(text)
    if isinstance(parsed, bool) and text.lower() not in ("true", "false"):
        return text
    return parsed


def parse_overrides(args: list[str]) -> dict:
    """``["--train.lr=3e-4", "--data.fold", "1"]`` → nested dict, values parsed as YAML scalars."""
    out: dict = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or "." not in arg.split("=", 1)[0]:
            raise ConfigError(f"override {arg!r}: expected --section.key=value (e.g. --train.lr=3e-4)")
        key, sep, value = arg[2:].partition("=")
        if not sep:
            if i + 1 >= len(args):
                raise ConfigError(f"override {arg!r} has no value")
            value = args[i + 1]
            i += 1
        parsed = _override_value(arg, value)
        if isinstance(parsed, dict):
            parsed = Replacement(parsed)
        node = out
        parts = key.split(".")
        if not all(part.strip() for part in parts):
            raise ConfigError(f"override {arg!r}: an empty key between dots; expected --section.key=value")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {arg!r} conflicts with an earlier override of '{part}'")
        node[parts[-1]] = parsed
        i += 1
    return out


def _override_value(arg: str, value: str) -> Any:
    """``value`` of the override ``arg`` parsed (:func:`parse_value`); anything that is not plain YAML data, or a
    mapping key left without its value, is a :class:`ConfigError` naming the override."""
    problem = None
    try:
        aliases = any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(value))
        parsed = None if aliases else parse_value(value)
        empty = _keys_without_value(yaml.compose(value)) if isinstance(parsed, (dict, list)) else []
    except RecursionError:
        problem = "nested too deeply"
    except yaml.constructor.ConstructorError as err:
        problem = f"{err.problem}; a value is plain YAML (numbers, text, lists, mappings), nothing is constructed from it"
    except yaml.YAMLError as err:
        reason = getattr(err, "problem", None) or str(err).splitlines()[0]
        problem = (f"not a valid value ({reason}); a mapping is written {{key: value, ...}}, text with YAML's special "
                   "characters in quotes")
    except ValueError as err:   # a tag such as !!float on text that is no number
        problem = f"not a valid value ({err})"
    else:
        if aliases:
            problem = "YAML aliases (*name) are not taken on the command line; write the value out"
        elif empty:
            problem = f"key {empty[0]!r} has no value; write one after its colon (an empty value is written null)"
    if problem is not None:
        raise ConfigError(f"override {arg!r}: {problem}")
    return parsed


def _keys_without_value(node: yaml.Node | None, prefix: str = "") -> list[str]:
    """Dotted keys of the mappings in ``node`` whose value was left out (``{a: }``, ``{a}``): YAML reads them
    as null, but on a command line they are a value forgotten, not a null meant (that is written ``null``)."""
    if isinstance(node, yaml.SequenceNode):
        return [k for item in node.value for k in _keys_without_value(item, prefix)]
    if not isinstance(node, yaml.MappingNode):
        return []
    out = []
    for key, value in node.value:
        name = prefix + (key.value if isinstance(key, yaml.ScalarNode) else "?")
        if isinstance(value, yaml.ScalarNode) and value.tag == "tag:yaml.org,2002:null" and value.value == "":
            out.append(name)
        out += _keys_without_value(value, name + ".")
    return out


class Replacement(dict):
    """A mapping given as a command-line value (``--model.options={}``): it replaces the key, where a tree of
    dotted keys (``--loss.weights.dice=0.5``) changes only the keys it names."""


def deep_merge(base: dict, extra: dict) -> dict:
    """``extra`` over ``base``, key by key: nested mappings merge (``--loss.weights.dice=0.5`` keeps ``bce``),
    a :class:`Replacement` replaces (``--model.name=smp:unet/resnet18 --model.options={}`` drops the options
    of the config's ``shsnet:unet``), and later keys under a replacement extend it."""
    merged = dict(base)
    for key, value in extra.items():
        current = merged.get(key)
        if isinstance(value, Replacement):
            merged[key] = Replacement(value)
        elif isinstance(value, dict) and isinstance(current, dict):
            merged[key] = deep_merge(current, value)
            if isinstance(current, Replacement):
                merged[key] = Replacement(merged[key])
        else:
            merged[key] = value
    return merged


def build_config(raw: dict, source: str = "config") -> Config:
    """Validate a raw dict; errors name ``source`` and the nearest valid key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a config is a YAML mapping of sections")
    if "task" not in raw:
        raise ConfigError(f"{source}: missing 'task' (one of: {', '.join(task_names())})")
    try:
        task_spec(raw["task"])
    except ValueError as err:
        raise ConfigError(f"{source}: {err}") from None
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_explain(err, raw, source)) from None


def read_yaml_mapping(path: Path, what: str = "config") -> dict:
    """A YAML file's top-level mapping (empty file: ``{}``); a missing file, bad YAML or another top level
    is a :class:`ConfigError` naming the file."""
    try:
        raw = yaml.safe_load(path.read_text(encoding=TEXT_ENCODING)) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} file not found") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a UTF-8 text file ({err})") from None
    except RecursionError:
        raise ConfigError(f"{path}: not a usable {what} file (nested too deeply)") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}:{where} not valid YAML ({problem})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the {what} file must be a YAML mapping, got {type(raw).__name__}")
    return raw


def load_config(path: str | os.PathLike | None, overrides: list[str] | dict | None = None) -> Config:
    """Read a YAML config (may be None: overrides only), apply overrides, validate."""
    raw: dict = {}
    source = "overrides"
    if path is not None:
        path = Path(path)
        source = str(path)
        raw = read_yaml_mapping(path)
        raw.setdefault("name", path.stem)
    if overrides:
        extra = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
        try:
            # Overrides change one key of the resolved config: --loss.weights.dice=0.5 keeps bce.
            raw = build_config(raw, source).to_dict()
        except ConfigError:
            pass
        raw = deep_merge(raw, extra)
    return build_config(raw, source)


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config (atomic)."""
    write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
