"""``--workers N``: N worker processes on this machine, each running the same plan (:mod:`cycle.schedule`), one
per visible GPU (``CUDA_VISIBLE_DEVICES``, round robin where there are more workers than GPUs) or, without a
GPU, each with its share of the CPU cores (``OMP_NUM_THREADS``). Other machines on the same shared folder
run the same command with their own ``--workers``; the claims keep every step to one worker."""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

WORKER_ENV = "BONEHARNESS_CYCLE_WORKER"


def visible_gpus() -> list[str]:
    """The GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` when set, else every CUDA device torch sees."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip() and g.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def worker_env(index: int, workers: int, gpus: Sequence[str], cores: int | None = None) -> dict[str, str]:
    """The environment of worker ``index`` (0-based) of ``workers``: its GPU, or its share of the cores."""
    env = dict(os.environ)
    env[WORKER_ENV] = f"{index + 1}/{workers}"
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    else:
        threads = str(max(1, (cores or os.cpu_count() or 1) // workers))
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    return env


def run_workers(command: Sequence[str], workers: int) -> int:
    """Start ``workers`` processes of ``command`` (each its own worker of the plan), wait for all; the exit status
    is the first failure's, else 0. Their lines go to this terminal, each prefixed with its worker."""
    gpus = visible_gpus()
    where = f"GPU {', '.join(gpus)}" if gpus else f"{os.cpu_count()} CPU cores"
    print(f"cycle: starting {workers} workers on {where}", flush=True)
    procs = [subprocess.Popen([sys.executable, *command], env=worker_env(i, workers, gpus)) for i in range(workers)]
    codes = [p.wait() for p in procs]
    failed = [(i + 1, c) for i, c in enumerate(codes) if c]
    for i, code in failed:
        print(f"cycle: worker {i} ended with exit status {code}", file=sys.stderr)
    return failed[0][1] if failed else 0
