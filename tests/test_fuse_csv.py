"""CSV-level fusion (tools/fuse.py): equals array fusion of the decoded masks, streams, fails clearly."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from ensembles.hard import fuse_csvs, hard_vote, vote_rles, weighted_vote_rles
from ensembles.weighted import threshold, weighted_mean
from tasks.formats import FormatError
from tasks.formats.handbones import CLASSES
from tasks.rle import decode, encode
from engine.cli import run_main
from tasks.submission import AtomicCSVWriter, iter_images
from tools.fuse import main


def fuse_main(argv: list[str]) -> int:
    """tools/fuse.py as the command line runs it."""
    return run_main(main, argv)

H, W = 12, 10


def _masks(rng, n_images: int, density: float) -> dict[str, np.ndarray]:
    out = {}
    for i in range(n_images):
        m = (rng.random((len(CLASSES), H, W)) < density).astype(np.uint8)
        m[0, -1, -1] = 1  # a run that ends on the last pixel
        m[1] = 0  # an empty mask
        out[f"image{i:013d}.png"] = m
    return out


def _write_csv(path: Path, masks: dict[str, np.ndarray], order: list[str] | None = None) -> Path:
    with AtomicCSVWriter(path) as w:
        for name in order or list(masks):
            w.write_image(name, [encode(m) for m in masks[name]])
    return path


def _members(tmp_path: Path, n_members: int, n_images: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    masks = [_masks(rng, n_images, d) for d in np.linspace(0.2, 0.6, n_members)]
    paths = [_write_csv(tmp_path / f"m{k}.csv", m) for k, m in enumerate(masks)]
    return masks, paths


def _read(path: Path) -> dict[str, np.ndarray]:
    return {name: np.stack([decode(r, H, W) for r in rles]) for name, rles in iter_images(path)}


@pytest.mark.parametrize("n_members", [2, 3, 5])
def test_csv_hard_vote_equals_array_vote(tmp_path, n_members):
    masks, paths = _members(tmp_path, n_members)
    for k in range(1, n_members + 1):
        out = tmp_path / f"vote{k}.csv"
        assert fuse_csvs(paths, out, "hard", min_votes=k, sizes=lambda name: (H, W)) == 3
        fused = _read(out)
        for name in masks[0]:
            np.testing.assert_array_equal(fused[name], hard_vote([m[name] for m in masks], k))


def test_csv_soft_and_weighted_equal_array_fusion(tmp_path):
    masks, paths = _members(tmp_path, 5)
    fuse_csvs(paths, tmp_path / "soft.csv", "soft", threshold=0.6)
    weights = [3, 1, 0, 2, 1]
    fuse_csvs(paths, tmp_path / "w.csv", "weighted", weights=weights, threshold=0.5)
    soft, weighted = _read(tmp_path / "soft.csv"), _read(tmp_path / "w.csv")
    for name in masks[0]:
        stack = [m[name] for m in masks]
        np.testing.assert_array_equal(soft[name], threshold(weighted_mean(stack), 0.6))
        np.testing.assert_array_equal(soft[name], hard_vote(stack, 4))  # > 0.6 of 5 is 4 votes
        np.testing.assert_array_equal(weighted[name], threshold(weighted_mean(stack, weights), 0.5))


def test_per_class_weights_select_sources(tmp_path):
    masks, paths = _members(tmp_path, 2)
    table = np.zeros((2, len(CLASSES)))
    table[0, :19] = 1
    table[1, 19:] = 1
    fuse_csvs(paths, tmp_path / "sel.csv", "weighted", weights=table, threshold=0.5, sizes=lambda name: (H, W))
    fused = _read(tmp_path / "sel.csv")
    for name in masks[0]:
        np.testing.assert_array_equal(fused[name][:19], masks[0][name][:19])
        np.testing.assert_array_equal(fused[name][19:], masks[1][name][19:])


def test_rle_votes_handle_edges_and_ties():
    n = 20
    full = encode(np.ones(n, np.uint8))
    last = "20 1"
    assert vote_rles([full, last, ""], 2, n) == "20 1"
    assert vote_rles([full, last, ""], 1, n) == "1 20"
    assert vote_rles(["1 5", "6 5"], 1, n) == "1 10"  # touching runs merge
    assert vote_rles(["1 5", "6 5"], 2, n) == ""
    assert weighted_vote_rles(["1 4", "3 4"], [1, 1], 0.5, n) == "3 2"  # 0.5 alone is a tie: background
    with pytest.raises(FormatError, match="a.csv: img cls: RLE run ends at pixel 21"):
        vote_rles(["20 2", ""], 1, n, members=["a.csv", "b.csv"], where="img cls")
    with pytest.raises(FormatError, match="unsorted or overlapping"):
        vote_rles(["5 2 1 2", ""], 1, n)


def test_csvs_in_different_orders_fuse_in_the_first_csvs_order(tmp_path):
    masks, paths = _members(tmp_path, 3)
    names = list(masks[0])
    _write_csv(paths[1], masks[1], order=names[::-1])
    out = tmp_path / "out.csv"
    fuse_csvs(paths, out, "hard")
    fused = _read(out)
    assert list(fused) == names
    for name in names:
        np.testing.assert_array_equal(fused[name], hard_vote([m[name] for m in masks]))


def _rows(path: Path) -> list[str]:
    return path.read_text().splitlines()


@pytest.mark.parametrize("damage, message", [
    (lambda rows: rows[:10] + rows[11:], r"m1.csv:\d+: image image0000000000000.png has 28 rows"),
    (lambda rows: rows + rows[1:30], r"m1.csv:\d+: rows of image image0000000000000.png are not contiguous"),
    (lambda rows: rows[:-29], r"m1.csv: no rows for 1 image\(s\) the others have, e.g. image0000000000002.png"),
    (lambda rows: rows[:3] + [rows[3].replace("finger-3", "finger-9")] + rows[4:], r"m1.csv: image .* expected .*finger-3"),
    (lambda rows: ["id,class,rle"] + rows[1:], r"m1.csv: header must be image_name,class,rle"),
])
def test_bad_csvs_are_named_and_nothing_is_written(tmp_path, damage, message):
    masks, paths = _members(tmp_path, 3)
    paths[1].write_text("\n".join(damage(_rows(paths[1]))) + "\n")
    out = tmp_path / "out.csv"
    with pytest.raises(FormatError, match=message):
        fuse_csvs(paths, out, "hard")
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))


def test_extra_image_in_one_csv_is_an_error(tmp_path):
    masks, paths = _members(tmp_path, 3)
    masks[2]["extra.png"] = masks[2][next(iter(masks[2]))]
    _write_csv(paths[2], masks[2])
    with pytest.raises(FormatError, match="m2.csv: 1 image\\(s\\) the others lack, e.g. extra.png"):
        fuse_csvs(paths, tmp_path / "o.csv", "hard")


@pytest.mark.parametrize("args, message", [
    (["weighted", "--weights", "1", "2"], "got weights of shape"),
    (["weighted", "--weights", "1", "-1", "1"], "weight of .*m1.csv is negative"),
    (["weighted", "--weights", "0", "0", "0"], "all weights are zero"),
    (["weighted"], "needs --weights"),
    (["hard", "--min-votes", "4"], "between 1 and 3"),
    (["soft", "--min-votes", "2"], "--min-votes is for 'hard'"),
    (["hard", "--size", "3x3"], "beyond the image \\(9 pixels\\)"),
])
def test_cli_bad_input_exits_2_with_a_named_error(tmp_path, capsys, args, message):
    _, paths = _members(tmp_path, 3)
    out = tmp_path / "o.csv"
    assert fuse_main([args[0], *map(str, paths), "-o", str(out), *args[1:]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:")
    assert re.search(message, err), err
    assert not out.exists()


def test_cli_hard_vote_prints_the_rule_and_writes(tmp_path, capsys):
    masks, paths = _members(tmp_path, 4)
    out = tmp_path / "o.csv"
    assert fuse_main(["soft", *map(str, paths), "-o", str(out), "--size", f"{H}x{W}"]) == 0
    assert "at least 3 of 4 votes" in capsys.readouterr().out
    fused = _read(out)
    for name in masks[0]:
        np.testing.assert_array_equal(fused[name], hard_vote([m[name] for m in masks], 3))


def _put_rle(path: Path, image: str, cls: str, rle: str) -> int:
    """Replace the RLE of one row of a submission; returns that row's line number (1 = header)."""
    rows = _rows(path)
    k = next(i for i, row in enumerate(rows) if row.startswith(f"{image},{cls},"))
    rows[k] = f"{image},{cls},{rle}"
    path.write_text("\n".join(rows) + "\n")
    return k + 1


def test_outvoted_out_of_bounds_rle_is_an_error_naming_file_and_line(tmp_path, capsys):
    masks, paths = _members(tmp_path, 3)
    image = list(masks[0])[1]
    # m0 and m1 have nothing in Trapezium; m2's lone run (beyond the 120 pixels) is outvoted 2 to 1
    for p in paths[:2]:
        _put_rle(p, image, "Trapezium", "")
    line = _put_rle(paths[2], image, "Trapezium", f"{H * W - 2} 5")
    out = tmp_path / "o.csv"
    with pytest.raises(FormatError, match=rf"m2.csv:{line}: {image} Trapezium: RLE run ends at pixel {H * W + 2} "
                                          rf"beyond the image \({H * W} pixels\)"):
        fuse_csvs(paths, out, "hard", min_votes=2, sizes=lambda name: (H, W))
    assert fuse_main(["hard", *map(str, paths), "-o", str(out), "--size", f"{H}x{W}"]) == 2
    assert re.search(rf"^error: \S*m2.csv:{line}: {image} Trapezium: RLE run ends", capsys.readouterr().err)
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))
    _put_rle(paths[2], image, "Trapezium", "")
    assert fuse_main(["hard", *map(str, paths), "-o", str(out), "--size", f"{H}x{W}"]) == 0


@pytest.mark.parametrize("args", [["hard", "--min-votes", "1"], ["soft", "--threshold", "0.2"],
                                  ["weighted", "--weights", "3", "1", "1"]])
def test_a_lone_deciding_member_needs_sizes(tmp_path, capsys, args):
    masks, paths = _members(tmp_path, 3)
    out = tmp_path / "o.csv"
    assert fuse_main([args[0], *map(str, paths), "-o", str(out), *args[1:]]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {out}: with ") and "give the image sizes (tools/fuse.py --images or --size)" in err
    assert not out.exists()
    assert fuse_main([args[0], *map(str, paths), "-o", str(out), *args[1:], "--size", f"{H}x{W}"]) == 0
    assert set(_read(out)) == set(masks[0])


def test_majority_without_sizes_is_still_allowed(tmp_path):
    masks, paths = _members(tmp_path, 3)
    out = tmp_path / "o.csv"
    assert fuse_main(["hard", *map(str, paths), "-o", str(out), "--min-votes", "2"]) == 0
    fused = _read(out)
    for name in masks[0]:
        np.testing.assert_array_equal(fused[name], hard_vote([m[name] for m in masks], 2))
