"""Per-epoch metrics to ``metrics.jsonl`` (always), to W&B (``logging.wandb: off|offline|online``) and to
TensorBoard (``logging.tensorboard: true``: ``<run>/tensorboard/``, the numbers of every metrics.jsonl row as
scalars at step = epoch; ``tensorboard --logdir runs/`` shows them)."""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

from tasks.formats.atomic import write_text

TENSORBOARD_DIR = "tensorboard"  # inside the run folder


def clear_run_logs(run_dir: Path) -> None:
    """Remove the epoch logs of an earlier run in ``run_dir`` (metrics.jsonl, the TensorBoard events)."""
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    shutil.rmtree(run_dir / TENSORBOARD_DIR, ignore_errors=True)


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """The numbers of a metrics row (booleans, text, missing and non-finite values left out), but its epoch."""
    return {k: float(v) for k, v in row.items()
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


class RunLogger:
    def __init__(self, run_dir: Path, cfg: Any, enabled: bool = True) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.run_dir = run_dir
        self.enabled = enabled
        self.wandb = None
        self.tensorboard = None
        self.purge_step: int | None = None
        self.use_tensorboard = enabled and cfg.logging.tensorboard
        if self.use_tensorboard:
            try:
                import torch.utils.tensorboard  # noqa: F401
            except ImportError:
                raise ValueError("logging.tensorboard: the tensorboard package is not installed "
                                 "(pip install -r requirements.txt)") from None
        if enabled and cfg.logging.wandb != "off":
            import wandb

            os.environ["WANDB_MODE"] = cfg.logging.wandb
            self.wandb = wandb.init(project=cfg.logging.wandb_project, name=cfg.run_name, config=cfg.to_dict(),
                                    dir=str(run_dir), mode=cfg.logging.wandb, reinit="finish_previous")

    def start_fresh(self) -> None:
        """A new (not resumed) run in an existing folder starts its metrics anew."""
        if self.enabled:
            clear_run_logs(self.run_dir)

    def truncate_after(self, epoch: int) -> None:
        """On resume, drop lines (and TensorBoard events) of epochs after the checkpoint: they are about to be redone."""
        if not self.enabled:
            return
        self.purge_step = epoch + 1
        if not self.path.is_file():
            return
        keep = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["epoch"] <= epoch]
        write_text(self.path, "".join(line + "\n" for line in keep))

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in row.items() if isinstance(v, (int, float))}, step=row["epoch"])
        if self.use_tensorboard:
            writer = self._writer()
            for key, value in scalars(row).items():
                writer.add_scalar(key, value, global_step=row["epoch"])
            writer.flush()

    def _writer(self):
        """The TensorBoard writer, made at the first row (after a resume has set the epoch to purge from)."""
        if self.tensorboard is None:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(self.run_dir / TENSORBOARD_DIR), purge_step=self.purge_step)
        return self.tensorboard

    def finish(self, summary: dict[str, Any]) -> None:
        if self.wandb is not None:
            self.wandb.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
            self.wandb.finish()
        if self.tensorboard is not None:
            self.tensorboard.close()
