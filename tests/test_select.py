"""Ensemble selection (Caruana) on constructed predictions, the fold launcher, and select -> YAML -> inference."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ensembles.select import dice_score, greedy_select, score_weights

ROOT = Path(__file__).resolve().parents[1]


def _biased_members(n: int = 30, seed: int = 0):
    """Targets ``y`` and three members ``y + bias`` with biases +1, -2, +5: the fused error is the weighted bias,
    so the best mix is A twice and B once (2/3 - 2/3 = 0); C only hurts."""
    rng = np.random.default_rng(seed)
    y = rng.normal(100, 20, n)
    preds = np.stack([y + 1, y - 2, y + 5])
    groups = [f"ID{i // 2:03d}" for i in range(n)]
    return y, preds, groups


def _mae(fused: np.ndarray, target: np.ndarray) -> np.ndarray:
    return np.abs(fused - target)  # (G, n): one error per sample


def test_selection_with_replacement_finds_the_known_mix():
    y, preds, groups = _biased_members()
    passes = []

    def items():
        passes.append(1)
        return iter([(preds, y)])  # one batch item: all samples at once

    sel = greedy_select(items, 3, _mae, groups, mode="min", folds=3)
    assert [h["member"] for h in sel.history] == [0, 1, 0]  # A, then B, then A again (replacement)
    assert sel.counts.tolist() == [2, 1, 0]
    np.testing.assert_allclose(sel.weights, [2 / 3, 1 / 3, 0])
    assert sel.score == pytest.approx(0.0, abs=1e-4)
    assert sel.stopped == "no improvement"
    np.testing.assert_allclose(sel.singles, [1, 2, 5], atol=1e-4)
    assert sel.best_single == 0 and sel.average == pytest.approx(4 / 3, abs=1e-4)
    # the held-out estimate: every fold's selection finds the same mix, so it generalises exactly
    assert sel.cross_fitted["selection"] == pytest.approx(0.0, abs=1e-4)
    assert sel.cross_fitted["best_single"] == pytest.approx(1.0, abs=1e-4)
    assert all(c == [2, 1, 0] for c in sel.fold_counts) and len(sel.fold_counts) == 3
    assert len(passes) == 4  # three additions and the pass that found no improvement


def test_selection_stops_after_max_steps_and_sorted_init():
    y, preds, groups = _biased_members()
    sel = greedy_select(lambda: iter([(preds, y)]), 3, _mae, groups, mode="min", max_steps=2, folds=0)
    assert sel.counts.tolist() == [1, 1, 0] and sel.stopped == "max steps"
    assert sel.score == pytest.approx(0.5, abs=1e-4) and sel.cross_fitted is None
    # sorted initialisation with the 2 best: A + B at once, then A is added
    init = greedy_select(lambda: iter([(preds, y)]), 3, _mae, groups, mode="min", init=2, folds=0)
    assert init.counts.tolist() == [2, 1, 0] and init.history[0]["score"] is None


def test_patience_reaches_mixes_a_plain_greedy_stop_misses():
    """Biases +1 and -3: A alone errs 1, A+B (1:1) errs 1 too, so the plain greedy stops at A; one more
    step (a second A, no better) opens 2:1 (1/3) and 3:1 (exact), which the path returns."""
    rng = np.random.default_rng(2)
    y = rng.normal(100, 20, 40)
    preds = np.stack([y + 1, y - 3])
    groups = [f"ID{i // 2:03d}" for i in range(40)]
    plain = greedy_select(lambda: iter([(preds, y)]), 2, _mae, groups, mode="min", folds=0)
    assert plain.counts.tolist() == [1, 0] and plain.score == pytest.approx(1.0)
    sel = greedy_select(lambda: iter([(preds, y)]), 2, _mae, groups, mode="min", folds=2, patience=1)
    assert sel.counts.tolist() == [3, 1] and sel.score == pytest.approx(0.0, abs=1e-4)
    assert [h["member"] for h in sel.history] == [0, 0, 1, 0] and sel.stopped == "no improvement"
    assert sel.cross_fitted["selection"] == pytest.approx(0.0, abs=1e-4)
    assert all(c == [3, 1] for c in sel.fold_counts)
    # a path that never improves past its best returns the best prefix, not its last state
    capped = greedy_select(lambda: iter([(preds, y)]), 2, _mae, groups, mode="min", folds=0, patience=1, max_steps=2)
    assert capped.counts.tolist() == [1, 0] and capped.stopped == "max steps" and len(capped.history) == 1


def test_streamed_scores_equal_direct_computation():
    rng = np.random.default_rng(1)
    per_item = [(rng.random((3, 2, 50)).astype(np.float32), rng.random((2, 50)) < 0.4) for _ in range(6)]
    weights = np.array([[1, 0, 0], [1, 1, 0], [2, 1, 1]])
    fold_of = np.array([0, 1, 0, 1, 0, 1])
    score = dice_score(np.full(2, 0.5))
    sums, counts = score_weights(iter(per_item), weights, score, fold_of, 2, chunk_elements=100)  # chunked
    assert counts.tolist() == [3, 3]
    for u, w in enumerate(weights):
        for f in range(2):
            expected = 0.0
            for k, (maps, gt) in enumerate(per_item):
                if fold_of[k] != f:
                    continue
                pred = np.tensordot(w / w.sum(), maps, 1) > 0.5
                inter, total = (pred & gt).sum(1), pred.sum(1) + gt.sum(1)
                expected += np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0).mean()
            assert sums[u, f] == pytest.approx(expected, abs=1e-9)


def test_segmentation_score_picks_complementary_experts():
    """Member 0 sees class 0, member 1 class 1, member 2 is noise; each expert alone misses a class."""
    rng = np.random.default_rng(0)
    items, groups = [], []
    for i in range(8):
        gt = rng.random((2, 400)) < 0.3
        expert0 = np.stack([gt[0] * 0.9 + 0.05, np.zeros(400)])
        expert1 = np.stack([np.zeros(400), gt[1] * 0.9 + 0.05])
        items.append((np.stack([expert0, expert1, rng.random((2, 400)) * 0.6]).astype(np.float32), gt))
        groups.append(f"ID{i}")
    sel = greedy_select(lambda: iter(items), 3, dice_score(np.full(2, 0.4)), groups, folds=2)
    # fused 0.5 * 0.95 = 0.475 > 0.4 on each class's foreground: the two experts together are perfect
    assert sel.counts.tolist() == [1, 1, 0] and sel.score == pytest.approx(1.0)
    assert sel.score > sel.singles.max() and sel.score > sel.average
    assert sel.cross_fitted["selection"] == pytest.approx(1.0)


def test_bad_selection_arguments_are_named():
    y, preds, groups = _biased_members()
    with pytest.raises(ValueError, match="mode"):
        greedy_select(lambda: iter([(preds, y)]), 3, _mae, groups, mode="best")
    with pytest.raises(ValueError, match="30 given folds"):
        greedy_select(lambda: iter([(preds, y), (preds, y)]), 3, _mae, groups, mode="min")


# ---------------------------------------------------------------- fold launcher and select -> YAML -> inference

def _config(tmp: Path, phantom: Path, name: str, model: str, lr: float) -> Path:
    import yaml

    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "task": "segmentation", "name": name,
        "data": {"root": str(phantom / "handbones" / "train"), "test_root": str(phantom / "handbones" / "test"),
                 "image_size": 64, "n_folds": 2, "cache_dir": str(tmp / "cache")},
        "model": {"name": model},
        "train": {"epochs": 1, "batch_size": 4, "max_steps_per_epoch": 2, "lr": lr},
        "logging": {"out_dir": str(tmp / "runs"), "progress": False}}))
    return path


@pytest.fixture(scope="module")
def fold_library(phantom, tmp_path_factory):
    """Two configurations, each trained on both folds by ``train.py --folds all``: (runs dir, configs, output)."""
    import contextlib
    import io

    import train

    tmp = tmp_path_factory.mktemp("folds")
    configs = [_config(tmp, phantom, "fpn", "smp:fpn/tu-resnet10t", 3e-3),
               _config(tmp, phantom, "unet", "smp:unet/tu-resnet10t", 1e-3)]
    outputs = []
    for cfg in configs:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert train.main(["-c", str(cfg), "--folds", "all"]) == 0
        outputs.append(out.getvalue())
    return tmp / "runs" / "segmentation", configs, outputs


@pytest.mark.slow
def test_fold_launcher_trains_every_fold_with_out_of_fold_caches(fold_library, capsys):
    import train
    from engine.config import load_config
    from tasks.segmentation.samples import split_samples

    runs, configs, outputs = fold_library
    names = set()
    for fold in (0, 1):
        run = runs / f"fpn-f{fold}"
        summary = json.loads((run / "summary.json").read_text())
        assert summary["fold"] == fold and summary["val"]["score"] is not None
        cfg = load_config(run / "config.yaml")
        expected = {s.name for s in split_samples(cfg.data, "val")}
        assert {p.name[:-4] for p in (run / "preds/val").glob("*.npz")} == expected
        assert summary["oof"]["images"] == len(expected) and (run / "preds/val.csv").is_file()
        names |= expected
    assert len(names) == 24  # the two validation folds cover the whole training set
    assert "fpn-f0" in outputs[0] and "fpn-f1" in outputs[0]
    assert "cross-validated val/dice over folds 0,1:" in outputs[0] and "±" in outputs[0]
    # a second launch is refused (finished runs) before anything is touched ...
    before = (runs / "fpn-f0" / "best.pt").stat().st_mtime_ns
    assert train.main(["-c", str(configs[0]), "--folds", "all"]) == 2
    assert "fpn-f0: holds a finished run" in capsys.readouterr().err
    # ... and with --resume both finished folds are skipped, their caches kept
    assert train.main(["-c", str(configs[0]), "--folds", "0,1", "--resume"]) == 0
    out = capsys.readouterr().out
    assert out.count("is finished, skipped") == 2 and "cross-validated" in out
    assert (runs / "fpn-f0" / "best.pt").stat().st_mtime_ns == before
    for bad, message in ((["--folds", "2"], "fold 2 out of range"), (["--folds", "all", "--data.fold=1"], "not both")):
        assert train.main(["-c", str(configs[0]), *bad]) == 2
        assert message in capsys.readouterr().err


@pytest.mark.slow
def test_select_writes_a_yaml_that_inference_runs(fold_library, phantom, tmp_path, capsys):
    import inference
    from tasks.submission import iter_images
    from tools import fit_ensemble

    runs, _, _ = fold_library
    assert fit_ensemble.main(["--select", str(runs), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "candidates (2): fpn (folds 0,1), unet (folds 0,1)" in out and "validation images: 24" in out
    record = json.loads((runs / "selected" / "selection.json").read_text())
    assert set(record["weights"]) <= {"fpn", "unet"} and sum(record["weights"].values()) == pytest.approx(1.0)
    assert record["history"][0]["member"] == record["best_single"]  # the first step adds the best single run
    assert record["val"]["in_sample"] >= max(record["singles"].values()) - 1e-9
    assert record["cross_fitted"] is not None
    from ensembles.config import load_ensemble_config

    ens = load_ensemble_config(runs / "selected" / "selection.yaml")
    assert ens.method == "weighted" and ens.labels == list(record["weights"])
    assert all(len(m.run_dirs) == 2 for m in ens.members)  # each member: the mean of its two fold models
    csv = tmp_path / "selected.csv"
    assert inference.main(["--ensemble", str(runs / "selected" / "selection.yaml"), "-o", str(csv)]) == 0
    rows = dict(iter_images(csv))
    assert len(rows) == 8 and all(len(r) == 29 for r in rows.values())
    # the ensemble folder itself is not a candidate of a second selection; --threshold reaches score and YAML
    assert fit_ensemble.main(["--select", str(runs), "--quiet", "--name", "again", "--threshold", "0.3"]) == 0
    assert "candidates (2)" in capsys.readouterr().out
    again = json.loads((runs / "again" / "selection.json").read_text())
    assert again["threshold"] == 0.3 and load_ensemble_config(runs / "again" / "selection.yaml").thresholds == 0.3
