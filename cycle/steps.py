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

With ``full_data``, each model also has ``full <model>`` (after its folds: one run on every training image,
``data.fold: all``, for the epochs its folds needed) and ``test <model>-fall``; the submitted ensemble's test
prediction takes it beside the model's folds. With ``pseudo_labels``, round k adds ``pseudo rk`` (the previous
round's submitted ensemble keeps its confident test predictions as a training folder,
:func:`ensembles.pseudo.pseudo_label`) and the whole plan again as ``<name>-rk`` with that folder in every
model's ``data.pseudo_roots`` (steps ``rk train ...`` to ``rk submit``), its own selection and submission.

Steps 3-5 and the pseudo-labels record what they were made from in a ``cycle.json``; a changed input
(another set of runs, other options) makes them run again.
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
PSEUDO_STAGE = "pseudo"   # every step of the pseudo-label rounds, after the first submission
UNTIL = (*STAGES, PSEUDO_STAGE)   # what --until takes
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
class Round:
    """One pass of the plan over its models: round 0 is the plan itself, round k (``pseudo_labels``) the plan
    ``<name>-rk`` whose models also train on round k-1's pseudo-labels (:meth:`CyclePlan.pseudo_round`)."""

    number: int
    plan: CyclePlan
    runs: dict[str, list[Config]]   # fold configs by model label

    @property
    def prefix(self) -> str:
        """What the round's step keys start with: nothing for round 0, ``r1 `` for round 1."""
        return f"r{self.number} " if self.number else ""

    @property
    def final_dir(self) -> Path:
        """The submitted ensemble's folder, ``<round folder>/<task>/<round name>``."""
        return self.plan.runs_dir / self.plan.name

    def full_dir(self, label: str) -> Path:
        """The folder of ``label``'s run on every training image (``data.fold: all``), beside its folds."""
        return self.runs[label][0].run_dir.parent / f"{label}-fall"


@dataclass
class Cycle:
    """A plan's steps, in the order one worker runs them, with its rounds (what the report needs)."""

    plan: CyclePlan
    rounds: list[Round]
    steps: list[Step] = field(default_factory=list)

    @property
    def runs(self) -> dict[str, list[Config]]:
        """The fold configs of the plan's models (round 0's)."""
        return self.rounds[0].runs

    def step(self, key: str) -> Step:
        return next(s for s in self.steps if s.key == key)

    def until(self, stage: str) -> Cycle:
        """The cycle's steps up to and including ``stage`` (one of :data:`UNTIL`; ``pseudo``: all of them)."""
        last = UNTIL.index(stage)
        steps = [s for s in self.steps if UNTIL.index(s.stage) <= last]
        return Cycle(self.plan, [r for r in self.rounds if r.number == 0 or stage == PSEUDO_STAGE], steps)


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


def train_or_resume(cfg: Config, log: Callable[[str], None], finished: str) -> None:
    """Train the run, resume it from its ``last.pt``, or take it finished after checking its config."""
    from engine.run_folder import check_same_config, holds_run
    from engine.training import train_one

    run_dir = cfg.run_dir
    if (run_dir / "summary.json").is_file():
        check_same_config(cfg, "the cycle")
        log(finished)
    elif (run_dir / "last.pt").is_file():
        log(f"resuming from epoch {epochs_done(run_dir)}")
        train_one(cfg, resume=True, overwrite=False)
    else:
        # a folder without last.pt was left before its first epoch ended (a killed worker): nothing to keep
        train_one(cfg, resume=False, overwrite=holds_run(run_dir))


def run_train(cfg: Config, tta: bool, log: Callable[[str], None]) -> None:
    """Train (or resume, or take the finished run after checking its config), then predict out of fold."""
    from engine.folds import predict_out_of_fold

    train_or_resume(cfg, log, "finished before; predicting its validation fold")
    if (cfg.run_dir / "best.pt").is_file():
        predict_out_of_fold(cfg, progress=cfg.logging.progress, tta=tta)
    else:
        log("no epoch passed the checkpoint rule: no best.pt, left out of the ensemble")


def full_config(rnd: Round, label: str) -> Config | None:
    """The config of ``label``'s run on every training image: its folds' config with ``data.fold: all`` and the
    epochs its folds needed to their best checkpoints (:func:`engine.folds.full_data_epochs`) or the plan's;
    None while a fold it counts on has not finished."""
    from engine.config import build_config, deep_merge
    from engine.folds import full_data_epochs, full_data_overrides

    folds = rnd.runs[label]
    epochs = rnd.plan.full_data.epochs
    if epochs == "auto":
        summaries = [read_summary(c.run_dir) for c in folds]
        if not all(summaries):
            return None
        try:
            epochs = full_data_epochs(summaries)
        except ValueError as err:
            raise ValueError(f"full_data: {label}: {err}; give full_data: {{epochs: N}}") from None
    cfg = build_config(deep_merge(folds[0].to_dict(), full_data_overrides(epochs)),
                       f"{label} on every image (cycle {rnd.plan.name})")
    if cfg.run_dir != rnd.full_dir(label):
        raise ValueError(f"full_data: {label}: the run on every image would be {cfg.run_dir}, not {rnd.full_dir(label)}")
    return cfg


def full_done(rnd: Round, label: str) -> bool:
    cfg = full_config(rnd, label)
    return cfg is not None and bool(read_summary(cfg.run_dir)) and same_config(cfg)


def run_full(rnd: Round, label: str, log: Callable[[str], None]) -> None:
    cfg = full_config(rnd, label)
    if cfg is None:
        raise ValueError(f"full_data: {label}: its folds have not all finished")
    log(f"{cfg.train.epochs} epochs on every training image ({image_counts(cfg)[0]} images)")
    train_or_resume(cfg, log, "finished before")


def full_estimate(rnd: Round, label: str, rates: FallbackRates) -> float | None:
    folds = rnd.runs[label]
    peers = [c for cfgs in rnd.runs.values() for c in cfgs]
    return train_estimate(full_config(rnd, label) or folds[0], folds, peer_rates(peers, rates, rnd.plan.tta),
                          rnd.plan.tta)


def peer_rates(peers: Sequence[Config], rates: FallbackRates, tta: bool) -> FallbackRates:
    """Images per second for a model none of whose runs has measured its own: what another run of the round
    measured (another architecture's speed on this machine), else the rates file's."""
    train = next(filter(None, (image_counts(c)[0] / s for c in peers if (s := seconds_per_epoch(c.run_dir)))), None)
    predict = next(filter(None, (prediction_rate(c.run_dir, tta) for c in peers)), None)
    return FallbackRates(train or rates.train_images_per_s, predict or rates.predict_images_per_s)


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


def selection_inputs(rnd: Round) -> dict:
    return {"runs": sorted(str(c.run_dir) for cfgs in rnd.runs.values() for c in cfgs),
            "options": rnd.plan.select.model_dump()}


def run_select(rnd: Round, log: Callable[[str], None]) -> None:
    from ensembles.select import select_ensemble, selection_report

    rec = select_ensemble(rnd.plan.runs_dir, name=SELECTION, progress=False, **rnd.plan.select.model_dump())
    log(selection_report(rec))
    record(rnd.plan.runs_dir / SELECTION, "select", fingerprint(selection_inputs(rnd)))


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


def final_config(rnd: Round, selection: dict) -> tuple[dict, str]:
    """The mapping of the ensemble the cycle submits, and the reason for its members: each the chosen model's
    fold runs, and with ``full_data`` its run on every image beside them (its test prediction joins theirs)."""
    from tasks.spec import task_spec

    plan = rnd.plan
    weights, why = chosen_members(selection)
    runs = {label: list(selection["candidates"][label]) for label in weights}
    if plan.full_data is not None:
        labels = {str(cfg.run_dir): label for label, cfgs in rnd.runs.items() for cfg in cfgs}
        for member, member_runs in runs.items():
            model = next((labels[r] for r in member_runs if r in labels), None)
            if model is not None:
                member_runs.append(str(rnd.full_dir(model)))
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


def fit_inputs(rnd: Round) -> dict:
    full = rnd.plan.full_data
    return {"selection": recorded(rnd.plan.runs_dir / SELECTION, "select"), "fit": rnd.plan.fit.model_dump(),
            **({"full_data": full.model_dump()} if full is not None else {})}


def run_fit(rnd: Round, log: Callable[[str], None]) -> None:
    import yaml

    from ensembles.api import fit_ensemble
    from ensembles.config import EnsembleConfig

    selection = json.loads((rnd.plan.runs_dir / SELECTION / "selection.json").read_text(encoding="utf-8"))
    raw, why = final_config(rnd, selection)
    log(why)
    folder = rnd.final_dir
    folder.mkdir(parents=True, exist_ok=True)
    header = f"# The ensemble cycle {rnd.plan.name} submits (tools/cycle.py): {why}\n"
    write_text(folder / SUBMITTED, header + yaml.safe_dump(raw, sort_keys=False))
    ens = EnsembleConfig.model_validate(raw)
    if "fit" in raw:
        result = fit_ensemble(ens, progress=False)
        log(f"fitted on out-of-fold predictions: kept {result.get('config', 'the defaults')} (the variant that won "
            f"on held-out patients; {ens.fit_path})")
    record(folder, "fit", fingerprint(fit_inputs(rnd)))


# --------------------------------------------------------------------------------------------------- submit


def submit_inputs(rnd: Round) -> dict:
    return {"fit": recorded(rnd.final_dir, "fit"), "submission": str(rnd.plan.submission_csv), "tta": rnd.plan.tta,
            "test_gt": rnd.plan.test_gt}


def run_submit(rnd: Round, log: Callable[[str], None]) -> None:
    from ensembles.api import predict_ensemble
    from ensembles.config import load_ensemble_config
    from tasks.scoring import validate_submission

    plan = rnd.plan
    ens = load_ensemble_config(rnd.final_dir / SUBMITTED)
    plan.submission_csv.parent.mkdir(parents=True, exist_ok=True)
    predict_ensemble(ens, out_csv=plan.submission_csv, split="test", from_cache=True, progress=False)
    first = next(iter(rnd.runs.values()))[0]
    test_root = first.data.test_root or first.data.root
    reference = Path(ens.members[0].run_dirs[0]) / "preds" / "test.csv"   # what the members were asked to predict
    task, n = validate_submission(plan.submission_csv, test_root, reference)
    verdict = {"valid": True, "images": n, "checked_against": str(first.data.test_root or reference)}
    record_summary(rnd.final_dir, submission={"csv": str(plan.submission_csv), **verdict})
    log(f"{plan.submission_csv}: valid {task} submission ({n} images)")
    if plan.test_gt:
        record_summary(rnd.final_dir, merge=False, test=score(plan.submission_csv, plan))
    record(rnd.final_dir, "submit", fingerprint(submit_inputs(rnd)))


# --------------------------------------------------------------------------------------------------- pseudo


def pseudo_folder(plan: CyclePlan, number: int) -> Path:
    """Where round ``number``'s pseudo-labels are written: ``<out_dir>/cycles/<name>/pseudo-r<number>``."""
    return plan.folder / f"pseudo-r{number}"


def pseudo_inputs(source: Round) -> dict:
    plan = source.plan
    return {"fit": recorded(source.final_dir, "fit"), "submit": recorded(source.final_dir, "submit"),
            "precision": plan.pseudo_labels.precision, "tta": plan.tta}


def pseudo_done(plan: CyclePlan, source: Round, number: int) -> bool:
    folder = pseudo_folder(plan, number)
    return (folder / "pseudo.json").is_file() and \
        recorded(plan.folder, folder.name) == fingerprint(pseudo_inputs(source))


def pseudo_ensemble(source: Round, log: Callable[[str], None]) -> Any:
    """The ensemble whose confident test predictions become pseudo-labels: ``source``'s submitted one; where that
    is one model and the task's confidence is the members' agreement (keypoints, bone age), every model of the
    round, averaged (its selection's candidates)."""
    from ensembles.config import EnsembleConfig, load_ensemble_config

    ens = load_ensemble_config(source.final_dir / SUBMITTED)
    if ens.spec.pseudo_side().output == "maps" or len(ens.members) > 1:
        return ens
    selection = json.loads((source.plan.runs_dir / SELECTION / "selection.json").read_text(encoding="utf-8"))
    candidates = selection["candidates"]
    log(f"the submitted ensemble is one model; {ens.task} pseudo-labels keep what models agree on, so they come "
        f"from all {len(candidates)} models of the round, averaged")
    return EnsembleConfig.model_validate({
        "task": ens.task, "method": "soft", "name": f"{source.plan.name}-pseudo", "out_dir": str(source.plan.folder),
        "members": [{"name": label, "runs": runs} for label, runs in candidates.items()]})


def check_not_trained_on(folder: Path, before: str | None, inputs: str, target: Round) -> None:
    """Before pseudo-labels are made again from other inputs (round ``target.number - 1``'s submission or
    ``pseudo_labels.precision`` changed): no run of ``target`` has trained on the old ones. Its configs would not
    change (the folder's path is the same), so the cycle would take those runs as done and submit models trained
    on labels it no longer has; it stops instead, naming the folder to remove, and changes nothing. ``before``: the
    inputs recorded when ``folder`` was last made (None: never)."""
    if before is None or before == inputs:
        return
    run_dirs = [c.run_dir for cfgs in target.runs.values() for c in cfgs]
    run_dirs += [target.full_dir(label) for label in target.runs] if target.plan.full_data is not None else []
    trained = [d for d in run_dirs if (d / "summary.json").is_file() or (d / "last.pt").is_file()]
    if trained:
        raise ValueError(f"{folder}: its pseudo-labels would be made again (round {target.number - 1}'s submission or "
                         f"pseudo_labels.precision changed), but {len(trained)} run(s) of round {target.number} trained "
                         f"on the ones it holds, e.g. {trained[0]}; remove {target.plan.folder} to train round "
                         f"{target.number} again on new pseudo-labels, or undo the change")


def run_pseudo(plan: CyclePlan, source: Round, target: Round, log: Callable[[str], None]) -> None:
    """The confident test predictions of ``source``'s submitted ensemble, as the training folder of round
    ``target``."""
    from ensembles.pseudo import pseudo_label, pseudo_report

    number = target.number
    folder = pseudo_folder(plan, number)
    inputs = fingerprint(pseudo_inputs(source))
    check_not_trained_on(folder, recorded(plan.folder, folder.name), inputs, target)
    ens = pseudo_ensemble(source, log)
    device = next(iter(source.runs.values()))[0].train.device
    # tta=False: the members' validation and test caches already hold the plan's TTA views (tta is for members
    # predicting on the fly, which a cycle's never do)
    _, manifest = pseudo_label(ens, folder, precision=plan.pseudo_labels.precision, tta=False, device=device,
                               overwrite=True, progress=False)
    log(pseudo_report(str(folder), manifest))
    if not manifest["test"]["written"]:
        log(f"warning: no test prediction was confident enough at precision {plan.pseudo_labels.precision:g}: round "
            f"{number} trains on the labelled images alone (as the round before it); lower pseudo_labels.precision "
            "or train the models longer")
    record(plan.folder, folder.name, inputs)


# ----------------------------------------------------------------------------------------------------- build


def build_cycle(plan: CyclePlan, rates: FallbackRates = FallbackRates()) -> Cycle:
    """The plan's steps in worker order: round 0 (every training first, the longest work spread over workers,
    then the test predictions, selection, fitting and the submission), then each pseudo-label round: its
    pseudo-labels from the round before, and the same steps again."""
    from cycle.plan import fold_configs
    from tasks.spec import task_spec

    rounds = [Round(0, plan, fold_configs(plan))]
    if plan.pseudo_labels is not None:
        rounds += [Round(k, rnd_plan, fold_configs(rnd_plan)) for k in range(1, plan.pseudo_labels.rounds + 1)
                   for rnd_plan in [plan.pseudo_round(k, pseudo_folder(plan, k))]]
    if plan.full_data is not None or plan.pseudo_labels is not None:
        check_learners(plan, rounds[0].runs)
    if plan.pseudo_labels is not None and task_spec(plan.task).pseudo_side().output != "maps" and \
            len(rounds[0].runs) < 2:
        raise ValueError(f"pseudo_labels: {plan.task} pseudo-labels keep the predictions the models agree on; the "
                         "plan has one model (list two or more)")
    cycle = Cycle(plan, rounds)
    for rnd in rounds:
        start: tuple[str, ...] = ()
        if rnd.number:
            source = rounds[rnd.number - 1]
            key = f"pseudo r{rnd.number}"
            cycle.steps.append(Step(
                key, PSEUDO_STAGE, pseudo_folder(plan, rnd.number),
                lambda log, s=source, r=rnd: run_pseudo(plan, s, r, log),
                lambda s=source, n=rnd.number: pseudo_done(plan, s, n), after=(f"{source.prefix}submit",)))
            start = (key,)
        cycle.steps += round_steps(rnd, rates, start)
    return cycle


def check_learners(plan: CyclePlan, runs: dict[str, list[Config]]) -> None:
    """Before any work: every model can train on all data and on pseudo-labels where the plan asks (YOLO-seg
    trains through ultralytics' own loader, with a validation split and without pseudo-labels)."""
    import models

    for label, cfgs in runs.items():
        family, _ = models.resolve(cfgs[0].model.name, plan.task)
        if family.kind == "external":
            key = "full_data" if plan.full_data is not None else "pseudo_labels"
            raise ValueError(f"{key}: {label} is a {family.name} model, which trains through its own loader "
                             "(no run on every image, no pseudo-labels); list it in a plan without this key")


def round_steps(rnd: Round, rates: FallbackRates, start: tuple[str, ...]) -> list[Step]:
    """One round's steps; its trainings wait for ``start`` (a pseudo-label round's pseudo-labels)."""
    plan, pre = rnd.plan, rnd.prefix
    stage = PSEUDO_STAGE if rnd.number else None
    steps: list[Step] = []
    train_keys, full_keys, test_keys = [], [], []
    peers = [c for cfgs in rnd.runs.values() for c in cfgs]
    for cfgs in rnd.runs.values():
        for cfg in cfgs:
            siblings = [c for c in cfgs if c is not cfg]
            key = f"{pre}train {cfg.run_name}"
            steps.append(Step(
                key, stage or "train", cfg.run_dir, lambda log, c=cfg: run_train(c, plan.tta, log),
                lambda c=cfg: train_done(c, plan.tta), lambda c=cfg, s=siblings: train_estimate(c, s, peer_rates(peers, rates, plan.tta), plan.tta),
                after=start))
            train_keys.append(key)
    if plan.full_data is not None:
        for label, cfgs in rnd.runs.items():
            key = f"{pre}full {label}"
            steps.append(Step(
                key, stage or "train", rnd.full_dir(label), lambda log, m=label: run_full(rnd, m, log),
                lambda m=label: full_done(rnd, m), lambda m=label: full_estimate(rnd, m, rates),
                after=tuple(f"{pre}train {c.run_name}" for c in cfgs)))
            full_keys.append(key)
    for cfgs in rnd.runs.values():
        for cfg in cfgs:
            siblings = [c for c in cfgs if c is not cfg]
            key = f"{pre}test {cfg.run_name}"
            steps.append(Step(
                key, stage or "test", cfg.run_dir, lambda log, c=cfg: run_test(c, plan, log),
                lambda c=cfg: test_done(c, plan), lambda c=cfg, s=siblings: test_estimate(c, s, peer_rates(peers, rates, plan.tta), plan.tta),
                after=(f"{pre}train {cfg.run_name}",)))
            test_keys.append(key)
    if plan.full_data is not None:
        for label, cfgs in rnd.runs.items():
            key = f"{pre}test {label}-fall"
            steps.append(Step(
                key, stage or "test", rnd.full_dir(label), lambda log, m=label: run_test(full_config(rnd, m), plan, log),
                lambda m=label: _full_test_done(rnd, m),
                lambda c=cfgs: test_estimate(c[0], c[1:], peer_rates(peers, rates, plan.tta), plan.tta),
                after=(f"{pre}full {label}",)))
            test_keys.append(key)
    selected = plan.runs_dir / SELECTION
    steps.append(Step(
        f"{pre}select", stage or "select", selected, lambda log: run_select(rnd, log),
        lambda: recorded(selected, "select") == fingerprint(selection_inputs(rnd)) and (selected / "selection.json").is_file(),
        after=tuple(train_keys)))
    steps.append(Step(
        f"{pre}fit", stage or "fit", rnd.final_dir, lambda log: run_fit(rnd, log),
        lambda: recorded(rnd.final_dir, "fit") == fingerprint(fit_inputs(rnd)) and (rnd.final_dir / SUBMITTED).is_file(),
        after=(f"{pre}select", *full_keys)))
    steps.append(Step(
        f"{pre}submit", stage or "submit", rnd.final_dir, lambda log: run_submit(rnd, log),
        lambda: recorded(rnd.final_dir, "submit") == fingerprint(submit_inputs(rnd)) and plan.submission_csv.is_file(),
        after=(f"{pre}fit", *test_keys)))
    return steps


def _full_test_done(rnd: Round, label: str) -> bool:
    cfg = full_config(rnd, label)
    return cfg is not None and test_done(cfg, rnd.plan)
