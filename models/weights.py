"""Pretrained weights from a local file only: nothing is ever downloaded."""
from __future__ import annotations

from pathlib import Path

import torch
from timm.models import adapt_input_conv
from torch import nn

from tasks.formats.tensors import read_tensors


def read_state_dict(path: str, how_to_make: str = "torch.save(model.state_dict(), NAME)") -> dict[str, torch.Tensor]:
    """A state dict of tensors from a local file (plain, or under ``model``/``state_dict``/``model_state``).

    A missing file names the path to put it at and ``how_to_make`` (NAME is the file name) it; a file that
    holds pickled objects besides tensors is refused (:class:`~tasks.formats.tensors.PickledFileError`).
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(
            f"model.weights: no file at {file}. Pretrained weights are never downloaded; copy the state dict "
            f"there (e.g. on a machine with internet: {how_to_make.replace('NAME', repr(file.name))}).")
    state = read_tensors(file, "weights file")
    if isinstance(state, dict):
        for key in ("model", "state_dict", "model_state"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{file}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_local_weights(model: nn.Module, path: str | None, *, encoder_attr: str = "encoder") -> None:
    """Load a whole-model or encoder-only state dict from ``path`` into ``model``.

    Accepts a plain state dict, a dict with ``model`` / ``state_dict`` (our checkpoints, timm/smp
    exports). Keys that match the whole model load strictly; otherwise they load into
    ``model.<encoder_attr>`` (:func:`match_encoder`: a plain timm state dict fits smp's ``tu-`` encoders,
    classifier heads are ignored, an RGB first convolution is adapted to the model's input channels).
    A missing file names the path to put it at; a file that leaves encoder tensors unmatched is refused.
    """
    if not path:
        return
    file = Path(path).expanduser()
    state = read_state_dict(path)
    own = model.state_dict()
    if set(state) >= set(own) and all(state[k].shape == own[k].shape for k in own):
        model.load_state_dict({k: state[k] for k in own})
        return
    target = getattr(model, encoder_attr, None)
    if target is None:
        raise ValueError(f"{file}: keys do not match the model and it has no '{encoder_attr}' to load into")
    prefix = f"{encoder_attr}."
    enc_state = {k.removeprefix(prefix): v for k, v in state.items()}
    # nn.Module's own loader: the keys are the encoder's already, and some smp encoders override load_state_dict
    # with another signature (MiT) or key renaming (tu- encoders of deprecated timm- names)
    nn.Module.load_state_dict(target, match_encoder(enc_state, target.state_dict(), str(file)), strict=False)


def _plain(key: str) -> str:
    """A key with timm's feature-wrapper differences removed: no leading ``model.`` (smp's ``tu-`` encoders
    wrap the timm model as ``model``; timm's getter wrappers once more), and ``_`` for ``.`` (timm's
    ``features_only`` flattens ``stages.0`` into ``stages_0``)."""
    while key.startswith("model."):
        key = key[len("model."):]
    return key.replace(".", "_")


def match_encoder(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """The tensors of ``state`` for every key of the encoder's state dict ``own`` (keys as in ``own``).

    A key matches itself, else the key with timm's wrapper differences removed (:func:`_plain`). A convolution
    that differs only in its input channels is the input layer: from 3 channels (RGB) it is adapted to the
    encoder's (timm's ``adapt_input_conv``), from others it keeps its initial values.
    Raises ValueError naming how many tensors match and one that does not, unless all do (BatchNorm's
    ``num_batches_tracked`` counters excepted).
    """
    plain: dict[str, str | None] = {}
    for key in state:
        plain[_plain(key)] = None if _plain(key) in plain else key   # an ambiguous plain key matches nothing
    matched: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    for key, value in own.items():
        src = state.get(key) if key in state else state.get(plain.get(_plain(key)) or "")
        if src is not None and src.shape != value.shape and src.ndim == 4 and src.shape[0] == value.shape[0] \
                and src.shape[2:] == value.shape[2:]:
            if src.shape[1] != 3:
                continue   # an input convolution of other channels (e.g. a hinted model's image + hint maps): kept
            src = adapt_input_conv(value.shape[1], src)
        if src is not None and src.shape == value.shape:
            matched[key] = src
        elif not key.endswith("num_batches_tracked"):
            missing.append(key)
    if missing:
        needed = sum(not k.endswith("num_batches_tracked") for k in own)
        example = missing[0]
        raise ValueError(f"{source}: only {needed - len(missing)} of {needed} encoder tensors match this architecture "
                         f"(e.g. no tensor of shape {tuple(own[example].shape)} for '{example}'; the file has "
                         f"{len(state)} tensors, e.g. '{next(iter(state), '')}'); wrong weights file for this encoder?")
    return matched
