"""Readers and writers of the real formats: real examples read exactly, phantom round trips, bad input."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tasks.formats import FormatError, dha, rsna, shs
from tasks.formats.handbones import CLASSES, list_samples, read_masks, read_polygons
from tasks.formats.images import read_grey


def _naive_rows(path: Path, header: bool = True) -> list[list[str]]:
    with open(path, newline="") as fh:
        rows = [r for r in csv.reader(fh) if r]
    return rows[1:] if header else rows


# ------------------------------------------------------------------ real examples

def test_rsna_real_labels_and_images(real_data):
    folder = real_data / "rsna_boneage"
    df = rsna.read_labels(folder / "labels.csv", require_age=True)
    naive = _naive_rows(folder / "labels.csv")
    assert list(df.columns) == ["id", "boneage", "male"] and len(df) == len(naive) == 40
    assert df["id"].tolist() == [r[0] for r in naive]
    assert df["boneage"].tolist() == [float(r[1]) for r in naive]
    assert df["male"].tolist() == [r[2] == "True" for r in naive]
    modes = set()
    for rid in df["id"]:
        path = rsna.image_path(folder / "images", rid)
        with Image.open(path) as im:
            modes.add(im.mode)
        img = read_grey(path)
        assert img.dtype == np.uint8 and img.shape == (2080, 1600)
    assert "P" in modes and "L" in modes    # palette PNGs are read as grey too


def test_rsna_real_full_tables(real_data):
    folder = real_data / "rsna_boneage"
    train = rsna.read_labels(folder / "boneage-training-dataset.csv", require_age=True)
    assert len(train) == 12611 and train["boneage"].between(0, 240).all()
    test = rsna.read_labels(folder / "boneage-test-dataset.csv")
    naive = _naive_rows(folder / "boneage-test-dataset.csv")
    assert test["id"].tolist() == [r[0] for r in naive]


def test_shs_real_coords(real_data):
    folder = real_data / "shs_net_joints15"
    ids, coords = shs.read_coords(folder / "coord_list.csv")
    rows = list(csv.DictReader(open(folder / "coord_list.csv", newline="")))
    assert ids == [r["img_id"] for r in rows] and coords.shape == (6, 15, 2)
    for i, r in enumerate(rows):
        for k, name in enumerate(shs.SHS15_NAMES):
            assert coords[i, k, 0] == float(r[f"{name}_x"]) and coords[i, k, 1] == float(r[f"{name}_y"])
    header = open(folder / "coord_list.csv").readline().strip().split(",")
    assert header == ["img_id", *shs.coord_columns(shs.SHS15_NAMES)]
    for rid in ids:
        img = read_grey(folder / "images" / rid)
        h, w = img.shape
        assert (coords[ids.index(rid), :, 0] < w).all() and (coords[ids.index(rid), :, 1] < h).all()


def test_shs_write_round_trip(real_data, tmp_path):
    ids, coords = shs.read_coords(real_data / "shs_net_joints15" / "coord_list.csv")
    out = tmp_path / "c.csv"
    shs.write_coords(out, ids, coords, decimals=None)
    ids2, coords2 = shs.read_coords(out)
    assert ids2 == ids and np.array_equal(coords2, coords)
    shs.write_coords(out, ids, coords, names=shs.SHS15_NAMES, id_column="image_name")
    assert out.read_text().startswith("image_name,IP_x,")
    assert np.allclose(shs.read_coords(out)[1], coords, atol=1e-3)


def test_dha_real_landmarks(real_data, tmp_path):
    folder = real_data / "dha_hand_landmarks37"
    ids, coords = dha.read_all(folder / "all.csv")
    naive = _naive_rows(folder / "all.csv", header=False)
    assert len(ids) == len(naive) == 907 and coords.shape == (907, 37, 2)
    for i, r in enumerate(naive):
        assert ids[i] == r[0]
        assert np.array_equal(coords[i].reshape(-1), np.array([float(v) for v in r[1:]]))
    spacing = dha.read_spacing(folder / "spacing.csv")
    assert len(spacing) == 6 and all(0.05 < v < 0.5 for v in spacing.values())
    for rid in spacing:
        assert rid in ids
        img = read_grey(folder / "images" / f"{rid}.png")
        c = coords[ids.index(rid)]
        assert (c[:, 0] < img.shape[1]).all() and (c[:, 1] < img.shape[0]).all()
    dha.write_all(tmp_path / "all.csv", ids, coords, decimals=None)
    ids2, coords2 = dha.read_all(tmp_path / "all.csv")
    assert ids2 == ids and np.array_equal(coords2, coords)
    dha.write_spacing(tmp_path / "s.csv", spacing)
    assert dha.read_spacing(tmp_path / "s.csv") == pytest.approx(spacing)


# ------------------------------------------------------------------ phantom round trip

def test_phantom_round_trip(phantom):
    hb = phantom / "handbones"
    train = list_samples(hb / "train")
    test = list_samples(hb / "test", labels=hb / "test_gt" / "outputs_json")
    assert len(train) == 24 and len(test) == 8
    for s in train[:4] + test[:2]:
        img = read_grey(s.image_path)
        masks = read_masks(s.label_path, *img.shape)
        assert masks.shape == (len(CLASSES), *img.shape) and masks[:19].any(axis=(1, 2)).all()
    df = rsna.read_labels(phantom / "boneage" / "boneage-training-dataset.csv", require_age=True)
    assert len(df) == 24 and df["male"].dtype == bool
    te = rsna.read_labels(phantom / "boneage" / "boneage-test-dataset.csv")
    assert "boneage" in te.columns and te["boneage"].isna().all() and len(te) == 8
    ans = rsna.read_predictions(phantom / "boneage" / "boneage-test-answers.csv")
    assert ans["id"].tolist() == te["id"].tolist() and ans["boneage"].between(0, 240).all()
    ids, c15 = shs.read_coords(phantom / "joints" / "coord_list.csv")
    dids, c37 = dha.read_all(phantom / "joints" / "all.csv")
    assert len(ids) == len(dids) == 32
    assert (c15 >= 0).all() and (c15 < 128).all() and (c37 >= 0).all() and (c37 < 128).all()

def test_rsna_predictions_round_trip(tmp_path):
    df = pd.DataFrame({"id": ["3", "1", "2"], "boneage": [10.0, 120.25, 200.5], "male": [True, False, True]})
    pred = tmp_path / "pred.csv"
    rsna.write_predictions(pred, df)
    assert pred.read_text().splitlines()[0] == "id,boneage"
    back = rsna.read_predictions(pred)
    assert back["id"].tolist() == ["3", "1", "2"] and np.allclose(back["boneage"], df["boneage"])
    _raises(rsna.read_predictions, _write(pred, "id,boneage\n1,2\n1,3\n"), match="duplicate", path=pred)
    _raises(rsna.read_predictions, _write(pred, "id,boneage\n1,inf\n"), match="NaN or infinite", path=pred)
    _raises(rsna.read_predictions, _write(pred, "id,age\n1,2\n"), match="missing column 'boneage'", path=pred)


# ------------------------------------------------------------------ bad input

def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _raises(fn, *args, match: str, path: Path, **kw):
    with pytest.raises(FormatError) as err:
        fn(*args, **kw)
    msg = str(err.value)
    assert str(path) in msg, msg
    assert match.lower() in msg.lower(), msg
    return msg


def test_rsna_rejects_bad_input(tmp_path):
    p = tmp_path / "l.csv"
    _raises(rsna.read_labels, _write(p, "id,boneage\n1,10\n"), match="missing column 'male'", path=p)
    msg = _raises(rsna.read_labels, _write(p, "id,boneage,male\n1,10,True\n1,12,False\n"), match="duplicate", path=p)
    assert "line 3" in msg
    _raises(rsna.read_labels, _write(p, "id,boneage,male\n1,ten,True\n"), match="not a number", path=p)
    _raises(rsna.read_labels, _write(p, "id,boneage,male\n1,-3,True\n"), match="outside", path=p)
    _raises(rsna.read_labels, _write(p, "id,boneage,male\n1,300,True\n"), match="outside", path=p)
    _raises(rsna.read_labels, _write(p, "id,boneage,male\n1,nan,True\n"), match="age is NaN", path=p, require_age=True)
    _raises(rsna.read_labels, _write(p, "id,boneage,male\n1,10,maybe\n"), match="column 'male'", path=p)
    _raises(rsna.read_labels, _write(p, "id,male\n1,True\n"), match="boneage", path=p, require_age=True)
    ok = rsna.read_labels(_write(p, "id,boneage,male\n1,10,true\n2,,0\n3,5.5,M\n"))
    assert ok["male"].tolist() == [True, False, True] and math.isnan(ok["boneage"][1])
    _raises(rsna.image_path, tmp_path, "nope", match="not found", path=tmp_path / "nope.png")
    bad = pd.DataFrame({"id": ["1", "2"], "boneage": [1.0, float("nan")]})
    _raises(rsna.write_predictions, tmp_path / "o.csv", bad, match="NaN", path=tmp_path / "o.csv")
    assert not (tmp_path / "o.csv").exists()


def test_shs_rejects_bad_input(real_data, tmp_path):
    good = (real_data / "shs_net_joints15" / "coord_list.csv").read_text().splitlines()
    p = tmp_path / "c.csv"
    header = good[0].split(",")
    _raises(shs.read_coords, _write(p, ",".join(header[:-1]) + "\n" + "\n".join(",".join(r.split(",")[:-1]) for r in good[1:]) + "\n"),
            match="missing column", path=p)
    _raises(shs.read_coords, _write(p, "\n".join(good + [good[1]]) + "\n"), match="duplicate", path=p)
    row = good[1].split(",")
    row[3] = "nan"
    msg = _raises(shs.read_coords, _write(p, "\n".join([good[0], ",".join(row)]) + "\n"), match="NaN", path=p)
    assert "line 2" in msg and header[3] in msg
    row[3] = "abc"
    _raises(shs.read_coords, _write(p, "\n".join([good[0], ",".join(row)]) + "\n"), match="not a number", path=p)
    row[3] = ""
    _raises(shs.read_coords, _write(p, "\n".join([good[0], ",".join(row)]) + "\n"), match="empty", path=p)
    _raises(shs.read_coords, _write(p, "name," + ",".join(header[1:]) + "\n"), match="id column", path=p)


def test_dha_rejects_bad_input(tmp_path):
    p = tmp_path / "all.csv"
    row = ["7"] + [str(v) for v in range(74)]
    msg = _raises(dha.read_all, _write(p, ",".join(row) + "\n" + ",".join(row[:-1]).replace("7", "8", 1) + "\n"),
                  match="74 values", path=p)
    assert "line 2" in msg and "expected 75" in msg
    _raises(dha.read_all, _write(p, ",".join(row) + "\n" + ",".join(row) + "\n"), match="duplicate", path=p)
    bad = row.copy()
    bad[10] = "nan"
    _raises(dha.read_all, _write(p, ",".join(bad) + "\n"), match="NaN", path=p)
    bad[10] = "x1"
    _raises(dha.read_all, _write(p, ",".join(bad) + "\n"), match="not a number", path=p)
    _raises(dha.read_all, _write(p, "\n"), match="no landmark rows", path=p)
    s = tmp_path / "spacing.csv"
    _raises(dha.read_spacing, _write(s, "id,mm\n1,0.1\n"), match="spacing_mm", path=s)
    _raises(dha.read_spacing, _write(s, "id,spacing_mm\n1,0.1\n1,0.2\n"), match="duplicate", path=s)
    _raises(dha.read_spacing, _write(s, "id,spacing_mm\n1,-0.1\n"), match="positive", path=s)
    _raises(dha.read_spacing, _write(s, "id,spacing_mm\n1,abc\n"), match="not a number", path=s)


def test_images_and_json_reject_bad_input(tmp_path):
    png = tmp_path / "t.png"
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(png)
    data = png.read_bytes()
    png.write_bytes(data[: len(data) // 2])
    _raises(read_grey, png, match="unreadable or truncated", path=png)
    txt = _write(tmp_path / "x.png", "not an image")
    _raises(read_grey, txt, match="unreadable", path=txt)
    _raises(read_grey, tmp_path / "missing.png", match="not found", path=tmp_path / "missing.png")

    j = tmp_path / "a.json"
    poly = [[1, 1], [10, 1], [10, 10]]

    def ann(label="finger-1", points=poly):
        return {"id": "0", "type": "poly_seg", "attributes": {}, "points": points, "label": label}

    _raises(read_polygons, _write(j, json.dumps({"images": []})), match="annotations", path=j)
    _raises(read_polygons, _write(j, json.dumps({"annotations": [ann("finger-30")]})), match="unknown class", path=j)
    _raises(read_polygons, _write(j, json.dumps({"annotations": [ann(points=poly[:2])]})), match="at least 3", path=j)
    _raises(read_polygons, _write(j, json.dumps({"annotations": [ann(points=[[1, 1], [500, 1], [5, 5]])]})),
            match="outside", path=j, height=64, width=64)
    _raises(read_polygons, _write(j, "{broken"), match="JSON", path=j)
    assert read_polygons(_write(j, json.dumps({"annotations": [ann()]})), 64, 64)["finger-1"][0].shape == (3, 2)


def test_handbones_overlapping_polygons_of_one_class_are_unioned():
    from tasks.formats.handbones import rasterize

    a = np.array([[2, 2], [12, 2], [12, 12], [2, 12]], float)
    m = rasterize({"Radius": [a, a + 4]}, 20, 20)[CLASSES.index("Radius")]
    assert m.sum() == 11 * 11 * 2 - 7 * 7


def test_handbones_patient_folders_and_images_may_be_symlinks(tmp_path):
    """Patient folders linked from another disk, an image and its JSON linked one by one, and a link back to
    DCM/ (a loop) that is not entered again."""
    from tasks.formats.handbones import write_polygons

    store, root = tmp_path / "store", tmp_path / "train"
    square = np.array([[2, 2], [9, 2], [9, 9], [2, 9]], float)
    for patient, stem, x in [("ID001", "image1000000000001_L", 0), ("ID001", "image1000000000001_R", 3),
                             ("ID002", "image1000000000002_L", 6)]:
        for folder in (store / "DCM" / patient, store / "json" / patient):
            folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 16), 40 + x, np.uint8)).save(store / "DCM" / patient / f"{stem}.png")
        write_polygons(store / "json" / patient / f"{stem}.json", {"Radius": [square + [x, 0]]})
    (root / "DCM" / "ID002").mkdir(parents=True)
    (root / "outputs_json" / "ID002").mkdir(parents=True)
    (root / "DCM" / "ID001").symlink_to(store / "DCM" / "ID001", target_is_directory=True)
    (root / "outputs_json" / "ID001").symlink_to(store / "json" / "ID001", target_is_directory=True)
    (root / "DCM" / "ID002" / "image1000000000002_L.png").symlink_to(store / "DCM" / "ID002" / "image1000000000002_L.png")
    (root / "outputs_json" / "ID002" / "image1000000000002_L.json").symlink_to(
        store / "json" / "ID002" / "image1000000000002_L.json")
    (root / "DCM" / "ID002" / "loop").symlink_to(root / "DCM", target_is_directory=True)

    samples = list_samples(root)
    assert [(s.patient, s.image_path.relative_to(root).as_posix(), s.label_path.relative_to(root).as_posix())
            for s in samples] == [
        ("ID001", "DCM/ID001/image1000000000001_L.png", "outputs_json/ID001/image1000000000001_L.json"),
        ("ID001", "DCM/ID001/image1000000000001_R.png", "outputs_json/ID001/image1000000000001_R.json"),
        ("ID002", "DCM/ID002/image1000000000002_L.png", "outputs_json/ID002/image1000000000002_L.json"),
    ]
    assert [int(read_grey(s.image_path)[0, 0]) for s in samples] == [40, 43, 46]
    radius = CLASSES.index("Radius")
    assert [int(np.argmax(read_masks(s.label_path, 16, 16)[radius][5])) for s in samples] == [2, 5, 8]

    (store / "json" / "ID001" / "image1000000000009_L.json").write_text("{}")  # a stray JSON behind a linked folder
    with pytest.raises(FormatError, match="image1000000000009_L.json: label file has no image"):
        list_samples(root)
