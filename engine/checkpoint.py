"""Checkpoints are plain dicts of tensors and primitives, loadable with ``torch.load(weights_only=True)``."""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.atomic import atomic_write
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


def load_checkpoint(path: str | os.PathLike, *, mmap: bool = False) -> dict[str, Any]:
    """A checkpoint's dict, read as tensors and primitives only: a pickled object in it is refused, never built.

    ``mmap``: tensors memory-mapped from the file (:func:`tasks.formats.tensors.read_tensors`)."""
    ckpt = read_tensors(path, "checkpoint", mmap=mmap)
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: not a harness checkpoint (a {type(ckpt).__name__}, not a dict)")
    return ckpt


@dataclass(frozen=True, eq=False)
class Checkpoint(os.PathLike):
    """A checkpoint file read once: its path and its dict (config, model name, weights, ...).

    Inference checks the saved config and builds the model from the same read (a large model's file is
    not read twice); the tensors are memory-mapped, so an ensemble holding its members' checkpoints from
    config check to model building holds no second copy of their weights. Path-like (the file), so
    whatever names or places files by the checkpoint (run folder, prediction cache) takes it as the path.
    """

    path: Path
    state: dict[str, Any]

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __str__(self) -> str:
        return str(self.path)

    @property
    def config(self) -> dict[str, Any]:
        """The config the weights were trained with (a dict, as saved)."""
        if not isinstance(self.state.get("config"), dict):
            raise ValueError(f"{self.path}: not a harness checkpoint (no 'config')")
        return self.state["config"]


def open_checkpoint(ckpt: str | os.PathLike) -> Checkpoint:
    """``ckpt`` as a :class:`Checkpoint`: one already read as it is, a path read now (tensors memory-mapped)."""
    if isinstance(ckpt, Checkpoint):
        return ckpt
    return Checkpoint(Path(ckpt), load_checkpoint(ckpt, mmap=True))


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
