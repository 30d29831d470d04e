"""Bone age regression: months from a hand radiograph and the patient's sex (RSNA 2017 format).

Data: ``id,boneage,male`` CSVs and ``<images>/<id>.png`` (:mod:`tasks.formats.rsna`), any image size
and mode. Each image goes through the configured radiograph preprocessing (:mod:`tasks.preprocess`),
is letterboxed (aspect kept) or stretched to ``image_size`` and cached at that size, so an epoch never
decodes or preprocesses a 2080 px PNG again.

Target: ``(months - target_mean) / target_std``; the model outputs that normalised age, the loss is
L1 (and/or smooth L1, MSE) on it, metrics are in months: MAE (the competition score), RMSE, the share
within 12 months, MAE by sex and by age band. Submission: ``id,boneage`` (months).
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import Field
from sklearn.model_selection import KFold, StratifiedKFold
from torch import nn

from tasks.augment import SeededDataset, build_augment
from tasks.base import DataBase, Task
from tasks.cache import SampleCache
from tasks.formats import FormatError
from tasks.formats.images import read_grey
from tasks.formats.rsna import image_path, read_labels
from tasks.formats.rsna import read_submission as read_submission  # re-exported: engine.predict_boneage reads with it
from tasks.letterbox import Letterbox, ResizeMode
from tasks.metrics import age_metrics
from tasks.preprocess import Preprocess, PreprocessConfig
from tasks.registry import TASKS


class BoneAgeData(DataBase):
    """``data`` of a bone-age run. CSV and image paths are relative to ``root`` (test ones to
    ``test_root``, default ``root``) unless absolute."""

    root: str = "data/phantom/boneage"
    train_csv: str = "boneage-training-dataset.csv"
    train_images: str = "boneage-training-dataset"
    test_csv: str = "boneage-test-dataset.csv"
    test_images: str = "boneage-test-dataset"
    resize: ResizeMode = "letterbox"
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    # Age normalisation (months); defaults: the RSNA 2017 training set (12,611 hands). Phantom ages are
    # uniform over 1-228 months (mean 114.5, sd 65.8).
    target_mean: float = 127.3
    target_std: float = Field(41.2, gt=0)
    stratify: bool = True
    cache_dir: str | None = None


@dataclass(frozen=True)
class BoneAgeSample:
    """One radiograph: RSNA id, image path, bone age in months (NaN when unknown) and sex."""

    id: str
    image_path: Path
    age: float
    male: bool


def _resolve(base: str | os.PathLike, name: str) -> Path:
    p = Path(name)
    return p if p.is_absolute() else Path(base) / p


def list_samples(csv_path: str | os.PathLike, images_dir: str | os.PathLike, require_age: bool = False) -> list[BoneAgeSample]:
    """Samples of an RSNA CSV whose images all exist (a missing one is a FormatError naming it)."""
    df = read_labels(csv_path, require_age=require_age)
    if df.empty:
        raise FormatError(f"{csv_path}: no rows")
    return [BoneAgeSample(str(r.id), image_path(images_dir, str(r.id)), float(r.boneage), bool(r.male))
            for r in df.itertuples(index=False)]


def split_folds(ages: Sequence[float], n_folds: int, fold: int, stratify: bool = True, seed: int = 0
                ) -> tuple[list[int], list[int]]:
    """Train/validation indices of ``fold``: shuffled K-fold, stratified by age quintile when possible."""
    n = len(ages)
    if n < 2:
        raise FormatError(f"need at least 2 labelled images to make a validation fold, found {n}")
    n_folds = min(n_folds, n)
    if not 0 <= fold < n_folds:
        raise ValueError(f"data.fold={fold} out of range for {n_folds} folds")
    x = np.zeros(n)
    bins = np.digitize(ages, np.quantile(ages, [0.2, 0.4, 0.6, 0.8]))
    if stratify and np.bincount(bins).min() >= n_folds:
        splits = list(StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(x, bins))
    else:
        splits = list(KFold(n_folds, shuffle=True, random_state=seed).split(x))
    train_idx, val_idx = splits[fold]
    return sorted(train_idx.tolist()), sorted(val_idx.tolist())


class BoneAgeDataset(SeededDataset):
    """Items: ``image`` ``(1, S, S)`` float in [0, 1], ``male`` (0/1 float), ``index``, and for labelled
    samples ``age`` (months) and ``target`` (normalised age)."""

    def __init__(self, samples: Sequence[BoneAgeSample], size: int, preprocess: Preprocess | None = None,
                 resize: ResizeMode = "letterbox", augment=None, cache: SampleCache | None = None, seed: int = 0,
                 target_mean: float = 120.0, target_std: float = 50.0) -> None:
        super().__init__(samples, size, augment, cache, seed)
        self.preprocess = preprocess or Preprocess()
        self.resize = resize
        self.target_mean, self.target_std = target_mean, target_std

    @property
    def cache_tag(self) -> str:
        return f"boneage|{self.size}|{self.resize}|{self.preprocess.tag}"

    def load(self, i: int) -> np.ndarray:
        """The preprocessed image at the training size (uint8), from the cache after the first time."""
        s = self.samples[i]

        def make() -> dict[str, np.ndarray]:
            image = self.preprocess(read_grey(s.image_path))
            box = Letterbox.fit(*image.shape, self.size, self.resize)
            return {"image": box.image(image)}

        return self.cache.get([s.image_path], self.cache_tag, make)["image"]

    def __getitem__(self, i: int) -> dict:
        image = self.load(i)
        if self.augment is not None:
            self.reseed(i)
            image = self.augment(image=image)["image"]
        s = self.samples[i]
        item = {
            "image": torch.from_numpy(np.ascontiguousarray(image)).float().div_(255.0).unsqueeze(0),
            "male": torch.tensor(float(s.male)),
            "index": i,
        }
        if math.isfinite(s.age):
            item["age"] = torch.tensor(s.age, dtype=torch.float32)
            item["target"] = torch.tensor((s.age - self.target_mean) / self.target_std, dtype=torch.float32)
        return item


class RegressionLoss(nn.Module):
    """Weighted sum of ``l1``, ``smooth_l1`` (Huber, beta 1 in normalised units) and ``mse``."""

    TERMS = {"l1": nn.functional.l1_loss, "smooth_l1": nn.functional.smooth_l1_loss, "mse": nn.functional.mse_loss}

    def __init__(self, weights: dict[str, float]) -> None:
        super().__init__()
        unknown = set(weights) - set(self.TERMS)
        if unknown:
            raise ValueError(f"loss.weights: unknown bone-age loss {sorted(unknown)}; valid: {', '.join(self.TERMS)} "
                             "(e.g. loss: {weights: {l1: 1.0}})")
        self.weights = {k: float(v) for k, v in weights.items() if v > 0}
        if not self.weights:
            raise ValueError("loss.weights: at least one bone-age loss needs a positive weight")

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pred = pred.float().reshape(-1)
        return sum(w * self.TERMS[k](pred, target.float().reshape(-1)) for k, w in self.weights.items())


@TASKS.register("boneage")
class BoneAgeTask(Task):
    name = "boneage"
    Data = BoneAgeData
    metric = "mae_months"
    mode = "min"
    default_loss = {"l1": 1.0}
    regression = True

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.criterion = RegressionLoss(cfg.loss.weights)
        self.preprocess = Preprocess(cfg.data.preprocess)

    @property
    def num_outputs(self) -> int:
        return 1

    def to_months(self, output: torch.Tensor | np.ndarray) -> np.ndarray:
        """Model output (normalised age) → months."""
        out = output.detach().float().cpu().numpy() if isinstance(output, torch.Tensor) else np.asarray(output)
        return out.reshape(-1) * self.cfg.data.target_std + self.cfg.data.target_mean

    def train_samples(self) -> list[BoneAgeSample]:
        d = self.cfg.data
        return list_samples(_resolve(d.root, d.train_csv), _resolve(d.root, d.train_images), require_age=True)

    def test_samples(self) -> list[BoneAgeSample]:
        d = self.cfg.data
        base = d.test_root or d.root
        return list_samples(_resolve(base, d.test_csv), _resolve(base, d.test_images))

    def dataset(self, samples: Sequence[BoneAgeSample], train: bool = False) -> BoneAgeDataset:
        d = self.cfg.data
        cache = SampleCache(d.cache_dir, enabled=d.cache)
        return BoneAgeDataset(samples, d.image_size, self.preprocess, d.resize,
                              build_augment(self.cfg.augment) if train else None, cache, self.cfg.train.seed,
                              d.target_mean, d.target_std)

    def split(self) -> tuple[list[BoneAgeSample], list[BoneAgeSample]]:
        samples = self.train_samples()
        d = self.cfg.data
        train_idx, val_idx = split_folds([s.age for s in samples], d.n_folds, d.fold, d.stratify)
        return [samples[i] for i in train_idx], [samples[i] for i in val_idx]

    def datasets(self) -> tuple[BoneAgeDataset, BoneAgeDataset]:
        train, val = self.split()
        return self.dataset(train, train=True), self.dataset(val)

    def forward(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return model(batch["image"], batch["male"])

    def model_inputs(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        """The image and, for a regressor with the sex input (``sex_input``), ``male`` (0/1 per image; 0 where the
        batch has none)."""
        image = batch["image"]
        if not getattr(model, "sex_input", False):
            return {"image": image}
        male = batch.get("male")
        male = image.new_zeros(image.shape[0]) if male is None else male.to(image.device, image.dtype)
        return {"image": image, "male": male}

    def loss(self, output: torch.Tensor, batch: dict) -> torch.Tensor:
        return self.criterion(output, batch["target"])

    @torch.no_grad()
    def predict(self, model: nn.Module, dataset: BoneAgeDataset, device: torch.device, autocast=None,
                batch_size: int = 4, views: Sequence | None = None) -> np.ndarray:
        """Ages (months) of every item, the mean over TTA ``views`` (objects with ``apply(images)``, such as
        ``engine.tta.View``; the images as they are if None)."""
        views = list(views) if views else [None]
        model.eval()
        out = []
        for start in range(0, len(dataset), batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            images = torch.stack([it["image"] for it in items]).to(device)
            male = torch.stack([it["male"] for it in items]).to(device)
            total = None
            for view in views:
                with autocast() if autocast else torch.autocast(device.type, enabled=False):
                    y = model(view.apply(images) if view is not None else images, male).float().reshape(-1)
                total = y if total is None else total + y
            out.append(self.to_months(total / len(views)))
        return np.concatenate(out) if out else np.zeros(0)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset: BoneAgeDataset, device: torch.device, autocast=None,
                 batch_size: int = 4) -> dict:
        """MAE months (``score``), loss (normalised units, as in training), RMSE, within 12 months, by sex and age band;
        ``baseline_mae``: the MAE of always answering the training fold's mean age, the bar a model must clear;
        ``pred_spread``: sd of the predictions over sd of the ages (0: a constant predictor), which
        ``train.select_min_spread`` reads."""
        pred = self.predict(model, dataset, device, autocast, batch_size)
        age = np.array([s.age for s in dataset.samples])
        male = np.array([s.male for s in dataset.samples])
        d = self.cfg.data
        loss = self.criterion(torch.as_tensor((pred - d.target_mean) / d.target_std),
                              torch.as_tensor((age - d.target_mean) / d.target_std))
        train_mean = float(np.mean([s.age for s in self.split()[0]]))
        return {**age_metrics(pred, age, male, baseline_age=train_mean), "loss": float(loss)}
