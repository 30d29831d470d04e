"""The phantom generator: layouts, determinism, exact labels, landmarks on bones, age cues."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from phantom import CARPALS, DHA37_NAMES, LANDMARKS, SHS15_NAMES, generate, landmark_bones, render_hand
from tasks.formats import dha, rsna, shs
from tasks.formats.handbones import CLASSES, list_samples, read_masks, read_polygons, write_polygons
from tasks.formats.images import read_grey

ROOT = Path(__file__).resolve().parents[1]
NAME_RE = re.compile(r"^image\d{13}_[LR]\.png$")


def test_cli_writes_every_layout(tmp_path):
    out = tmp_path / "p"
    cmd = [sys.executable, str(ROOT / "tools" / "phantom.py"), "--out", str(out), "--n-train", "3", "--n-test", "2",
           "--size", "128", "--seed", "1", "--workers", "1", "--quiet"]
    subprocess.run(cmd, check=True, cwd=ROOT, timeout=120)
    hb = out / "handbones"
    train = list_samples(hb / "train")
    test = list_samples(hb / "test", labels=hb / "test_gt" / "outputs_json")
    assert len(train) == 3 and len(test) == 2
    assert {s.patient for s in train} == {"ID001", "ID002"} and {s.patient for s in test} == {"ID003"}
    for s in train + test:
        assert NAME_RE.match(s.name), s.name
        img = read_grey(s.image_path)
        assert img.shape == (128, 128)
        polys = read_polygons(s.label_path, 128, 128)
        assert set(polys) <= set(CLASSES) and "finger-11" in polys
    # both hands of a patient: one left, one right
    sides = sorted(s.name[-5] for s in train if s.patient == "ID001")
    assert sides == ["L", "R"]
    meta = (hb / "meta_data.csv").read_text().splitlines()
    assert meta[0] == "ID,age_months,sex,height_cm,weight_kg" and len(meta) == 1 + 3

    ba = out / "boneage"
    tr = rsna.read_labels(ba / "boneage-training-dataset.csv", require_age=True)
    te = rsna.read_labels(ba / "boneage-test-dataset.csv")
    assert len(tr) == 3 and len(te) == 2 and te["boneage"].isna().all()
    for i in tr["id"]:
        assert read_grey(rsna.image_path(ba / "boneage-training-dataset", i)).shape == (128, 128)
    for i in te["id"]:
        rsna.image_path(ba / "boneage-test-dataset", i)
    answers = (ba / "boneage-test-answers.csv").read_text().splitlines()
    assert answers[0] == "id,boneage" and len(answers) == 3
    assert (ba / "boneage-training-dataset.csv").read_text().splitlines()[1].split(",")[2] in ("True", "False")

    jd = out / "joints"
    ids, c15 = shs.read_coords(jd / "coord_list.csv")
    dids, c37 = dha.read_all(jd / "all.csv")
    spacing = dha.read_spacing(jd / "spacing.csv")
    assert c15.shape == (5, 15, 2) and c37.shape == (5, 37, 2)
    assert [i[:-4] for i in ids] == dids and set(spacing) == set(dids)
    for i in ids:
        assert (jd / "images" / i).is_file()
    # SHS joints that are also DHA landmarks sit at the same place
    same = {"IP": "IP1", "MP": "MCP1", "PIP2": "PIP2", "MCP5": "MCP5", "W1": "CMC1", "W2": "CMC3", "W4": "RADIUS_LUNATE"}
    for s_name, d_name in same.items():
        np.testing.assert_allclose(c15[:, SHS15_NAMES.index(s_name)], c37[:, DHA37_NAMES.index(d_name)], atol=1e-3)
    split = (jd / "split.csv").read_text().splitlines()
    assert split[0] == "img_id,split" and sum(line.endswith(",test") for line in split) == 2


def _label_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.suffix in (".json", ".csv", ".png")}


def test_same_seed_same_bytes(tmp_path):
    generate(tmp_path / "a", n_train=3, n_test=1, size=96, seed=5, workers=1)
    generate(tmp_path / "b", n_train=3, n_test=1, size=96, seed=5, workers=2)
    a, b = _label_files(tmp_path / "a"), _label_files(tmp_path / "b")
    assert a.keys() == b.keys() and len(a) > 10
    for k in a:
        assert a[k] == b[k], k
    generate(tmp_path / "c", n_train=3, n_test=1, size=96, seed=6, workers=1)
    c = _label_files(tmp_path / "c")
    assert c["joints/all.csv"] != a["joints/all.csv"]


@pytest.mark.parametrize("age", [3, 30, 100, 170, 226])
def test_json_masks_equal_generator_masks(tmp_path, age):
    ph = render_hand(age, 128, age_months=age, side="R" if age % 2 else "L")
    path = tmp_path / "x.json"
    write_polygons(path, ph.polygons)
    masks = read_masks(path, 128, 128)
    for k, cls in enumerate(CLASSES):
        a, b = masks[k].astype(bool), ph.masks[k].astype(bool)
        assert a.any() == b.any(), cls
        if a.any():
            iou = (a & b).sum() / (a | b).sum()
            assert iou > 0.99, (cls, iou)


@pytest.mark.parametrize("size", [128, 256])
def test_landmarks_lie_on_their_bones(size):
    for seed, age in enumerate([2, 14, 40, 75, 120, 160, 200, 228]):
        ph = render_hand(100 + seed, size, age_months=age, side="LR"[seed % 2])
        assert set(ph.keypoints) == set(LANDMARKS)
        for name, (x, y) in ph.keypoints.items():
            bones = [b for b in landmark_bones(name) if b in ph.polygons]
            if not bones:   # both bones not ossified yet (small child): nothing to lie on
                continue
            xi, yi = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
            assert 0 <= xi < size and 0 <= yi < size, (name, x, y)
            union = np.zeros((size, size), bool)
            for b in bones:
                union |= ph.masks[CLASSES.index(b)].astype(bool)
            assert union[yi, xi], (age, name, bones, (x, y))


def test_carpals_follow_age():
    for seed in range(3):
        for male in (True, False):
            baby = render_hand(seed, 128, age_months=12, male=male)
            present = {c for c in CARPALS if c in baby.polygons}
            assert "Pisiform" not in present and "Scaphoid" not in present and "Lunate" not in present
            assert {"Capitate", "Hamate"} <= present
            teen = render_hand(seed, 128, age_months=192, male=male)
            assert all(c in teen.polygons for c in CARPALS), [c for c in CARPALS if c not in teen.polygons]


def test_growth_plates_open_in_children_closed_in_adults():
    child = render_hand(3, 512, age_months=96, male=True)
    open_ = {c: d for c, d in child.physes.items() if d["open"]}
    assert {"Radius", "finger-6", "finger-7", "finger-10"} <= set(open_)
    img = child.image.astype(np.float64)

    def val(p):
        x, y = int(round(p[0])), int(round(p[1]))
        return img[y - 1:y + 2, x - 1:x + 2].mean()

    darker = [val(d["gap"]) < min(val(d["shaft"]), val(d["epiphysis"])) for d in open_.values()]
    assert np.mean(darker) > 0.6, darker
    assert len(child.polygons["finger-6"]) == 2          # shaft and epiphysis, a gap between
    adult = render_hand(3, 256, age_months=226, male=False)
    assert not any(d["open"] for d in adult.physes.values())
    assert all(len(adult.polygons[c]) == 1 for c in ("finger-6", "finger-7", "Radius", "Ulna"))


def test_age_is_recoverable_from_the_image():
    from scipy.stats import spearmanr

    ages, carpal_frac = [], []
    for i in range(40):
        age = int(np.random.default_rng(i).integers(1, 229))
        ph = render_hand(1000 + i, 128, age_months=age)
        m = ph.masks
        ages.append(age)
        carpal_frac.append(m[19:27].sum() / max(int(m.sum()), 1))
    rho = spearmanr(ages, carpal_frac)[0]
    assert rho > 0.8, rho


def test_sizes_and_sides():
    for size in (64, 200):
        ph = render_hand(1, size, age_months=120, side="R")
        assert ph.image.shape == (size, size) and ph.image.dtype == np.uint8
        assert ph.masks.shape == (29, size, size)
        assert ph.side == "R" and 0 < ph.spacing_mm < 10
    # a right hand is mirrored: the thumb lies on the left of the little finger
    left = render_hand(2, 128, age_months=150, side="L")
    right = render_hand(2, 128, age_months=150, side="R")
    assert left.keypoints["TIP1"][0] > left.keypoints["TIP5"][0]
    assert right.keypoints["TIP1"][0] < right.keypoints["TIP5"][0]


def test_film_lifts_the_background_and_leaves_the_rest():
    """``film=1``: a grey background like the scanned Digital Hand Atlas films; the labels do not move."""
    import pytest

    digital = render_hand(7, 128, age_months=150)
    again = render_hand(7, 128, age_months=150, film=0.0)
    assert np.array_equal(digital.image, again.image)            # film=0 draws nothing: same image as ever
    film = render_hand(7, 128, age_months=150, film=1.0)
    background = digital.masks.max(0) == 0
    outside = background & (digital.image < 30)                 # away from soft tissue and markers
    assert outside.sum() > 500
    assert np.median(digital.image[outside]) < 20
    assert 0.15 * 255 - 2 <= np.median(film.image[outside]) <= 0.45 * 255
    assert film.keypoints == digital.keypoints and film.polygons.keys() == digital.polygons.keys()
    with pytest.raises(ValueError, match="film"):
        render_hand(7, 64, film=1.5)
