"""A W&B sweep file (``sweep_config.yaml``) read as an Optuna search space.

The same file drives ``wandb sweep`` and ``python tools/sweep.py``. Parameter names are our dotted config
keys (``train.lr``, ``loss.weights.dice``, ``model.name``); a W&B agent passes them as
``--train.lr=0.001``, which ``train.py`` parses.

How each W&B parameter kind becomes an Optuna distribution (the sampler sees the distribution; the
trial's config gets the value):

=========================== ====================================================== =====================
W&B kind                    Optuna                                                 value
=========================== ====================================================== =====================
``value`` / constant        not searched (W&B: "constants are not part of the      the value
                            search space"); recorded in the trial's user attrs
``values`` / categorical    ``CategoricalDistribution`` (lists/dicts JSON-encoded) the choice
categorical_w_probabilities ``u ~ Float[0, 1]`` under ``<name>#u``                 ``values[i]``, i from
                                                                                   the cumulative probs
int_uniform (int min/max)   ``IntDistribution(min, max)``                          int
uniform (float min/max)     ``FloatDistribution(min, max)``                        float
q_uniform                   ``Int/FloatDistribution(lo, hi, step=q)`` with         on the q grid
                            ``lo, hi = round(min/q)*q, round(max/q)*q`` (W&B's
                            support; W&B gives the two end points half weight)
log_uniform_values          ``FloatDistribution(min, max, log=True)``              float
log_uniform (exponents)     ``FloatDistribution(e^min, e^max, log=True)`` —        float
                            exactly W&B's ``exp(uniform(min, max))``
inv_log_uniform_values      ``FloatDistribution(min, max, log=True)`` — W&B's      float
                            ``exp(-uniform(-log max, -log min))`` is that law
inv_log_uniform (exponents) ``FloatDistribution(e^-max, e^-min, log=True)``        float
q_log_uniform(_values)      ``x ~ FloatDistribution(lo, hi, log=True)`` under      ``round(x/q)*q``
                            ``<name>#x`` (Optuna has no stepped log floats)         (int when q is int)
normal, log_normal, beta    inverse-CDF transform: ``u ~ Float[1e-9, 1-1e-9]``     ``ppf(u)``: exactly
(and their q_* forms)       under ``<name>#u``; TPE models the quantile             W&B's law, tails
                                                                                   beyond 1e-9 cut
=========================== ====================================================== =====================

Methods: ``bayes`` → ``TPESampler``, ``random`` → ``RandomSampler``, ``grid`` → ``GridSampler`` over the
discrete parameters (values, int_uniform, q_uniform). ``metric.goal`` → study direction (W&B's default is
minimize). ``early_terminate: {type: hyperband, min_iter, eta}`` → ``HyperbandPruner(min_resource=min_iter,
reduction_factor=eta, max_resource=max_iter or train.epochs)``. ``run_cap`` caps the study's trial count and
``metric.target`` stops the study once a trial reaches it. W&B rejects unknown top-level keys, so the base
config is read from ``command:`` (``-c configs/...yaml``), never from an extra key.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

import optuna
import yaml
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from tasks.formats.tables import TEXT_ENCODING


class SweepSpecError(ValueError):
    """A sweep file that cannot be used; the message names the file and the parameter."""


# W&B's parameter kinds and the keys each one accepts (besides ``distribution``).
KINDS: dict[str, tuple[str, ...]] = {
    "constant": ("value",),
    "categorical": ("values",),
    "categorical_w_probabilities": ("values", "probabilities"),
    "int_uniform": ("min", "max"),
    "uniform": ("min", "max"),
    "q_uniform": ("min", "max", "q"),
    "log_uniform": ("min", "max"),
    "log_uniform_values": ("min", "max"),
    "inv_log_uniform": ("min", "max"),
    "inv_log_uniform_values": ("min", "max"),
    "q_log_uniform": ("min", "max", "q"),
    "q_log_uniform_values": ("min", "max", "q"),
    "normal": ("mu", "sigma"),
    "q_normal": ("mu", "sigma", "q"),
    "log_normal": ("mu", "sigma"),
    "q_log_normal": ("mu", "sigma", "q"),
    "beta": ("a", "b"),
    "q_beta": ("a", "b", "q"),
}
DEFAULTS = {"mu": 0.0, "sigma": 1.0, "q": 1, "a": 1.0, "b": 1.0}
GRID_KINDS = ("constant", "categorical", "int_uniform", "q_uniform")
METHODS = ("bayes", "random", "grid")
TOP_LEVEL = ("program", "name", "description", "method", "metric", "parameters", "early_terminate", "command",
             "run_cap", "entity", "project", "controller", "kind", "apiVersion", "job", "image_uri")
COMMAND_MACROS = re.compile(r"^\$\{(env|interpreter|program|args|args_no_hyphens|args_json|args_json_file|"
                            r"args_no_boolean_flags|args_no_equals|args_append_hydra|args_override_hydra)\}$")
U_EPS = 1e-9  # quantile clip of the inverse-CDF transforms (u in [eps, 1 - eps])
# Overrides in ``command:`` that only make sense under a W&B agent (the Optuna driver ignores them).
WANDB_ONLY_OVERRIDES = ("logging.wandb",)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _primitive(x: Any) -> bool:
    return x is None or isinstance(x, (bool, int, float, str))


def _encode(value: Any) -> Any:
    """Optuna categorical choices must be None/bool/int/float/str: lists and dicts travel as JSON."""
    return value if _primitive(value) else "json:" + json.dumps(value, sort_keys=True)


def _decode(choice: Any) -> Any:
    if isinstance(choice, str) and choice.startswith("json:"):
        return json.loads(choice[5:])
    return choice


def _round_q(x: float, q: int | float) -> int | float:
    """W&B's quantisation ``round(x / q) * q`` (half to even, like numpy), int when ``q`` is an int."""
    steps = round(x / q)
    if _is_int(q):
        return int(steps * q)
    return float(round(steps * q, 12))


@dataclass
class Param:
    """One swept parameter: its W&B kind, the Optuna distribution the sampler sees, and how a sample becomes a value."""

    name: str
    kind: str
    config: dict[str, Any]
    internal: str = ""  # Optuna's parameter name (``name`` unless a transform hides the raw sample)
    distribution: BaseDistribution | None = None  # None for constants (not searched)

    def __post_init__(self) -> None:
        self._build()

    # -- construction -------------------------------------------------------------------------------------------
    def _err(self, msg: str) -> SweepSpecError:
        return SweepSpecError(f"parameter '{self.name}' ({self.kind}): {msg}")

    def _num(self, key: str, positive: bool = False) -> float:
        value = self.config.get(key, DEFAULTS.get(key))
        if not _is_number(value):
            raise self._err(f"'{key}' must be a finite number, got {value!r}")
        if positive and value <= 0:
            raise self._err(f"'{key}' must be > 0, got {value!r}")
        return value

    def _bounds(self, positive: bool = False) -> tuple[float, float]:
        lo, hi = self._num("min", positive), self._num("max", positive)
        if lo > hi:
            raise self._err(f"min {lo!r} > max {hi!r}")
        return lo, hi

    def _build(self) -> None:
        k, c = self.kind, self.config
        self.internal = self.name
        if k == "constant":
            self.distribution = None
        elif k == "categorical":
            values = c["values"]
            if not isinstance(values, list) or not values:
                raise self._err("'values' must be a non-empty list")
            choices = [_encode(v) for v in values]
            if len(set(map(json.dumps, choices))) != len(choices):
                raise self._err(f"duplicate entries in values {values!r}")
            self.distribution = CategoricalDistribution(choices)
        elif k == "categorical_w_probabilities":
            values, probs = c["values"], c["probabilities"]
            if not isinstance(values, list) or not values or not isinstance(probs, list) or len(probs) != len(values):
                raise self._err("'values' and 'probabilities' must be lists of the same length")
            if any(not _is_number(p) or p < 0 for p in probs) or sum(probs) <= 0:
                raise self._err(f"probabilities must be non-negative numbers with a positive sum, got {probs!r}")
            self.internal = f"{self.name}#u"
            self.distribution = FloatDistribution(0.0, 1.0)
        elif k == "int_uniform":
            lo, hi = self._bounds()
            if not (_is_int(c["min"]) and _is_int(c["max"])):
                raise self._err(f"min and max must be integers, got {c['min']!r}, {c['max']!r}")
            self.distribution = IntDistribution(int(lo), int(hi))
        elif k == "uniform":
            lo, hi = self._bounds()
            self.distribution = FloatDistribution(float(lo), float(hi))
        elif k == "q_uniform":
            lo, hi = self._bounds()
            q = self._num("q", positive=True)
            qlo, qhi = _round_q(lo, q), _round_q(hi, q)
            if _is_int(q) and float(qlo).is_integer() and float(qhi).is_integer():
                self.distribution = IntDistribution(int(qlo), int(qhi), step=int(q))
            else:
                n = round((qhi - qlo) / q)
                self.distribution = FloatDistribution(float(qlo), float(qlo) + n * q, step=float(q))
        elif k in ("log_uniform_values", "inv_log_uniform_values"):
            lo, hi = self._bounds(positive=True)
            self.distribution = FloatDistribution(float(lo), float(hi), log=True)
        elif k == "log_uniform":
            lo, hi = self._bounds()
            self.distribution = FloatDistribution(math.exp(lo), math.exp(hi), log=True)
        elif k == "inv_log_uniform":
            lo, hi = self._bounds()
            self.distribution = FloatDistribution(math.exp(-hi), math.exp(-lo), log=True)
        elif k in ("q_log_uniform", "q_log_uniform_values"):
            if k == "q_log_uniform":
                lo, hi = self._bounds()
                lo, hi = math.exp(lo), math.exp(hi)
            else:
                lo, hi = self._bounds(positive=True)
            self._num("q", positive=True)
            self.internal = f"{self.name}#x"
            self.distribution = FloatDistribution(float(lo), float(hi), log=True)
        elif k in ("normal", "q_normal", "log_normal", "q_log_normal"):
            self._num("mu")
            self._num("sigma", positive=True)
            if k.startswith("q_"):
                self._num("q", positive=True)
            self.internal = f"{self.name}#u"
            self.distribution = FloatDistribution(U_EPS, 1.0 - U_EPS)
        elif k in ("beta", "q_beta"):
            self._num("a", positive=True)
            self._num("b", positive=True)
            if k == "q_beta":
                self._num("q", positive=True)
            self.internal = f"{self.name}#u"
            self.distribution = FloatDistribution(U_EPS, 1.0 - U_EPS)
        else:  # pragma: no cover - kinds are checked by parse_parameter
            raise self._err("unsupported")

    # -- sampling -----------------------------------------------------------------------------------------------
    @property
    def searched(self) -> bool:
        return self.distribution is not None

    @property
    def transformed(self) -> bool:
        return self.internal != self.name

    def to_value(self, raw: Any) -> Any:
        """The config value of a raw Optuna sample (``raw`` as in ``trial.params[self.internal]``)."""
        k, c = self.kind, self.config
        if k == "constant":
            return c["value"]
        if k == "categorical":
            return _decode(raw)
        if k == "categorical_w_probabilities":
            probs = [float(p) for p in c["probabilities"]]
            total, acc = sum(probs), 0.0
            for value, p in zip(c["values"], probs):
                acc += p / total
                if raw < acc and p > 0:
                    return value
            return [v for v, p in zip(c["values"], probs) if p > 0][-1]
        if k == "int_uniform":
            return int(raw)
        if k == "q_uniform":
            return _round_q(raw, c.get("q", DEFAULTS["q"]))
        if k in ("q_log_uniform", "q_log_uniform_values"):
            return _round_q(raw, c.get("q", DEFAULTS["q"]))
        if k in ("normal", "q_normal", "log_normal", "q_log_normal"):
            x = NormalDist(float(c.get("mu", 0.0)), float(c.get("sigma", 1.0))).inv_cdf(raw)
            if "log" in k:
                x = math.exp(x)
            return _round_q(x, c.get("q", DEFAULTS["q"])) if k.startswith("q_") else x
        if k in ("beta", "q_beta"):
            from scipy.stats import beta

            x = float(beta.ppf(raw, float(c.get("a", 1.0)), float(c.get("b", 1.0))))
            return _round_q(x, c.get("q", DEFAULTS["q"])) if k == "q_beta" else x
        return float(raw) if isinstance(self.distribution, FloatDistribution) else raw

    def suggest(self, trial: optuna.Trial) -> Any:
        """Sample through the trial (so samplers and the storage see it) and return the config value."""
        if not self.searched:
            return self.config["value"]
        d = self.distribution
        if isinstance(d, CategoricalDistribution):
            raw = trial.suggest_categorical(self.internal, d.choices)
        elif isinstance(d, IntDistribution):
            raw = trial.suggest_int(self.internal, d.low, d.high, step=d.step, log=d.log)
        else:
            raw = trial.suggest_float(self.internal, d.low, d.high, step=d.step, log=d.log)
        return self.to_value(raw)

    def grid_values(self) -> list[Any]:
        """Raw Optuna values of this parameter for ``method: grid``."""
        d = self.distribution
        if isinstance(d, CategoricalDistribution):
            return list(d.choices)
        if isinstance(d, IntDistribution):
            return list(range(d.low, d.high + 1, d.step))
        if isinstance(d, FloatDistribution) and d.step is not None:
            n = round((d.high - d.low) / d.step)
            return [round(d.low + i * d.step, 12) for i in range(n + 1)]
        raise SweepSpecError(f"parameter '{self.name}' ({self.kind}): method 'grid' needs discrete parameters "
                             f"({', '.join(GRID_KINDS)})")

    def example(self) -> Any:
        """A representative value (used to validate the parameter name against the config schema)."""
        if self.kind == "constant":
            return self.config["value"]
        if self.kind in ("categorical", "categorical_w_probabilities"):
            return self.config["values"][0]
        d = self.distribution
        raw = d.low if isinstance(d, (IntDistribution, FloatDistribution)) else None
        if self.transformed:
            raw = 0.5 if self.internal.endswith("#u") else d.low
        return self.to_value(raw)


def infer_kind(name: str, config: Any) -> str:
    """W&B's rules: ``distribution`` if given; else values(+probabilities) → categorical, value → constant,
    integer min/max → int_uniform, other min/max → uniform."""
    if not isinstance(config, dict):
        raise SweepSpecError(f"parameter '{name}': expected a mapping like {{values: [...]}} or {{min: .., max: ..}}, "
                             f"got {config!r}")
    if "parameters" in config:
        raise SweepSpecError(f"parameter '{name}': nested 'parameters' are not supported — use dotted names "
                             f"(e.g. '{name}.lr'): train.py takes --section.key=value, which is what a W&B agent "
                             f"passes for dotted names")
    kind = config.get("distribution")
    if kind is None:
        if "values" in config:
            kind = "categorical_w_probabilities" if "probabilities" in config else "categorical"
        elif "value" in config:
            kind = "constant"
        elif "min" in config and "max" in config:
            kind = "int_uniform" if _is_int(config["min"]) and _is_int(config["max"]) else "uniform"
        else:
            raise SweepSpecError(f"parameter '{name}': cannot tell its distribution from keys {sorted(config)}; "
                                 f"give 'values', 'value', 'min'+'max' or 'distribution'")
    if kind not in KINDS:
        import difflib

        near = difflib.get_close_matches(str(kind), list(KINDS), n=1)
        raise SweepSpecError(f"parameter '{name}': unknown distribution {kind!r}"
                             + (f"; did you mean '{near[0]}'?" if near else "") + f" (valid: {', '.join(KINDS)})")
    return kind


def parse_parameter(name: str, config: Any) -> Param:
    kind = infer_kind(name, config)
    allowed = set(KINDS[kind]) | {"distribution"}
    extra = set(config) - allowed
    if extra:
        raise SweepSpecError(f"parameter '{name}' ({kind}): unknown keys {sorted(extra)} (allowed: {sorted(allowed)})")
    required = [k for k in KINDS[kind] if k not in DEFAULTS]
    missing = [k for k in required if k not in config]
    if missing:
        raise SweepSpecError(f"parameter '{name}' ({kind}): missing {missing}")
    return Param(name, kind, dict(config))


@dataclass
class SweepSpec:
    """A parsed sweep file."""

    path: Path | None
    method: str
    metric: str
    goal: str
    params: list[Param]
    early_terminate: dict[str, Any] | None = None
    program: str = "train.py"
    command: list[str] = field(default_factory=list)
    base_config: str | None = None
    command_overrides: list[str] = field(default_factory=list)
    name: str | None = None
    run_cap: int | None = None
    target: float | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def direction(self) -> str:
        return "maximize" if self.goal == "maximize" else "minimize"

    @property
    def searched(self) -> list[Param]:
        return [p for p in self.params if p.searched]

    @property
    def constants(self) -> dict[str, Any]:
        return {p.name: p.config["value"] for p in self.params if not p.searched}

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Config values ``{dotted_key: value}`` of one trial, constants included."""
        return {p.name: p.suggest(trial) for p in self.params}

    def values_of(self, params: dict[str, Any]) -> dict[str, Any]:
        """Config values from a finished trial's raw ``params`` (missing ones are left out)."""
        out = {}
        for p in self.params:
            if not p.searched:
                out[p.name] = p.config["value"]
            elif p.internal in params:
                out[p.name] = p.to_value(params[p.internal])
        return out

    def grid_space(self) -> dict[str, list[Any]]:
        return {p.internal: p.grid_values() for p in self.searched}

    def sampler(self, seed: int | None = None) -> optuna.samplers.BaseSampler:
        if self.method == "grid":
            return optuna.samplers.GridSampler(self.grid_space(), seed=seed)
        if self.method == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)

    def pruner(self, max_resource: int | str = "auto") -> optuna.pruners.BasePruner:
        """``early_terminate: hyperband`` → ``HyperbandPruner``; no early_terminate → ``NopPruner``."""
        et = self.early_terminate
        if not et:
            return optuna.pruners.NopPruner()
        eta = et.get("eta", 3)
        max_iter, s = et.get("max_iter"), et.get("s")
        if "min_iter" in et:
            min_iter = et["min_iter"]
        else:
            min_iter = max(1, int(max_iter // eta ** s))
        if max_iter is not None:
            max_resource = max_iter
        if _is_int(max_resource) and max_resource < min_iter:
            max_resource = min_iter
        return optuna.pruners.HyperbandPruner(min_resource=int(min_iter), max_resource=max_resource,
                                              reduction_factor=int(eta))


def _check_early_terminate(et: Any, where: str) -> dict | None:
    if et is None:
        return None
    if not isinstance(et, dict) or et.get("type") != "hyperband":
        raise SweepSpecError(f"{where}: early_terminate supports only {{type: hyperband, ...}}, got {et!r}")
    extra = set(et) - {"type", "min_iter", "max_iter", "s", "eta", "strict"}
    if extra:
        raise SweepSpecError(f"{where}: early_terminate: unknown keys {sorted(extra)}")
    if "min_iter" not in et and not ("max_iter" in et and "s" in et):
        raise SweepSpecError(f"{where}: early_terminate hyperband needs min_iter (or max_iter and s)")
    for key in ("min_iter", "max_iter"):
        if key in et and (not _is_int(et[key]) or et[key] < 1):
            raise SweepSpecError(f"{where}: early_terminate.{key} must be an integer >= 1, got {et[key]!r}")
    eta = et.get("eta", 3)
    if not _is_number(eta) or eta <= 1 or float(eta) != int(eta):
        raise SweepSpecError(f"{where}: early_terminate.eta must be an integer > 1 for Optuna's HyperbandPruner, "
                             f"got {eta!r}")
    return dict(et)


def parse_command(command: Any, where: str) -> tuple[str | None, list[str]]:
    """Base config (``-c PATH``) and fixed ``--section.key=value`` overrides from a W&B ``command:`` list."""
    if command is None:
        return None, []
    if not isinstance(command, list) or not all(isinstance(x, str) for x in command):
        raise SweepSpecError(f"{where}: command must be a list of strings")
    base, overrides = None, []
    i = 0
    while i < len(command):
        item = command[i]
        if COMMAND_MACROS.match(item):
            pass
        elif item in ("-c", "--config"):
            if i + 1 >= len(command):
                raise SweepSpecError(f"{where}: command: {item} without a path")
            base = command[i + 1]
            i += 1
        elif item.startswith("--config="):
            base = item.split("=", 1)[1]
        elif item.startswith("--") and "." in item.split("=", 1)[0]:
            if "=" not in item:
                raise SweepSpecError(f"{where}: command: write overrides as --section.key=value, got {item!r}")
            overrides.append(item)
        elif item.startswith("$"):
            raise SweepSpecError(f"{where}: command: unknown W&B macro {item!r}")
        elif item.startswith("-"):
            raise SweepSpecError(f"{where}: command: flag {item!r} is not understood by tools/sweep.py "
                                 f"(use -c CONFIG and --section.key=value)")
        # anything else is a literal interpreter or program (python, train.py): nothing to read
        i += 1
    return base, overrides


def parse_sweep(raw: Any, path: str | Path | None = None) -> SweepSpec:
    where = str(path) if path is not None else "sweep config"
    if not isinstance(raw, dict):
        raise SweepSpecError(f"{where}: a sweep config is a YAML mapping (program, method, metric, parameters, ...)")
    extra = set(raw) - set(TOP_LEVEL)
    if extra:
        raise SweepSpecError(f"{where}: unknown top-level keys {sorted(extra)} (W&B rejects them too; valid: "
                             f"{', '.join(TOP_LEVEL)}) — put the base config in command: as '-c PATH'")
    method = raw.get("method")
    if method not in METHODS:
        raise SweepSpecError(f"{where}: method must be one of {', '.join(METHODS)}, got {method!r}")
    metric = raw.get("metric")
    if not isinstance(metric, dict) or not isinstance(metric.get("name"), str):
        raise SweepSpecError(f"{where}: metric: {{name: val/dice, goal: maximize}} is required (it ranks the trials)")
    goal = metric.get("goal", "minimize")
    if goal not in ("minimize", "maximize"):
        raise SweepSpecError(f"{where}: metric.goal must be minimize or maximize, got {goal!r}")
    target = metric.get("target")
    if target is not None and not _is_number(target):
        raise SweepSpecError(f"{where}: metric.target must be a number, got {target!r}")
    parameters = raw.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
        raise SweepSpecError(f"{where}: parameters: is required (a mapping of dotted config keys to distributions)")
    params = []
    for name, cfg in parameters.items():
        if not isinstance(name, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_.-]*$", name):
            raise SweepSpecError(f"{where}: parameter name {name!r} is not a valid W&B name")
        try:
            param = parse_parameter(name, cfg)
        except SweepSpecError as err:
            raise SweepSpecError(f"{where}: {err}") from None
        if "." not in name:
            raise SweepSpecError(f"{where}: parameter '{name}' must be a dotted config key like 'train.{name}'")
        params.append(param)
    for a in params:
        for b in params:
            if a is not b and b.name.startswith(a.name + "."):
                raise SweepSpecError(f"{where}: parameters '{a.name}' and '{b.name}' overlap")
    if method == "grid":
        bad = [p.name for p in params if p.kind not in GRID_KINDS]
        if bad:
            raise SweepSpecError(f"{where}: method 'grid' needs discrete parameters ({', '.join(GRID_KINDS)}); "
                                 f"not discrete: {', '.join(bad)}")
    run_cap = raw.get("run_cap")
    if run_cap is not None and (not _is_int(run_cap) or run_cap < 1):
        raise SweepSpecError(f"{where}: run_cap must be a positive integer, got {run_cap!r}")
    base, overrides = parse_command(raw.get("command"), where)
    return SweepSpec(path=Path(path) if path is not None else None, method=method, metric=metric["name"], goal=goal,
                     params=params, early_terminate=_check_early_terminate(raw.get("early_terminate"), where),
                     program=raw.get("program") or "train.py", command=list(raw.get("command") or []),
                     base_config=base, command_overrides=overrides, name=raw.get("name"), run_cap=run_cap,
                     target=target, raw=raw)


def load_sweep(path: str | Path) -> SweepSpec:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding=TEXT_ENCODING))
    except FileNotFoundError:
        raise SweepSpecError(f"{path}: sweep file not found") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise SweepSpecError(f"{path}: not valid YAML ({err})") from None
    return parse_sweep(raw, path)


def format_arg(key: str, value: Any) -> str:
    """``--key=value`` as a W&B agent writes it (``str(value)``), made safe for our YAML override parser.

    W&B writes ``f"--{key}={value}"``; where ``yaml.safe_load`` would read that text back as something else
    (``1e-05`` stays a string in YAML 1.1, ``off`` becomes False, ``None`` a string) we write an explicit form.
    """
    text = str(value)
    if value is None:
        return f"--{key}=null"
    try:
        if yaml.safe_load(text) == value and type(yaml.safe_load(text)) is type(value):
            return f"--{key}={text}"
    except yaml.YAMLError:
        pass
    if isinstance(value, float):
        mantissa, e, exp = repr(value).partition("e")
        if "." not in mantissa:
            mantissa += ".0"
        return f"--{key}={mantissa}{e}{exp}"
    return f"--{key}={json.dumps(value)}"


def nest(dotted: dict[str, Any]) -> dict:
    """``{"train.lr": 1e-3}`` → ``{"train": {"lr": 1e-3}}``; a mapping value replaces its key, as it does
    on the command line that a W&B agent writes (``engine.config.Replacement``)."""
    from engine.config import Replacement

    out: dict = {}
    for key, value in dotted.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = Replacement(value) if isinstance(value, dict) else value
    return out
