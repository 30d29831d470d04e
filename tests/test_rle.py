import numpy as np
import pytest

from tasks.formats import FormatError
from tasks.rle import decode, encode, encode_many


def baseline_encode(mask: np.ndarray) -> str:
    pixels = np.concatenate([[0], mask.flatten(), [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (64, 64), (33, 17)])
def test_round_trip_random_masks_matches_reference(shape):
    rng = np.random.default_rng(0)
    for density in (0.0, 0.05, 0.5, 0.95, 1.0):
        mask = (rng.random(shape) < density).astype(np.uint8)
        rle = encode(mask)
        assert rle == baseline_encode(mask)
        np.testing.assert_array_equal(decode(rle, *shape), mask)


def test_run_ending_on_last_pixel():
    mask = np.zeros((4, 4), np.uint8)
    mask[3, 2:] = 1
    mask[0, 0] = 1
    rle = encode(mask)
    assert rle == "1 1 15 2"
    np.testing.assert_array_equal(decode(rle, 4, 4), mask)
    full = np.ones((3, 3), np.uint8)
    assert encode(full) == "1 9"
    np.testing.assert_array_equal(decode("1 9", 3, 3), full)


def test_empty_mask_is_empty_string():
    assert encode(np.zeros((5, 5), bool)) == ""
    assert decode("", 5, 5).sum() == 0


def test_bool_and_255_masks_encode_alike():
    mask = np.zeros((9, 11), np.uint8)
    mask[2:5, 3:8] = 1
    assert encode(mask.astype(bool)) == encode(mask * 255) == encode(mask)
    assert encode_many(np.stack([mask, mask])) == [encode(mask)] * 2


@pytest.mark.parametrize("rle, message", [
    ("1 10", "beyond"),          # runs past the end of a 3x3 image
    ("5 2 1 1", "unsorted"),
    ("1 3 2 2", "overlapping"),
    ("0 2", ">= 1"),
    ("1 2 3", "odd"),
    ("1 x", "non-integer"),
])
def test_decode_rejects_bad_rle(rle, message):
    with pytest.raises(FormatError, match=message):
        decode(rle, 3, 3, where="sub.csv:2")


def test_runs_torch_equals_numpy_encoder():
    import torch

    from tasks.rle import format_runs, runs_torch

    rng = np.random.default_rng(1)
    masks = rng.random((5, 13, 11)) < 0.3
    masks[2] = False
    masks[3] = True
    masks[4, -1, -1] = True
    assert [format_runs(r) for r in runs_torch(torch.from_numpy(masks))] == [encode(m) for m in masks]


def test_decode_paths_agree_few_and_many_runs():
    """The per-run slice fill (few runs) and the coverage pass (many runs) give the same masks, last pixel included."""
    rng = np.random.default_rng(3)
    few = np.zeros((128, 128), np.uint8)
    few[10:20, 5:30] = 1
    few[-1, -3:] = 1  # a run ending on the last pixel
    noisy = (rng.random((128, 128)) > 0.5).astype(np.uint8)
    noisy[-1, -1] = 1
    for mask in (few, noisy, np.zeros((128, 128), np.uint8), np.ones((128, 128), np.uint8)):
        rle = encode(mask)
        assert np.array_equal(decode(rle, 128, 128), mask)
    assert len(encode(noisy).split()) // 2 > 1024, "the noisy mask must take the many-runs path"


def test_a_striped_2048_mask_round_trips_through_the_submission_csv(tmp_path):
    """A striped 2048² mask's RLE (1024 x 1024 runs, about 11 MB of text) is far over csv's default field limit
    of 131072 characters; writing, reading back (in a fresh process, whose csv module starts at the default) and
    decoding gives the same mask, the last pixel included."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tasks.formats.handbones import CLASSES
    from tasks.submission import AtomicCSVWriter

    mask = np.zeros((2048, 2048), np.uint8)
    mask[:, 1::2] = 1
    rle = encode(mask)
    assert len(rle) > 131072 * 50
    path = tmp_path / "sub.csv"
    with AtomicCSVWriter(path) as writer:
        writer.write_image("a.png", [rle] + [""] * (len(CLASSES) - 1))
    check = (
        "import sys, numpy as np\n"
        "from tasks.submission import iter_images\n"
        "from tasks.rle import decode\n"
        "(name, rles), = iter_images(sys.argv[1])\n"
        "mask = decode(rles[0], 2048, 2048)\n"
        "assert name == 'a.png' and mask[:, 1::2].all() and not mask[:, ::2].any() and mask[-1, -1] == 1\n")
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", check, str(path)], cwd=root, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr
