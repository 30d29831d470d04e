"""Training, saving and cross-validation of the learned orientation classifier
(:mod:`models.orientation_net`) beside the heuristic (:func:`tasks.orientation.detect_orientation`).

Training draws each batch from labelled real radiographs and upright phantoms (``real_fraction`` of it
real when there are real images), each sample in a random one of its eight quarter turns and mirrors
with the label that view implies (:data:`tasks.orientation.DIHEDRAL_LABELS`), and a random gamma,
contrast and crop. Cross-validation is by image: the classifier of fold ``i`` never sees fold ``i``'s
images (phantoms are always in training).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold

from engine.checkpoint import load_checkpoint, load_model_state, save_checkpoint
from models.orientation_net import (DEFAULT_ARCH, DEFAULT_SIZE, DEFAULT_WIDTH, LearnedOrientation,
                                    build_orientation_net, network_input, to_tensor)
from tasks.orientation.heuristic import DIHEDRAL, DIHEDRAL_LABELS, Item, Orientation, detect_orientation, dihedral_view, evaluate

CHECKPOINT_KIND = "orientation_classifier"


@dataclass(frozen=True)
class OrientationTrainConfig:
    """How the classifier is trained: architecture, input size, optimisation and the real/phantom mix."""

    arch: str = DEFAULT_ARCH
    width: int | None = DEFAULT_WIDTH
    size: int = DEFAULT_SIZE
    steps: int = 480
    batch: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4
    real_fraction: float = 0.5
    seed: int = 0


def _augment(image: np.ndarray, label: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """A random dihedral view (label mapped exactly), crop of 80-100 % per axis, gamma and contrast."""
    v = int(rng.integers(len(DIHEDRAL)))
    k, m = DIHEDRAL[v]
    out = dihedral_view(image, k, m)
    size = out.shape[0]
    ch, cw = (int(size * rng.uniform(0.8, 1.0)) for _ in range(2))
    y0, x0 = int(rng.integers(size - ch + 1)), int(rng.integers(size - cw + 1))
    out = cv2.resize(out[y0:y0 + ch, x0:x0 + cw], (size, size), interpolation=cv2.INTER_LINEAR)
    x = (out.astype(np.float32) / 255.0) ** math.exp(rng.normal(0.0, 0.3))
    x = x * rng.uniform(0.7, 1.3) + rng.uniform(-0.15, 0.15)
    return (np.clip(x, 0.0, 1.0) * 255).astype(np.uint8), int(DIHEDRAL_LABELS[v, label])


def train_orientation(real: Sequence[Item], phantoms: Sequence[tuple[str, np.ndarray, int]],
                      cfg: OrientationTrainConfig = OrientationTrainConfig(),
                      log: Callable[[str], None] | None = None) -> LearnedOrientation:
    """Train the classifier on ``real`` (name, image, truth) and ``phantoms`` (name, image, class)."""
    pools = [[(network_input(img, cfg.size), int(t.label)) for _, img, t in real],
             [(network_input(img, cfg.size), int(label)) for _, img, label in phantoms]]
    if not pools[0] and not pools[1]:
        raise ValueError("train_orientation: no training images")
    n_real = round(cfg.batch * cfg.real_fraction) if pools[0] else 0
    n_real = cfg.batch if not pools[1] else n_real
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    net = build_orientation_net(cfg.arch, cfg.width)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.2)
    net.train()
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        picks = [pools[0][i] for i in rng.integers(len(pools[0]), size=n_real)] if n_real else []
        picks += [pools[1][i] for i in rng.integers(len(pools[1]), size=cfg.batch - n_real)] if pools[1] else []
        batch = [_augment(img, label, rng) for img, label in picks]
        x = to_tensor(np.stack([b[0] for b in batch]))
        y = torch.tensor([b[1] for b in batch])
        loss = torch.nn.functional.cross_entropy(net(x), y, label_smoothing=0.05)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if log and (step + 1) % 50 == 0:
            log(f"step {step + 1}/{cfg.steps} loss {loss.item():.3f} ({time.perf_counter() - t0:.0f} s)")
    return LearnedOrientation(net, cfg.size, cfg.arch, cfg.width)


def save_orientation(path: str | os.PathLike, model: LearnedOrientation) -> None:
    """The harness checkpoint format: a dict of tensors and primitives."""
    save_checkpoint(path, {"kind": CHECKPOINT_KIND, "arch": model.arch, "width": model.width or 0, "size": model.size,
                           "min_side_prob": model.min_side_prob, "model": model.net.state_dict()})


def load_orientation(path: str | os.PathLike) -> LearnedOrientation:
    ckpt = load_checkpoint(path)
    if ckpt.get("kind") != CHECKPOINT_KIND:
        raise ValueError(f"{path}: not an orientation classifier checkpoint (kind {ckpt.get('kind')!r})")
    width = int(ckpt["width"]) or None
    net = build_orientation_net(ckpt["arch"], width)
    load_model_state(net, ckpt["model"], str(path))
    return LearnedOrientation(net, int(ckpt["size"]), ckpt["arch"], width, float(ckpt["min_side_prob"]))


def merge_results(results: Sequence[dict]) -> dict:
    """One :func:`tasks.orientation.evaluate` result from those of disjoint image sets (the folds)."""
    n = sum(r["images"] for r in results)
    sources: dict[str, int] = {}
    for r in results:
        for key, count in r["side_sources"].items():
            sources[key] = sources.get(key, 0) + count
    confusion = np.sum([r["confusion"] for r in results], axis=0)
    return {"images": n, **{key: sum(r[key] * r["images"] for r in results) / n
                            for key in ("rotation_acc", "side_acc", "label_acc")},
            "uncertain": sum(r["uncertain"] for r in results), "side_sources": sources,
            "confusion": confusion.tolist(), "errors": [e for r in results for e in r["errors"]]}


METHODS = ("heuristic", "heuristic+learned", "learned")


def _fold_model(train: Sequence[Item], phantoms: Sequence[tuple[str, np.ndarray, int]], cfg: OrientationTrainConfig,
                path: Path | None, log: Callable[[str], None] | None) -> LearnedOrientation:
    """The fold's classifier, read from ``path`` when an earlier run saved it there, else trained (and saved)."""
    if path is not None and path.is_file():
        return load_orientation(path)
    model = train_orientation(train, phantoms, cfg, log)
    if path is not None:
        save_orientation(path, model)
    return model


def cross_validate(real: Sequence[Item], phantoms: Sequence[tuple[str, np.ndarray, int]], folds: int = 5,
                   cfg: OrientationTrainConfig = OrientationTrainConfig(), methods: Sequence[str] = METHODS,
                   log: Callable[[str], None] | None = None, checkpoint_dir: str | os.PathLike | None = None
                   ) -> dict[str, dict]:
    """Per method, the merged test-fold results of a k-fold split by image (stratified by side).

    ``heuristic``: the hands, then the marker, else uncertain (its thresholds are fixed, so its folds
    are the whole set); ``heuristic+learned``: the same with the fold's classifier asked when the
    hands and the marker leave the side open; ``learned``: the fold's classifier alone.
    ``checkpoint_dir`` keeps each fold's classifier (named by fold, the settings and the training
    images), so an interrupted run resumes at the first fold not yet trained."""
    split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=cfg.seed)
    sides = [int(t.label) // 4 for _, _, t in real]
    key = json.dumps([asdict(cfg), folds, [name for name, _, _ in real], [name for name, _, _ in phantoms]])
    tag = hashlib.sha1(key.encode()).hexdigest()[:10]
    per_method: dict[str, list[dict]] = {m: [] for m in methods}
    for fold, (train_idx, test_idx) in enumerate(split.split(np.zeros(len(real)), sides)):
        test = [real[i] for i in test_idx]
        model = None
        if any(m != "heuristic" for m in methods):
            path = Path(checkpoint_dir) / f"fold{fold}of{folds}-{tag}.pt" if checkpoint_dir else None
            model = _fold_model([real[i] for i in train_idx], phantoms, cfg, path, log)
        predictors: dict[str, Callable[[np.ndarray], Orientation]] = {
            "heuristic": detect_orientation,
            "heuristic+learned": lambda image: detect_orientation(image, classifier=model),
            "learned": lambda image: model(image)}
        for method in methods:
            per_method[method].append(evaluate(test, predictors[method]))
        if log:
            log(f"fold {fold + 1}/{folds}: " + "  ".join(
                f"{m} rot {100 * r[-1]['rotation_acc']:.0f}% side {100 * r[-1]['side_acc']:.0f}%"
                for m, r in per_method.items()))
    return {m: merge_results(r) for m, r in per_method.items()}
