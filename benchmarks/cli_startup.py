#!/usr/bin/env python
"""Startup time and peak memory of the CSV-only commands against ``python -c "import torch"``.

  python benchmarks/cli_startup.py               # best of 5 runs each
  python benchmarks/cli_startup.py --repeat 10

``tools/score.py``, ``tools/validate_submission.py`` and ``tools/leaderboard.py`` read CSVs and JSON
only; they must start in a fraction of what importing torch costs. Each command runs in a fresh
interpreter (``--help``, then a real run on tiny inputs: a bone-age answers CSV, two 64 px test images
with an empty segmentation submission, a folder of fake run summaries); the time is the wall clock of
the whole process (best of ``--repeat``), the memory its peak RSS (``VmHWM``, read in the child just
before it exits). The ratio column is the command's time over the baseline's.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import run_measured

ROOT = Path(__file__).resolve().parents[1]


def measure(script: str, args: list[str], repeat: int) -> tuple[float, float]:
    """Best wall-clock seconds and peak RSS (MB) of ``python <script> <args>`` in fresh interpreters."""
    runs = [run_measured(script, args) for _ in range(repeat)]
    return min(r["seconds"] for r in runs), max(r["peak_mb"] for r in runs)


def make_inputs(tmp: Path) -> dict[str, list[str]]:
    """Tiny real inputs for each command; returns the arguments of its real run."""
    import numpy as np

    from tasks.formats.handbones import CLASSES
    from tasks.formats.images import write_png
    from leaderboard.fake import make_fake_runs

    answers, sub = tmp / "answers.csv", tmp / "boneage.csv"
    answers.write_text("id,boneage,male\n" + "".join(f"{i},{60 + i},{i % 2 == 0}\n" for i in range(20)))
    sub.write_text("id,boneage\n" + "".join(f"{i},{62 + i}\n" for i in range(20)))
    images = tmp / "test"
    rows = ["image_name,class,rle"]
    for patient in ("ID001", "ID002"):
        name = f"image{patient[2:]:0>13}.png"
        write_png(images / "DCM" / patient / name, np.zeros((64, 64), np.uint8))
        rows += [f"{name},{c}," for c in CLASSES]
    seg = tmp / "seg.csv"
    seg.write_text("\n".join(rows) + "\n")
    make_fake_runs(tmp / "runs", seed=0, n_folds=1)
    return {
        "score.py": [str(sub), "--gt", str(answers), "--quiet"],
        "validate_submission.py": [str(seg), "--images", str(images)],
        "leaderboard.py": [str(tmp / "runs"), "--quiet", "--csv", str(tmp / "lb.csv")],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="runs per command; the best time is kept")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        real_runs = make_inputs(Path(tmp))
        base_t, base_mb = measure("-c", ["import torch"], args.repeat)
        floor_t, floor_mb = measure("-c", ["pass"], args.repeat)
        print(f"{'command':<46} {'time s':>7} {'peak MB':>8} {'time / torch':>12}")
        print(f"{'python -c pass (interpreter)':<46} {floor_t:7.2f} {floor_mb:8.0f} {floor_t / base_t:12.2f}")
        baseline = 'python -c "import torch" (baseline)'
        print(f"{baseline:<46} {base_t:7.2f} {base_mb:8.0f} {1.0:12.2f}")
        for name, real_args in real_runs.items():
            script = str(ROOT / "tools" / name)
            for label, cmd_args in (("--help", ["--help"]), ("real run", real_args)):
                t, mb = measure(script, cmd_args, args.repeat)
                print(f"{f'tools/{name} {label}':<46} {t:7.2f} {mb:8.0f} {t / base_t:12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
