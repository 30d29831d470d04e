"""The torch side of orientation (:mod:`tasks.orientation` is its spec): a small classifier of the 12 classes read
off the whole film at low resolution, trained by the harness's trainer like every task.

Input: the film resized to ``image_size`` (one side, or ``[height, width]``; each axis on its own: at a square
size a quarter turn and resizing commute, so the turned and mirrored views of the small input are exactly those
of the film), scaled to [-2, 2]. Training draws each film in a random one of its eight quarter turns and mirrors
with the label that view implies (:data:`tasks.orientation.heuristic.DIHEDRAL_LABELS`), cropped to 80-100 % of
each side and resized back to the input size (a turned non-square input is resized back to ``height x width``, as
the turned film would be), then the config's intensity augmentation; seeded per (run seed, epoch, image), so a resumed run sees what an uninterrupted one
does. Loss: cross-entropy with 0.05 label smoothing. TTA: a turned or mirrored view's class probabilities are
relabelled back (:meth:`OrientationTask.invert`); ``inference.tta: {hflip: true, rot90: true}`` averages all
eight views. As the learned fallback of preprocessing (:meth:`OrientationTask.classifier`) the side is
reported ``"uncertain"`` below ``data.min_side_prob``.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from tasks.augment import SeededDataset, build_augment, sample_seed
from tasks.base import PredictionWriter, Task, precision
from tasks.cache import SampleCache
from tasks.formats.images import read_grey, resize_grey
from tasks.orientation import CLASS_NAMES, SIDES, SPEC
from tasks.orientation.cache import save_cache
from tasks.orientation.heuristic import DIHEDRAL, Orientation, dihedral_label, dihedral_view
from tasks.orientation.labels import OrientationSample, split_samples
from tasks.orientation.scoring import accuracies, write_labels
from tasks.schema import image_hw, size_text
from tasks.spec import MODE_RESIZE
from tasks.tta import View

LABEL_SMOOTHING = 0.05


def to_input(small: np.ndarray) -> torch.Tensor:
    """``(H, W)`` uint8 → ``(1, H, W)`` float in [-2, 2]."""
    return (torch.from_numpy(np.ascontiguousarray(small)).float()[None] / 255.0 - 0.5) * 4.0


def view_labels(view: View) -> np.ndarray:
    """``perm[c]``: the class of ``view`` of a film of class ``c`` (the view turns, then mirrors left-right, then
    top-bottom; a top-bottom mirror is a half turn and a left-right mirror)."""
    perm = []
    for label in range(len(CLASS_NAMES)):
        label = dihedral_label(label, view.quarters % 4, view.hflip)
        if view.vflip:
            label = dihedral_label(label, 2, True)
        perm.append(label)
    return np.array(perm)


class OrientationDataset(SeededDataset):
    """Films at ``size`` (one side, or ``(height, width)``; cached once at that size); items ``image`` ``(1, H, W)``,
    ``label`` and ``index``. With ``train`` each item is a random turn/mirror/crop of its film with the label that
    view implies."""

    def __init__(self, samples: Sequence[OrientationSample], size: int | tuple[int, int], augment=None, cache: SampleCache | None = None,
                 seed: int = 0, train: bool = False, crop: float = 0.8) -> None:
        super().__init__(samples, size, augment, cache, seed)
        self.train, self.crop = train, crop

    def load(self, i: int) -> np.ndarray:
        s = self.samples[i]
        return self.cache.get([s.image_path], f"orient|{size_text(self.size)}",
                              lambda: {"image": resize_grey(read_grey(s.image_path), *self.hw)})["image"]

    def __getitem__(self, i: int) -> dict:
        image, label = self.load(i), self.samples[i].label
        if self.train:
            rng = np.random.default_rng(sample_seed(self.seed, self.epoch, i))
            k, mirror = DIHEDRAL[int(rng.integers(len(DIHEDRAL)))]
            image = dihedral_view(image, k, mirror)
            label = None if label is None else dihedral_label(label, k, mirror)
            height, width = image.shape  # turned: width x height
            ch, cw = int(height * rng.uniform(self.crop, 1.0)), int(width * rng.uniform(self.crop, 1.0))
            y0, x0 = int(rng.integers(height - ch + 1)), int(rng.integers(width - cw + 1))
            image = cv2.resize(image[y0:y0 + ch, x0:x0 + cw], self.hw[::-1], interpolation=cv2.INTER_LINEAR)
            if self.augment is not None:
                self.reseed(i)
                image = self.augment(image=image)["image"]
        item = {"image": to_input(image), "index": i}
        if label is not None:
            item["label"] = torch.tensor(label, dtype=torch.long)
        return item


class OrientationTask(Task):
    spec = SPEC

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        unknown = set(cfg.loss.weights) - {"ce"}
        if unknown or not cfg.loss.weights.get("ce"):
            raise ValueError(f"loss.weights: orientation trains with cross-entropy only (loss: {{weights: {{ce: 1.0}}}}), "
                             f"got {dict(cfg.loss.weights)}")
        if cfg.augment.hflip > 0 or cfg.augment.vflip > 0:
            raise ValueError("augment.hflip/vflip: a mirror changes the orientation class; training already draws "
                             "every turn and mirror with its own label (set them to 0)")

    @property
    def num_outputs(self) -> int:
        return len(CLASS_NAMES)

    def dataset(self, samples: Sequence[OrientationSample], train: bool = False) -> OrientationDataset:
        d = self.cfg.data
        return OrientationDataset(samples, d.image_size, build_augment(self.cfg.augment) if train else None,
                                  SampleCache(d.cache_dir, enabled=d.cache), self.cfg.train.seed, train, d.crop)

    def datasets(self) -> tuple[OrientationDataset, OrientationDataset]:
        return self.dataset(self.samples("train"), train=True), self.dataset(self.samples("val"))

    def loss(self, output: torch.Tensor, batch: dict) -> torch.Tensor:
        return nn.functional.cross_entropy(output.float(), batch["label"], label_smoothing=LABEL_SMOOTHING)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset: OrientationDataset, device: torch.device, autocast=None,
                 batch_size: int = 4) -> dict:
        """Label accuracy (``score``), rotation and side accuracy, accuracy per true class, the loss."""
        model.eval()
        probs, losses = [], []
        for batch in self._loader(dataset, batch_size):
            images = batch["image"].to(device)
            with precision(autocast):
                logits = model(images).float()
            losses.append(float(nn.functional.cross_entropy(logits, batch["label"].to(device),
                                                            label_smoothing=LABEL_SMOOTHING)) * len(images))
            probs.append(logits.softmax(1).cpu().numpy())
        pred = np.concatenate(probs).argmax(1)
        truth = np.array([s.label for s in dataset.samples])
        return {**accuracies(pred, truth), "loss": sum(losses) / max(1, len(dataset))}

    # ---------------------------------------------------------------------------------------- prediction

    def samples(self, split: str) -> list[OrientationSample]:
        return split_samples(self.cfg.data, split)

    @staticmethod
    def _loader(dataset: OrientationDataset, batch_size: int) -> Iterator[dict]:
        for start in range(0, len(dataset), batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            batch = {"image": torch.stack([it["image"] for it in items]),
                     "samples": [dataset.samples[it["index"]] for it in items]}
            if all("label" in it for it in items):
                batch["label"] = torch.stack([it["label"] for it in items])
            yield batch

    def batches(self, samples: Sequence[OrientationSample], size: int | tuple[int, int], batch_size: int
                ) -> Iterator[dict]:
        d = self.cfg.data
        dataset = OrientationDataset(samples, size, cache=SampleCache(d.cache_dir, enabled=d.cache))
        for batch in self._loader(dataset, batch_size):
            batch.pop("label", None)
            yield batch

    @staticmethod
    def image_batch(image: np.ndarray, size: int | tuple[int, int]) -> dict:
        """One film (any size) as a batch of the classifier's input (``size``: one side, or ``(height, width)``)."""
        return {"image": to_input(resize_grey(image, *image_hw(size)))[None]}

    def activate(self, output: torch.Tensor) -> torch.Tensor:
        return output.softmax(dim=1)

    def invert(self, output: torch.Tensor, view: View, batch: dict) -> torch.Tensor:
        """A view of a film of class ``c`` shows class ``perm[c]``: the base film's score of ``c`` is the view's
        score of ``perm[c]``."""
        return output[:, torch.as_tensor(view_labels(view), device=output.device)]

    def writer(self, out_csv: str | Path, cache: Any | None, *, views: Sequence[View], workers: int,
               mode: str = MODE_RESIZE) -> OrientationWriter:
        return OrientationWriter(out_csv, cache)

    def classifier(self, predict: Callable[[dict], torch.Tensor]) -> LearnedOrientation:
        """This run as an orientation classifier of films (``tasks.orientation.heuristic.OrientationClassifier``),
        e.g. preprocessing's learned fallback; ``predict(batch) -> probabilities`` (``engine.predictor.Predictor``,
        best under the eight turn/mirror views)."""
        return LearnedOrientation(predict, self.cfg.data.image_size, self.cfg.data.min_side_prob)


class LearnedOrientation:
    """``film -> Orientation``: the class probabilities of a trained run, the side ``"uncertain"`` below
    ``min_side_prob`` (summed over the rotations)."""

    def __init__(self, predict: Callable[[dict], torch.Tensor], size: int | tuple[int, int],
                 min_side_prob: float = 0.5) -> None:
        self.predict, self.size, self.min_side_prob = predict, size, min_side_prob

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        return self.predict(OrientationTask.image_batch(image, self.size))[0].float().cpu().numpy()

    def __call__(self, image: np.ndarray) -> Orientation:
        probs = self.probabilities(image).reshape(3, 4)  # side x rotation
        side_probs, rot_probs = probs.sum(axis=1), probs.sum(axis=0)
        side = int(np.argmax(side_probs))
        confident = bool(side_probs[side] >= self.min_side_prob)
        return Orientation(rotation=int(np.argmax(rot_probs)), side=SIDES[side] if confident else "uncertain",
                           confident=confident, side_source="learned" if confident else "none")


class OrientationWriter(PredictionWriter):
    """Class probabilities → ``img_id,label`` (the most probable class) and, when asked, the cache
    ``orientation.npz`` (names and probabilities)."""

    def __init__(self, out_csv: str | Path | None, cache: Any | None) -> None:
        self.out_csv, self.cache = out_csv, cache
        self.names: list[str] = []
        self.probs: list[np.ndarray] = []
        self.images = 0

    def add(self, batch: dict, outputs: torch.Tensor) -> None:
        self.names += [s.name for s in batch["samples"]]
        self.probs.append(outputs.float().cpu().numpy())
        self.images += len(batch["samples"])

    def result(self) -> tuple[list[str], np.ndarray]:
        return self.names, np.concatenate(self.probs) if self.probs else np.zeros((0, len(CLASS_NAMES)))

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            names, probs = self.result()
            if self.out_csv is not None:
                write_labels(self.out_csv, names, probs.argmax(1) if len(probs) else np.zeros(0, int))
            if self.cache is not None:
                self.cache(save_cache, self.cache.path, names, probs)
        return False
