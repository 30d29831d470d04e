"""Two sweep workers (as on two machines) share one Optuna study through a throw-away PostgreSQL server.

Needs the PostgreSQL server binaries (Debian/Ubuntu: ``apt-get install -y postgresql``, which puts ``initdb`` and
``pg_ctl`` under ``/usr/lib/postgresql/<version>/bin``) and psycopg2; skipped with the reason otherwise. As root,
the server runs as the ``postgres`` user (PostgreSQL refuses to run as root).
"""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.postgres, pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]


def _pg_bin() -> Path | None:
    for name in ("initdb", "pg_ctl"):
        if shutil.which(name) is None:
            break
    else:
        return Path(shutil.which("initdb")).resolve().parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """A PostgreSQL cluster in a temporary folder on 127.0.0.1:port, trust authentication, user ``postgres``."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="sweep-pg-"))  # not under pytest's root-only (0700) tmp folder
        self.data, self.log = self.root / "data", self.root / "server.log"
        self.port = _free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            import pwd

            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(self.root, ignore_errors=True)
                pytest.skip("running as root and there is no 'postgres' user to run the server as")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            runuser = shutil.which("runuser")
            self.as_user = [runuser, "-u", "postgres", "--"] if runuser else None
            if self.as_user is None:
                shutil.rmtree(self.root, ignore_errors=True)
                pytest.skip("running as root without runuser to start the server as 'postgres'")

    def run(self, *args: str) -> subprocess.CompletedProcess:
        out = subprocess.run([*self.as_user, *args], capture_output=True, text=True, timeout=120, cwd=self.root)
        if out.returncode != 0:
            log = self.log.read_text() if self.log.is_file() else ""
            raise RuntimeError(f"{' '.join(args)} failed:\n{out.stdout}\n{out.stderr}\n{log}")
        return out

    def start(self) -> None:
        self.run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                 "--no-sync", "--no-instructions")
        self.run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                 "-o", f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self.run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self, name: str) -> str:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"


@pytest.fixture()
def postgres_url():
    pytest.importorskip("psycopg2", reason="psycopg2 (pip install psycopg2-binary) is needed for postgresql:// URLs")
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install -y postgresql")
    server = _Server(bindir)
    try:
        server.start()
        yield server.create_database("sweeps")
    finally:
        server.stop()


def _tiny_sweep(tmp_path: Path) -> Path:
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({
        "task": "segmentation", "data": {"root": str(tmp_path / "no-data-needed"), "test_root": None},
        "model": {"name": "smp:fpn/resnet18"}, "train": {"epochs": 2},
        "logging": {"out_dir": str(tmp_path / "runs"), "progress": False}}))
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "program": "train.py", "name": "pg-study", "method": "random",
        "metric": {"name": "val/dice", "goal": "maximize"},
        "parameters": {"train.lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
                       "loss.weights.dice": {"min": 0.0, "max": 1.0}},
        "command": ["${env}", "${interpreter}", "${program}", "-c", str(base), "${args}"]}, sort_keys=False))
    return sweep


def test_two_workers_share_one_study_through_postgresql(tmp_path, postgres_url):
    import optuna
    from optuna.trial import TrialState

    sweep = _tiny_sweep(tmp_path)
    cmd = [sys.executable, str(REPO / "tools/sweep.py"), str(sweep), "--dry-run", "--storage", postgres_url,
           "--n-trials", "3", "--no-prune"]
    env = dict(os.environ, SWEEP_SYNTHETIC_SLEEP="0.1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    # two independent processes, as two machines would run them, started together on one study
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out
    from sweeps import runner

    storage = runner.resolve_storage(postgres_url, "pg-study", 1)  # postgresql+psycopg2:// where psycopg 3 is absent
    assert f"optuna-dashboard {storage.display}" in outs[0] + outs[1]
    study = optuna.load_study(study_name="pg-study", storage=runner.open_storage(storage, heartbeat=None))
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == list(range(6))
    assert all(t.state == TrialState.COMPLETE and t.value is not None for t in trials)
    assert len({t.user_attrs["run_dir"] for t in trials}) == 6
    assert len({t.user_attrs["worker"] for t in trials}) == 2
