"""The local leaderboard's public/private halves are split by patient, the same way for all three tasks,
and stably (a hash of the patient id, not the order of the names or a random generator)."""
from __future__ import annotations

import json
import random

import cv2
import numpy as np
import pytest

from tasks.formats import aasce, dha, rsna, shs
from tasks.formats.handbones import CLASSES
from tasks.keypoint_labels import write_wide
from tasks.keypoint_sets import AASCE68, DHA37, SHS15
from tasks.rle import encode
from tasks.scoring import public_private_split
from tools import score


def test_each_format_names_the_patient_of_an_image():
    assert shs.patient_of("test_img5_L.png") == shs.patient_of("test_img5_R") == "test_img5"
    assert shs.patient_of("test_img4_L.png") != shs.patient_of("test_img5_L.png")
    assert aasce.patient_of("sunhl-1th-03-Jan-2017-165 A AP.jpg") == aasce.patient_of("sunhl-1th-04-Jan-2017-165 B AP")
    assert aasce.patient_of("sunhl-1th-03-Jan-2017-164 A AP.jpg") == "patient-164"
    assert dha.patient_of("3229.png") == dha.patient_of("3229") == "3229"
    assert rsna.patient_of("1440") == "1440"
    assert (SHS15.patient_of, DHA37.patient_of, AASCE68.patient_of) == (shs.patient_of, dha.patient_of,
                                                                        aasce.patient_of)


def hands(n_patients: int) -> list[str]:
    return [f"test_img{i}_{side}.png" for i in range(n_patients) for side in "LR"]


def test_both_hands_of_a_patient_land_in_one_half_and_the_halves_are_even():
    for n in (2, 7, 50, 201):
        names = hands(n)
        public, private = public_private_split(names, shs.patient_of)
        assert public | private == set(names) and not public & private
        for i in range(n):
            assert (f"test_img{i}_L.png" in public) == (f"test_img{i}_R.png" in public)
        assert len(public) - len(private) in (0, 2)         # half the patients each, public the extra one
    ids = [str(1000 + i) for i in range(101)]               # one image a patient: half and half, public the odd one
    public, private = public_private_split(ids, rsna.patient_of)
    assert (len(public), len(private)) == (51, 50)
    uneven = [f"ID{p:03d}/{k}.png" for p in range(40) for k in range(1 + p % 3)]   # 1-3 images a patient
    public, _ = public_private_split(uneven, lambda n: n.split("/")[0])
    assert len(uneven) / 2 <= len(public) < len(uneven) / 2 + 3


def test_the_split_is_stable_and_independent_of_name_order():
    names = [f"ID{i:03d}/image{i}_{side}.png" for i in range(1, 11) for side in "LR"]
    public, _ = public_private_split(names, lambda n: n.split("/")[0])
    # pinned: the SHA-256 order of the patient ids, the same on every machine and in every release
    assert sorted({n.split("/")[0] for n in public}) == ["ID001", "ID007", "ID008", "ID009", "ID010"]
    shuffled = names[:]
    random.Random(3).shuffle(shuffled)
    assert public_private_split(shuffled, lambda n: n.split("/")[0])[0] == public
    assert public_private_split(hands(6), shs.patient_of)[0] == {
        "test_img0_L.png", "test_img0_R.png", "test_img4_L.png", "test_img4_R.png", "test_img5_L.png",
        "test_img5_R.png"}
    assert public_private_split([str(i) for i in range(6)], rsna.patient_of)[0] == {"0", "3", "4"}


def shs_set(root) -> list[str]:
    """Nine patients' SHS_NET sides. Every left hand is off by 1 px, every right hand by 3 px: a split by
    patient puts as many left as right hands in each half, so both halves score exactly 2 px (a split by
    image would not, in general)."""
    names = hands(9)
    truth = 50.0 + np.arange(len(names) * 15 * 2, dtype=float).reshape(len(names), 15, 2) % 400
    pred = truth.copy()
    pred[0::2, :, 0] += 1.0
    pred[1::2, :, 0] += 3.0
    (root / "gt").mkdir()
    write_wide(root / "gt" / "truth.csv", names, truth, SHS15)
    write_wide(root / "pred.csv", names, pred, SHS15)
    return [str(root / "pred.csv"), "--gt", str(root / "gt" / "truth.csv")]


def handbone_set(root, patients: int) -> None:
    """``patients`` x 2 hands of 16x16: finger-1 is the square [2, 9]^2. The left hand's submission hits it
    (Dice 1), the right hand's misses it (finger-1 Dice 0, image mean 28/29)."""
    square = [[2, 2], [9, 2], [9, 9], [2, 9]]
    mask = np.zeros((16, 16), np.uint8)
    mask[2:10, 2:10] = 1
    rows = ["image_name,class,rle"]
    for p in range(patients):
        for side in "LR":
            name = f"image{p}_{side}"
            (root / "test" / "DCM" / f"ID{p:03d}").mkdir(parents=True, exist_ok=True)
            (root / "test_gt" / "outputs_json" / f"ID{p:03d}").mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / "test" / "DCM" / f"ID{p:03d}" / f"{name}.png"), np.full((16, 16), 128, np.uint8))
            (root / "test_gt" / "outputs_json" / f"ID{p:03d}" / f"{name}.json").write_text(json.dumps(
                {"annotations": [{"id": "0", "type": "poly_seg", "attributes": {}, "points": square,
                                  "label": "finger-1"}]}))
            hit = encode(mask) if side == "L" else ""
            rows += [f"{name}.png,{c},{hit if c == 'finger-1' else ''}" for c in CLASSES]
    (root / "sub.csv").write_text("\n".join(rows) + "\n")


@pytest.mark.parametrize("task", ["segmentation", "keypoints", "boneage"])
def test_every_task_scores_its_halves_by_patient(task, tmp_path, capsys):
    if task == "segmentation":      # 5 patients, left hands Dice 1, right hands 28/29
        handbone_set(tmp_path, 5)
        args, expected = [str(tmp_path / "sub.csv"), "--gt", str(tmp_path / "test_gt")], [(1 + 28 / 29) / 2] * 2
    elif task == "keypoints":
        args, expected = shs_set(tmp_path), [2.0, 2.0]
    else:   # one hand a patient, id i off by i months; ids 0, 3, 4 are public (pinned above for the same ids)
        (tmp_path / "answers.csv").write_text("id,boneage,male\n" + "".join(f"{i},100,True\n" for i in range(6)))
        (tmp_path / "sub.csv").write_text("id,boneage\n" + "".join(f"{i},{100 + i}\n" for i in range(6)))
        args, expected = [str(tmp_path / "sub.csv"), "--gt", str(tmp_path / "answers.csv")], [7 / 3, 8 / 3]
    assert score.main(args + ["--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert [got["public"], got["private"]] == pytest.approx(expected)
