"""Per-epoch metrics to ``metrics.jsonl`` (always) and to W&B (``logging.wandb: off|offline|online``)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tasks.formats.atomic import write_text


class RunLogger:
    def __init__(self, run_dir: Path, cfg: Any, enabled: bool = True) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self.wandb = None
        if enabled and cfg.logging.wandb != "off":
            import wandb

            os.environ["WANDB_MODE"] = cfg.logging.wandb
            self.wandb = wandb.init(project=cfg.logging.wandb_project, name=cfg.run_name, config=cfg.to_dict(),
                                    dir=str(run_dir), mode=cfg.logging.wandb, reinit="finish_previous")

    def start_fresh(self) -> None:
        """A new (not resumed) run in an existing folder starts its metrics anew."""
        if self.enabled:
            self.path.unlink(missing_ok=True)

    def truncate_after(self, epoch: int) -> None:
        """On resume, drop lines of epochs after the checkpoint (they are about to be redone)."""
        if not self.enabled or not self.path.is_file():
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

    def finish(self, summary: dict[str, Any]) -> None:
        if self.wandb is not None:
            self.wandb.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
            self.wandb.finish()
