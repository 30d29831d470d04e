"""Helpers shared by the benchmarks: bone-like masks and hand-bone folders, timers (best of N; medians of
alternating rounds against a plain baseline), peak memory, result files, and child processes that fail loudly
(measured whole: wall time, peak RSS and heavy imports of a fresh interpreter)."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

# Libraries whose import the torch-free paths must not pay for (the harness's model registry pulls the rest).
HEAVY_MODULES = ("torch", "timm", "segmentation_models_pytorch", "models.registry")

# Runs ``python <script> <args>`` as the command line would (``-c``: ``args[0]`` is the code), then prints as its
# last stdout line the exit status, the process's peak RSS (MB) and which of the heavy modules it imported.
_MEASURED_CHILD = """
import json, runpy, sys
from pathlib import Path

def peak_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))

script, args, heavy = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
code = 0
if script == "-c":
    exec(args[0], {"__name__": "__main__"})
else:
    sys.argv = [script, *args]
    sys.path[0] = str(Path(script).parent)
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        code = e.code
sys.stdout.flush()
print(json.dumps({"code": code, "peak_mb": peak_mb(), "imported": [m for m in heavy if m in sys.modules]}))
"""


def bone_masks(size: int = 2048, classes: int = 29, seed: int = 0) -> np.ndarray:
    """``(classes, size, size)`` uint8 masks of rotated ellipses, sized like hand bones on a radiograph."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((classes, size, size), np.uint8)
    for c in range(classes):
        centre = (int(rng.uniform(0.2, 0.8) * size), int(rng.uniform(0.2, 0.8) * size))
        axes = (int(rng.uniform(0.02, 0.08) * size), int(rng.uniform(0.01, 0.03) * size))
        cv2.ellipse(masks[c], centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return masks


def best_time(fn: Callable[[], object], repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def rss_mb() -> float:
    """Peak resident memory of this process so far, MB (``VmHWM``: unlike ``getrusage``, it starts afresh at
    exec and does not inherit the parent's peak)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise OSError("no VmHWM in /proc/self/status (Linux only)")


def reset_peak_rss() -> bool:
    """Restart this process's ``VmHWM`` at its current RSS (``/proc/self/clear_refs``), so :func:`rss_mb` gives
    the peak of what runs next; False where the kernel refuses (the peak then covers the whole process)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def write_handbones(root: Path, n: int, size: int, labels: bool = True) -> None:
    """``n`` radiograph-like images (``size``²) in the boostcamp layout, two per patient, with their polygon JSONs."""
    from tasks.formats.handbones import CLASSES, mask_to_polygons, write_polygons

    for i in range(n):
        masks = bone_masks(size, seed=i)
        stem = f"image{i:013d}_{'LR'[i % 2]}"
        image_path = root / "DCM" / f"ID{i // 2:03d}" / f"{stem}.png"
        image_path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(image_path), (masks.max(0) * 180 + 30).astype(np.uint8))
        if labels:
            write_polygons(root / "outputs_json" / f"ID{i // 2:03d}" / f"{stem}.json",
                           {c: mask_to_polygons(m) for c, m in zip(CLASSES, masks)})


def alternate(paths: dict[str, Callable[..., object]], rounds: int,
              setups: dict[str, Callable[[], object]] | None = None) -> dict[str, list[float]]:
    """Seconds of each path in each of ``rounds`` rounds. Within a round every path runs once, in the given
    order on even rounds and reversed on odd ones, so a machine that speeds up or slows down (page cache,
    clock, a neighbour's job) weighs on every path alike; compare their medians. A path with a setup gets
    what its setup returns, made before its clock starts."""
    setups = setups or {}
    times: dict[str, list[float]] = {name: [] for name in paths}
    for r in range(rounds):
        order = list(paths) if r % 2 == 0 else list(reversed(paths))
        for name in order:
            args = (setups[name](),) if name in setups else ()
            t0 = time.perf_counter()
            paths[name](*args)
            times[name].append(time.perf_counter() - t0)
            del args
    return times


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(ts) for name, ts in times.items()}


def write_result(name: str, result: dict, path: str | None = None) -> Path:
    """``result`` and the command that made it as JSON in ``path`` (default ``benchmarks/results/<name>.json``)."""
    out = Path(path) if path else RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), **result},
                              indent=2) + "\n")
    return out


def run_child(cmd: list[str]) -> str:
    """stdout of a child process; one that fails ends this benchmark with its stderr, not a bare exit status."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark step failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-4000:]}")
    return proc.stdout


def run_measured(script: str, args: list[str]) -> dict:
    """``python <script> <args>`` in a fresh interpreter, from the repository root with this checkout first on the
    path, as a user's command: wall seconds of the whole process (start-up and imports included), its peak RSS
    (``peak_mb``: ``VmHWM``, read in the child just before it exits, not inherited from this process), which of
    :data:`HEAVY_MODULES` it imported, and its stdout. A child that fails ends the benchmark with its stderr."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _MEASURED_CHILD, script, json.dumps(args), json.dumps(HEAVY_MODULES)],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    lines = proc.stdout.strip().splitlines()
    report = json.loads(lines[-1]) if proc.returncode == 0 and lines else {"code": proc.returncode or "no report"}
    if report["code"] not in (0, None):
        raise SystemExit(f"benchmark step failed (exit {report['code']}): python {script} {' '.join(args)}\n"
                         f"{proc.stderr[-4000:]}")
    return {"seconds": seconds, "peak_mb": report["peak_mb"], "imported": report["imported"],
            "stdout": "\n".join(lines[:-1])}


def check_same(what: str, plain: object, ours: object) -> None:
    """End the benchmark when the harness's output is not the plain code's: a broken path fails loudly. Text (or
    bytes) that differs is named by its first differing line."""
    if plain == ours:
        return
    detail = ""
    if isinstance(plain, (bytes, str)) and isinstance(ours, (bytes, str)):
        a = plain.decode(errors="replace") if isinstance(plain, bytes) else plain
        b = ours.decode(errors="replace") if isinstance(ours, bytes) else ours
        a_lines, b_lines = a.splitlines(), b.splitlines()
        line = next((i for i, (x, y) in enumerate(zip(a_lines, b_lines)) if x != y), min(len(a_lines), len(b_lines)))
        first = (a_lines[line:line + 1] or ["<end>"])[0]
        second = (b_lines[line:line + 1] or ["<end>"])[0]
        detail = f"; first at line {line + 1}: plain {first[:120]!r}, harness {second[:120]!r}"
    raise SystemExit(f"{what}: the harness's output differs from the plain code's{detail}")
