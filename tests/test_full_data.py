"""The final model on all data (``data.fold: all``): every image trains for exactly ``train.epochs`` epochs, best.pt
is the last epoch, the test set is predicted, scored and ranked, and whatever needs validation predictions refuses
it in one line or leaves it out with a note; the epoch count from the folds' best epochs."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import inference
from engine.config import ConfigError, build_config, load_config, parse_overrides, save_config
from engine.folds import full_data_epochs, full_data_overrides
from engine.trainer import LAST_EPOCH_RULE, train
from ensembles.config import EnsembleConfig
from tasks.segmentation.task import SegmentationTask
from tools import score

EPOCHS = 2


def all_data_config(phantom: Path, out: Path, **extra):
    raw = {
        "task": "segmentation", "name": "final",
        "data": {"root": str(phantom / "handbones" / "train"), "test_root": str(phantom / "handbones" / "test"),
                 "image_size": 64, "n_folds": 3, "fold": "all", "cache_dir": str(out / "cache")},
        "model": {"name": "smp:fpn/tu-test_resnet"},
        "train": {"epochs": EPOCHS, "batch_size": 8, "lr": 3e-3},
        "logging": {"out_dir": str(out / "runs"), "progress": False},
    }
    for section, values in extra.items():
        raw[section] = {**raw.get(section, {}), **values}
    return load_config(None, raw)


@pytest.fixture(scope="module")
def all_data_run(phantom, tmp_path_factory):
    """The run on all data, with the image indices each epoch's training steps saw."""
    out = tmp_path_factory.mktemp("fall")
    cfg = all_data_config(phantom, out)
    seen: list[list[int]] = [[]]
    forward = SegmentationTask.forward

    def counting(self, model, batch):
        seen[-1].extend(batch["index"].tolist())
        return forward(self, model, batch)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SegmentationTask, "forward", counting)
        summary = train(cfg, callbacks=[lambda epoch, row: seen.append([])])
    return cfg, summary, seen[:-1]


def test_trains_every_image_for_exactly_the_epochs_and_keeps_the_last(all_data_run, phantom):
    cfg, summary, seen = all_data_run
    n_images = len(list((phantom / "handbones" / "train" / "DCM").rglob("*.png")))
    assert cfg.run_dir.name == "final-fall" and cfg.config_id == "final-fall"
    assert len(seen) == EPOCHS and all(sorted(epoch) == list(range(n_images)) for epoch in seen)
    rows = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(EPOCHS)) and not any(k.startswith("val/") for r in rows for k in r)
    assert summary["fold"] == "all" and summary["selected_by"] == LAST_EPOCH_RULE
    assert summary["best_epoch"] == EPOCHS - 1 and summary["val"] == {"score": None}
    assert summary["train_images"] == n_images and summary["train_images_per_s"] > 0 and summary["epochs"] == EPOCHS
    best = torch.load(cfg.run_dir / "best.pt", weights_only=True)
    last = torch.load(cfg.run_dir / "last.pt", weights_only=True)
    assert best["epoch"] == last["epoch"] == EPOCHS - 1
    assert best["model"].keys() == last["model"].keys()
    assert all(torch.equal(best["model"][k], last["model"][k]) for k in best["model"])


def test_predicts_scores_and_ranks_the_test_set_and_refuses_the_val_split(all_data_run, phantom, tmp_path, capsys):
    from leaderboard import table

    cfg, _, _ = all_data_run
    out = tmp_path / "final.csv"
    assert inference.main(["--ckpt", str(cfg.run_dir / "best.pt"), "-o", str(out), "--save-probs"]) == 0
    n_test = len(list((phantom / "handbones" / "test" / "DCM").rglob("*.png")))
    assert len(out.read_text().splitlines()) == 1 + 29 * n_test
    assert score.main([str(out), "--gt", str(phantom / "handbones" / "test_gt"), "--run", str(cfg.run_dir),
                       "--quiet"]) == 0
    capsys.readouterr()
    assert inference.main(["--ckpt", str(cfg.run_dir / "best.pt"), "--split", "val", "-o", str(tmp_path / "v.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "data.fold=all" in err[0] and "no validation" in err[0]
    assert not (tmp_path / "v.csv").exists()
    df = table.load_runs(cfg.run_dir.parent)
    row = df[df["name"] == "final-fall"].iloc[0]
    assert row["fold"] == "all" and math.isnan(row["val_score"]) and 0 <= row["test_score"] <= 1
    assert row["rank"] == 1
    headers, _, rows = table.cells(df, table.leaderboard_columns(df))
    shown = dict(zip(headers, rows[0]))
    assert shown["fold"] == "all" and shown["val dice"] == "—"
    cv = table.group_folds(df)
    assert cv.iloc[0]["folds"] == "all" and math.isnan(cv.iloc[0]["val_mean"])
    assert list(table.rank_runs(df, "fold")["fold"]) == ["all"]
    table.write_csv(df, tmp_path / "board.csv")
    assert ",all," in (tmp_path / "board.csv").read_text()


def test_the_test_ensemble_takes_it_from_its_cache(all_data_run, tmp_path):
    from ensembles.api import predict_ensemble

    cfg, _, _ = all_data_run
    if not (cfg.run_dir / "preds" / "test").is_dir():  # written by the test above when it ran first
        from engine.predictor import predict_run

        predict_run(cfg, cfg.run_dir / "best.pt", out_csv=tmp_path / "m.csv", save_probs_dir="auto", progress=False)
    ens = EnsembleConfig.model_validate({"task": "segmentation", "method": "soft", "name": "with-final",
                                         "out_dir": str(tmp_path / "out"), "members": [{"run": str(cfg.run_dir)}]})
    stats = predict_ensemble(ens, out_csv=tmp_path / "ens.csv", from_cache=True, progress=False)
    assert stats["images"] == len(list((cfg.run_dir / "preds" / "test").glob("*.npz"))) > 0


def _cached_runs(tmp_path: Path, folds: list) -> list[Path]:
    """Finished fold runs of a two-patient phantom with out-of-fold caches (a run on all data has none)."""
    from tasks.formats.handbones import list_samples, read_masks, split_folds, write_polygons
    from tasks.formats.images import write_png
    from tasks.segmentation.cache import save_probs

    root = tmp_path / "train"
    for i in range(4):
        name = f"image{i:013d}"
        write_png(root / "DCM" / f"ID{i:03d}" / f"{name}.png", np.zeros((16, 16), np.uint8))
        write_polygons(root / "outputs_json" / f"ID{i:03d}" / f"{name}.json",
                       {"Radius": [np.array([[2 + i, 3], [8 + i, 3], [8 + i, 9], [2 + i, 9]], float)]})
    samples = list_samples(root)
    runs = []
    for fold in folds:
        run = tmp_path / "runs" / "segmentation" / f"cfg-f{fold}"
        cfg = build_config({"task": "segmentation", "name": "cfg", "data": {"root": str(root), "test_root": None,
                                                                          "image_size": 16, "n_folds": 2, "fold": fold}})
        save_config(cfg, run / "config.yaml")
        (run / "best.pt").write_bytes(b"")
        (run / "summary.json").write_text(json.dumps({"kind": "run", "fold": fold}))
        if fold != "all":
            for k in split_folds(samples, 2, fold)[1]:
                gt = read_masks(samples[k].label_path, 16, 16).astype(np.float32)
                save_probs(run / "preds" / "val" / f"{samples[k].name}.npz", gt * 0.9, (16, 16))
        runs.append(run)
    return runs


def test_fitting_uses_the_fold_runs_beside_it_and_refuses_it_alone(tmp_path):
    from ensembles.fit import fit_ensemble

    runs = _cached_runs(tmp_path, [0, 1, "all"])

    def ensemble(name, members):
        return EnsembleConfig.model_validate({
            "task": "segmentation", "method": "weighted", "name": name, "thresholds": "fit", "weights": [1.0],
            "out_dir": str(tmp_path / "out"), "fit": {"folds": 2}, "members": members})

    with_folds = fit_ensemble(ensemble("a", [{"runs": [str(r) for r in runs]}]), progress=False)
    without = fit_ensemble(ensemble("b", [{"runs": [str(r) for r in runs[:2]]}]), progress=False)
    assert with_folds["images"] == without["images"] == 4 and with_folds["thresholds"] == without["thresholds"]
    with pytest.raises(ConfigError, match=r"member final: .*cfg-fall trained on every image \(data.fold=all\).*test set"):
        fit_ensemble(ensemble("c", [{"name": "final", "run": str(runs[2])}]), progress=False)


def test_values_ensembles_refuse_a_member_on_all_data_for_validation(tmp_path):
    from ensembles.members import Member
    from ensembles.values import run_predictions

    cfg = build_config({"task": "boneage", "data": {"root": str(tmp_path), "fold": "all"}})
    ens = EnsembleConfig.model_validate({"task": "boneage", "method": "mean", "members": [{"run": str(tmp_path / "r")}]})
    member = Member("final", [tmp_path / "r-fall"], [cfg], "best.pt")
    with pytest.raises(ConfigError, match="member final: .* trained on every image"):
        run_predictions(ens, [member], "val", from_cache=True, tta=False, device="cpu")


def test_selection_leaves_it_out_with_a_note(tmp_path):
    from ensembles.select import find_candidates

    _cached_runs(tmp_path, [0, 1, "all"])
    task, candidates, notes = find_candidates(tmp_path / "runs" / "segmentation")
    assert task == "segmentation" and [c.label for c in candidates] == ["cfg"] and candidates[0].folds == [0, 1]
    assert any(n.startswith("cfg-fall: trained on every image") and "out-of-fold" in n for n in notes)


def test_full_data_epochs_is_the_rounded_mean_of_the_epochs_to_the_best_checkpoint():
    # best epochs 3, 6, 4 (from 0) -> 4, 7, 5 epochs trained to them -> mean 5.33 -> 5
    assert full_data_epochs([{"best_epoch": 3, "fold": 0}, {"best_epoch": 6, "fold": 1}, {"best_epoch": 4}]) == 5
    # 4 and 5 epochs -> 4.5 rounds half up to 5 (Python's round would give 4)
    assert full_data_epochs([{"best_epoch": 3}, {"best_epoch": 4}]) == 5
    # a fold with no best epoch and an all-data run say nothing: left out
    assert full_data_epochs([{"best_epoch": None}, {"best_epoch": 9}, {"best_epoch": 0, "fold": "all"}]) == 10
    assert full_data_epochs([{"best_epoch": 0}]) == 1
    with pytest.raises(ValueError, match="none of the 2 fold summaries has a best epoch"):
        full_data_epochs([{"best_epoch": None}, {}])


def test_config_of_the_fold_all_run_and_its_refusals(tmp_path):
    base = {"task": "keypoints", "name": "k", "data": {"root": str(tmp_path), "fold": 1},
            "train": {"early_stop_patience": 3, "select_ema": 0.7}}
    cfg = load_config(None, base)
    assert cfg.run_name == "k-f1" and cfg.data.has_validation
    final = load_config(None, {**base, **{k: {**base.get(k, {}), **v} for k, v in full_data_overrides(7).items()}})
    assert final.run_name == "k-fall" and final.train.epochs == 7 and not final.data.has_validation
    assert final.train.early_stop_patience is None and final.train.select_ema is None
    for key, value in (("early_stop_patience", 3), ("select_ema", 0.7)):
        with pytest.raises(ConfigError, match=rf"train.{key}: needs validation scores, and data.fold=all"):
            load_config(None, {**base, "data": {"root": str(tmp_path), "fold": "all"}, "train": {key: value}})
    with pytest.raises(ConfigError, match=r"'data.fold': a fold number \(0..data.n_folds-1\) or 'all'"):
        load_config(None, {**base, "data": {"root": str(tmp_path), "fold": "al"}, "train": {}})
    assert parse_overrides(["--data.fold=all"]) == {"data": {"fold": "all"}}
    assert parse_overrides(["--data.fold", "2"]) == {"data": {"fold": 2}}


def test_leaderboard_sorts_and_groups_numbered_folds_beside_the_all_data_run(tmp_path):
    from engine.summary import base_summary, write_summary
    from leaderboard import table

    for fold, val, test in ((1, 0.6, 0.5), ("all", None, 0.55), (0, 0.5, 0.4)):
        name = f"cfg-f{fold}"
        write_summary(tmp_path / "segmentation" / name, base_summary(
            name=name, task="segmentation", metric="dice", mode="max", fold=fold, n_folds=2,
            config_id=name if fold == "all" else "cfg", val={"score": val}, test={"score": test}))
    df = table.load_runs(tmp_path)
    assert list(table.rank_runs(df, "fold")["fold"]) == [0, 1, "all"]
    assert list(df["name"]) == ["cfg-fall", "cfg-f1", "cfg-f0"] and list(df["rank"]) == [1, 2, 3]  # by test score
    cv = table.group_folds(df).set_index("config_id")
    assert cv.loc["cfg", "folds"] == "0,1" and cv.loc["cfg", "val_mean"] == pytest.approx(0.55)
    assert cv.loc["cfg-fall", "folds"] == "all" and math.isnan(cv.loc["cfg-fall", "val_mean"])
    rows = table.write_csv(df, tmp_path / "board.csv").read_text().splitlines()
    assert [r.split(",")[0:2] for r in rows[1:]] == [["segmentation", "cfg-fall"], ["segmentation", "cfg-f1"],
                                                   ["segmentation", "cfg-f0"]]
    header = rows[0].split(",")
    assert [r.split(",")[header.index("fold")] for r in rows[1:]] == ["all", "1", "0"]


@pytest.mark.parametrize("task, data", [
    ("segmentation", {"root": "handbones/train"}),
    ("keypoints", {"root": "joints", "landmarks": "dha37"}),
    ("boneage", {"root": "boneage"}),
    ("orientation", {"root": "orientation/train"}),
])
def test_every_task_trains_on_every_image_and_validates_on_none(phantom, task, data):
    root = str(phantom / data.pop("root"))
    folds = [load_config(None, {"task": task, "data": {"root": root, "n_folds": 3, "fold": f, **data}})
             for f in (0, 1, 2, "all")]
    tasks = [cfg.spec.task_class()(cfg) for cfg in folds]
    every = sorted(s.name for t in tasks[:3] for s in t.samples("val"))
    assert len(every) == len(set(every)) > 0  # the three folds' validation images: each image once
    assert sorted(s.name for s in tasks[3].samples("train")) == every and tasks[3].samples("val") == []
