"""Checkpoints are plain dicts of tensors and primitives, loadable with ``torch.load(weights_only=True)``."""
from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

from tasks.formats.atomic import atomic_write
from tasks.formats.tensors import read_tensors


def rng_state() -> dict[str, Any]:
    state = {
        "python": list(random.getstate()[1]) + [random.getstate()[2] if random.getstate()[2] is not None else -1],
        "python_version": random.getstate()[0],
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "numpy_pos": int(np.random.get_state()[2]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    gauss = None if py[-1] == -1 else py[-1]
    random.setstate((state["python_version"], tuple(int(v) for v in py[:-1]), gauss))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Atomic save: a kill mid-write leaves the previous file intact."""
    with atomic_write(path, "wb") as f:
        torch.save(payload, f)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's dict, read as tensors and primitives only: a pickled object in it is refused, never built."""
    ckpt = read_tensors(path, "checkpoint")
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: not a harness checkpoint (a {type(ckpt).__name__}, not a dict)")
    return ckpt


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load weights, explaining an architecture or class-count mismatch in one line."""
    state = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise ValueError(f"{source}: checkpoint is for another architecture ({len(missing)} missing keys, e.g. "
                         f"{missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]})")
    wrong = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in own.items() if state[k].shape != v.shape]
    if wrong:
        k, got, want = wrong[0]
        raise ValueError(f"{source}: tensor {k} has shape {got}, the model expects {want} "
                         "(another class count or encoder?)")
    model.load_state_dict(state)
