"""Pretrained weights from a local file only: nothing is ever downloaded."""
from __future__ import annotations

from pathlib import Path

import torch
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
    ``model.<encoder_attr>`` with classifier heads ignored. A missing file names the path to put it at.
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
    enc_own = target.state_dict()
    prefix = f"{encoder_attr}."
    enc_state = {k.removeprefix(prefix): v for k, v in state.items()}
    usable = {k: v for k, v in enc_state.items() if k in enc_own and v.shape == enc_own[k].shape}
    if len(usable) < max(1, len(enc_own) // 2):
        raise ValueError(f"{file}: only {len(usable)} of {len(enc_own)} encoder tensors match this architecture; "
                         "wrong weights file for this encoder?")
    if "conv1.weight" in enc_own and "conv1.weight" in enc_state and enc_state["conv1.weight"].shape[1] != enc_own["conv1.weight"].shape[1]:
        usable["conv1.weight"] = enc_state["conv1.weight"].sum(1, keepdim=True).expand_as(enc_own["conv1.weight"]) / enc_own["conv1.weight"].shape[1]
    target.load_state_dict(usable, strict=False)
