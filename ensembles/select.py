"""Ensemble selection (Caruana et al., ICML 2004): greedy forward selection with replacement.

Algorithm (:func:`greedy_select`, task-agnostic, numpy only). A library of ``M`` members has cached
validation predictions — out-of-fold, so no member saw the images it is scored on. Start from the
empty ensemble (or the ``init`` best members, Caruana's sorted initialisation), then repeatedly add
the member, repeats allowed, whose addition most improves the ensemble's validation score; stop when
no addition improves it by more than ``tol``, or after ``max_steps`` additions. The ensemble is the
weighted mean of its members' predictions with weights = counts / total, so adding a member twice
doubles its weight. Selecting with replacement is what keeps this from overfitting the way a free
weight search does: weights move in steps of 1 / (steps taken), and a member can only be added
back, never traded in for a slightly better mix.

Predictions are streamed: ``items()`` is called once per pass and yields ``(preds (M, ...), target)``
per image (or per batch); a pass scores every weight vector needed by the step (deduplicated) on
each item, so memory holds one item's member predictions and score tables, never all images.

Overfitting guard: cross-fitting. Choosing members on the same images one then reports is optimistic.
The validation items are split by patient into ``folds`` groups; the whole selection is run again on
all groups but one (the same passes serve every run) and the selected ensemble scored on the group
held out. :attr:`Selection.cross_fitted` holds the held-out means for the selection, for the best
single member (also chosen on the other groups) and for the plain average of all members (nothing
fitted): the honest comparison. The benchmark (benchmarks/ensemble_selection.py) scores test images.

The library (:func:`select_ensemble`, every task): candidates are the finished runs of one task's folder
(``runs/segmentation``, ``runs/keypoints``, ``runs/boneage``) whose out-of-fold validation cache
(``preds/val``, written by ``train.py --folds all``) holds all their validation images, grouped by
configuration — the folds of one configuration (``<name>-f0``, ``<name>-f1``, ... with configs equal but
for ``data.fold``) form one candidate whose validation predictions are out-of-fold over all its folds and
whose test prediction is the mean of its fold models (``runs: [...]`` in the ensemble YAML). Selection runs
on the validation images every candidate covers. Each kind of task output (:data:`KINDS`) gives a score and a
fusion, the same weighted fusion its ensemble runner applies to the written YAML (``method: weighted``):

- maps (segmentation): mean over images of the mean over classes of Dice (empty/empty = 1) of the weighted
  mean of the uint8 probability caches, thresholded as the ensemble will threshold it, at the images' size
  capped at ``fit_size``; streamed one image at a time; higher is better;
- values (keypoints, bone age, ...): the task's per-image error (MRE px of the points, MAE months of the age)
  of the weighted mean of the members' values (:func:`ensembles.values.fuse_values`); lower is better.
"""
from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ensembles.fit import patient_folds, validation_items, write_json
from tasks.spec import task_names, task_spec
from tasks.formats.run_lock import claim

Item = tuple[np.ndarray, Any]
# score(fused (G, ...), target) -> (G,) or (G, n): one score per weight vector (per sample of a batch item)
Score = Callable[[np.ndarray, Any], np.ndarray]
# fuse(preds (M, ...), weights (G, M), rows normalised) -> (G, ...): the ensembles the task's runner would predict
Fuse = Callable[[np.ndarray, np.ndarray], np.ndarray]


def mean_fuse(preds: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``(M, ...)`` member predictions, ``(G, M)`` normalised weights -> ``(G, ...)`` weighted means (float32), all
    weight vectors in one matrix product: the ``weighted`` segmentation ensemble's mean of probabilities."""
    flat = np.asarray(preds, np.float32).reshape(len(preds), -1)
    return (np.asarray(weights, np.float32) @ flat).reshape((len(weights),) + np.shape(preds)[1:])


def score_weights(items: Iterable[Item], weights: np.ndarray, score: Score, fold_of: np.ndarray, n_folds: int,
                  chunk_elements: int = 1 << 22, fuse: Fuse = mean_fuse) -> tuple[np.ndarray, np.ndarray]:
    """Summed scores ``(U, F)`` of the ensembles ``fuse(preds, weights)`` with ``weights`` ``(U, M)`` (rows
    normalised here), per fold of the scored samples (``fold_of``: fold of each sample, in the order ``score``
    returns them), and the number of samples per fold ``(F,)``. One pass over ``items``; ensembles are fused
    for about ``chunk_elements`` predicted values at a time.
    """
    w_all = np.asarray(weights, np.float64)
    totals = w_all.sum(1, keepdims=True)
    if (totals <= 0).any() or (w_all < 0).any():
        raise ValueError("score_weights: every weight vector needs non-negative weights with a positive sum")
    w_all = w_all / totals
    sums = np.zeros((len(w_all), n_folds), np.float64)
    counts = np.zeros(n_folds, np.int64)
    pos = 0
    for preds, target in items:
        preds = np.asarray(preds)
        if preds.shape[0] != w_all.shape[1]:
            raise ValueError(f"score_weights: predictions of {preds.shape[0]} members for weights of {w_all.shape[1]}")
        step = max(1, chunk_elements // max(1, preds[0].size))
        parts = []
        for start in range(0, len(w_all), step):
            w = w_all[start:start + step]
            parts.append(np.asarray(score(fuse(preds, w), target), np.float64).reshape(len(w), -1))
        scores = np.concatenate(parts)
        n = scores.shape[1]
        folds = fold_of[pos:pos + n]
        if len(folds) != n:
            raise ValueError(f"score_weights: more scored samples than the {len(fold_of)} given folds")
        if not np.isfinite(scores).all():
            raise ValueError(f"score_weights: the score of sample {pos} is not finite")
        sums += scores @ np.eye(n_folds)[folds]
        counts += np.bincount(folds, minlength=n_folds)
        pos += n
    if pos != len(fold_of):
        raise ValueError(f"score_weights: {pos} scored samples for {len(fold_of)} given folds")
    return sums, counts


@dataclass
class _Path:
    """One run of the selection: on every fold (``held`` None) or on all folds but ``held``."""

    held: int | None
    counts: np.ndarray
    steps: int = 0
    score: float | None = None  # mean score of the current ensemble on this run's (training) samples
    held_sum: float | None = None  # summed score of the current ensemble on the held-out fold
    history: list[dict] = field(default_factory=list)
    stopped: str | None = None
    best: tuple[np.ndarray, float, float | None, int] | None = None  # counts, score, held_sum, steps of the best
    since_best: int = 0  # additions since the best ensemble

    def keep_if_best(self, sign: float, tol: float) -> None:
        """Remember the current ensemble when it beats the best so far by more than ``tol``."""
        if self.score is not None and (self.best is None or sign * (self.score - self.best[1]) > tol):
            self.best = (self.counts.copy(), self.score, self.held_sum, self.steps)
            self.since_best = 0


@dataclass
class Selection:
    """What :func:`greedy_select` chose and the scores behind it (means over validation samples)."""

    counts: np.ndarray  # (M,) times each member was added
    score: float  # the selected ensemble, in sample (on the images it was selected on: optimistic)
    singles: np.ndarray  # (M,) each member alone
    average: float  # the equal-weight mean of all members (nothing fitted)
    history: list[dict]  # {"step", "member", "score"} per addition
    stopped: str  # "no improvement" | "max steps"
    n_items: int
    n_folds: int  # cross-fitting folds (1: none)
    mode: str
    cross_fitted: dict[str, float] | None = None  # held-out means: selection, best_single, average
    fold_counts: list[list[int]] = field(default_factory=list)  # counts selected without each fold
    notes: list[str] = field(default_factory=list)

    @property
    def weights(self) -> np.ndarray:
        return self.counts / self.counts.sum()

    @property
    def best_single(self) -> int:
        return int(np.argmax(self.singles) if self.mode == "max" else np.argmin(self.singles))


def greedy_select(items: Callable[[], Iterable[Item]], n_members: int, score: Score, groups: Sequence[str], *,
                  mode: str = "max", max_steps: int = 20, init: int = 0, patience: int = 0, tol: float = 1e-6,
                  folds: int = 5, seed: int = 0, chunk_elements: int = 1 << 22, fuse: Fuse = mean_fuse,
                  progress: Callable[[str], None] | None = None) -> Selection:
    """Caruana's greedy forward selection with replacement; see the module docstring.

    ``patience``: additions allowed past the best ensemble before stopping (Caruana's fixed number of steps,
    ``patience >= max_steps``); the best ensemble of the path (the shortest on ties) is returned, so a
    step that does not improve (e.g. a second copy of the best member) can lead to a mix that does (2:1).
    ``items()``: a fresh iterator over ``(preds (M, ...), target)`` per call (one call per step).
    ``fuse(preds, weights (G, M))``: the task's weighted fusion (default: the weighted mean).
    ``score(fused (G, ...), target)``: ``(G,)`` or ``(G, n)`` scores; higher is better with ``mode="max"``,
    lower with ``"min"``. ``groups``: the group (patient) of every scored sample, in order — cross-fitting
    folds keep a group together; ``folds`` < 2 or fewer than 2 groups: no cross-fitting.
    """
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    if n_members < 1:
        raise ValueError("greedy_select: no members to select from")
    if max_steps < 1 or not 0 <= init <= max_steps or patience < 0:
        raise ValueError(f"greedy_select: need max_steps >= 1, 0 <= init <= max_steps and patience >= 0 (got "
                         f"{max_steps}, {init}, {patience})")
    init = min(init, n_members)
    sign = 1.0 if mode == "max" else -1.0
    notes: list[str] = []
    n_groups = len(set(groups))
    fold_of = patient_folds(list(groups), folds, seed) if folds >= 2 and n_groups >= 2 else \
        np.zeros(len(groups), np.int64)
    n_folds = int(fold_of.max()) + 1 if len(fold_of) else 1
    if n_folds < 2:
        notes.append(f"{n_groups} patient group(s) in the validation set: no cross-fitted estimate")
    paths = [_Path(None, np.zeros(n_members, np.int64))]
    if n_folds > 1:
        paths += [_Path(f, np.zeros(n_members, np.int64)) for f in range(n_folds)]
    eye = np.eye(n_members, dtype=np.int64)
    singles = average = None
    single_sums = None
    for pass_no in range(max_steps + 2):
        active = [p for p in paths if p.stopped is None]
        if not active:
            break
        index: dict[tuple[int, ...], int] = {}

        def need(vector: np.ndarray) -> int:
            return index.setdefault(tuple(int(v) for v in vector), len(index))

        if pass_no == 0:
            for m in range(n_members):
                need(eye[m])
            need(np.ones(n_members, np.int64))
        for p in active:
            if p.counts.any():
                need(p.counts)
            if p.steps < max_steps:
                for m in range(n_members):
                    need(p.counts + eye[m])
        table = np.array(list(index), np.int64)
        sums, per_fold = score_weights(items(), table, score, fold_of, n_folds, chunk_elements, fuse)
        n_all = int(per_fold.sum())
        if n_all == 0:
            raise ValueError("greedy_select: no validation samples")
        if pass_no == 0:
            single_sums = sums[[index[tuple(int(v) for v in eye[m])] for m in range(n_members)]]
            singles = single_sums.sum(1) / n_all
            average = float(sums[index[(1,) * n_members]].sum() / n_all)
        for p in active:
            train = np.ones(n_folds, bool)
            if p.held is not None:
                train[p.held] = False
            n_train = int(per_fold[train].sum())
            if p.counts.any():
                row = sums[index[tuple(int(v) for v in p.counts)]]
                p.score = float(row[train].sum() / n_train)
                p.held_sum = float(row[p.held]) if p.held is not None else None
                p.keep_if_best(sign, tol)
            if p.steps >= max_steps:
                p.stopped = "max steps"
                continue
            rows = sums[[index[tuple(int(v) for v in p.counts + eye[m])] for m in range(n_members)]]
            gain = rows[:, train].sum(1) / n_train
            if p.steps == 0 and init > 1:
                chosen = list(np.argsort(-sign * gain, kind="stable")[:init])
            else:
                chosen = [int(np.argmax(sign * gain))]
                if p.best is not None and sign * (gain[chosen[0]] - p.best[1]) <= tol:
                    if p.since_best >= patience:
                        p.stopped = "no improvement"
                        continue
                    p.since_best += 1
            for m in chosen:
                p.counts[m] += 1
                p.steps += 1
                p.history.append({"step": p.steps, "member": int(m),
                                  "score": float(gain[m]) if len(chosen) == 1 else None})
            if len(chosen) == 1:
                p.score = float(gain[chosen[0]])
                p.held_sum = float(rows[chosen[0], p.held]) if p.held is not None else None
                p.keep_if_best(sign, tol)
                if p.steps >= max_steps:
                    p.stopped = "max steps"
            else:
                p.score = p.held_sum = None  # sorted initialisation: evaluated on the next pass
            if progress is not None and p.held is None:
                progress(f"step {p.steps}: +member {chosen[-1]} -> {p.score if p.score is not None else 'init'}")
    main = paths[0]
    cross = None
    if n_folds > 1:
        n_all = len(fold_of)
        per_fold_n = np.bincount(fold_of, minlength=n_folds)
        best_single_held = 0.0
        for f in range(n_folds):
            train = np.arange(n_folds) != f
            gain = single_sums[:, train].sum(1) / per_fold_n[train].sum()
            best_single_held += float(single_sums[int(np.argmax(sign * gain)), f])
        cross = {"selection": sum(p.best[2] for p in paths[1:]) / n_all,
                 "best_single": best_single_held / n_all, "average": average}
    counts, best_score, _, best_steps = main.best
    return Selection(counts=counts, score=float(best_score), singles=singles, average=average,
                     history=main.history[:best_steps], stopped=main.stopped or "max steps", n_items=len(fold_of),
                     n_folds=n_folds, mode=mode, cross_fitted=cross,
                     fold_counts=[p.best[0].tolist() for p in paths[1:]], notes=notes)


# ---------------------------------------------------------------- per-task scores and fusions

def dice_score(thresholds: np.ndarray) -> Score:
    """Score of fused probabilities ``(G, C, P)`` against a ``(C, P)`` mask: mean over classes of Dice of
    ``fused > t_c`` (ties are background, as the ensemble runner thresholds), empty/empty = 1."""
    from ensembles.weighted import TIE_EPS

    t = np.asarray(thresholds, np.float64).reshape(1, -1, 1) + TIE_EPS

    def score(fused: np.ndarray, gt: np.ndarray) -> np.ndarray:
        pred = fused > t
        inter = np.count_nonzero(pred & gt[None], axis=-1)
        total = np.count_nonzero(pred, axis=-1) + np.count_nonzero(gt, axis=-1)[None]
        return np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0).mean(-1)

    return score


def mean_error(errors: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Score:
    """Score of fused values ``(G, N, ...)`` against ``(N, ...)``: per image, the mean of the task's per-item
    ``errors`` (radial errors of its points, the absolute error of its age): ``(G, N)``, whose mean is the
    task's metric (MRE, MAE)."""
    def score(fused: np.ndarray, truth: np.ndarray) -> np.ndarray:
        return np.stack([np.asarray(errors(f, truth), np.float64).reshape(len(truth), -1).mean(-1) for f in fused])

    return score


def fuse_each(fuse_one: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Fuse:
    """A :data:`Fuse` from a task's own weighted fusion of ``(M, N, ...)`` values with ``(M,)`` weights."""
    return lambda preds, weights: np.stack([fuse_one(preds, w) for w in weights])


# ---------------------------------------------------------------- the library: finished runs and their caches

@dataclass
class Candidate:
    """One configuration of the library: its finished fold runs (complete ``preds/val`` caches)."""

    label: str
    runs: list[Path]
    folds: list[int]


@dataclass
class Problem:
    """A library's validation set, as :func:`greedy_select` reads it, and how the task fuses and reports."""

    items: Callable[[], Iterable[Item]]
    groups: list[str]  # the patient (cross-fitting group) of every scored sample
    score: Score
    mode: str  # "max": higher scores are better; "min": lower (an error)
    label: str  # what the score is, in reports
    fuse: Fuse = mean_fuse
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class KindSelection:
    """What selection needs for one kind of task output (maps, values): the validation images a run's cache
    must hold and those it holds, the extra keys of the ensemble YAML, the validation problem of a library and
    the ``ensemble`` entry of the summary. The task's ensemble side supplies everything task-specific."""

    cache: Callable[[Any], str]  # side -> the run's out-of-fold cache, as reports name it
    val_names: Callable[[Any], set[str]]  # run config -> its validation images
    cached_names: Callable[[Any, Path], set[str]]  # (run config, <run>/preds/val) -> the images its cache holds
    yaml: Callable[[dict], dict]  # options -> extra keys of the ensemble YAML
    problem: Callable[[Any, list, dict], Problem]  # (library config, members, options)
    describe: Callable[[Any, list], dict]  # (ensemble config, members) -> summary "ensemble" entry


def _maps_problem(library, members: list, options: dict) -> Problem:
    from tqdm import tqdm

    from ensembles.runner import check_cache, ensemble_samples

    side = library.spec.ensemble_side()
    samples, notes = _caught(lambda: ensemble_samples(library, members, "val"))
    unlabelled = [s.name for s in samples if s.label_path is None]
    if unlabelled:
        raise ValueError(f"{library.members[0].run_dirs[0].parent}: validation image {unlabelled[0]} has no label file")
    check_cache(members, samples, "val")

    def items() -> Iterable[Item]:
        bar = tqdm(samples, desc="select", disable=not options["progress"], dynamic_ncols=True, leave=False)
        return ((maps, gt) for maps, gt, _ in validation_items(members, bar, options["fit_size"]))

    return Problem(items, [side.group(s) for s in samples],
                   dice_score(np.full(len(library.spec.classes), options["threshold"])), library.spec.mode,
                   library.spec.metric_label, notes=notes)


def _maps_describe(ens, members: list) -> dict:
    from ensembles.runner import Fuser

    return Fuser(ens, members).describe()


def _values_cached(cfg, folder: Path) -> set[str]:
    side = cfg.spec.ensemble_side()
    path = folder / side.cache_file
    return set(side.read_cache(path, cfg, str(folder.parent.parent))[0]) if path.is_file() else set()


def _values_problem(library, members: list, options: dict) -> Problem:
    from ensembles.values import channels_of, fuse_values, validation_values

    side = library.spec.ensemble_side()
    channels_of(library, members)  # one set of channels (landmarks) across the library
    (names, preds, truth), notes = _caught(lambda: validation_values(library, members))
    return Problem(lambda: iter([(preds, truth)]), [side.group(n, members[0].cfgs[0]) for n in names], mean_error(side.errors), "min",
                   side.error_label, fuse_each(lambda p, w: fuse_values(p, "weighted", w, side.channel_axis)), notes)


def _values_describe(ens, members: list) -> dict:
    from ensembles.values import channels_of, describe, ensemble_weights

    channels = channels_of(ens, members)
    return describe(ens, members, ensemble_weights(ens, members, channels), channels)


def _caught(read: Callable[[], Any]) -> tuple[Any, list[str]]:
    """``read()`` and the warnings it gave (members covering different validation images), as report notes."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = read()
    return value, [str(w.message) for w in caught]


KINDS: dict[str, KindSelection] = {
    "maps": KindSelection(lambda side: "preds/val/<image>.npz",
                          lambda cfg: {s.name for s in cfg.spec.ensemble_side().samples(cfg, "val")},
                          lambda cfg, folder: {p.name[:-4] for p in folder.glob("*.npz")},
                          lambda o: {"thresholds": o["threshold"]}, _maps_problem, _maps_describe),
    "values": KindSelection(lambda side: f"preds/val/{side.cache_file}",
                            lambda cfg: set(cfg.spec.ensemble_side().truth(cfg)),
                            _values_cached, lambda o: {}, _values_problem, _values_describe),
}


def _fold_base(run_dir: Path, fold: int) -> str:
    return re.sub(rf"-f{fold}$", "", run_dir.name)


def _finished_names(folder: Path) -> list[str]:
    """Names of the finished runs (config.yaml, summary.json and best.pt) directly in ``folder``, sorted."""
    runs = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    return [p.name for p in runs if all((p / f).is_file() for f in ("config.yaml", "summary.json", "best.pt"))]


def find_candidates(runs_dir: str | Path) -> tuple[str, list[Candidate], list[str]]:
    """The task of the finished runs of ``runs_dir``, those runs with a complete out-of-fold validation cache
    grouped by configuration, and notes on the runs left out (unfinished, no or an incomplete cache). Runs
    named ``<base>-f<fold>`` whose configs differ only in ``data.fold`` (and runtime keys) are one candidate;
    otherwise each run is its own. Runs on all data (``data.fold: all``) are left out with a note; ensemble folders
    are skipped; finished runs of several tasks are an error."""
    from engine.config import load_config
    from engine.run_folder import RESUME_FREE_KEYS, differing_keys
    from engine.summary import read_summary

    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise FileNotFoundError(f"{runs_dir}: no such runs folder")
    notes: list[str] = []
    finished: list[tuple[Path, Any]] = []
    for run in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        summary = read_summary(run)
        if summary.get("kind") not in (None, "run") or not (run / "config.yaml").is_file():
            continue
        if not summary or not (run / "best.pt").is_file():
            notes.append(f"{run.name}: not finished (no summary.json or best.pt), left out")
            continue
        finished.append((run, load_config(run / "config.yaml")))
    hint = "train with `python train.py -c CONFIG --folds all`, which writes the out-of-fold predictions"
    by_task: dict[str, str] = {}   # task -> one of its finished runs, for the message
    for run, cfg in finished:
        by_task.setdefault(cfg.task, run.name)
    nested = not finished   # an out_dir (runs/) holding the task folders (runs/<task>/<run>)
    if nested:
        by_task = {t: names[0] for t in task_names() if (names := _finished_names(runs_dir / t))}
    tasks = sorted(by_task)
    if len(tasks) > 1:
        folder = runs_dir / tasks[0] if nested else f"runs/{tasks[0]}"
        raise ValueError(f"{runs_dir}: holds runs of several tasks ({', '.join(f'{t}: {by_task[t]}' for t in tasks)}"
                         f"); select from one task's folder, e.g. {folder}")
    if nested and tasks:
        raise ValueError(f"{runs_dir}: holds no runs itself; its {tasks[0]} runs are in {runs_dir / tasks[0]}: "
                         "select from that folder")
    if not finished:
        raise ValueError(f"{runs_dir}: no finished run (summary.json and best.pt) to select from; {hint}")
    task = tasks[0]
    side = task_spec(task).ensemble_side()
    kind = KINDS[side.output]
    found: dict[str, list[tuple[Path, Any]]] = {}
    for run, cfg in finished:
        if not cfg.data.has_validation:
            notes.append(f"{run.name}: trained on every image (data.fold=all), so it has no out-of-fold predictions; "
                         "left out of the selection (it can join the selected ensemble for the test set)")
            continue
        expected = kind.val_names(cfg)
        folder = run / "preds" / "val"
        have = kind.cached_names(cfg, folder) if folder.is_dir() else set()
        if not expected <= have:
            lacking = f"lacks {len(expected - have)} of {len(expected)} validation images" if have else "does not exist"
            notes.append(f"{run.name}: {kind.cache(side)} {lacking}, left out (write it with `python inference.py --ckpt "
                         f"{run / 'best.pt'} --split val --save-probs`)")
            continue
        found.setdefault(_fold_base(run, cfg.data.fold), []).append((run, cfg))
    if not found:
        raise ValueError(f"{runs_dir}: none of its {len(finished)} finished {task} runs has out-of-fold predictions "
                         f"({kind.cache(side)}) of all its validation images; {hint}")
    candidates = []
    ignore = set(RESUME_FREE_KEYS) | {"data.fold", "logging.run_name"}
    for base, runs in found.items():
        first = runs[0][1].to_dict()
        if all(not differing_keys(first, cfg.to_dict(), ignore=ignore) for _, cfg in runs[1:]):
            candidates.append(Candidate(base, [r for r, _ in runs], [c.data.fold for _, c in runs]))
        else:
            notes.append(f"{base}: its fold runs differ in more than data.fold; each run is its own candidate")
            candidates += [Candidate(r.name, [r], [c.data.fold]) for r, c in runs]
    return task, candidates, notes


def library_config(task: str, candidates: Sequence[Candidate], runs_dir: Path, name: str,
                   counts: Sequence[int] | None = None, extra: dict | None = None) -> dict:
    """The ensemble YAML's mapping: ``weighted`` over the candidates (those with ``counts`` > 0: weights =
    counts / total; all, equally, without ``counts``), out_dir such that its folder is ``<runs_dir>/<name>``;
    ``extra``: the task's further keys (segmentation: ``thresholds``)."""
    keep = [k for k in range(len(candidates)) if counts is None or counts[k] > 0]
    total = None if counts is None else float(np.sum(counts))
    return {
        "task": task, "method": "weighted", "name": name, "out_dir": str(runs_dir.parent),
        "members": [{"name": candidates[k].label, "runs": [str(r) for r in candidates[k].runs]} for k in keep],
        "weights": [1.0] * len(keep) if counts is None else [round(float(counts[k]) / total, 6) for k in keep],
        **(extra or {}),
    }


def select_ensemble(runs_dir: str | Path, *, name: str = "selected", **options: Any) -> dict:
    """Select an ensemble from every finished run of ``runs_dir`` (one task's folder; see the module docstring);
    write its YAML (``out``, default ``<runs_dir>/<name>/selection.yaml``), ``selection.json`` beside it and the
    ensemble's summary.json, holding the claim of its folder ``<runs_dir>/<name>`` from the candidates found
    to the last write. ``options``:
    those of :func:`_select_ensemble` (``fit_size`` and ``threshold``: segmentation only). Returns the record."""
    from tasks.formats.names import check_name

    check_name(name, "--name (the ensemble's folder)")
    runs_dir = Path(runs_dir)
    found = find_candidates(runs_dir)  # reads only: a missing or empty folder is refused before the claim makes it
    with claim(runs_dir / name):
        return _select_ensemble(runs_dir, found, name=name, **options)


def _select_ensemble(runs_dir: Path, found: tuple[str, list[Candidate], list[str]], *, name: str,
                     max_steps: int = 20, init: int = 0, patience: int = 0, folds: int = 5,
                     fit_size: int | None = 256, threshold: float = 0.5, seed: int = 0,
                     out: str | Path | None = None, progress: bool = True) -> dict:
    import yaml

    from ensembles.config import EnsembleConfig
    from ensembles.members import resolve_members, write_ensemble_summary
    from core.atomic import write_text

    task, candidates, notes = found
    task_cls = task_spec(task)
    spec = KINDS[task_cls.ensemble_side().output]
    options = {"threshold": threshold, "fit_size": fit_size, "progress": progress}
    extra = spec.yaml(options)
    library = EnsembleConfig.model_validate(library_config(task, candidates, runs_dir, name, extra=extra))
    members = resolve_members(library, need_models=False)
    problem = spec.problem(library, members, options)
    result = greedy_select(problem.items, len(members), problem.score, problem.groups, mode=problem.mode,
                           max_steps=max_steps, init=init, patience=patience, folds=folds, seed=seed,
                           fuse=problem.fuse)
    labels = [c.label for c in candidates]
    chosen = library_config(task, candidates, runs_dir, name, result.counts, extra)
    ens = EnsembleConfig.model_validate(chosen)
    yaml_path = Path(out) if out else ens.run_dir / "selection.yaml"
    # in the task's metric (a values task selects on its error: the side converts, e.g. accuracy = 1 - error rate)
    as_metric = getattr(task_cls.ensemble_side(), "metric_of_error", None) if problem.mode != task_cls.mode else None
    metric = as_metric or (lambda v: v)
    val = {"score": round(metric(result.cross_fitted["selection"] if result.cross_fitted else result.score), 6),
           "in_sample": round(metric(result.score), 6), "guard": "cross-fitting" if result.cross_fitted else None}
    record = {
        "task": task, "metric": task_cls.metric, "mode": problem.mode, "metric_label": problem.label,
        "runs_dir": str(runs_dir), "candidates": {c.label: [str(r) for r in c.runs] for c in candidates},
        "folds_of": {c.label: c.folds for c in candidates},
        "images": result.n_items, "cross_fitting_folds": result.n_folds, "patience": patience,
        **({"threshold": threshold, "fit_size": fit_size} if task_cls.thresholded else {}),
        "counts": dict(zip(labels, result.counts.tolist())),
        "weights": {labels[k]: round(float(w), 6) for k, w in enumerate(result.weights) if w > 0},
        "history": [{**h, "member": labels[h["member"]]} for h in result.history], "stopped": result.stopped,
        "val": val, "singles": {lab: round(float(s), 6) for lab, s in zip(labels, result.singles)},
        "best_single": labels[result.best_single], "average": round(result.average, 6),
        "cross_fitted": {k: round(v, 6) for k, v in result.cross_fitted.items()} if result.cross_fitted else None,
        "fold_selections": [dict(zip(labels, c)) for c in result.fold_counts],
        "notes": notes + problem.notes + result.notes, "yaml": str(yaml_path),
    }
    header = (f"# Selected by tools/fit_ensemble.py --select {runs_dir}: greedy forward selection with replacement\n"
              f"# (Caruana et al. 2004) on out-of-fold validation predictions of {result.n_items} images.\n"
              f"# validation {problem.label}: selection {result.score:.4f} (in sample), best single "
              f"{labels[result.best_single]} {result.singles[result.best_single]:.4f}, average of all "
              f"{result.average:.4f}\n")
    if result.cross_fitted:
        cf = result.cross_fitted
        header += (f"# cross-fitted over patients (held out): selection {cf['selection']:.4f}, best single "
                   f"{cf['best_single']:.4f}, average {cf['average']:.4f}\n")
    header += f"#   python inference.py --ensemble {yaml_path} --tta -o submissions/{name}.csv\n"
    write_text(yaml_path, header + yaml.safe_dump(chosen, sort_keys=False))
    write_json(yaml_path.parent / "selection.json", record)
    chosen_members = [m for m, c in zip(members, result.counts) if c > 0]
    write_ensemble_summary(ens, chosen_members, spec.describe(ens, chosen_members), val=val)
    return record


def selection_report(record: dict) -> str:
    """Human-readable report of :func:`select_ensemble`."""
    metric = record["metric_label"]
    better = "higher" if record["mode"] == "max" else "lower"
    images = f"validation images: {record['images']} (out-of-fold)"
    if "threshold" in record:
        images += f", threshold {record['threshold']}"
    lines = [f"task: {record['task']}; {metric}, {better} is better",
             f"candidates ({len(record['candidates'])}): " + ", ".join(
                 f"{k} (folds {','.join(map(str, record['folds_of'][k]))})" for k in record["candidates"]),
             images, f"each candidate alone (validation {metric}):"]
    for label, value in record["singles"].items():
        lines.append(f"  {label:<28} {value:.4f}")
    lines.append(f"average of all candidates: {record['average']:.4f}")
    lines.append(f"greedy steps (member added -> ensemble {metric}):")
    for h in record["history"]:
        lines.append(f"  {h['step']:>3}  +{h['member']:<26} " + (f"{h['score']:.4f}" if h["score"] is not None else "init"))
    lines.append(f"stopped: {record['stopped']}" + (f" (patience {record['patience']}: the best ensemble along the path "
                                                    f"is kept)" if record["patience"] else ""))
    lines.append("selected: " + ", ".join(f"{k}={w:.3f}" for k, w in record["weights"].items()))
    lines.append(f"validation {metric} of the selection (in sample, optimistic): {record['val']['in_sample']:.4f}")
    if record["cross_fitted"]:
        cf = record["cross_fitted"]
        lines.append(f"cross-fitted (selected without the held-out patients): selection {cf['selection']:.4f}, "
                     f"best single {cf['best_single']:.4f}, average {cf['average']:.4f}")
    lines += [f"note: {n}" for n in record["notes"]]
    lines.append(f"wrote {record['yaml']} (score test predictions separately: inference.py --ensemble, tools/score.py)")
    return "\n".join(lines)
