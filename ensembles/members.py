"""What every ensemble shares, whatever its task: its members (run folders and their configs) and its own run
folder (summary.json, the resolved ensemble YAML).

A member is one run folder, or several (the folds of one configuration: ``runs: [...]``), which predict the
test set as the mean of their models and the validation set out of fold. A run on all data (``data.fold: all``)
predicts the test set only: beside fold runs it adds its model to the member's test mean and nothing to its
validation predictions; a member of such runs alone cannot be fused, fitted or selected on validation images. Fusing from prediction caches needs
only each run's ``config.yaml``: no checkpoint is opened and nothing imports torch (``need_models=False``).
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.config import Config, ConfigError, load_config
from ensembles.config import EnsembleConfig, read_fit
from core.atomic import write_text
from tasks.schema import image_hw


def largest(sizes: Iterable[int | tuple[int, int]]) -> int | tuple[int, int]:
    """The input size of the most pixels among ``sizes`` (``data.image_size`` values: a side or height x width)."""
    return max(sizes, key=lambda size: math.prod(image_hw(size)))


@dataclass
class Member:
    """A resolved member: its label, run folders, their configs and its own thresholds (a thresholded task's
    hard votes; None otherwise)."""

    label: str
    run_dirs: list[Path]
    cfgs: list[Config]
    checkpoint: str
    thresholds: Any = None
    sources: dict[str, list[int]] = field(default_factory=dict)  # image name -> indices of the runs predicting it
    # per run: its checkpoint as read for its config (built into a model without a second read), or the file
    # (fused from its prediction cache, or not read yet: a model load then opens it)
    checkpoints: list[Any] = field(default_factory=list)

    @property
    def image_size(self) -> int | tuple[int, int]:
        """The largest input size of the member's runs (by pixels), as their configs give it (a patch-trained
        run's: its tile)."""
        return largest(c.data.input_size for c in self.cfgs)

    def validation_runs(self) -> list[int]:
        """Indices of the runs that hold a validation fold (not those on all data); a ConfigError when none does."""
        runs = [r for r, cfg in enumerate(self.cfgs) if cfg.data.has_validation]
        if not runs:
            raise ConfigError(f"member {self.label}: {self.run_dirs[0]} trained on every image (data.fold=all), so it "
                              "has no validation (out-of-fold) predictions to fuse, fit or select on; it joins an "
                              "ensemble for the test set only (alone, or beside its fold runs in runs: [...])")
        return runs


def resolve_members(ens: EnsembleConfig, need_models: bool = True) -> list[Member]:
    """Read each member's run configs; check task and data agree (errors name the member and run).

    ``need_models``: read each run's checkpoint for its config (the config the weights were trained with);
    otherwise only its ``config.yaml`` (fusing caches). A task with its own ``test_root`` in the ensemble
    (not a dense one, whose test images are the ensemble's) reads the members' test images from there.
    """
    from engine.run_folder import member_config

    side = ens.spec.ensemble_side()
    members = []
    for spec in ens.members:
        cfgs, checkpoints = [], []
        for run in spec.run_dirs:
            if not (run / "config.yaml").is_file():
                raise ConfigError(f"member {spec.label}: {run} is not a run folder (no config.yaml)")
            if need_models:
                cfg, ckpt = member_config(run, spec.checkpoint)
            else:
                cfg, ckpt = load_config(run / "config.yaml"), None
            checkpoints.append(run / spec.checkpoint if ckpt is None else ckpt)
            if cfg.task != ens.task:
                raise ConfigError(f"member {spec.label}: run {run} is a {cfg.task} run, the ensemble is {ens.task}")
            if ens.test_root is not None and side.output == "values":
                cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"test_root": ens.test_root})})
            ens.member_tta(cfg)  # the ensemble's views fit the member's input (before any model runs)
            cfgs.append(cfg)
        thresholds = None
        if ens.spec.thresholded:
            own = spec.threshold if spec.threshold is not None else cfgs[0].inference.threshold
            thresholds = side.thresholds(own, ens.spec.classes)
        members.append(Member(spec.label, spec.run_dirs, cfgs, spec.checkpoint, thresholds, checkpoints=checkpoints))
    roots = {(m.label, str(c.data.root)) for m in members for c in m.cfgs}
    if len({r for _, r in roots}) > 1:
        detail = ", ".join(f"{label}: {root}" for label, root in sorted(roots))
        raise ConfigError(f"ensemble {ens.run_name}: members were trained on different data ({detail})")
    return members


def record_ensemble(ens: EnsembleConfig, members: list[Member], describe: dict, *, tta: bool, from_cache: bool,
                    images_per_s: float) -> None:
    """After a test-set prediction: the ensemble's run folder (bookkeeping: a read-only folder warns, the
    submission stands); the speed only when the members ran (a fusion of caches measures no model)."""
    from core.cli import Output

    speed = None if from_cache else {"images_per_s_tta" if tta else "images_per_s": images_per_s}
    Output(ens.run_dir, required=False)(write_ensemble_summary, ens, members, describe, speed=speed)


def write_ensemble_summary(ens: EnsembleConfig, members: list[Member], describe: dict, speed: dict | None = None,
                           val: dict | None = None) -> dict:
    """The ensemble's run folder (any task): summary.json (members, method, weights, thresholds, validation
    score; ``describe`` says how it fuses) + its config; the task's metric and mode come from its spec."""
    import yaml

    from engine.summary import base_summary, read_summary, update_summary, write_summary

    run_dir = ens.run_dir
    if not read_summary(run_dir):
        write_summary(run_dir, base_summary(
            name=ens.run_name, task=ens.task, kind="ensemble", model=f"ensemble:{ens.method}", family="ensemble",
            arch=ens.method, config_id=ens.run_name,
            image_size=largest(m.image_size for m in members),
            metric=ens.spec.metric, mode=ens.spec.mode, val={"score": None}))
    fields: dict = {"members": [m.label for m in members], "ensemble": describe,
                    "member_runs": {m.label: [str(r) for r in m.run_dirs] for m in members}}
    if val is None and ens.fit_path.is_file():
        try:
            val = read_fit(ens).get("val")
        except ConfigError:
            val = None
    if val is not None:
        fields["val"] = val
    if speed:
        fields["speed"] = speed
    summary = update_summary(run_dir, **fields)
    write_text(run_dir / "ensemble.yaml", yaml.safe_dump(ens.model_dump(mode="json"), sort_keys=False))
    return summary


def timed_stats(n: int, seconds: float, out_csv: str | Path) -> dict:
    """What every prediction returns: images, seconds, images/s and the CSV written."""
    return {"images": n, "seconds": round(seconds, 3), "images_per_s": round(n / max(seconds, 1e-9), 3),
            "csv": str(out_csv)}
