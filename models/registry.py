"""Model registry in the style of timm: one decorator registers a family builder, one factory builds.

A model name reads ``family:rest``, e.g. ``smp:unet/resnet34``, ``custom:unet3plus/resnet34``,
``timm:resnet50``, ``yolo:yolo11n-seg``. A family registers one builder that parses ``rest`` itself,
so every architecture x encoder pair is reachable without code per pair. ``models`` never touches
files except an explicit local weights file.
"""
from __future__ import annotations

import difflib
import inspect
import re
from dataclasses import dataclass, field
from typing import Callable, Collection, Iterable, Literal, Sequence

from tasks.schema import image_hw, size_text



class UnknownModelError(ValueError):
    """A model name that no family can build; the message lists close matches."""


class ModelOptionsError(ValueError):
    """``model.options`` that the model's builder does not take (an unknown or doubled keyword)."""


# Keywords every builder gets from the harness (the task, its outputs and input channels, model.weights).
HARNESS_KEYWORDS = ("rest", "task", "num_outputs", "in_channels", "weights")


@dataclass(frozen=True)
class InputSize:
    """The input sizes a model takes: each side a multiple of ``multiple`` and at least ``minimum``, or only
    ``fixed`` x ``fixed``; ``square``: height and width equal (a learner that trains at one side, e.g. YOLO).

    ``note`` says how to lift a fixed size or why inputs are square, for the error message.
    """

    multiple: int = 1
    minimum: int = 1
    fixed: int | None = None
    note: str = ""
    square: bool = False

    def problem(self, size: int | Sequence[int], model: str) -> str | None:
        """Why ``size`` (``data.image_size``: one side, or ``(height, width)``) does not fit (None: it fits), with
        the nearest sizes that do."""
        height, width = image_hw(size)
        text = size_text(size)
        note = f" ({self.note})" if self.note else ""
        if self.fixed is not None:
            if (height, width) == (self.fixed, self.fixed):
                return None
            return f"{text}: {model} takes only {self.fixed}x{self.fixed} inputs{note}; use {self.fixed}"
        if self.square and height != width:
            sides = dict.fromkeys(self.nearest(s)[0] for s in (height, width))
            return (f"{text}: {model} takes only square inputs{note}; give one side, "
                    f"use {' or '.join(map(str, sides))}")
        if height == width:
            return self._side_problem(height, model)
        bad = [(name, side) for name, side in (("height", height), ("width", width)) if self._side_problem(side, model)]
        if not bad:
            return None
        low, high = (tuple(self.nearest(s)[i] if self._side_problem(s, model) else s for s in (height, width))
                     for i in (0, -1))
        sizes = " or ".join(dict.fromkeys(f"{h}x{w}" for h, w in (low, high)))
        rule = (f"needs each side divisible by {self.multiple}" if self.multiple > 1 else "") + \
            (" and " if self.multiple > 1 and self.minimum > self.multiple else "") + \
            (f"at least {self.minimum}" if self.minimum > self.multiple else "")
        what = ", ".join(f"{name} {side}" for name, side in bad)
        return f"{text} (height x width): {what} {'do' if len(bad) > 1 else 'does'} not fit ({model} {rule}); use {sizes}"

    def _side_problem(self, size: int, model: str) -> str | None:
        """Why one side does not fit (the message of a square size)."""
        if size % self.multiple:
            return (f"{size} is not a multiple of {self.multiple} ({model} needs its input divisible by "
                    f"{self.multiple}); use {' or '.join(map(str, self.nearest(size)))}")
        if size < self.minimum:
            return f"{size} is below {self.minimum}, the smallest input {model} takes; use {self.minimum}"
        return None

    def nearest(self, size: int) -> list[int]:
        """The valid sides nearest ``size``: itself when it fits, else the one below (when there is one) and the
        one above."""
        if self.fixed is not None:
            return [self.fixed]
        if size % self.multiple == 0 and size >= self.minimum:
            return [size]
        below = size // self.multiple * self.multiple
        return [s for s in (below, below + self.multiple) if s >= max(self.multiple, self.minimum)] or \
            [self.smallest(size)]

    def smallest(self, at_least: int = 1) -> int:
        """The smallest valid side that is at least ``at_least``."""
        if self.fixed is not None:
            return self.fixed
        low = max(self.minimum, at_least)
        return -(-low // self.multiple) * self.multiple


@dataclass
class ModelFamily:
    """A registered family: its builder, the tasks it serves and how to enumerate its names."""

    name: str
    builder: Callable
    tasks: tuple[str, ...]
    kind: Literal["torch", "external"]
    list_names: Callable[[], Iterable[str]]
    validate: Callable[[str], None] | None
    description: str = ""
    examples: tuple[str, ...] = field(default_factory=tuple)
    input_size: Callable[[str, dict], InputSize] | None = None
    note: Callable[[], str] | None = None
    check_options: Callable[[str, dict], None] | None = None


_FAMILIES: dict[str, ModelFamily] = {}


def register_family(name: str, *, tasks: Iterable[str], kind: Literal["torch", "external"] = "torch",
                    list_names: Callable[[], Iterable[str]] | None = None,
                    validate: Callable[[str], None] | None = None, examples: Iterable[str] = (),
                    input_size: Callable[[str, dict], InputSize] | None = None,
                    note: Callable[[], str] | None = None,
                    check_options: Callable[[str, dict], None] | None = None) -> Callable:
    """Decorator: register ``builder(rest, *, task, num_outputs, in_channels, **options)`` under ``name``.

    ``validate(rest)`` raises :class:`UnknownModelError` for a bad ``rest`` (with close matches);
    ``list_names()`` yields the full names for ``--list-models``, each one a name that resolves (never a
    pattern); ``note()`` is one line on the names the family takes beyond those (e.g. any timm encoder),
    which ``--list-models`` prints after them; ``input_size(rest, options)`` is the :class:`InputSize` the
    model takes (absent: any size); ``check_options(rest, options)`` raises ``ValueError`` for
    ``model.options`` the model does not take (absent: the builder's own keyword parameters are the
    options, see :func:`check_options`).
    """
    from tasks.spec import task_names

    tasks = tuple(tasks)
    for t in tasks:
        if t not in task_names():
            raise ValueError(f"family {name!r}: unknown task {t!r}; valid: {', '.join(task_names())}")

    def wrap(builder: Callable) -> Callable:
        if name in _FAMILIES:
            raise ValueError(f"model family {name!r} registered twice")
        _FAMILIES[name] = ModelFamily(
            name=name, builder=builder, tasks=tasks, kind=kind,
            list_names=list_names or (lambda: ()), validate=validate,
            description=(builder.__doc__ or "").strip().splitlines()[0] if builder.__doc__ else "",
            examples=tuple(examples), input_size=input_size, note=note, check_options=check_options,
        )
        return builder

    return wrap


def families() -> dict[str, ModelFamily]:
    """Registered families by name (after ``import models``)."""
    return dict(_FAMILIES)


def close_matches(word: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """Names close to ``word``: difflib ratio first, then substring hits."""
    candidates = list(candidates)
    hits = difflib.get_close_matches(word, candidates, n=n, cutoff=0.5)
    if len(hits) < n:
        hits += [c for c in candidates if word and word.lower() in c.lower() and c not in hits][: n - len(hits)]
    return hits


def resolve(name: str, task: str | None = None) -> tuple[ModelFamily, str]:
    """Split ``family:rest``, check the family serves ``task`` and that ``rest`` is valid."""
    family_name, sep, rest = name.partition(":")
    if not sep or family_name not in _FAMILIES:
        examples = [e for f in _FAMILIES.values() for e in f.examples]
        hint = close_matches(family_name, list(_FAMILIES)) if sep else close_matches(name, examples)
        raise UnknownModelError(
            f"unknown model {name!r}: names read 'family:arch/encoder'; families: {', '.join(sorted(_FAMILIES))}"
            + (f"; did you mean: {', '.join(hint)}" if hint else "")
            + "  (python train.py --list-models)")
    family = _FAMILIES[family_name]
    if task is not None and task not in family.tasks:
        raise UnknownModelError(f"model family {family_name!r} does not serve task {task!r} (it serves: {', '.join(family.tasks)})")
    if family.validate is not None:
        family.validate(rest)
    return family, rest


def create_model(name: str, *, task: str, num_outputs: int, in_channels: int = 1, **options):
    """Build a model by registry name. ``options`` go to the family builder (e.g. ``weights`` path)."""
    family, rest = resolve(name, task)
    try:
        return family.builder(rest, task=task, num_outputs=num_outputs, in_channels=in_channels, **options)
    except TypeError as err:
        # Builders pass options on to smp / timm / torch constructors, so an option one of them does not take
        # surfaces as a TypeError naming that keyword; any other TypeError is a bug and keeps its traceback.
        keyword = re.search(r"keyword argument '(\w+)'", str(err))
        if keyword is None or keyword.group(1) not in options or keyword.group(1) == "weights":
            raise
        given = {k: v for k, v in options.items() if k != "weights"}
        raise ModelOptionsError(f"model.options: {name} cannot be built with {given}: {err}") from err


def refuse_unknown(model: str, options: Iterable[str], valid: Collection[str], where: str = "") -> None:
    """Raise :class:`ModelOptionsError` for the first of ``options`` not in ``valid``, with the close ones."""
    for key in options:
        if key in valid:
            continue
        if key in HARNESS_KEYWORDS:
            raise ModelOptionsError(f"model.options: '{key}' is set by the harness (the task, or model.weights), "
                                    f"not an option of {model}")
        hits = close_matches(key, sorted(valid), n=3)
        hint = f"; did you mean {' or '.join(repr(h) for h in hits)}" if hits else ""
        listed = f"valid: {', '.join(sorted(valid)) or 'none'}" if len(valid) <= 20 else f"{len(valid)} valid names"
        raise ModelOptionsError(f"model.options: unknown option '{key}' for {model}{where}{hint} ({listed})")


def builder_options(builder: Callable) -> set[str]:
    """The options a builder takes: its keyword parameters other than :data:`HARNESS_KEYWORDS`."""
    params = inspect.signature(builder).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        raise TypeError(f"{builder.__qualname__} takes **kwargs: its family must register check_options")
    return {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)} - set(HARNESS_KEYWORDS)


def check_options(name: str, task: str | None, options: dict) -> None:
    """Refuse ``model.options`` the model would not use, before anything is built or written.

    A name the builder does not take would be dropped silently where it ends in ``**kwargs`` (smp 0.6 passes
    unknown keywords to its encoders, and its own encoders ignore them): ``decoder_atention_type: scse``
    would train without SCSE while the config records it. Raises :class:`ModelOptionsError`
    (``model.options: unknown option 'x' for <model>; did you mean 'y' (valid: ...)``).
    """
    family, rest = resolve(name, task)
    if family.check_options is None:
        refuse_unknown(name, options, builder_options(family.builder))
        return
    try:
        family.check_options(rest, dict(options))
    except ModelOptionsError:
        raise
    except ValueError as err:
        raise ModelOptionsError(str(err)) from None


def input_size(name: str, task: str | None = None, options: dict | None = None) -> InputSize:
    """The input sizes the model takes (``options``: its ``model.options``, which may change them)."""
    family, rest = resolve(name, task)
    return family.input_size(rest, dict(options or {})) if family.input_size else InputSize()


def is_external(name: str) -> bool:
    """True for learners with their own fit/predict (e.g. ultralytics YOLO) rather than an nn.Module."""
    family, _ = resolve(name)
    return family.kind == "external"


def list_models(task: str | None = None) -> dict[str, list[str]]:
    """Names per family serving ``task`` (all tasks when None); every name resolves (``family.note`` tells the
    names beyond them)."""
    return {f.name: list(f.list_names()) for f in _FAMILIES.values() if task is None or task in f.tasks}
