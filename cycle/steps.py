"""The steps of a cycle, built from its plan: each writes one folder (claimed while it runs), needs some steps
done first, and is done when its folder says so — so a cycle killed anywhere continues where it stopped,
and several workers can share it.

1. ``train <run>`` — every model × fold: train (a started run resumes from ``last.pt``, a finished one is
   taken only with the config it was trained with), then predict its validation fold into the prediction
   cache with the plan's TTA (``summary.json["oof"]``).
2. ``test <run>`` — predict the test images into the run's cache with the same TTA
   (``summary.json["test_pred"]``); with ``test_gt``, score its CSV (``summary.json["test"]``).
3. ``select`` — greedy selection with replacement over the models' out-of-fold predictions, cross-fitted over
   patients (:func:`ensembles.select.select_ensemble`, folder ``<cycle>/<task>/selected``).
4. ``fit`` — the ensemble the cycle submits, ``<cycle>/<task>/<name>/submitted.yaml``: the selection, unless
   on the held-out patients it does not beat the best single model, which is then submitted alone (the
   cycle never submits a blend that loses to its best member out of sample); then thresholds and
   post-processing fitted on the out-of-fold predictions where asked (each kept only where it wins out of
   sample, :mod:`ensembles.fit`).
5. ``submit`` — fuse the members' cached test predictions into the submission CSV, validate it against the
   test images, and with ``test_gt`` score it into the ensemble's summary.json (the leaderboard's row).

Steps 3-5 record what they were made from in ``<folder>/cycle.json``; a changed input (another set of
runs, other options) makes them run again.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from core.atomic import write_text
from cycle.estimate import FallbackRates, epochs_done, prediction_rate, seconds_per_epoch
from cycle.plan import CyclePlan
from engine.config import Config
from engine.summary import read_summary, record_summary

STAGES = ("train", "test", "select", "fit", "submit")   # in the order they run
SELECTION = "selected"
RECORD = "cycle.json"
SUBMITTED = "submitted.yaml"   # the ensemble YAML the cycle wrote (the folder's ensemble.yaml is its resolved copy)


@dataclass
class Step:
    """One unit of work: ``key`` names it, ``folder`` is what it writes (and claims), ``after`` the keys of the
    steps it needs done; ``done()`` reads the folder, ``run(log)`` does the work, ``estimate()`` its seconds."""

    key: str
    stage: str
    folder: Path
    run: Callable[[Callable[[str], None]], None]
    done: Callable[[], bool]
    estimate: Callable[[], float | None] = lambda: None
    after: tuple[str, ...] = ()
    note: Callable[[], str] = lambda: ""


@dataclass
class Cycle:
    """A plan's steps, in the order one worker runs them, with what the report needs."""

    plan: CyclePlan
    runs: dict[str, list[Config]]
    steps: list[Step] = field(default_factory=list)

    @property
    def final_dir(self) -> Path:
        return self.plan.runs_dir / self.plan.name

    def step(self, key: str) -> Step:
        return next(s for s in self.steps if s.key == key)

    def until(self, stage: str) -> Cycle:
        """The cycle's steps up to and including ``stage`` (one of :data:`STAGES`)."""
        last = STAGES.index(stage)
        return Cycle(self.plan, self.runs, [s for s in self.steps if STAGES.index(s.stage) <= last])


def fingerprint(inputs: Any) -> str:
    """A short hash of a step's inputs (JSON-serialisable), recorded when it finishes."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def recorded(folder: Path, key: str) -> str | None:
    """The fingerprint ``key`` recorded in ``folder/cycle.json`` when it last finished (None: never)."""
    try:
        return json.loads((folder / RECORD).read_text(encoding="utf-8")).get(key)
    except (OSError, ValueError, AttributeError):
        return None


def record(folder: Path, key: str, value: str) -> None:
    """Record ``key`` as finished from inputs ``value`` (atomic; the caller holds the folder's claim)."""
    try:
        data = json.loads((folder / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}
    data = data if isinstance(data, dict) else {}
    data[key] = value
    write_text(folder / RECORD, json.dumps(data, indent=1, sort_keys=True))


@lru_cache(maxsize=None)
def _image_counts(cfg_json: str) -> tuple[int, int, int]:
    from engine.config import build_config
    from engine.folds import fold_images

    cfg = build_config(json.loads(cfg_json))
    split = fold_images(cfg)
    try:
        test = len(cfg.spec.task_class()(cfg).samples("test"))
    except (ValueError, OSError):   # no test set configured or found: nothing to predict there
        test = 0
    return len(split["train"]), len(split["val"]), test


def image_counts(cfg: Config) -> tuple[int, int, int]:
    """Training, validation and test images of a run (listed once per configuration)."""
    return _image_counts(json.dumps(cfg.to_dict(), sort_keys=True))


def check_test_set(cycle: Cycle) -> None:
    """Before the first training: the test images the cycle will predict and the answers it scores them with
    exist (else one line naming the key), so a misplaced path does not end a cycle after hours of training."""
    if not any(s.stage == "test" for s in cycle.steps) or all(s.done() for s in cycle.steps):
        return
    answers = cycle.plan.test_gt
    if answers is not None and not Path(answers).exists():
        raise ValueError(f"test_gt: {answers} does not exist (the test answers: a folder or file tools/score.py --gt "
                         f"takes; a plan's paths are relative to the current folder, {Path.cwd()})")
    cfg = next(iter(cycle.runs.values()))[0]
    try:
        images = image_counts(cfg)[2]
    except (ValueError, OSError) as err:
        raise ValueError(f"data.test_root: the test images of {cfg.run_name} cannot be listed ({err})") from None
    if not images:
        raise ValueError(f"data.test_root: no test images for {cfg.run_name} (data.test_root = {cfg.data.test_root}); "
                         "the cycle predicts and submits the test set")


# ---------------------------------------------------------------------------------------------------- train


def same_config(cfg: Config) -> bool:
    """The run folder's saved config computes what ``cfg`` computes (:func:`engine.run_folder.check_same_config`)."""
    from engine.run_folder import RunFolderError, check_same_config

    try:
        check_same_config(cfg, "the cycle")
    except (RunFolderError, ValueError, OSError):
        return False
    return True


def train_done(cfg: Config, tta: bool) -> bool:
    """Finished and its out-of-fold predictions made with ``tta`` (a run whose every epoch failed the checkpoint
    rule has no best.pt, so no predictions: done, and left out of selection)."""
    summary = read_summary(cfg.run_dir)
    if not summary or not same_config(cfg):
        return False   # a changed config is not done: running the step refuses it, naming the keys
    if not (cfg.run_dir / "best.pt").is_file():
        return True
    oof = summary.get("oof") or {}
    return bool(oof) and bool(oof.get("tta", False)) == tta


def run_train(cfg: Config, tta: bool, log: Callable[[str], None]) -> None:
    """Train (or resume, or take the finished run after checking its config), then predict out of fold."""
    from engine.folds import predict_out_of_fold
    from engine.run_folder import check_same_config, holds_run
    from engine.training import train_one

    run_dir = cfg.run_dir
    if (run_dir / "summary.json").is_file():
        check_same_config(cfg, "the cycle")
        log("finished before; predicting its validation fold")
    elif (run_dir / "last.pt").is_file():
        log(f"resuming from epoch {epochs_done(run_dir)}")
        train_one(cfg, resume=True, overwrite=False)
    else:
        # a folder without last.pt was left before its first epoch ended (a killed worker): nothing to keep
        train_one(cfg, resume=False, overwrite=holds_run(run_dir))
    if (run_dir / "best.pt").is_file():
        predict_out_of_fold(cfg, progress=cfg.logging.progress, tta=tta)
    else:
        log("no epoch passed the checkpoint rule: no best.pt, left out of the ensemble")


def train_estimate(cfg: Config, siblings: Sequence[Config], rates: FallbackRates, tta: bool) -> float | None:
    """Seconds left: the epochs to go at the run's (or a sibling fold's) seconds per epoch, plus its validation
    prediction at a sibling's (or the fallback) speed."""
    per_epoch = seconds_per_epoch(cfg.run_dir)
    for other in siblings:
        per_epoch = per_epoch or seconds_per_epoch(other.run_dir)
    if per_epoch is None and rates.train_images_per_s:
        per_epoch = image_counts(cfg)[0] / rates.train_images_per_s
    if per_epoch is None:
        return None
    left = max(0, cfg.train.epochs - epochs_done(cfg.run_dir)) * per_epoch
    speed = next(filter(None, (prediction_rate(o.run_dir, tta) for o in [cfg, *siblings])), None)
    speed = speed or rates.predict_images_per_s
    return left + (image_counts(cfg)[1] / speed if speed else 0.0)


# ----------------------------------------------------------------------------------------------------- test


def test_inputs(cfg: Config, tta: bool) -> dict:
    return {"tta": tta, "test_root": str(cfg.data.test_root), "root": str(cfg.data.root)}


def test_done(cfg: Config, plan: CyclePlan) -> bool:
    summary = read_summary(cfg.run_dir)
    if not (cfg.run_dir / "best.pt").is_file():
        return bool(summary)
    done = summary.get("test_pred") == test_inputs(cfg, plan.tta) and (cfg.run_dir / "preds" / "test.csv").is_file()
    return done and (plan.test_gt is None or bool(summary.get("test")))


def run_test(cfg: Config, plan: CyclePlan, log: Callable[[str], None]) -> None:
    """Predict the test images into the run's cache (emptied first: it must hold exactly this test set) and
    its CSV; score the CSV where the plan has the answers."""
    from engine.predictor import predict_run

    if not (cfg.run_dir / "best.pt").is_file():
        return
    cache = cfg.run_dir / "preds" / "test"
    if cache.is_dir():
        shutil.rmtree(cache)
    out = cfg.run_dir / "preds" / "test.csv"
    stats = predict_run(cfg, cfg.run_dir / "best.pt", out_csv=out, split="test", tta=plan.tta,
                        save_probs_dir="auto", device=cfg.train.device, progress=cfg.logging.progress)
    record_summary(cfg.run_dir, test_pred=test_inputs(cfg, plan.tta))
    log(f"{stats['images']} test images at {stats['images_per_s']:.2f} img/s")
    if plan.test_gt:
        record_summary(cfg.run_dir, merge=False, test=score(out, plan))


def score(csv: Path | str, plan: CyclePlan) -> dict:
    """The CSV's local test scores (what ``tools/score.py --run`` records)."""
    from tasks.scoring import score_submission, stored_scores

    return stored_scores(score_submission(csv, plan.test_gt))


def test_estimate(cfg: Config, siblings: Sequence[Config], rates: FallbackRates, tta: bool) -> float | None:
    speed = next(filter(None, (prediction_rate(o.run_dir, tta) for o in [cfg, *siblings])), None)
    speed = speed or rates.predict_images_per_s
    return image_counts(cfg)[2] / speed if speed else None


# ---------------------------------------------------------------------------------------------------- select


def selection_inputs(cycle: Cycle) -> dict:
    return {"runs": sorted(str(c.run_dir) for cfgs in cycle.runs.values() for c in cfgs),
            "options": cycle.plan.select.model_dump()}


def run_select(cycle: Cycle, log: Callable[[str], None]) -> None:
    from ensembles.select import select_ensemble, selection_report

    rec = select_ensemble(cycle.plan.runs_dir, name=SELECTION, progress=False, **cycle.plan.select.model_dump())
    log(selection_report(rec))
    record(cycle.plan.runs_dir / SELECTION, "select", fingerprint(selection_inputs(cycle)))


# ------------------------------------------------------------------------------------------------------ fit


def chosen_members(selection: dict) -> tuple[dict[str, float], str]:
    """The members and weights to submit, and why: the selection, or its best single candidate where the
    selection does not beat that one on the held-out patients (or could not be cross-fitted and holds
    several members: the best single candidate is then the honest choice)."""
    weights = selection["weights"]
    best = selection["best_single"]
    cf = selection.get("cross_fitted")
    if len(weights) == 1:
        return weights, f"selection chose one model ({next(iter(weights))})"
    if not cf:
        return {best: 1.0}, f"no cross-fitting possible (too few patients): best single model {best}"
    better = cf["selection"] > cf["best_single"] if selection["mode"] == "max" else cf["selection"] < cf["best_single"]
    label = selection["metric_label"]
    if better:
        return weights, (f"selection beats the best single model out of sample ({label} {cf['selection']:.4f} vs "
                         f"{cf['best_single']:.4f}, held-out patients)")
    return {best: 1.0}, (f"selection does not beat the best single model out of sample ({label} {cf['selection']:.4f} "
                         f"vs {cf['best_single']:.4f}, held-out patients): submitting {best} alone")


def final_config(cycle: Cycle, selection: dict) -> tuple[dict, str]:
    """The mapping of the ensemble the cycle submits, and the reason for its members."""
    from tasks.spec import task_spec

    plan = cycle.plan
    weights, why = chosen_members(selection)
    runs = selection["candidates"]
    spec = task_spec(plan.task)
    raw: dict[str, Any] = {
        "task": plan.task, "method": "weighted", "name": plan.name, "out_dir": str(plan.folder),
        "members": [{"name": label, "runs": runs[label]} for label in weights],
        "weights": list(weights.values()),
    }
    if spec.thresholded:
        raw["thresholds"] = "fit" if plan.fit.thresholds else selection.get("threshold", 0.5)
    if plan.fit.postprocess and spec.postprocess:
        raw["postprocess"] = "fit"
    if "fit" in raw.values():
        raw["fit"] = {"per_class": plan.fit.per_class, "folds": plan.fit.folds}
    return raw, why


def fit_inputs(cycle: Cycle) -> dict:
    return {"selection": recorded(cycle.plan.runs_dir / SELECTION, "select"), "fit": cycle.plan.fit.model_dump()}


def run_fit(cycle: Cycle, log: Callable[[str], None]) -> None:
    import yaml

    from ensembles.api import fit_ensemble
    from ensembles.config import EnsembleConfig

    selection = json.loads((cycle.plan.runs_dir / SELECTION / "selection.json").read_text(encoding="utf-8"))
    raw, why = final_config(cycle, selection)
    log(why)
    folder = cycle.final_dir
    folder.mkdir(parents=True, exist_ok=True)
    header = f"# The ensemble cycle {cycle.plan.name} submits (tools/cycle.py): {why}\n"
    write_text(folder / SUBMITTED, header + yaml.safe_dump(raw, sort_keys=False))
    ens = EnsembleConfig.model_validate(raw)
    if "fit" in raw:
        result = fit_ensemble(ens, progress=False)
        log(f"fitted on out-of-fold predictions: kept {result.get('config', 'the defaults')} (the variant that won "
            f"on held-out patients; {ens.fit_path})")
    record(folder, "fit", fingerprint(fit_inputs(cycle)))


# --------------------------------------------------------------------------------------------------- submit


def submit_inputs(cycle: Cycle) -> dict:
    return {"fit": recorded(cycle.final_dir, "fit"), "submission": str(cycle.plan.submission_csv), "tta": cycle.plan.tta,
            "test_gt": cycle.plan.test_gt}


def run_submit(cycle: Cycle, log: Callable[[str], None]) -> None:
    from ensembles.api import predict_ensemble
    from ensembles.config import load_ensemble_config
    from tasks.scoring import validate_submission

    plan = cycle.plan
    ens = load_ensemble_config(cycle.final_dir / SUBMITTED)
    plan.submission_csv.parent.mkdir(parents=True, exist_ok=True)
    predict_ensemble(ens, out_csv=plan.submission_csv, split="test", from_cache=True, progress=False)
    first = next(iter(cycle.runs.values()))[0]
    test_root = first.data.test_root or first.data.root
    reference = Path(ens.members[0].run_dirs[0]) / "preds" / "test.csv"   # what the members were asked to predict
    task, n = validate_submission(plan.submission_csv, test_root, reference)
    verdict = {"valid": True, "images": n, "checked_against": str(first.data.test_root or reference)}
    record_summary(cycle.final_dir, submission={"csv": str(plan.submission_csv), **verdict})
    log(f"{plan.submission_csv}: valid {task} submission ({n} images)")
    if plan.test_gt:
        record_summary(cycle.final_dir, merge=False, test=score(plan.submission_csv, plan))
    record(cycle.final_dir, "submit", fingerprint(submit_inputs(cycle)))


# ----------------------------------------------------------------------------------------------------- build


def build_cycle(plan: CyclePlan, runs: dict[str, list[Config]], rates: FallbackRates = FallbackRates()) -> Cycle:
    """The plan's steps in worker order: every training first (the longest work, spread over workers), then the
    test predictions, then selection, fitting and the submission."""
    cycle = Cycle(plan, runs)
    train_keys, test_keys = [], []
    for cfgs in runs.values():
        for cfg in cfgs:
            siblings = [c for c in cfgs if c is not cfg]
            key = f"train {cfg.run_name}"
            cycle.steps.append(Step(
                key, "train", cfg.run_dir, lambda log, c=cfg: run_train(c, plan.tta, log),
                lambda c=cfg: train_done(c, plan.tta), lambda c=cfg, s=siblings: train_estimate(c, s, rates, plan.tta)))
            train_keys.append(key)
    for cfgs in runs.values():
        for cfg in cfgs:
            siblings = [c for c in cfgs if c is not cfg]
            key = f"test {cfg.run_name}"
            cycle.steps.append(Step(
                key, "test", cfg.run_dir, lambda log, c=cfg: run_test(c, plan, log), lambda c=cfg: test_done(c, plan),
                lambda c=cfg, s=siblings: test_estimate(c, s, rates, plan.tta), after=(f"train {cfg.run_name}",)))
            test_keys.append(key)
    selected = plan.runs_dir / SELECTION
    cycle.steps.append(Step(
        "select", "select", selected, lambda log: run_select(cycle, log),
        lambda: recorded(selected, "select") == fingerprint(selection_inputs(cycle)) and (selected / "selection.json").is_file(),
        after=tuple(train_keys)))
    cycle.steps.append(Step(
        "fit", "fit", cycle.final_dir, lambda log: run_fit(cycle, log),
        lambda: recorded(cycle.final_dir, "fit") == fingerprint(fit_inputs(cycle)) and (cycle.final_dir / SUBMITTED).is_file(),
        after=("select",)))
    cycle.steps.append(Step(
        "submit", "submit", cycle.final_dir, lambda log: run_submit(cycle, log),
        lambda: recorded(cycle.final_dir, "submit") == fingerprint(submit_inputs(cycle)) and plan.submission_csv.is_file(),
        after=("fit", *test_keys)))
    return cycle
