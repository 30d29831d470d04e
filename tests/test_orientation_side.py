"""Orientation heuristic: the label algebra of the dihedral augmentation, the uncertain side and the burnt-in
marker (the learned classifier is a task of its own: tests/test_orientation_task.py)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from tasks.orientation.heuristic import (DIHEDRAL, DIHEDRAL_LABELS, Orientation, apply_orientation, detect_orientation,
                               dihedral_label, dihedral_view, evaluate, rotate_quarters)
from tasks.orientation.marker import find_side_marker
from tasks.preprocess import Preprocess


def test_dihedral_labels_stand_every_view_up_exactly():
    """For every class and every turn/mirror, standing the view up with the implied label (and
    mirroring a right hand into a left one) gives back exactly the upright image."""
    upright = np.random.default_rng(0).integers(0, 256, (5, 7), dtype=np.uint8)   # no symmetry at all
    for label in range(12):
        truth = Orientation.from_label(label)
        base = upright[:, ::-1] if truth.side == "right" else upright
        image = rotate_quarters(base, -truth.rotation)                  # an image of class ``label``
        assert np.array_equal(apply_orientation(image, truth, mirror_to_left=True), upright)
        for k, m in DIHEDRAL:
            view, new = dihedral_view(image, k, m), Orientation.from_label(dihedral_label(label, k, m))
            standing = apply_orientation(view, new, mirror_to_left=True)
            if truth.side == "two":   # a mirrored two-hand film stays two hands, itself mirrored
                assert new.side == "two"
                assert np.array_equal(standing, upright[:, ::-1] if m else upright)
            else:
                assert new.side == (truth.side if not m else {"left": "right", "right": "left"}[truth.side])
                assert np.array_equal(standing, upright)


def test_dihedral_label_table():
    assert dihedral_label(5, 0, True) == 11      # left, needs 90 cw; mirrored: right, needs 90 ccw
    assert dihedral_label(4, 1, False) == 7      # upright left turned cw needs 90 ccw
    assert dihedral_label(0, 2, True) == 2       # two hands: 180 either way
    assert DIHEDRAL_LABELS.shape == (8, 12)
    assert all(sorted(row) == list(range(12)) for row in DIHEDRAL_LABELS.tolist())   # each view permutes the classes
    assert DIHEDRAL_LABELS[0].tolist() == list(range(12))


def _hand_without_thumb(size: int = 256) -> np.ndarray:
    """A palm with four parallel fingers pointing up, no thumb, no marker."""
    image = np.full((size, size), 20, np.uint8)
    cv2.circle(image, (128, 170), 40, 200, -1)
    cv2.rectangle(image, (100, 190), (156, 255), 200, -1)               # forearm
    for x in (98, 118, 138, 158):
        cv2.rectangle(image, (x - 6, 60), (x + 6, 160), 200, -1)
    return image


def test_side_without_thumb_or_marker_is_uncertain_never_left():
    image = _hand_without_thumb()
    found = detect_orientation(image)
    assert found.rotation == 0
    assert (found.side, found.side_source, found.label, found.confident) == ("uncertain", "none", None, False)
    turned = detect_orientation(rotate_quarters(image, 1))
    assert (turned.rotation, turned.side) == (3, "uncertain")
    assert detect_orientation(np.zeros((64, 64), np.uint8)).side == "uncertain"
    # a preprocessing that mirrors right hands leaves an uncertain side as it is
    out = Preprocess({"orientation": "rotate_mirror"}).run(image)
    assert out.orientation.side == "uncertain" and np.array_equal(out.image, image)
    result = evaluate([("x", image, Orientation(0, "left"))])
    assert (result["uncertain"], result["side_acc"], result["rotation_acc"]) == (1, 0.0, 1.0)


def test_learned_side_is_asked_only_when_the_hands_and_marker_leave_it_open():
    calls = []

    def classifier(image: np.ndarray) -> Orientation:
        calls.append(image.shape)
        return Orientation(2, "right", side_source="learned")

    found = detect_orientation(_hand_without_thumb(), classifier=classifier)
    assert (found.rotation, found.side, found.side_source, found.label) == (0, "right", "learned", 8)
    out = Preprocess({"orientation": "rotate_mirror"}, classifier=classifier).run(_hand_without_thumb())
    assert np.array_equal(out.image, _hand_without_thumb()[:, ::-1])    # now a right hand: mirrored
    assert len(calls) == 2


def _film_with_letter(letter: str, quarters: int = 0, mirror: bool = False) -> np.ndarray:
    rng = np.random.default_rng(1)
    image = rng.integers(10, 60, (400, 600), dtype=np.uint8)
    patch = np.zeros((60, 60), np.uint8)
    cv2.putText(patch, letter, (8, 52), cv2.FONT_HERSHEY_SIMPLEX, 1.8, 255, 6)
    image[300:360, 480:540] = np.maximum(image[300:360, 480:540], dihedral_view(patch, quarters, mirror))
    return image


def test_marker_detector_reads_a_rendered_letter():
    assert find_side_marker(_film_with_letter("R")) == "right"
    assert find_side_marker(_film_with_letter("R", quarters=1)) == "right"
    assert find_side_marker(_film_with_letter("L", quarters=2, mirror=True)) == "left"
    assert find_side_marker(_film_with_letter("")) is None
    # the marker decides an uncertain side
    film = _film_with_letter("R")
    film[:256, :256] = np.maximum(film[:256, :256], _hand_without_thumb())
    found = detect_orientation(film)
    assert (found.side, found.side_source) == ("right", "marker")


def test_eval_cli_learned_method_needs_a_model(tmp_path, capsys):
    from tools.orientation_eval import main

    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path), "--method", "learned"])
    assert exit_.value.code == 2
    assert "--method learned needs --model CKPT" in capsys.readouterr().err
