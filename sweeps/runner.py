"""Run a sweep with Optuna: storage, study, trials (in-process or as ``train.py`` subprocesses), workers, table.

Storage:

* default, one worker: ``sqlite:///runs/sweeps/optuna.db`` (embedded, nothing to install);
* default, ``--workers K`` (K > 1): a journal file ``runs/sweeps/<study>.journal`` (``JournalStorage`` +
  ``JournalFileBackend``; SQLite is not shared by several processes);
* ``--storage postgresql://user:pw@host:5432/db`` (or any SQLAlchemy URL): any number of workers on any number
  of machines join one study (``load_if_exists``);
* ``--storage PATH.journal``: a journal file you name.

A study of the same name in the same storage is resumed: new trials are added to it. ``--n-trials N`` is N
trials of this command that end (complete, pruned, or failed with their error) over all its workers; a trial
lost with its worker is run again by another (``sweeps.budget``). RDB storages record a
heartbeat every ``--heartbeat`` seconds; a trial whose worker died is marked FAIL by the next worker that
starts a trial (after a grace period of two intervals). On file storages (SQLite, journal) a RUNNING trial of
a process on this host that no longer exists is marked FAIL straight away.

Each trial is a normal run folder ``runs/<task>/<study>-tNNN`` (``logging.run_name``); its user attributes
hold ``run_dir``, ``overrides`` (the config values it ran with), ``worker`` (host:pid), ``epochs_done``,
``best_epoch``, and ``error`` when it failed. A trial's value is its best epoch's metric (``metric.name`` of
the sweep file, e.g. ``val/dice``), reported after every validated epoch; the pruner is asked after every one
but the last, so a trial that trained all its epochs is COMPLETE.
"""
from __future__ import annotations

import gc
import importlib
import json
import math
import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Callable, Literal

import optuna
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from sweeps.budget import Budget, Gate, LocalGate, PipeGate, serve
from sweeps.space import WANDB_ONLY_OVERRIDES, SweepSpec, SweepSpecError, format_arg, nest
from core.atomic import write_text
from tasks.formats.names import name_problem

# heartbeats and metric names are "experimental" in Optuna (stable since 2.9 / 3.2): no warning on every run
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

REPO_ROOT = Path(__file__).resolve().parents[1]
SWEEP_DIR = Path("runs/sweeps")
DEFAULT_SQLITE = f"sqlite:///{SWEEP_DIR}/optuna.db"
HOST = socket.gethostname()
TrainFn = Callable[..., dict]


class SweepError(ValueError):
    """A sweep that cannot start (storage, base config, model names...); one clear message."""


@dataclass
class SweepOptions:
    """Everything a worker needs; picklable so ``--workers K`` can hand it to spawned processes."""

    spec: SweepSpec
    study_name: str
    storage: str | None = None
    n_trials: int | None = 10
    timeout: float | None = None
    workers: int = 1
    subprocess: bool = False
    base: str | None = None
    sets: list[str] = field(default_factory=list)
    seed: int | None = None
    prune: Literal["auto", "all", "none"] = "auto"
    heartbeat: int | None = 60
    retry_failed: int = 0
    train_fn: str | TrainFn | None = None  # "module:function" or a module-level callable; None: engine.trainer.train
    poll_s: float = 0.5
    kill_grace_s: float = 30.0


# ----------------------------------------------------------------------------------------------------- storage
@dataclass(frozen=True)
class StorageSpec:
    kind: Literal["rdb", "journal"]
    url: str  # SQLAlchemy URL, or the journal file path

    @property
    def is_file(self) -> bool:
        return self.kind == "journal" or self.url.startswith("sqlite:")

    @property
    def display(self) -> str:
        """The URL with any password masked (for logs and the optuna-dashboard hint)."""
        return re.sub(r"(://[^:/@]+:)[^@]+@", r"\1***@", self.url)


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "study"


def _sqlite_path(url: str) -> Path | None:
    return Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") and url != "sqlite:///:memory:" else None


def _study_in(storage: StorageSpec, study_name: str) -> bool:
    if storage.kind == "journal":
        if not Path(storage.url).is_file():
            return False
    else:
        path = _sqlite_path(storage.url)
        if path is not None and not path.is_file():
            return False
    return study_name in optuna.study.get_all_study_names(storage=open_storage(storage, heartbeat=None))


def with_driver(url: str) -> str:
    """``postgresql://`` → ``postgresql+psycopg2://`` when only psycopg2 is installed.

    SQLAlchemy 2.1 picks psycopg (3) for a bare ``postgresql://``; the project installs ``psycopg2-binary``.
    """
    import importlib.util

    scheme, sep, rest = url.partition("://")
    if scheme in ("postgresql", "postgres") and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return f"postgresql+psycopg2://{rest}"
    return url


def resolve_storage(storage: str | None, study_name: str, workers: int) -> StorageSpec:
    """The storage a sweep uses (see the module docstring). The study name names files (its journal, its
    trials' run folders), so it must be one path component."""
    problem = name_problem(study_name)
    if problem is not None:
        raise SweepError(f"study name (--study-name, or name: in the sweep file): {problem}")
    journal_default = StorageSpec("journal", str(SWEEP_DIR / f"{safe_name(study_name)}.journal"))
    sqlite_default = StorageSpec("rdb", DEFAULT_SQLITE)
    if storage is None:
        if workers > 1:
            if _study_in(sqlite_default, study_name):
                raise SweepError(
                    f"study '{study_name}' lives in {DEFAULT_SQLITE}, and SQLite cannot be shared by {workers} "
                    f"worker processes: resume it with --workers 1, or start a new --study-name (K workers use "
                    f"{journal_default.url}), or use --storage postgresql://...")
            return journal_default
        if not _study_in(sqlite_default, study_name) and _study_in(journal_default, study_name):
            print(f"resuming study '{study_name}' from {journal_default.url}", file=sys.stderr)
            return journal_default
        return sqlite_default
    if storage.startswith("journal:"):
        return StorageSpec("journal", storage[len("journal:"):])
    if "://" in storage:
        storage = with_driver(storage)
        if storage.startswith("sqlite:") and workers > 1:
            raise SweepError(f"--storage {storage}: SQLite cannot be shared by {workers} worker processes; omit "
                             f"--storage (a journal file under {SWEEP_DIR}/) or use postgresql://...")
        return StorageSpec("rdb", storage)
    if storage.endswith((".journal", ".log", ".jsonl")):
        return StorageSpec("journal", storage)
    raise SweepError(f"--storage {storage!r}: expected an RDB URL (sqlite:///path.db, postgresql://user:pw@host/db) "
                     f"or a journal file (PATH.journal)")


def _stale_callback(retry: int) -> Callable:
    retry_cb = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=retry) if retry > 0 else None

    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        print(f"sweep: trial {trial.number} ({trial.user_attrs.get('worker', '?')}) stopped sending heartbeats: "
              f"marked FAIL" + (" and queued again" if retry_cb else ""), file=sys.stderr)
        if retry_cb is not None:
            retry_cb(study, trial)

    return callback


def open_storage(storage: StorageSpec, heartbeat: int | None = 60, retry_failed: int = 0) -> optuna.storages.BaseStorage:
    if storage.kind == "journal":
        path = Path(storage.url)
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    engine_kwargs: dict[str, Any] = {}
    sqlite = _sqlite_path(storage.url)
    if sqlite is not None:
        sqlite.parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs["connect_args"] = {"timeout": 60}
    elif not storage.url.startswith("sqlite:"):
        engine_kwargs["pool_pre_ping"] = True
    kwargs: dict[str, Any] = {}
    if heartbeat:
        kwargs = {"heartbeat_interval": int(heartbeat), "grace_period": 2 * int(heartbeat),
                  "heartbeat_stale_trial_callback": _stale_callback(retry_failed)}
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(5):
        try:
            return RDBStorage(storage.url, engine_kwargs=engine_kwargs, **kwargs)
        except (IntegrityError, ProgrammingError):
            # Workers that start together on an empty database race to create Optuna's schema; the
            # loser sees "already exists" and finds the schema complete on the next try.
            time.sleep(0.5 * (attempt + 1))
        except Exception as err:  # noqa: BLE001 - driver errors vary (sqlalchemy, psycopg2)
            raise SweepError(f"cannot open storage {storage.display}: {type(err).__name__}: {err}") from None
    raise SweepError(f"cannot open storage {storage.display}: its schema could not be created (concurrent workers?)")


def dashboard_line(storage: StorageSpec) -> str:
    return f"optuna-dashboard {storage.display}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_dead_local_trials(study: optuna.Study, pids: set[int] | None = None) -> list[int]:
    """Mark FAIL the RUNNING trials of processes on this host that are gone (or of ``pids``)."""
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, _, pid = str(t.user_attrs.get("worker", "")).rpartition(":")
        if host != HOST or not pid.isdigit():
            continue
        pid_i = int(pid)
        if (pids is not None and pid_i in pids) or (pids is None and not _pid_alive(pid_i)):
            try:
                study._storage.set_trial_user_attr(t._trial_id, "error", f"worker {HOST}:{pid_i} died during the trial")
                study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
                failed.append(t.number)
            except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
                pass
    if failed:
        print(f"sweep: marked FAIL trials {failed} (their worker process is gone)", file=sys.stderr)
    return failed


# ------------------------------------------------------------------------------------------------ base config
def base_and_overrides(opts: SweepOptions) -> tuple[str, list[str]]:
    """The base config path and the fixed ``--section.key=value`` overrides (command: minus W&B-only, then --set)."""
    base = opts.base or opts.spec.base_config
    if not base:
        raise SweepError("no base config: put '-c configs/<task>/<name>.yaml' in the sweep file's command: or pass --base")
    if not Path(base).is_file():
        raise SweepError(f"base config {base} not found (from {'--base' if opts.base else 'the command: of the sweep file'};"
                         f" paths are relative to the current folder {os.getcwd()})")
    fixed = [o for o in opts.spec.command_overrides if o[2:].split("=", 1)[0] not in WANDB_ONLY_OVERRIDES]
    sets = ["--" + s.removeprefix("--") for s in opts.sets]
    for s in sets:
        key = s[2:].split("=", 1)[0]
        if "=" not in s or "." not in key:
            raise SweepError(f"--set {s[2:]!r}: expected section.key=value (e.g. data.root=data/phantom/handbones/train)")
        clash = [p.name for p in opts.spec.params if p.name == key or p.name.startswith(key + ".") or key.startswith(p.name + ".")]
        if clash:
            raise SweepError(f"--set {s[2:]!r}: '{clash[0]}' is searched by the sweep; remove it from --set or from parameters")
    return base, fixed + sets


def check_space(opts: SweepOptions) -> Any:
    """Validate the base config, every parameter name against the config schema, and every model name.

    Returns the base Config (after the fixed overrides).
    """
    from engine.config import ConfigError, deep_merge, load_config, parse_overrides

    base, fixed = base_and_overrides(opts)
    try:
        fixed_tree = parse_overrides(fixed)
        cfg = load_config(base, fixed_tree)
        load_config(base, deep_merge(fixed_tree, nest({p.name: p.example() for p in opts.spec.params})))
        for p in opts.spec.params:
            if p.kind in ("categorical", "categorical_w_probabilities", "constant"):
                choices = p.config["values"] if "values" in p.config else [p.config["value"]]
                for value in choices:
                    load_config(base, deep_merge(fixed_tree, nest({p.name: value})))
    except ConfigError as err:
        raise SweepError(f"sweep parameters do not fit the config: {err}") from None
    model_params = [p for p in opts.spec.params if p.name == "model.name"]
    names = [cfg.model.name]
    for p in model_params:
        names += p.config["values"] if "values" in p.config else [p.config["value"]]
    import models

    for name in dict.fromkeys(names):
        try:
            models.resolve(name, cfg.task)
        except ValueError as err:
            raise SweepError(f"model.name {name!r}: {err}") from None
    return cfg


# ------------------------------------------------------------------------------------------------------ trials
class _Reporter:
    """Per-epoch rows → ``trial.report``; remembers the best value; decides pruning before the last epoch.

    A trial that trained all its ``epochs`` is COMPLETE: the pruner is not asked after the last one.
    """

    def __init__(self, trial: optuna.Trial, metric: str, direction: str, epochs: int) -> None:
        self.trial, self.metric, self.direction, self.last_epoch = trial, metric, direction, int(epochs)
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.epochs = 0
        self.pruned_at: int | None = None
        self.keys: set[str] = set()

    def __call__(self, epoch: int, row: dict) -> bool:
        """Report one epoch; True when the trial should stop (pruned)."""
        self.epochs = max(self.epochs, int(epoch) + 1)
        self.keys.update(row)
        value = row.get(self.metric)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            return False
        value = float(value)
        if self.best is None or (value > self.best if self.direction == "maximize" else value < self.best):
            self.best, self.best_epoch = value, int(epoch)
        self.trial.report(value, int(epoch) + 1)
        if int(epoch) + 1 < self.last_epoch and self.trial.should_prune():
            self.pruned_at = int(epoch) + 1
            return True
        return False

    def finish(self) -> float:
        self.trial.set_user_attr("epochs_done", self.epochs)
        if self.best_epoch is not None:
            self.trial.set_user_attr("best_epoch", self.best_epoch)
        if self.pruned_at is not None:
            self.trial.set_user_attr("pruned_at_epoch", self.pruned_at)
            raise optuna.TrialPruned(f"pruned after epoch {self.pruned_at}")
        if self.best is None:
            raise RuntimeError(f"metric {self.metric!r} was never logged (logged keys: {', '.join(sorted(self.keys)) or 'none'})")
        return self.best


def _load_train_fn(spec: str | TrainFn | None) -> TrainFn:
    if spec is None:
        from engine.trainer import train

        return train
    if callable(spec):
        return spec
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def synthetic_train(cfg: Any, callbacks: list | None = None) -> dict:
    """A cheap stand-in for ``engine.trainer.train`` (``--dry-run`` and tests): no data, no model.

    The score is a smooth function of ``train.lr``, ``train.weight_decay`` and the loss weights, rising with the
    epoch, so samplers and pruners have something to work on. ``SWEEP_SYNTHETIC_SLEEP`` seconds per epoch.
    """
    from engine.trainer import StopTraining

    sleep = float(os.environ.get("SWEEP_SYNTHETIC_SLEEP", "0"))
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lr_term = math.exp(-(math.log10(cfg.train.lr) + 3.0) ** 2)
    wd_term = 0.05 * math.exp(-(math.log10(max(cfg.train.weight_decay, 1e-12)) + 4.0) ** 2)
    dice_w = float(cfg.loss.weights.get("dice", 0.0))
    base = 0.3 + 0.4 * lr_term + wd_term + 0.1 * dice_w / (1.0 + dice_w) + 0.01 * (sum(map(ord, cfg.model.name)) % 7)
    best = None
    epochs = cfg.train.epochs
    for epoch in range(epochs):
        if sleep:
            time.sleep(sleep)
        score = base * (0.5 + 0.5 * (epoch + 1) / epochs)
        row = {"epoch": epoch, "train/loss": 1.0 - score, "val/score": score, "val/dice": score, "val/loss": 1.0 - score}
        with (run_dir / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")
        best = score if best is None else max(best, score)
        try:
            for cb in callbacks or []:
                cb(epoch, row)
        except StopTraining:
            break
    summary = {"name": cfg.run_name, "val": {"score": best}, "synthetic": True}
    write_text(run_dir / "summary.json", json.dumps(summary))
    return summary


class Objective:
    """``trial → value``: suggest the config values, build the run's config, train, report, rank."""

    def __init__(self, opts: SweepOptions) -> None:
        from engine.config import parse_overrides

        self.opts = opts
        self.spec = opts.spec
        self.base, self.fixed = base_and_overrides(opts)
        self.fixed_tree = parse_overrides(self.fixed)
        self.train_fn = None if opts.subprocess else _load_train_fn(opts.train_fn)

    def config(self, values: dict[str, Any], run_name: str) -> Any:
        from engine.config import deep_merge, load_config

        tree = deep_merge(deep_merge(self.fixed_tree, nest(values)), {"logging": {"run_name": run_name}})
        return load_config(self.base, tree)

    def __call__(self, trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", f"{HOST}:{os.getpid()}")
        try:
            values = self.spec.suggest(trial)
            trial.set_user_attr("overrides", values)
            name = f"{safe_name(self.opts.study_name)}-t{trial.number:03d}"
            cfg = self.config(values, name)
            k = 2
            while cfg.run_dir.exists():  # never mix two trials in one folder (e.g. a study deleted and re-made)
                cfg = self.config(values, f"{name}-r{k}")
                k += 1
            trial.set_user_attr("run_dir", str(cfg.run_dir))
            reporter = _Reporter(trial, self.spec.metric, self.spec.direction, cfg.train.epochs)
            if self.opts.subprocess:
                self._run_subprocess(cfg, values, reporter)
            else:
                self._run_inprocess(cfg, reporter)
            return reporter.finish()
        except optuna.TrialPruned:
            raise
        except Exception as err:
            message = f"{type(err).__name__}: {err}"
            trial.set_user_attr("error", message[:4000])
            print(f"sweep: trial {trial.number} failed: {message.splitlines()[0] if message else ''}", file=sys.stderr)
            raise
        finally:
            if not self.opts.subprocess:
                gc.collect()
                try:
                    import torch

                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                except ImportError:  # pragma: no cover
                    pass

    def _run_inprocess(self, cfg: Any, reporter: _Reporter) -> None:
        from engine.trainer import StopTraining

        def callback(epoch: int, row: dict) -> None:
            if reporter(epoch, row):
                raise StopTraining(f"pruned after epoch {epoch + 1}")

        self.train_fn(cfg, callbacks=[callback])

    def _run_subprocess(self, cfg: Any, values: dict[str, Any], reporter: _Reporter) -> None:
        """``python train.py -c BASE --k=v ...``; poll ``metrics.jsonl`` for new epochs; prune = terminate the child."""
        program = Path(self.spec.program)
        if not program.is_file():
            program = REPO_ROOT / self.spec.program
        args = [sys.executable, str(program), "-c", self.base, *self.fixed,
                *(format_arg(k, v) for k, v in values.items()), format_arg("logging.run_name", cfg.logging.run_name)]
        run_dir = Path(cfg.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        metrics, log_path = run_dir / "metrics.jsonl", run_dir / "sweep_trial.log"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with log_path.open("ab") as log:
            log.write(("$ " + " ".join(args) + "\n").encode())
            log.flush()
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=os.getcwd(), env=env,
                                    start_new_session=True)
        offset, stopped = 0, False
        try:
            while True:
                rc = proc.poll()
                if metrics.is_file():
                    with metrics.open("rb") as f:
                        f.seek(offset)
                        chunk = f.read()
                    end = chunk.rfind(b"\n") + 1
                    offset += end
                    for line in chunk[:end].splitlines():
                        if line.strip():
                            row = json.loads(line)
                            if reporter(row["epoch"], row):
                                stopped = True
                                break
                if stopped or rc is not None:
                    break
                time.sleep(self.opts.poll_s)
        finally:
            if proc.poll() is None:
                _terminate(proc, self.opts.kill_grace_s)
        if not stopped and proc.returncode != 0:
            tail = log_path.read_text(errors="replace").splitlines()[-15:]
            raise RuntimeError(f"train.py exited with code {proc.returncode} (log: {log_path}):\n" + "\n".join(tail))


def _terminate(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM the child's process group (train.py and its data loader workers); SIGKILL after ``grace`` s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


# ----------------------------------------------------------------------------------------------------- workers
class _PruneAll(optuna.pruners.BasePruner):
    """``--prune-all``: prune every trial at its first reported epoch (a test hook and a smoke test of pruning)."""

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return trial.last_step is not None


def make_pruner(opts: SweepOptions, epochs: int | None) -> optuna.pruners.BasePruner:
    if opts.prune == "all":
        return _PruneAll()
    if opts.prune == "none":
        return optuna.pruners.NopPruner()
    swept_epochs = any(p.name == "train.epochs" for p in opts.spec.params)
    return opts.spec.pruner("auto" if swept_epochs or epochs is None else int(epochs))


def _stop_reason(study: optuna.Study, spec: SweepSpec, deadline: float | None) -> str | None:
    """Why no trial may start now: ``--timeout``, ``run_cap`` (trials in the study), ``metric.target`` (as on
    W&B), or a grid with a trial at every point; None when one may."""
    if deadline is not None and time.monotonic() >= deadline:
        return "--timeout reached"
    trials = study.get_trials(deepcopy=False)
    if spec.run_cap is not None and len(trials) >= spec.run_cap:
        return f"run_cap {spec.run_cap} reached ({len(trials)} trials in the study)"
    if spec.target is not None:
        done = [t.value for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
        if any((v >= spec.target) if spec.direction == "maximize" else (v <= spec.target) for v in done):
            return f"a trial reached metric.target {spec.target}"
    if isinstance(study.sampler, optuna.samplers.GridSampler) and study.sampler.is_exhausted(study):
        return "every grid point has a trial"
    return None


def _optimize(study: optuna.Study, opts: SweepOptions, gate: Gate) -> None:
    """Run trials one at a time while ``gate`` (the ``--n-trials`` budget) and the study let this worker."""
    objective = Objective(opts)
    deadline = None if opts.timeout is None else time.monotonic() + opts.timeout
    ended = False
    while True:
        reason = _stop_reason(study, opts.spec, deadline)
        if reason is not None:
            print(f"sweep: {reason}: no new trials", file=sys.stderr)
            gate.leave(ended)
            return
        if not gate.ask(ended):
            return
        study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True)
        ended = True


def _load_study(opts: SweepOptions, storage: StorageSpec, worker_index: int, epochs: int | None) -> optuna.Study:
    st = open_storage(storage, heartbeat=opts.heartbeat, retry_failed=opts.retry_failed)
    seed = None
    if opts.seed is not None:
        n = len(optuna.load_study(study_name=opts.study_name, storage=st).get_trials(deepcopy=False))
        seed = opts.seed + 1000 * worker_index + n  # workers and resumed runs must not replay the same samples
    study = optuna.load_study(study_name=opts.study_name, storage=st, sampler=opts.spec.sampler(seed),
                              pruner=make_pruner(opts, epochs))
    if storage.is_file:
        fail_dead_local_trials(study)
    return study


def worker_main(opts: SweepOptions, storage: StorageSpec, worker_index: int, conn: Connection,
                epochs: int | None) -> None:
    """Entry point of one ``--workers`` process (spawned); ``conn`` reaches the parent's trial budget."""
    import engine  # noqa: F401  (offline environment)

    if "OMP_NUM_THREADS" not in os.environ:  # K workers on one CPU share its cores instead of oversubscribing them
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, opts.workers)))
    study = _load_study(opts, storage, worker_index, epochs)
    try:
        _optimize(study, opts, PipeGate(conn))
    except KeyboardInterrupt:
        sys.exit(130)


@dataclass
class SweepResult:
    study: optuna.Study
    storage: StorageSpec
    new_trials: list[int]
    interrupted: bool = False


def create_study(opts: SweepOptions, storage: StorageSpec) -> optuna.Study:
    st = open_storage(storage, heartbeat=opts.heartbeat, retry_failed=opts.retry_failed)
    spec = opts.spec
    if opts.study_name in optuna.study.get_all_study_names(storage=st):
        existing = optuna.load_study(study_name=opts.study_name, storage=st)
        if existing.direction.name.lower() != spec.direction:
            raise SweepError(f"study '{opts.study_name}' in {storage.display} is {existing.direction.name.lower()}d, "
                             f"the sweep file says metric.goal {spec.goal}: use another --study-name")
        old_metric = existing.user_attrs.get("metric")
        if old_metric and old_metric != spec.metric:
            raise SweepError(f"study '{opts.study_name}' ranks {old_metric!r}, the sweep file ranks {spec.metric!r}: "
                             f"use another --study-name")
    study = optuna.create_study(study_name=opts.study_name, storage=st, direction=spec.direction, load_if_exists=True)
    if not study.user_attrs.get("metric"):
        study.set_metric_names([spec.metric])
        study.set_user_attr("metric", spec.metric)
        study.set_user_attr("sweep_file", str(spec.path) if spec.path else None)
        study.set_user_attr("method", spec.method)
    return study


def run_sweep(opts: SweepOptions) -> SweepResult:
    """Validate, open/create the study, run trials over ``opts.workers`` processes until ``opts.n_trials`` of
    them ended (``sweeps.budget``: a trial lost with its worker is run again by another)."""
    import engine  # noqa: F401  (offline environment before any third-party import)

    if opts.workers < 1:
        raise SweepError("--workers must be >= 1")
    if opts.n_trials is not None and opts.n_trials < 0:
        raise SweepError(f"--n-trials {opts.n_trials}: must be >= 0")
    cfg = check_space(opts)
    storage = resolve_storage(opts.storage, opts.study_name, opts.workers)
    study = create_study(opts, storage)
    before = {t.number for t in study.get_trials(deepcopy=False)}
    print(f"sweep: study '{opts.study_name}' ({opts.spec.method}, {opts.spec.direction} {opts.spec.metric}) in "
          f"{storage.display}: {len(before)} trials so far; running "
          f"{opts.n_trials if opts.n_trials is not None else 'unbounded'} more on {opts.workers} worker(s)"
          f"{' as train.py subprocesses' if opts.subprocess else ''}", file=sys.stderr)
    interrupted = False
    epochs = cfg.train.epochs
    if opts.workers == 1:
        study = _load_study(opts, storage, 0, epochs)
        try:
            _optimize(study, opts, LocalGate(opts.n_trials))
        except KeyboardInterrupt:
            interrupted = True
    else:
        interrupted = _run_workers(opts, storage, epochs)
        study = optuna.load_study(study_name=opts.study_name, storage=open_storage(storage, heartbeat=None))
    new = sorted(t.number for t in study.get_trials(deepcopy=False) if t.number not in before)
    return SweepResult(study=study, storage=storage, new_trials=new, interrupted=interrupted)


def _run_workers(opts: SweepOptions, storage: StorageSpec, epochs: int | None) -> bool:
    """Spawn the workers and serve them the trial budget; True when interrupted (Ctrl-C)."""
    ctx = multiprocessing.get_context("spawn")
    n_procs = opts.workers if opts.n_trials is None else min(opts.workers, opts.n_trials)
    procs, conns = [], []
    for i in range(n_procs):
        conn, child_conn = ctx.Pipe()
        p = ctx.Process(target=worker_main, args=(opts, storage, i, child_conn, epochs), name=f"sweep-worker-{i}")
        p.start()
        child_conn.close()
        procs.append(p)
        conns.append(conn)
    watch = optuna.load_study(study_name=opts.study_name, storage=open_storage(storage, heartbeat=None))
    reaped: set[int] = set()

    def reap(p: BaseProcess, replaced: bool = True) -> None:
        if p.exitcode not in (0, None) and p.pid not in reaped:
            reaped.add(p.pid)
            print(f"sweep: {p.name} ended abnormally (exit {p.exitcode})"
                  + ("; the other workers run its share" if replaced else ""), file=sys.stderr)
            fail_dead_local_trials(watch, pids={p.pid})

    try:
        serve(procs, conns, Budget(opts.n_trials), on_exit=reap)
    except KeyboardInterrupt:
        for p in procs:
            p.join(timeout=opts.kill_grace_s)
            if p.is_alive():
                p.terminate()
                p.join()
            reap(p, replaced=False)
        return True
    return False


# ------------------------------------------------------------------------------------------------------- table
_STATE_ORDER = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1, TrialState.RUNNING: 2, TrialState.WAITING: 3,
                TrialState.FAIL: 4}


def ranked_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """COMPLETE by value, then PRUNED by their last reported value, then RUNNING, WAITING, FAIL."""
    sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0

    def key(t: optuna.trial.FrozenTrial) -> tuple:
        value = t.value if t.state == TrialState.COMPLETE else (
            t.intermediate_values[t.last_step] if t.state == TrialState.PRUNED and t.last_step is not None else None)
        return (_STATE_ORDER.get(t.state, 5), sign * value if value is not None else math.inf, t.number)

    return sorted(study.get_trials(deepcopy=False), key=key)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def print_table(study: optuna.Study, spec: SweepSpec, storage: StorageSpec, top: int | None = 30, file=None) -> None:
    """The trials ranked best first: number, state, value, one column per searched parameter, run dir / error;
    folded to the terminal's width (or ``COLUMNS``; 200 on a pipe) in blocks of columns that repeat rank and trial."""
    from rich.table import Table

    from core.tables import print_folded, table_console

    console = table_console(file, pipe_width=200)
    trials = ranked_trials(study)
    counts = {s.name: sum(t.state == s for t in trials) for s in TrialState if any(t.state == s for t in trials)}
    table = Table(title=f"study '{study.study_name}': {spec.direction} {spec.metric} - "
                        + (", ".join(f"{n} {s.lower()}" for s, n in counts.items()) or "no trials"),
                  title_justify="left")
    searched = [p.name for p in spec.searched]
    table.add_column("rank", justify="right")
    table.add_column("trial", justify="right")
    table.add_column("state")
    table.add_column(spec.metric, justify="right")
    table.add_column("epochs", justify="right")
    for name in searched:
        table.add_column(name, overflow="fold")
    table.add_column("run dir / error", overflow="fold")
    for rank, t in enumerate(trials[:top] if top else trials, 1):
        values = t.user_attrs.get("overrides") or spec.values_of(t.params)
        if t.state == TrialState.COMPLETE:
            value = _fmt(t.value)
        elif t.state == TrialState.PRUNED and t.last_step is not None:
            value = f"({_fmt(t.intermediate_values[t.last_step])})"
        else:
            value = "-"
        if t.state == TrialState.FAIL:
            where = t.user_attrs.get("error") or str(t.system_attrs.get("fail_reason") or "failed")
        else:
            where = t.user_attrs.get("run_dir", "")
        where = where.splitlines()[0][:200] if where else ""
        table.add_row(str(rank), str(t.number), t.state.name.lower(), value,
                      str(t.user_attrs.get("epochs_done", t.last_step or "")),
                      *(_fmt(values[n]) if n in values else "" for n in searched), where)
    print_folded(console, table, keys=2)
    if top and len(trials) > top:
        console.print(f"({len(trials) - top} more trials not shown; --top 0 shows all)")
    if spec.constants:
        console.print("fixed: " + "  ".join(f"{k}={_fmt(v)}" for k, v in spec.constants.items()))
    console.print("(value) of a pruned trial: its last reported epoch", highlight=False)
    console.print(dashboard_line(storage), highlight=False, soft_wrap=True)


def show_study(spec: SweepSpec, study_name: str, storage: str | None, top: int | None = 30) -> None:
    """Print the ranked table of an existing study (``storage`` as for :func:`resolve_storage`, one worker)."""
    where = resolve_storage(storage, study_name, 1)
    file = Path(where.url) if where.kind == "journal" else _sqlite_path(where.url)
    if file is not None and not file.is_file():   # opening it would create an empty one
        raise SweepError(f"{where.display}: no such file, so no study '{study_name}' (run the sweep first, or name "
                         "its --storage)")
    try:
        study = optuna.load_study(study_name=study_name, storage=open_storage(where, heartbeat=None))
    except KeyError:
        raise SweepError(f"{where.display}: no study '{study_name}'") from None
    print_table(study, spec, where, top=top)


def default_study_name(spec: SweepSpec) -> str:
    if spec.name:
        return spec.name
    if spec.path is not None:
        return spec.path.stem
    raise SweepSpecError("give the study a name (--study-name or name: in the sweep file)")
