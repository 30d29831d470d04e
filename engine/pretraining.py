"""Did the run a fine-tune starts from do its job? One warning line when it did not.

A fine-tune whose ``model.weights`` is a harness checkpoint (``best.pt``/``last.pt`` of a run folder, e.g. a
phantom pretraining) starts from whatever that run reached, and nothing in the fine-tune itself shows
it. :func:`pretraining_warning` reads the checkpoint (its config, epoch and validation metrics) and its run
folder (``metrics.jsonl``, ``summary.json``) and names what fell short:

- the validation score of the weights misses the run's ``train.target`` (in its task's headline metric);
- the run did not finish (no ``summary.json``: interrupted, or still training), or finished before its
  configured epochs (early stopping, or a callback such as a sweep's pruner);
- its weights come from the first half of a run of at least :data:`MIN_EPOCHS_FOR_EARLY_BEST` epochs
  (the best epoch much earlier than the last).

A file that is no harness checkpoint (an ImageNet state dict) is not judged.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from engine.checkpoint import load_checkpoint
from tasks.registry import get_task_class

# Below this many epochs the best epoch lying in the first half says little (1 of 2, 2 of 3).
MIN_EPOCHS_FOR_EARLY_BEST = 4


@dataclass(frozen=True)
class RunProgress:
    """How far the run behind a checkpoint got. Epochs count from 1; None where the files do not say."""

    weights: Path
    run: Path
    metric: str
    mode: str                        # "min" or "max": the direction of the task's metric
    score: float | None              # validation score of the weights
    epoch: int                       # the epoch the weights come from
    target: float | None             # train.target of the run
    planned: int                     # train.epochs of the run
    ran: int | None                  # epochs in metrics.jsonl
    finished: bool | None            # summary.json written (None: no run folder beside the file)
    patience: int | None

    def missed_target(self) -> bool:
        if self.target is None or self.score is None:
            return False
        return self.score > self.target if self.mode == "min" else self.score < self.target

    def problems(self) -> list[str]:
        """What fell short, each as a phrase: empty when the run reached its target and ran its course."""
        out = []
        if self.missed_target():
            out.append(f"missed its target {self.metric} {'<=' if self.mode == 'min' else '>='} {self.target:g} "
                       "(train.target)")
        if self.finished is False:
            out.append(f"did not finish ({self.ran or self.epoch} of its {self.planned} epochs, no summary.json)")
        elif self.ran is not None and self.ran < self.planned:
            out.append(f"stopped after {self.ran} of its {self.planned} epochs"
                       + (" (early stopping)" if self.patience else ""))
        if self.ran is not None and self.ran >= MIN_EPOCHS_FOR_EARLY_BEST and 2 * self.epoch <= self.ran:
            out.append(f"kept weights from epoch {self.epoch} of the {self.ran} it ran")
        return out


def _epochs_logged(metrics_file: Path) -> int | None:
    """The number of epochs ``metrics.jsonl`` records (its last epoch + 1), None without the file."""
    if not metrics_file.is_file():
        return None
    epochs = [json.loads(line).get("epoch", -1) for line in metrics_file.read_text().splitlines() if line.strip()]
    return max(epochs, default=-1) + 1


def read_progress(weights: str | os.PathLike) -> RunProgress | None:
    """The progress of the run whose checkpoint ``weights`` is; None for a file that is no harness checkpoint
    (or cannot be read: the model's loader reports that)."""
    path = Path(weights)
    try:
        ckpt = load_checkpoint(path, mmap=True)
        task = get_task_class(ckpt["config"]["task"])
        train = ckpt["config"]["train"]
        epoch = int(ckpt["epoch"]) + 1
    except (OSError, ValueError, KeyError, TypeError):
        return None
    metrics = ckpt.get("metrics") or {}
    run = path.parent
    has_folder = (run / "config.yaml").is_file()
    return RunProgress(
        weights=path, run=run, metric=task.metric, mode=task.mode,
        score=float(metrics["score"]) if isinstance(metrics.get("score"), (int, float)) else None,
        epoch=epoch, target=train.get("target"), planned=int(train.get("epochs", epoch)),
        ran=_epochs_logged(run / "metrics.jsonl") if has_folder else None,
        finished=(run / "summary.json").is_file() if has_folder else None,
        patience=train.get("early_stop_patience"))


def pretraining_warning(weights: str | os.PathLike | None) -> str | None:
    """One line naming the run behind ``weights`` and its figure when that run fell short, else None."""
    progress = read_progress(weights) if weights else None
    if progress is None:
        return None
    problems = progress.problems()
    if not problems:
        return None
    figure = f"val {progress.metric} {progress.score:.4g}" if progress.score is not None else "no val score"
    return (f"model.weights: the run {progress.run} ({progress.weights.name}: {figure} at epoch {progress.epoch}) "
            + " and ".join(problems) + "; the fine-tune starts from a short pretraining")


def warn_short_pretraining(weights: str | os.PathLike | None) -> None:
    """Print :func:`pretraining_warning` as ``warning: ...`` on stderr (rank 0 only under torchrun)."""
    note = pretraining_warning(weights)
    if note and int(os.environ.get("RANK", "0")) == 0:
        print(f"warning: {note}", file=sys.stderr)
