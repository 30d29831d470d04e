"""Realistic fake run folders (summary.json + metrics.jsonl) and a fake Optuna study.

For the report's screenshot, its browser test and demos without a GPU: the numbers look like real
hand-radiograph runs (Dice ~0.93-0.96, MRE a few px, MAE ~6-9 months) but nothing was trained.

    python -m leaderboard.fake runs_fake/   # then: python tools/leaderboard.py runs_fake/ --html r.html
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

SEG_CLASSES = [f"finger-{i}" for i in range(1, 20)] + [
    "Trapezium", "Trapezoid", "Capitate", "Hamate", "Scaphoid", "Lunate", "Triquetrum", "Pisiform",
    "Radius", "Ulna"]
SHS_LANDMARKS = ["IP", "PIP2", "PIP3", "PIP4", "PIP5", "MP", "MCP2", "MCP3", "MCP4", "MCP5",
                 "W1", "W2", "W3", "W4", "W5"]
AGE_BANDS = ["0-5 y", "5-10 y", "10-13 y", "13-16 y", "16-19 y"]

# (config_id, model, params, image_size, epochs, base score, train s/epoch, inference img/s)
SEG_CONFIGS = [
    ("unet_r34", "smp:unet/resnet34", 24_436_369, 512, 40, 0.9512, 41.0, 38.0),
    ("unetpp_effb0", "smp:unetplusplus/tu-efficientnet_b0", 6_571_213, 512, 40, 0.9558, 55.0, 29.0),
    ("dlv3p_convnext_nano", "smp:deeplabv3plus/tu-convnext_nano", 15_618_941, 512, 40, 0.9476, 47.0, 44.0),
    ("fpn_r18", "smp:fpn/resnet18", 13_045_981, 512, 30, 0.9391, 28.0, 71.0),
    ("yolov8n_seg", "yolo:yolov8n-seg", 3_264_006, 640, 60, 0.9204, 22.0, 118.0),
]
KP_CONFIGS = [
    ("hm_unet_r34", "smp:unet/resnet34", 24_436_369, 512, 60, 4.12, 12.0, 52.0),
    ("hm_fpn_convnext_nano", "smp:fpn/tu-convnext_nano", 15_301_007, 512, 60, 3.71, 14.0, 61.0),
    ("hm_unet_effb0", "smp:unet/tu-efficientnet_b0", 6_252_765, 384, 60, 4.85, 8.0, 97.0),
]
BA_CONFIGS = [
    ("reg_resnet50", "timm:resnet50", 23_510_081, 384, 30, 7.41, 95.0, 210.0),
    ("reg_effb0", "timm:efficientnet_b0", 4_008_829, 384, 30, 7.93, 60.0, 330.0),
    ("reg_convnext_nano", "timm:convnext_nano", 14_960_161, 384, 30, 6.88, 88.0, 240.0),
]
TASKS = {
    "segmentation": ("dice", "max", SEG_CLASSES, SEG_CONFIGS),
    "keypoints": ("mre_px", "min", SHS_LANDMARKS, KP_CONFIGS),
    "boneage": ("mae_months", "min", AGE_BANDS, BA_CONFIGS),
}


def _split_model(model: str):
    family, _, rest = model.partition(":")
    arch, _, encoder = rest.partition("/")
    if not encoder and family in ("timm",):
        arch, encoder = "regressor", arch
    return family, arch, encoder or None


def _class_difficulty(items: list[str], rng) -> np.ndarray:
    """Segmentation: the wrist bones (small, overlapping) are the hard classes."""
    base = np.array([0.012 if not it.startswith("finger") else 0.0 for it in items])
    base += np.array([0.03 if it in ("Trapezoid", "Pisiform", "Triquetrum") else 0.0 for it in items])
    base += np.array([0.01 if it in ("finger-1", "finger-4", "finger-8", "finger-12", "finger-16") else 0.0
                      for it in items])
    return base + rng.normal(0, 0.003, len(items))


# How hard each item of a task is in the fake runs (per-item scores spread around the run's score by this).
DIFFICULTY = {
    "segmentation": _class_difficulty,
    "keypoints": lambda items, rng: np.array([1.35 if it.startswith("W") else 0.95 if it.startswith("MCP") else 0.8
                                              for it in items]),
    "boneage": lambda items, rng: np.array([0.7, 1.0, 1.05, 1.15, 0.9]),
}


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))


def _metrics(path: Path, epochs: int, final: float, mode: str, sec_per_epoch: float, rng) -> None:
    lines = []
    speed, floor = rng.uniform(3.5, 5.5), rng.uniform(0.04, 0.12)  # every run its own loss curve
    for e in range(epochs):
        p = (e + 1) / epochs
        if mode == "max":
            score = final - (final - 0.35) * math.exp(-6 * p) + rng.normal(0, 0.002)
        else:
            score = final * (1 + 5.0 * math.exp(-5 * p)) + rng.normal(0, final * 0.01)
        loss = floor + 0.9 * math.exp(-speed * p) + rng.normal(0, 0.004)
        lines.append(json.dumps({"epoch": e, "train/loss": round(loss, 5),
                                 "val/loss": round(loss * 1.15 + 0.01, 5), "val/score": round(score, 5),
                                 "lr": 3e-4 * 0.5 * (1 + math.cos(math.pi * p)),
                                 "time_s": round(sec_per_epoch * (1 + rng.normal(0, 0.02)), 2)}))
    path.write_text("\n".join(lines) + "\n")


def make_fake_runs(root: str | Path, seed: int = 0, n_folds: int = 2, tasks=("segmentation", "keypoints", "boneage"),
                   n_train_images: int = 640) -> list[Path]:
    """Write fake runs (each config over ``n_folds`` folds), one soft ensemble per task with test
    scores, and return the run folders."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    made = []
    for task in tasks:
        metric, mode, items, configs = TASKS[task]
        diff = DIFFICULTY[task](items, rng)
        best_runs = []
        for ci, (cid, model, params, size, epochs, base, sec_ep, ips) in enumerate(configs):
            family, arch, encoder = _split_model(model)
            fold_runs = []
            for fold in range(n_folds):
                name = f"{cid}-f{fold}"
                d = root / task / name
                noise = rng.normal(0, 0.003 if mode == "max" else base * 0.03)
                score = base + noise
                if mode == "max":
                    per = np.clip(score + (diff.mean() - diff) + rng.normal(0, 0.004, len(items)), 0, 1)
                    test = score - abs(rng.normal(0.004, 0.002))
                else:
                    per = np.clip(score * diff / diff.mean() * (1 + rng.normal(0, 0.05, len(items))), 0, None)
                    test = score * (1 + abs(rng.normal(0.03, 0.015)))
                pub_shift = rng.normal(0, 0.004 if mode == "max" else test * 0.02)
                has_test = fold == 0
                summary = {
                    "name": name, "task": task, "kind": "run", "model": model, "family": family, "arch": arch,
                    "encoder": encoder, "config_id": cid, "image_size": size, "fold": fold, "n_folds": 5,
                    "epochs": epochs, "params": params, "train_time_s": round(sec_ep * epochs * (1 + rng.normal(0, 0.03)), 1),
                    "train_images_per_s": round(n_train_images / sec_ep, 1), "metric": metric, "mode": mode,
                    "best_epoch": int(epochs - 1 - rng.integers(0, 5)),
                    "val": {"score": round(float(score), 5),
                            "per_item": {k: round(float(v), 5) for k, v in zip(items, per)}},
                    "test": ({"score": round(float(test), 5), "public": round(float(test + pub_shift), 5),
                              "private": round(float(test - pub_shift), 5), "per_item": None} if has_test else None),
                    "speed": {"images_per_s": round(ips * (1 + rng.normal(0, 0.03)), 1),
                              "images_per_s_tta": round(ips / 2.1 * (1 + rng.normal(0, 0.03)), 1)},
                    "members": None, "git_commit": "3f9c2a1", "created": f"2026-11-2{ci % 6}T1{fold}:00:00Z",
                }
                _write(d / "summary.json", summary)
                _metrics(d / "metrics.jsonl", epochs, float(score), mode, sec_ep, rng)
                made.append(d)
                fold_runs.append(summary)
            best_runs.append(fold_runs[0])
        # a soft ensemble of the three best fold-0 runs: a bit better than any of them, slower
        better = (lambda s: -s["val"]["score"]) if mode == "max" else (lambda s: s["val"]["score"])
        members = sorted(best_runs, key=better)[:3]
        vals = np.array([[m["val"]["per_item"][k] for k in items] for m in members])
        per = vals.max(0) if mode == "max" else vals.min(0)
        pick = max if mode == "max" else min

        def ensembled(values):  # a little better than the best member
            best = pick(values)
            return best + 0.003 if mode == "max" else best * 0.95

        score = ensembled([m["val"]["score"] for m in members])
        test = ensembled([m["test"]["score"] for m in members])
        pub_shift = rng.normal(0, 0.003 if mode == "max" else test * 0.015)
        ips = 1.0 / sum(1.0 / m["speed"]["images_per_s"] for m in members)
        name = f"ens-soft-{task[:3]}"
        _write(root / task / name / "summary.json", {
            "name": name, "task": task, "kind": "ensemble", "model": "soft-mean", "family": None, "arch": None,
            "encoder": None, "config_id": None, "image_size": members[0]["image_size"], "fold": 0, "n_folds": 5,
            "epochs": None, "params": int(sum(m["params"] for m in members)), "train_time_s": None,
            "train_images_per_s": None, "metric": metric, "mode": mode, "best_epoch": None,
            "val": {"score": round(score, 5), "per_item": {k: round(float(v), 5) for k, v in zip(items, per)}},
            "test": {"score": round(test, 5), "public": round(test + pub_shift, 5), "private": round(test - pub_shift, 5),
                     "per_item": None},
            "speed": {"images_per_s": round(ips, 1), "images_per_s_tta": round(ips / 2.1, 1)},
            "members": [f"runs/{task}/{m['name']}" for m in members], "git_commit": "3f9c2a1",
            "created": "2026-11-26T12:00:00Z",
        })
        made.append(root / task / name)
    return made


def make_fake_study(storage: str, name: str = "seg-sweep", n_trials: int = 30, seed: int = 0):
    """An Optuna study with complete, pruned and failed trials (added directly, nothing is trained)."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rng = np.random.default_rng(seed)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)
    dists = {"lr": FloatDistribution(1e-5, 1e-2, log=True), "batch_size": IntDistribution(4, 32, step=4),
             "encoder": CategoricalDistribution(["resnet34", "tu-efficientnet_b0", "tu-convnext_nano"])}
    for i in range(n_trials):
        params = {"lr": float(10 ** rng.uniform(-5, -2)), "batch_size": int(rng.choice([4, 8, 16, 32])),
                  "encoder": str(rng.choice(["resnet34", "tu-efficientnet_b0", "tu-convnext_nano"]))}
        quality = 0.955 - 0.02 * (math.log10(params["lr"]) + 3.5) ** 2 + rng.normal(0, 0.004) + min(i, 20) * 0.0004
        r = rng.random()
        if r < 0.1:
            t = create_trial(params=params, distributions=dists, state=TrialState.FAIL)
        elif r < 0.3:
            t = create_trial(params=params, distributions=dists, state=TrialState.PRUNED,
                             intermediate_values={0: quality - 0.05})
        else:
            t = create_trial(params=params, distributions=dists, value=quality)
        study.add_trial(t)
    return study


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs_fake")
    print("\n".join(str(p) for p in make_fake_runs(out)))
