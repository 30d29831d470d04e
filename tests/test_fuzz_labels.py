"""Fuzzing the label readers (Hypothesis): hand-bone JSON, RSNA, SHS_NET, DHA and AASCE files, mutated.

Each valid file is changed by :mod:`fuzzing`: an equivalent change (BOM, CRLF, trailing blank line) must
read back equal; a corrupting one must read as a well-formed result or end in one FormatError naming the
file, and no id a reader returns may lead outside the folder it is joined to. ``@example`` pins every
fault the fuzzing found.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from fuzzing import corrupted, equivalent, inside, outcome
from tasks.formats import FormatError, aasce, dha, rsna
from tasks.formats.handbones import CLASSES, list_samples, read_polygons, write_polygons
from tasks.formats.shs import SHS15_NAMES, write_coords
from tasks.keypoint_labels import read_split_file, read_wide
from tasks.keypoint_sets import get_set

H, W = 40, 48
POLYGONS = {
    "finger-1": [np.array([[1, 1], [10, 1], [10, 9], [1, 9]], np.float64)],
    "Trapezium": [np.array([[20, 20], [30, 22], [25, 30]], np.float64),
                  np.array([[31, 31], [40, 31], [40, 39]], np.float64)],
    "Ulna": [np.array([[0, 30], [8, 30], [8, 39], [0, 39]], np.float64)],
}
RSNA = b"id,boneage,male\n1377,180,False\n1378,12.5,True\n1379,94,False\n"
AGES = b"id,boneage\n1377,180.5\n1378,12\n"
SHS_COORDS = np.random.default_rng(0).uniform(0, 600, (2, len(SHS15_NAMES), 2)).round(3)
SHS_IDS = ["test_img1_L.png", "test_img2_L.png"]
DHA_COORDS = np.random.default_rng(1).uniform(0, 1500, (2, 37, 2)).round(3)
SPACING = {"3128": 0.1, "3129": 0.125}
AASCE_NAMES = ["sunhl-1th-02-Jan-2017-162 A AP.jpg", "sunhl-1th-03-Jan-2017-163 B AP.jpg"]
AASCE_SIZES = {AASCE_NAMES[0]: (100, 60), AASCE_NAMES[1]: (80, 40)}
AASCE_COORDS = np.random.default_rng(2).uniform(0, 1, (2, 68, 2)) * np.array([[60, 100], [40, 80]])[:, None]


def _written(write, name: str = "file") -> bytes:
    """The bytes a harness writer puts in a file (the valid original the fuzzing mutates)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        write(path)
        return path.read_bytes()


LABEL_JSON = _written(lambda p: write_polygons(p, POLYGONS))
SHS = _written(lambda p: write_coords(p, SHS_IDS, SHS_COORDS))
DHA_ALL = _written(lambda p: dha.write_all(p, ["3128", "3129"], DHA_COORDS))
DHA_SPACING = _written(lambda p: dha.write_spacing(p, SPACING))
MAT = _written(lambda p: aasce.write_mat(p, AASCE_COORDS[0]))
AASCE_FILENAMES = _written(lambda p: aasce.write_csv_labels(p.parent, AASCE_NAMES, AASCE_COORDS,
                                                            [AASCE_SIZES[n] for n in AASCE_NAMES]), "filenames.csv")
AASCE_LANDMARKS = _written(lambda p: aasce.write_csv_labels(p.parent, AASCE_NAMES, AASCE_COORDS,
                                                            [AASCE_SIZES[n] for n in AASCE_NAMES]), "landmarks.csv")
SHS_HEADER = ("img_id," + ",".join(f"{n}_x" for n in SHS15_NAMES) + "," + ",".join(f"{n}_y" for n in SHS15_NAMES)).encode()


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz_labels")


def _same_polygons(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(len(a[k]) == len(b[k]) and all(np.array_equal(p, q) for p, q in zip(a[k], b[k]))
                                        for k in a)


def _check_polygons(polygons: dict) -> None:
    assert set(polygons) <= set(CLASSES)
    for polys in polygons.values():
        for p in polys:
            assert p.ndim == 2 and p.shape[1] == 2 and len(p) >= 3 and np.isfinite(p).all()
            assert p[:, 0].min() >= -0.5 and p[:, 0].max() <= W + 0.5 and p[:, 1].min() >= -0.5 and p[:, 1].max() <= H + 0.5


def _json_values() -> st.SearchStrategy:
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30), st.floats(), st.text(max_size=8),
                        st.sampled_from(CLASSES))
    return st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                        max_leaves=12)


@st.composite
def json_edits(draw: st.DrawFn) -> bytes:
    """The valid label JSON with one value (the whole, its annotations, one annotation, one key of one, one
    point) replaced by any JSON value (NaN and infinities included, as Python's json writes them)."""
    doc = json.loads(LABEL_JSON)
    anns = doc["annotations"]
    where = draw(st.sampled_from(["top", "annotations", "annotation", "key", "point"]))
    value = draw(_json_values())
    k = draw(st.integers(0, len(anns) - 1))
    if where == "top":
        doc = value
    elif where == "annotations":
        doc["annotations"] = value
    elif where == "annotation":
        anns[k] = value
    elif where == "key":
        anns[k][draw(st.sampled_from(["label", "points", "type", "id"]))] = value
    else:
        anns[k]["points"][draw(st.integers(0, len(anns[k]["points"]) - 1))] = value
    return json.dumps(doc).encode()


def test_the_valid_files_read_back(work):
    path = work / "a.json"
    path.write_bytes(LABEL_JSON)
    assert _same_polygons(read_polygons(path, H, W), POLYGONS)


@given(content=equivalent(LABEL_JSON))
def test_label_json_reads_equal_after_an_equivalent_change(work, content):
    path = work / "eq.json"
    path.write_bytes(content)
    assert _same_polygons(read_polygons(path, H, W), POLYGONS)


@given(content=st.one_of(corrupted(LABEL_JSON), json_edits()))
@example(content=b'{"annotations": null}')                                       # was a TypeError
@example(content=b'{"annotations": ' + b"[" * 100000 + b"]" * 100000 + b"}")       # was a RecursionError
@example(content=b'{"annotations": [{"points": [[1, 1], [9, 1], [9, 9]], "label": []}]}')   # was a TypeError
def test_a_corrupted_label_json_reads_well_formed_or_is_named(work, content):
    path = work / "bad.json"
    path.write_bytes(content)
    result = outcome(lambda: read_polygons(path, H, W), path, (FormatError,))
    if result is not None:
        _check_polygons(result)


@given(content=equivalent(RSNA))
def test_rsna_labels_read_equal_after_an_equivalent_change(work, content):
    path = work / "eq.csv"
    path.write_bytes(content)
    frame = rsna.read_labels(path)
    assert frame["id"].tolist() == ["1377", "1378", "1379"]
    assert frame["boneage"].tolist() == [180.0, 12.5, 94.0] and frame["male"].tolist() == [False, True, False]


@given(content=corrupted(RSNA))
@example(content=b"id,boneage,male\n../../outside,180,False\n")   # an id that is a path: training read outside data.root
def test_a_corrupted_rsna_csv_reads_well_formed_or_is_named(work, content):
    path = work / "bad.csv"
    path.write_bytes(content)
    frame = outcome(lambda: rsna.read_labels(path), path, (FormatError,))
    if frame is not None:
        assert list(frame.columns) == ["id", "boneage", "male"]
        ages = frame["boneage"].to_numpy()
        assert (((ages >= 0) & (ages <= rsna.MAX_AGE_MONTHS)) | np.isnan(ages)).all()
        assert all(inside(work, f"{i}.png") for i in frame["id"])


@given(content=st.one_of(equivalent(AGES), corrupted(AGES)))
def test_bone_age_predictions_read_well_formed_or_are_named(work, content):
    path = work / "ages.csv"
    path.write_bytes(content)
    for read in (rsna.read_predictions, rsna.read_submission):
        frame = outcome(lambda: read(path), path, (FormatError,))
        if frame is not None:
            assert np.isfinite(frame["boneage"].to_numpy()).all()
            assert all(inside(work, f"{i}.png") for i in frame["id"])


@given(content=equivalent(SHS))
def test_shs_coordinates_read_equal_after_an_equivalent_change(work, content):
    path = work / "eq_coord_list.csv"
    path.write_bytes(content)
    ids, coords, lmset = read_wide(path)
    assert ids == SHS_IDS and lmset.name == "shs15"
    np.testing.assert_allclose(coords, SHS_COORDS)


@given(content=corrupted(SHS))
@example(content=SHS_HEADER + b"\n../x.png," + b",".join([b"1"] * 30) + b"\n")   # a coord_list row that is a path
def test_a_corrupted_shs_csv_reads_well_formed_or_is_named(work, content):
    path = work / "bad_coord_list.csv"
    path.write_bytes(content)
    result = outcome(lambda: read_wide(path, get_set("shs15")), path, (FormatError,))
    if result is not None:
        ids, coords, _ = result
        assert coords.shape == (len(ids), 15, 2) and np.isfinite(coords).all()
        assert all(inside(work, i) for i in ids)


@given(all_csv=equivalent(DHA_ALL), spacing=equivalent(DHA_SPACING))
def test_dha_files_read_equal_after_an_equivalent_change(work, all_csv, spacing):
    a, s = work / "eq_all.csv", work / "eq_spacing.csv"
    a.write_bytes(all_csv)
    s.write_bytes(spacing)
    ids, coords = dha.read_all(a)
    assert ids == ["3128", "3129"]
    np.testing.assert_allclose(coords, DHA_COORDS)
    assert dha.read_spacing(s) == SPACING


@given(all_csv=corrupted(DHA_ALL), spacing=corrupted(DHA_SPACING))
def test_corrupted_dha_files_read_well_formed_or_are_named(work, all_csv, spacing):
    a, s = work / "bad_all.csv", work / "bad_spacing.csv"
    a.write_bytes(all_csv)
    s.write_bytes(spacing)
    result = outcome(lambda: dha.read_all(a), a, (FormatError,))
    if result is not None:
        ids, coords = result
        assert coords.shape == (len(ids), 37, 2) and np.isfinite(coords).all()
        assert all(inside(work, f"{i}.png") for i in ids)
    result = outcome(lambda: dha.read_spacing(s), s, (FormatError,))
    if result is not None:
        assert all(np.isfinite(v) and v > 0 and inside(work, f"{k}.png") for k, v in result.items())


@given(names=equivalent(AASCE_FILENAMES), landmarks=equivalent(AASCE_LANDMARKS))
def test_aasce_files_read_equal_after_an_equivalent_change(work, names, landmarks):
    folder = work / "aasce_eq"
    folder.mkdir(exist_ok=True)
    (folder / "filenames.csv").write_bytes(names)
    (folder / "landmarks.csv").write_bytes(landmarks)
    ids, coords = aasce.read_csv_labels(folder, AASCE_SIZES)
    assert ids == AASCE_NAMES
    np.testing.assert_allclose(coords, AASCE_COORDS, atol=1e-3)


@given(which=st.sampled_from(["filenames.csv", "landmarks.csv"]), data=st.data())
@example(which="filenames.csv", data=b"../outside\n" + AASCE_NAMES[1].encode() + b"\n")   # a file list entry that is a path
def test_corrupted_aasce_files_read_well_formed_or_are_named(work, which, data):
    folder = work / "aasce_bad"
    folder.mkdir(exist_ok=True)
    (folder / "filenames.csv").write_bytes(AASCE_FILENAMES)
    (folder / "landmarks.csv").write_bytes(AASCE_LANDMARKS)
    valid = AASCE_FILENAMES if which == "filenames.csv" else AASCE_LANDMARKS
    (folder / which).write_bytes(data if isinstance(data, bytes) else data.draw(corrupted(valid)))
    result = outcome(lambda: aasce.read_csv_labels(folder, AASCE_SIZES), folder / which, (FormatError,))
    if result is not None:
        ids, coords = result
        assert coords.shape == (len(ids), 68, 2) and np.isfinite(coords).all()
        assert all(inside(folder, f"{i}.mat") for i in ids)


@given(content=corrupted(MAT))
@example(content=b"MATLAB 5.0 MAT-file ")                 # was an IndexError in scipy
@example(content=MAT[:128] + b"p" + MAT[129:])           # was a TypeError in scipy (no miMATRIX element)
@example(content=MAT[:177] + b"F" + MAT[178:])           # scipy.io.loadmat died of a bus error (tasks.formats.mat5)
def test_a_corrupted_aasce_mat_file_reads_well_formed_or_is_named(work, content):
    path = work / "bad.mat"
    path.write_bytes(content)
    xy = outcome(lambda: aasce.read_mat(path), path, (FormatError,))
    if xy is not None:
        assert xy.shape == (68, 2) and np.isfinite(xy).all()


@given(name=st.binary(min_size=1, max_size=16).filter(lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b"..")))
@example(name=b"img\xff")      # not UTF-8: was written to the submission as a lone surrogate (UnicodeEncodeError)
def test_a_data_folder_with_any_file_name_lists_names_inside_it_or_is_named(work, name):
    root = Path(tempfile.mkdtemp(dir=work))
    folder = root / "DCM" / "ID001"
    folder.mkdir(parents=True)
    for stem in (b"image1", name):
        with open(os.fsencode(folder) + b"/" + stem + b".png", "wb") as f:
            f.write(b"\x89PNG")   # listing only looks at the names
    samples = outcome(lambda: list_samples(root, labels=None), folder, (FormatError,))
    if samples is not None:
        assert all(inside(s.image_path.parent, s.name) and s.image_path.parent == folder for s in samples)


SPLIT = b"img_id,split\ntest_img1_L.png,train\ntest_img2_L.png,test\n"


@given(content=st.one_of(equivalent(SPLIT), corrupted(SPLIT)))
@example(content=b"img_id,split\ntest_img1_L.png\n")   # a short row: was an AttributeError (None.strip)
def test_a_keypoint_split_file_reads_well_formed_or_is_named(work, content):
    path = work / "split.csv"
    path.write_bytes(content)
    splits = outcome(lambda: read_split_file(path), path, (FormatError,))
    if splits is not None:
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in splits.items())
        if content in (SPLIT, b"\xef\xbb\xbf" + SPLIT):
            assert splits == {"test_img1_L": "train", "test_img2_L": "test"}
