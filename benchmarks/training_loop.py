#!/usr/bin/env python
"""Segmentation training epochs: the harness's trainer against a plain PyTorch loop doing the same work.

  python benchmarks/training_loop.py [--images 24] [--size 1024] [--train-size 256] [--model smp:unet/resnet18]
                                     [--batch-size 4] [--epochs 3] [--workers 0 2] [--rounds 3] [--device auto]
                                     [--json PATH]

Plain loop (written below as one would by hand): the training images' decoded arrays as ``.npy`` files,
a ``Dataset`` that ``np.load``s them, a ``DataLoader`` (shuffled, persistent workers when there are any),
AdamW, BCE + Dice, ``--epochs`` epochs. Harness: ``engine.trainer.Trainer`` on the same fold with its
decode cache filled, the same model, loss, optimiser, batch size and workers, timed over the same epochs
of ``train_one_epoch`` (no validation; clipping, AMP and channels_last off, as the plain loop has none;
augmentation off). Each side builds its model, loader and optimiser before its clock starts, and starts
its loader workers inside the timed epochs. Rounds alternate the two
(medians), for each worker count. Prints and writes (default ``benchmarks/results/training_loop.json``)
images/s of each and the ratio harness / plain (the target: >= 0.97).
"""
from __future__ import annotations

import argparse
import gc
import itertools
import math
import tempfile
from pathlib import Path

import engine  # noqa: F401  (offline environment first)

import numpy as np
import segmentation_models_pytorch as smp
import torch
from torch.utils.data import DataLoader, Dataset

from common import alternate, medians, write_handbones, write_result
from engine.config import load_config
from engine.trainer import Trainer
from models import create_model

NO_AUGMENT = {"hflip": 0, "vflip": 0, "rotate": 0, "scale": 0, "shift": 0, "brightness_contrast": 0, "gamma": 0,
              "blur": 0, "noise": 0}


class PlainDataset(Dataset):
    def __init__(self, folder: Path, n: int) -> None:
        self.folder, self.n = folder, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = np.load(self.folder / f"{i}_image.npy")
        masks = np.load(self.folder / f"{i}_masks.npy")
        return torch.from_numpy(image).float().div_(255).unsqueeze(0), torch.from_numpy(masks)


def plain_setup(folder: Path, n: int, args: argparse.Namespace, workers: int, device: torch.device) -> tuple:
    torch.manual_seed(0)
    model = create_model(args.model, task="segmentation", num_outputs=29).to(device)
    loader = DataLoader(PlainDataset(folder, n), batch_size=args.batch_size, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    return model, loader, optimizer


def plain_training(setup: tuple, args: argparse.Namespace, device: torch.device) -> None:
    model, loader, optimizer = setup
    bce = smp.losses.SoftBCEWithLogitsLoss()
    dice = smp.losses.DiceLoss(mode="multilabel", from_logits=True)
    model.train()
    for _ in range(args.epochs):
        total = 0.0
        for images, masks in loader:
            images, masks = images.to(device), masks.to(device).float()
            logits = model(images).float()
            loss = bce(logits, masks) + dice(logits, masks)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item()
        check_loss("plain loop", total)
    if device.type == "cuda":
        torch.cuda.synchronize()


def check_loss(what: str, loss: float) -> None:
    if not math.isfinite(loss) or loss <= 0:
        raise SystemExit(f"{what}: epoch loss {loss}: the training path is broken")


def harness_config(root: Path, out: Path, args: argparse.Namespace, workers: int, run: str, device: str):
    return load_config(None, {
        "task": "segmentation", "name": run,
        "data": {"root": str(root), "image_size": args.train_size, "n_folds": 4, "cache_dir": str(out / "cache"),
                 "num_workers": workers},
        "model": {"name": args.model},
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": 1e-3, "clip_grad": None, "amp": "off",
                  "channels_last": False, "device": device},
        "augment": NO_AUGMENT,
        "logging": {"out_dir": str(out / "runs"), "progress": False},
    })


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--train-size", type=int, default=256)
    parser.add_argument("--model", default="smp:unet/resnet18")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", help="result file (default benchmarks/results/training_loop.json)")
    args = parser.parse_args(argv)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root, plain_dir = tmp / "train", tmp / "plain"
        write_handbones(root, args.images, args.size)
        first = Trainer(harness_config(root, tmp, args, 0, "fill", args.device))  # checks the data: fills the cache
        device = first.device
        train_set = first.train_set
        plain_dir.mkdir()
        for i in range(len(train_set)):  # the plain loop's files: the same arrays, masks unpacked
            arrays = train_set.load(i)
            np.save(plain_dir / f"{i}_image.npy", arrays["image"])
            np.save(plain_dir / f"{i}_masks.npy", np.unpackbits(arrays["masks"], axis=-1, count=args.train_size))
        n = len(train_set)
        del first
        made = itertools.count()

        def new_trainer(workers: int) -> Trainer:
            gc.collect()  # the previous round's trainer, and its persistent workers, end here
            torch.manual_seed(0)
            return Trainer(harness_config(root, tmp, args, workers, f"r{next(made)}", args.device))

        def harness_epochs(trainer: Trainer) -> None:
            for epoch in range(args.epochs):
                check_loss("harness", trainer.train_one_epoch(epoch))
            if device.type == "cuda":
                torch.cuda.synchronize()

        for workers in args.workers:
            times = alternate({"plain": lambda setup: plain_training(setup, args, device), "harness": harness_epochs},
                              args.rounds, setups={"plain": lambda w=workers: plain_setup(plain_dir, n, args, w, device),
                                                   "harness": lambda w=workers: new_trainer(w)})
            speed = {name: n * args.epochs / t for name, t in medians(times).items()}
            ratio = speed["harness"] / speed["plain"]
            rows[workers] = {"seconds": {k: [round(t, 3) for t in v] for k, v in times.items()},
                             "images_per_s": {k: round(v, 3) for k, v in speed.items()},
                             "ratio_harness_over_plain": round(ratio, 3)}
            print(f"num_workers {workers}: plain {speed['plain']:.2f} img/s, harness {speed['harness']:.2f} img/s: "
                  f"ratio {ratio:.3f}", flush=True)
    out = write_result("training_loop", {
        "images": n, "size": args.size, "train_size": args.train_size, "model": args.model,
        "batch_size": args.batch_size, "epochs": args.epochs, "rounds": args.rounds, "device": str(device),
        "by_num_workers": {str(w): r for w, r in rows.items()}}, args.json)
    print(f"{n} training images {args.size}px -> {args.train_size}px, {args.model}, {args.epochs} epochs, medians of "
          f"{args.rounds} alternating rounds on {device} -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
