"""The torch side of bone age (:mod:`tasks.boneage` is its spec): months from a hand radiograph and the sex.

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
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tasks.augment import SeededDataset, build_augment
from tasks.base import PredictionWriter, Task, precision
from tasks.boneage import SPEC
from tasks.boneage.cache import CACHE_FILE
from tasks.boneage.pseudo import training_samples as pseudo_samples
from tasks.boneage.samples import BoneAgeSample, fold_split, split_samples, test_samples, train_samples
from tasks.cache import SampleCache
from tasks.formats.images import read_grey
from tasks.formats.submissions import write_ages
from tasks.letterbox import Letterbox
from tasks.schema import ResizeMode, size_text
from tasks.metrics import age_metrics
from tasks.preprocess import Preprocess
from tasks.spec import MODE_RESIZE
from tasks.tta import View


class BoneAgeDataset(SeededDataset):
    """Items: ``image`` ``(1, H, W)`` float in [0, 1] (``size``: one side, or ``(height, width)``), ``male`` (0/1
    float), ``index``, and for labelled samples ``age`` (months) and ``target`` (normalised age)."""

    def __init__(self, samples: Sequence[BoneAgeSample], size: int | tuple[int, int], preprocess: Preprocess | None = None,
                 resize: ResizeMode = "letterbox", augment=None, cache: SampleCache | None = None, seed: int = 0,
                 target_mean: float = 120.0, target_std: float = 50.0) -> None:
        super().__init__(samples, size, augment, cache, seed)
        self.preprocess = preprocess or Preprocess()
        self.resize = resize
        self.target_mean, self.target_std = target_mean, target_std

    @property
    def cache_tag(self) -> str:
        return f"boneage|{size_text(self.size)}|{self.resize}|{self.preprocess.tag}"

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


class BoneAgeTask(Task):
    spec = SPEC

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
        return train_samples(self.cfg.data)

    def test_samples(self) -> list[BoneAgeSample]:
        return test_samples(self.cfg.data)

    def dataset(self, samples: Sequence[BoneAgeSample], train: bool = False) -> BoneAgeDataset:
        d = self.cfg.data
        cache = SampleCache(d.cache_dir, enabled=d.cache)
        return BoneAgeDataset(samples, d.image_size, self.preprocess, d.resize,
                              build_augment(self.cfg.augment) if train else None, cache, self.cfg.train.seed,
                              d.target_mean, d.target_std)

    def split(self) -> tuple[list[BoneAgeSample], list[BoneAgeSample]]:
        return fold_split(self.cfg.data)

    def datasets(self) -> tuple[BoneAgeDataset, BoneAgeDataset]:
        train, val = self.split()
        train = train + pseudo_samples(self.cfg.data)   # pseudo-labels: training only, never a validation fold
        return self.dataset(train, train=True), self.dataset(val)

    def loss(self, output: torch.Tensor, batch: dict) -> torch.Tensor:
        return self.criterion(output, batch["target"])

    @torch.no_grad()
    def predict(self, model: nn.Module, dataset: BoneAgeDataset, device: torch.device, autocast=None,
                batch_size: int = 4) -> np.ndarray:
        """Ages (months) of every item of ``dataset`` (validation: no TTA; prediction goes through
        ``engine.predictor``)."""
        model.eval()
        out = []
        for batch in self._loader(dataset, batch_size):
            with precision(autocast):
                y = model(*self.model_inputs({k: v.to(device) for k, v in batch.items() if k != "samples"}).values())
            out.append(self.to_months(y.float()))
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

    # ---------------------------------------------------------------------------------------- prediction

    def samples(self, split: str) -> list[BoneAgeSample]:
        """The test CSV's samples, or the configured fold's ``train``/``val`` part of the training CSV."""
        return split_samples(self.cfg.data, split)

    @staticmethod
    def _loader(dataset: BoneAgeDataset, batch_size: int) -> Iterator[dict]:
        for start in range(0, len(dataset), batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            yield {"image": torch.stack([it["image"] for it in items]), "male": torch.stack([it["male"] for it in items]),
                   "samples": [dataset.samples[it["index"]] for it in items]}

    def batches(self, samples: Sequence[BoneAgeSample], size: int | tuple[int, int], batch_size: int) -> Iterator[dict]:
        """Preprocessed, letterboxed images at ``size`` (from the decode cache after the first time) and the sex."""
        d = self.cfg.data
        dataset = BoneAgeDataset(samples, size, self.preprocess, d.resize, None, SampleCache(d.cache_dir, enabled=d.cache),
                                 target_mean=d.target_mean, target_std=d.target_std)
        return self._loader(dataset, batch_size)

    def model_inputs(self, batch: dict, view: View = View(), model: nn.Module | None = None) -> dict[str, torch.Tensor]:
        """The image under ``view`` and the sex (0/1), which no view changes. Given the ``model`` (export, FLOPs),
        ``male`` only for a regressor with the sex input (``sex_input``), 0 where the batch has none."""
        image = view.apply(batch["image"])
        if model is not None and not getattr(getattr(model, "module", model), "sex_input", False):
            return {"image": image}
        male = batch.get("male")
        male = image.new_zeros(image.shape[0]) if male is None else male.to(image.device, image.dtype)
        return {"image": image, "male": male}

    def writer(self, out_csv: str | Path, cache: Any | None, *, views: Sequence[View], workers: int,
               mode: str = MODE_RESIZE) -> BoneAgeWriter:
        return BoneAgeWriter(self, out_csv, cache)


class BoneAgeWriter(PredictionWriter):
    """Normalised outputs → months; on exit ``id,boneage`` and, when asked, the cache ``boneage.csv``."""

    def __init__(self, task: BoneAgeTask, out_csv: str | Path | None, cache: Any | None) -> None:
        self.task, self.out_csv, self.cache = task, out_csv, cache
        self.ids: list[str] = []
        self.ages: list[np.ndarray] = []
        self.images = 0

    def add(self, batch: dict, outputs: torch.Tensor) -> None:
        self.ids += [s.id for s in batch["samples"]]
        self.ages.append(self.task.to_months(outputs))
        self.images += len(batch["samples"])

    def result(self) -> tuple[list[str], np.ndarray]:
        """Ids and ages (months) taken so far."""
        return self.ids, np.concatenate(self.ages) if self.ages else np.zeros(0)

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            ids, ages = self.result()
            if self.out_csv is not None:
                write_ages(self.out_csv, ids, ages)
            if self.cache is not None:
                self.cache(write_ages, self.cache.path / CACHE_FILE, ids, ages)
        return False
