"""Fuzzing the readers of what the harness writes and reads back (Hypothesis): the three submission CSV kinds
and the prediction caches (segmentation ``.npz``, ``keypoints.npz``, ``boneage.csv``), mutated.

Properties as in ``test_fuzz_labels.py``: an equivalent change reads back equal; a corrupting one reads as
a well-formed result or ends in one FormatError naming the file; no name read leads out of its folder.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tasks.keypoints.cache import load_cache, save_cache
from tasks.segmentation.cache import save_probs
from tasks.segmentation.cache import CacheSpec, load_cached
from fuzzing import corrupted, equivalent, inside, outcome
from tasks.formats import FormatError, shs
from tasks.formats.handbones import CLASSES
from tasks.formats.submissions import read_ages, write_ages
from tasks.scoring import sniff_task
from tasks.keypoint_labels import write_wide
from tasks.keypoint_sets import get_set
from tasks.rle import encode, parse_runs
from tasks.submission import AtomicCSVWriter, iter_images

SIDE = 16
IMAGES = ["image1661130828152_R.png", "image1661130891365_L.png"]
MASKS = np.random.default_rng(0).random((len(IMAGES), len(CLASSES), SIDE, SIDE)) > 0.7
SHS15 = get_set("shs15")
POINTS = np.random.default_rng(1).uniform(0, 600, (2, len(SHS15), 2)).round(3)
AGES = np.array([180.5, 12.0])
PROBS = np.random.default_rng(2).random((len(CLASSES), 8, 8)).astype(np.float32)


def _written(write, name: str = "file") -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        write(path)
        return path.read_bytes()


def _write_segmentation(path: Path) -> None:
    with AtomicCSVWriter(path) as writer:
        for name, masks in zip(IMAGES, MASKS):
            writer.write_image(name, [encode(m) for m in masks])


SEGMENTATION = _written(_write_segmentation)
KEYPOINTS = _written(lambda p: write_wide(p, IMAGES, POINTS, SHS15))
BONEAGE = _written(lambda p: write_ages(p, ["1377", "1378"], AGES))
CACHE_SPEC = CacheSpec(29, "resize", 8)   # what the run of these entries predicts: 29 maps at its 8 px input
SEG_CACHE = _written(lambda p: save_probs(p, PROBS, (SIDE, SIDE)), "image.png.npz")
KP_CACHE = _written(lambda p: save_cache(p.parent, IMAGES, POINTS, np.ones((2, len(SHS15))), "shs15"),
                    "keypoints.npz")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz_outputs")


def read_segmentation(path: Path) -> list[tuple[str, list[np.ndarray]]]:
    """Every image's runs as ``(starts, ends)`` rows, checked as ``tools/validate_submission.py`` checks them
    against a SIDE x SIDE image."""
    return [(name, [np.stack(parse_runs(rle, SIDE * SIDE, f"{path}: {name} {cls}")) for cls, rle in zip(CLASSES, rles)])
            for name, rles in iter_images(path)]


@given(content=equivalent(SEGMENTATION))
@example(content=SEGMENTATION + b"\n")   # a trailing blank line was "expected 3 fields, got 0"
def test_a_segmentation_submission_reads_equal_after_an_equivalent_change(work, content):
    path = work / "eq_seg.csv"
    path.write_bytes(content)
    assert sniff_task(path) == "segmentation"
    expected = read_segmentation(_file(work, "seg.csv", SEGMENTATION))
    got = read_segmentation(path)
    assert [n for n, _ in got] == IMAGES
    assert all(np.array_equal(a, b) for (_, ra), (_, rb) in zip(got, expected) for a, b in zip(ra, rb))


@given(content=corrupted(SEGMENTATION))
@example(content=SEGMENTATION.replace(IMAGES[1].encode(), b"../outside.png"))   # an image_name that is a path
@example(content=SEGMENTATION.replace(b",finger-1,", b",finger-1,1 99999999999999999999999 ", 1))  # was an OverflowError
@example(content=SEGMENTATION.replace(b",finger-1,", b",finger-1,9223372036854775807 2 ", 1))  # wrapped round: accepted
def test_a_corrupted_segmentation_submission_reads_well_formed_or_is_named(work, content):
    path = _file(work, "bad_seg.csv", content)
    for read in (sniff_task, read_segmentation):
        result = outcome(lambda: read(path), path, (FormatError,))
        if read is read_segmentation and result is not None:
            assert all(inside(work, name) for name, _ in result)
            for _, runs in result:
                for starts, ends in runs:
                    assert ((0 <= starts) & (starts < ends) & (ends <= SIDE * SIDE)).all()


@given(content=equivalent(KEYPOINTS))
def test_a_keypoint_submission_reads_equal_after_an_equivalent_change(work, content):
    path = _file(work, "eq_kp.csv", content)
    assert sniff_task(path) == "keypoints"
    id_column, names, ids, coords = shs.read_submission(path)
    assert (id_column, tuple(names), ids) == ("image_name", SHS15.names, IMAGES)
    np.testing.assert_allclose(coords, POINTS)


@given(content=corrupted(KEYPOINTS))
@example(content=KEYPOINTS.replace(IMAGES[0].encode(), b"../x.png"))   # an image_name that is a path
def test_a_corrupted_keypoint_submission_reads_well_formed_or_is_named(work, content):
    path = _file(work, "bad_kp.csv", content)
    outcome(lambda: sniff_task(path), path, (FormatError,))
    result = outcome(lambda: shs.read_submission(path), path, (FormatError,))
    if result is not None:
        _, names, ids, coords = result
        assert coords.shape == (len(ids), len(names), 2) and np.isfinite(coords).all()
        assert all(inside(work, i) for i in ids)


@given(content=st.one_of(equivalent(BONEAGE), corrupted(BONEAGE)))
@example(content=b"id,boneage\n/etc/passwd,12\n")   # an id that is a path
def test_a_bone_age_submission_or_cache_reads_well_formed_or_is_named(work, content):
    path = _file(work, "boneage.csv", content)
    outcome(lambda: sniff_task(path), path, (FormatError,))
    result = outcome(lambda: read_ages(path), path, (FormatError,))
    if result is not None:
        ids, ages = result
        assert ages.shape == (len(ids),) and np.isfinite(ages).all()
        assert all(inside(work, f"{i}.png") for i in ids)
        if content in (BONEAGE, b"\xef\xbb\xbf" + BONEAGE):
            assert ids == ["1377", "1378"] and ages.tolist() == AGES.tolist()


@given(content=corrupted(SEG_CACHE))
@example(content=SEG_CACHE.replace(b"(29, 8, 8), }", b"(29, 8, 8), |", 1))   # was a tokenize.TokenError traceback
@example(content=SEG_CACHE.replace(b"PK\x01\x02-\x03-", b"PK\x01\x02-\x03m", 1))  # was "NotImplementedError: zip file version 10.9"
def test_a_corrupted_segmentation_cache_entry_reads_well_formed_or_is_named(work, content):
    path = _file(work, "image.png.npz", content)
    result = outcome(lambda: load_cached(path, "member m", CACHE_SPEC), path, (FormatError,))
    if result is not None:
        probs, size = result.probs, result.size
        assert probs.ndim == 3 and len(size) == 2
        assert probs.dtype == np.uint8 or np.isfinite(probs).all()


@given(content=corrupted(KP_CACHE))
@example(content=KP_CACHE[:len(KP_CACHE) // 2])   # a truncated keypoints.npz: was a BadZipFile traceback
def test_a_corrupted_keypoint_cache_reads_well_formed_or_is_named(work, content):
    path = _file(work, "keypoints.npz", content)
    result = outcome(lambda: load_cache(path), path, (FormatError,))
    if result is not None:
        names, coords, confidence, landmarks = result
        assert coords.shape[:1] == (len(names),) and coords.ndim == 3 and coords.shape[2] == 2
        assert confidence.shape == coords.shape[:2] and isinstance(landmarks, str)
        assert all(inside(work, n) for n in names)


def test_the_valid_caches_read_back(work):
    entry = load_cached(_file(work, "ok.npz", SEG_CACHE), "member m", CACHE_SPEC)
    probs, size = entry.probs, entry.size
    assert size == (SIDE, SIDE) and np.array_equal(probs, np.clip(np.rint(PROBS * 255), 0, 255).astype(np.uint8))
    names, coords, confidence, landmarks = load_cache(_file(work, "keypoints.npz", KP_CACHE))
    assert names == IMAGES and landmarks == "shs15" and np.array_equal(coords, POINTS) and (confidence == 1).all()


def _file(folder: Path, name: str, content: bytes) -> Path:
    path = folder / name
    path.write_bytes(content)
    return path
