"""Helpers shared by the benchmarks: bone-like masks and a timer that reports the best of N runs."""
from __future__ import annotations

import time
from typing import Callable

import cv2
import numpy as np


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
