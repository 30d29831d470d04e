"""Bone-age task: RSNA reading, bad input, metrics, submissions, the timm regressor, cache, end-to-end runs."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from engine.config import load_config
from tasks.boneage.task import BoneAgeDataset, BoneAgeTask, RegressionLoss
from tasks.boneage.samples import list_samples, split_folds
from tasks.formats.rsna import read_submission
from tasks.metrics import AGE_BANDS, age_metrics
from tasks.boneage.scoring import score as score_submission
from tasks.cache import SampleCache
from tasks.formats import FormatError
from tasks.formats.rsna import write_predictions
from tasks.preprocess import Preprocess

ROOT = Path(__file__).resolve().parents[1]


def write_rsna(folder: Path, rows: list[tuple[str, object, object]], modes: dict[str, str] | None = None,
               header: str = "id,boneage,male") -> Path:
    """A tiny RSNA layout: ``folder/train.csv`` and ``folder/images/<id>.png`` (grey, RGB or palette)."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = [header]
    for rid, age, male in rows:
        lines.append(",".join(str(v) for v in (rid, age, male) if v is not None))
        pixels = rng.integers(0, 255, (40, 30), dtype=np.uint8)
        mode = (modes or {}).get(rid, "L")
        im = Image.fromarray(pixels)
        if mode == "RGB":
            im = im.convert("RGB")
        elif mode == "P":
            im = im.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
        im.save(folder / "images" / f"{rid}.png")
    csv = folder / "train.csv"
    csv.write_text("\n".join(lines) + "\n")
    return csv


# ---------------------------------------------------------------------------------------------- reading

def test_reader_reads_the_real_rsna_labels_exactly(real_data):
    samples = list_samples(real_data / "rsna_boneage" / "labels.csv", real_data / "rsna_boneage" / "images",
                           require_age=True)
    assert len(samples) == 40
    first = samples[0]
    assert (first.id, first.age, first.male) == ("1437", 136.0, False)
    assert (samples[1].id, samples[1].age, samples[1].male) == ("1440", 42.0, True)
    assert first.image_path.name == "1437.png"
    full = pd.read_csv(real_data / "rsna_boneage" / "labels.csv")
    assert [s.age for s in samples] == full["boneage"].astype(float).tolist()


def test_reader_reads_grey_rgb_and_palette_images_and_test_csv_without_ages(tmp_path):
    csv = write_rsna(tmp_path, [("1", 10, True), ("2", 20.5, False), ("3", 30, "True")], {"2": "RGB", "3": "P"})
    samples = list_samples(csv, tmp_path / "images")
    ds = BoneAgeDataset(samples, 24, target_mean=20.0, target_std=10.0)
    for i, s in enumerate(samples):
        item = ds[i]
        assert item["image"].shape == (1, 24, 24) and 0 <= item["image"].min() and item["image"].max() <= 1
        assert math.isclose(float(item["target"]), (s.age - 20.0) / 10.0, rel_tol=1e-6)
    assert [bool(ds[i]["male"]) for i in range(3)] == [True, False, True]
    test_csv = tmp_path / "test.csv"
    test_csv.write_text("id,male\n1,True\n2,False\n")
    test = list_samples(test_csv, tmp_path / "images")
    assert all(math.isnan(s.age) for s in test) and "target" not in BoneAgeDataset(test, 24)[0]


def test_reader_reads_phantom_files(phantom):
    root = phantom / "boneage"
    train = list_samples(root / "boneage-training-dataset.csv", root / "boneage-training-dataset", require_age=True)
    test = list_samples(root / "boneage-test-dataset.csv", root / "boneage-test-dataset")
    assert len(train) == 24 and len(test) == 8
    assert all(0 <= s.age <= 240 for s in train)
    item = BoneAgeDataset(train, 64, Preprocess({"crop_to_hand": True}))[0]
    assert item["image"].shape == (1, 64, 64)


@pytest.mark.parametrize("rows, message", [
    ("id,boneage,male\n1,10,True\n1,12,False\n", "duplicate id"),
    ("id,boneage,male\n1,300,True\n", "outside"),
    ("id,boneage,male\n1,-1,True\n", "outside"),
    ("id,boneage,male\n1,ten,True\n", "not a number"),
    ("id,boneage,male\n1,10,maybe\n", "sex"),
    ("id,boneage\n1,10\n", "male"),
])
def test_bad_label_files_are_format_errors_naming_the_file(tmp_path, rows, message):
    csv = tmp_path / "bad.csv"
    csv.write_text(rows)
    (tmp_path / "images").mkdir()
    with pytest.raises(FormatError, match=message) as err:
        list_samples(csv, tmp_path / "images")
    assert "bad.csv" in str(err.value)


def test_missing_and_unreadable_images_are_format_errors(tmp_path):
    csv = write_rsna(tmp_path, [("1", 10, True), ("2", 20, False)])
    (tmp_path / "images" / "2.png").unlink()
    with pytest.raises(FormatError, match="2.png"):
        list_samples(csv, tmp_path / "images")
    (tmp_path / "images" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    samples = list_samples(csv, tmp_path / "images")
    with pytest.raises(FormatError, match="2.png"):
        BoneAgeDataset(samples, 16)[1]


# ---------------------------------------------------------------------------------------------- metrics

def test_mae_rmse_and_within_12_months_match_hand_computed_values():
    pred = np.array([10.0, 20.0, 30.0, 100.0])
    age = np.array([12.0, 20.0, 50.0, 90.0])
    male = np.array([True, False, True, False])
    m = age_metrics(pred, age, male)
    assert m["score"] == pytest.approx((2 + 0 + 20 + 10) / 4)              # 8.0
    assert m["rmse"] == pytest.approx(math.sqrt((4 + 0 + 400 + 100) / 4))  # 11.2250
    assert m["within_12m"] == pytest.approx(3 / 4)
    assert m["mae_male"] == pytest.approx(11.0) and m["mae_female"] == pytest.approx(5.0)
    assert m["per_item"] == pytest.approx({"0-5 y": 22 / 3, "5-10 y": 10.0})
    assert [b[0] for b in AGE_BANDS] == ["0-5 y", "5-10 y", "10-13 y", "13-16 y", "16-19 y"]
    with pytest.raises(ValueError):
        age_metrics(np.array([1.0, np.nan]), np.array([1.0, 2.0]))


def test_losses_and_their_config_errors():
    pred, target = torch.tensor([0.0, 2.0]), torch.tensor([1.0, 0.0])
    assert float(RegressionLoss({"l1": 1.0})(pred, target)) == pytest.approx(1.5)
    assert float(RegressionLoss({"smooth_l1": 1.0})(pred, target)) == pytest.approx((0.5 + 1.5) / 2)
    assert float(RegressionLoss({"l1": 1.0, "mse": 0.5})(pred, target)) == pytest.approx(1.5 + 0.5 * 2.5)
    with pytest.raises(ValueError, match="valid: l1, smooth_l1, mse"):
        RegressionLoss({"bce": 1.0})


def test_folds_are_disjoint_and_cover_everything():
    ages = list(range(0, 200, 4))
    seen = []
    for fold in range(5):
        train, val = split_folds(ages, 5, fold)
        assert not set(train) & set(val) and len(train) + len(val) == len(ages)
        seen += val
    assert sorted(seen) == list(range(len(ages)))
    with pytest.raises(ValueError):
        split_folds(ages, 5, 5)


# ---------------------------------------------------------------------------------------------- submissions

def test_submission_round_trip_and_scoring(tmp_path):
    answers = tmp_path / "answers.csv"
    answers.write_text("id,boneage\na,12\nb,24\nc,100\nd,200\n")
    (tmp_path / "boneage-test-dataset.csv").write_text("id,male\na,True\nb,False\nc,True\nd,False\n")
    pred = pd.DataFrame({"id": ["d", "a", "b", "c"], "boneage": [190.12345, 12.0, 30.0, 100.5]})
    sub = tmp_path / "sub.csv"
    write_predictions(sub, pred)
    back = read_submission(sub)
    assert list(back["id"]) == ["d", "a", "b", "c"]
    np.testing.assert_allclose(back["boneage"], pred["boneage"], atol=1e-4)
    result = score_submission(sub, answers)
    assert result["score"] == pytest.approx((0 + 6 + 0.5 + 9.87655) / 4, abs=1e-3)
    assert result["mae_male"] == pytest.approx(0.25, abs=1e-3)   # a: 0, c: 0.5
    assert result["metric"] == "mae_months" and result["images"] == 4
    assert math.isfinite(result["public"]) and math.isfinite(result["private"])
    from tasks.scoring import score_submission as score_any

    assert score_any(sub, answers)["score"] == pytest.approx(result["score"])


def test_bad_submissions_are_rejected(tmp_path):
    answers = tmp_path / "answers.csv"
    answers.write_text("id,boneage\na,12\nb,24\n")
    cases = {"missing.csv": ("id,boneage\na,12\n", "have no prediction"),
             "extra.csv": ("id,boneage\na,12\nb,3\nz,4\n", "not in the answers"),
             "nan.csv": ("id,boneage\na,12\nb,nan\n", "NaN or infinite"),
             "text.csv": ("id,boneage\na,12\nb,old\n", "not a number"),
             "header.csv": ("image,age\na,12\nb,3\n", "header")}
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(FormatError, match=message):
            score_submission(tmp_path / name, answers)
    (tmp_path / "bad_answers.csv").write_text("id,boneage\na,12\nb,500\n")
    with pytest.raises(FormatError, match="outside"):
        score_submission(tmp_path / "missing.csv", tmp_path / "bad_answers.csv")


def test_age_fusion_mean_median_weighted_and_alignment():
    from ensembles.members import Member
    from ensembles.values import align, fuse_values

    preds = np.array([[10.0, 100.0], [20.0, 110.0], [60.0, 300.0]])       # (M=3, N=2) months
    assert fuse_values(preds, "mean").tolist() == [30.0, 170.0]
    assert fuse_values(preds, "median").tolist() == [20.0, 110.0]            # the outlier member is ignored
    assert fuse_values(preds, "weighted", np.array([2.0, 1.0, 1.0])).tolist() == [25.0, 152.5]
    assert fuse_values(preds, "weighted", np.array([[0.0], [1.0], [0.0]])).tolist() == [20.0, 110.0]
    members = [Member(n, [Path(n)], [], "best.pt", None) for n in ("a", "b")]
    names, stack = align(members, [(["1", "2"], np.array([1.0, 2.0])), (["2", "1"], np.array([20.0, 10.0]))], "test")
    assert names == ["1", "2"] and stack.tolist() == [[1.0, 2.0], [10.0, 20.0]]   # aligned by id, not by row
    with pytest.raises(FormatError, match="member b: predicts other test images"):
        align(members, [(["1", "2"], np.zeros(2)), (["1", "3"], np.zeros(2))], "test")
    with pytest.warns(UserWarning, match="using the 1 they share"):
        names, stack = align(members, [(["1", "2"], np.array([1.0, 2.0])), (["2"], np.array([5.0]))], "val")
    assert names == ["2"] and stack.tolist() == [[2.0], [5.0]]


# ---------------------------------------------------------------------------------------------- model

def test_timm_regressor_fuses_the_sex_and_loads_local_weights_only(tmp_path):
    import timm

    from models import UnknownModelError, create_model

    model = create_model("timm:resnet10t", task="boneage", num_outputs=1, in_channels=1, head_hidden=16)
    x = torch.rand(2, 1, 32, 32)
    assert torch.equal(model(x, torch.tensor([0.0, 1.0])), torch.zeros(2))   # starts at the mean age
    torch.nn.init.normal_(model.head[-1].weight)
    model.eval()
    same = x[:1].repeat(2, 1, 1, 1)
    out = model(same, torch.tensor([0.0, 1.0]))
    assert out.shape == (2,) and out[0] != out[1]          # same image, other sex: other age
    with pytest.raises(ValueError, match="second input"):
        model(x)
    no_sex = create_model("timm:mobilenetv3_small_050", task="boneage", num_outputs=1, sex_input=False)
    assert no_sex(torch.rand(2, 1, 32, 32)).shape == (2,)
    source = timm.create_model("resnet10t", pretrained=False)
    path = tmp_path / "r10t.pth"
    torch.save(source.state_dict(), path)
    loaded = create_model("timm:resnet10t", task="boneage", num_outputs=1, in_channels=1, weights=str(path))
    assert torch.allclose(loaded.backbone.conv1[0].weight, source.conv1[0].weight.sum(1, keepdim=True))
    assert torch.equal(loaded.backbone.layer4[0].conv2.weight, source.layer4[0].conv2.weight)
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        create_model("timm:resnet10t", task="boneage", num_outputs=1, weights=str(tmp_path / "none.pth"))
    with pytest.raises(UnknownModelError, match="resnet18"):
        create_model("timm:resnet181", task="boneage", num_outputs=1)


# ---------------------------------------------------------------------------------------------- cache + runs

def test_second_epoch_reads_the_cache(tmp_path):
    csv = write_rsna(tmp_path, [("1", 10, True), ("2", 20, False)])
    calls = []

    class Counting(Preprocess):
        def __call__(self, image):
            calls.append(1)
            return super().__call__(image)

    samples = list_samples(csv, tmp_path / "images")
    ds = BoneAgeDataset(samples, 16, Counting({"minmax": True}), cache=SampleCache(tmp_path / "cache"))
    first = [ds[i]["image"] for i in range(2)]
    second = [ds[i]["image"] for i in range(2)]
    assert len(calls) == 2 and all(torch.equal(a, b) for a, b in zip(first, second))
    other = BoneAgeDataset(samples, 16, Counting({"minmax": True, "clahe": True}), cache=SampleCache(tmp_path / "cache"))
    other[0]
    assert len(calls) == 3   # other settings, other cache entry


@pytest.mark.slow
def test_phantom_train_predict_score_with_and_without_tta(phantom, tmp_path):
    from engine.predictor import predict_run
    from engine.trainer import train

    cfg = load_config(ROOT / "configs" / "boneage" / "phantom_cpu_resnet10t.yaml",
                      [f"--data.root={phantom / 'boneage'}", "--data.image_size=64", "--train.epochs=1",
                       "--train.device=cpu", "--data.cache=false", f"--logging.out_dir={tmp_path}",
                       "--logging.progress=false", "--train.batch_size=8"])
    summary = train(cfg)
    assert summary["metric"] == "mae_months" and math.isfinite(summary["val"]["score"])
    ckpt = cfg.run_dir / "best.pt"
    answers = phantom / "boneage" / "boneage-test-answers.csv"
    scores = {}
    for tta in (False, True):
        out = tmp_path / f"sub{int(tta)}.csv"
        stats = predict_run(None, ckpt, out_csv=out, tta=tta, device="cpu", progress=False)   # config of the run
        assert stats["images"] == 8
        scores[tta] = score_submission(out, answers)["score"]
    assert all(math.isfinite(v) for v in scores.values())
    stats = predict_run(cfg, ckpt, out_csv=tmp_path / "val.csv", split="val", save_probs_dir="auto", device="cpu")
    assert (cfg.run_dir / "preds" / "val" / "boneage.csv").is_file()
    assert stats["images"] == len(BoneAgeTask(cfg).split()[1]) in (4, 5)   # a fifth of 24


def test_real_rsna_fine_tune_predict_and_score(real_data, tmp_path):
    """A short fine-tune on the 40 real hands, then predict and score the validation fold (end to end)."""
    from engine.predictor import predict_run
    from engine.trainer import train

    cfg = load_config(ROOT / "configs" / "boneage" / "real_rsna_finetune.yaml",
                      [f"--data.root={real_data / 'rsna_boneage'}", "--data.image_size=64", "--train.epochs=1",
                       "--train.device=cpu", f"--data.cache_dir={tmp_path / 'cache'}", f"--logging.out_dir={tmp_path}",
                       "--logging.progress=false", "--model.name=timm:resnet10t",
                       "--train.select_min_spread=None"])   # one epoch answers ~the mean: keep it anyway here
    summary = train(cfg)
    assert set(summary["val"]) >= {"score", "rmse", "within_12m", "mae_male", "mae_female", "per_item", "loss"}
    out = tmp_path / "val.csv"
    predict_run(None, cfg.run_dir / "best.pt", out_csv=out, split="val", device="cpu", progress=False)
    task = BoneAgeTask(cfg)
    val_ids = {s.id for s in task.split()[1]}
    assert set(read_submission(out)["id"]) == val_ids and len(val_ids) == 8
    labels = real_data / "rsna_boneage" / "labels.csv"
    train_mean = float(np.mean([s.age for s in task.split()[0]]))
    # as the config's header scores it: the held-out fold's rows of the whole labels.csv (--subset); every
    # column of the table in docs/benchmarks.md: MAE, RMSE, spread and, given the training fold's mean age, the baseline
    result = score_submission(out, labels, subset=True, baseline_age=train_mean)
    assert result["images"] == 8
    for key in ("score", "rmse", "pred_spread", "baseline_mae"):    # the CSV holds ages to 4 decimals
        assert result[key] == pytest.approx(summary["val"][key], rel=1e-4, abs=1e-4), key
