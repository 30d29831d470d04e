"""CSV-level fusion (tools/fuse.py): segmentation equals array fusion of the decoded masks and streams;
keypoints and bone ages fuse exactly; every task fails clearly and runs without torch."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ensembles.hard import fuse_csvs, hard_vote, vote_points, vote_rles, weighted_vote_rles
from ensembles.weighted import threshold, weighted_mean
from tasks.formats import FormatError
from tasks.formats.handbones import CLASSES
from tasks.formats.shs import SHS15_NAMES, read_submission, write_coords
from tasks.formats.submissions import read_ages, write_ages
from tasks.rle import decode, encode
from core.cli import run_main
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
        assert fuse_csvs(paths, out, "hard", min_votes=k, sizes=lambda name: (H, W), classes=CLASSES) == 3
        fused = _read(out)
        for name in masks[0]:
            np.testing.assert_array_equal(fused[name], hard_vote([m[name] for m in masks], k))


def test_csv_soft_and_weighted_equal_array_fusion(tmp_path):
    masks, paths = _members(tmp_path, 5)
    fuse_csvs(paths, tmp_path / "soft.csv", "soft", threshold=0.6, classes=CLASSES)
    weights = [3, 1, 0, 2, 1]
    fuse_csvs(paths, tmp_path / "w.csv", "weighted", weights=weights, threshold=0.5, classes=CLASSES)
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
    fuse_csvs(paths, tmp_path / "sel.csv", "weighted", weights=table, threshold=0.5, sizes=lambda name: (H, W), classes=CLASSES)
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
    fuse_csvs(paths, out, "hard", classes=CLASSES)
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
        fuse_csvs(paths, out, "hard", classes=CLASSES)
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))


def test_extra_image_in_one_csv_is_an_error(tmp_path):
    masks, paths = _members(tmp_path, 3)
    masks[2]["extra.png"] = masks[2][next(iter(masks[2]))]
    _write_csv(paths[2], masks[2])
    with pytest.raises(FormatError, match="m2.csv: 1 image\\(s\\) the others lack, e.g. extra.png"):
        fuse_csvs(paths, tmp_path / "o.csv", "hard", classes=CLASSES)


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
        fuse_csvs(paths, out, "hard", min_votes=2, sizes=lambda name: (H, W), classes=CLASSES)
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


# ------------------------------------------------------------------------------------------------
# Keypoints and bone age
# ------------------------------------------------------------------------------------------------

IDS = [f"{i}.png" for i in range(6)]


def _truth(seed: int = 0) -> np.ndarray:
    """``(6, 15, 2)`` coordinates with 3 decimals, as inference writes them."""
    return np.round(np.random.default_rng(seed).uniform(5, 500, (len(IDS), len(SHS15_NAMES), 2)), 3)


def _kp(path: Path, coords: np.ndarray, ids: list[str] = IDS, names=SHS15_NAMES) -> Path:
    write_coords(path, ids, coords, names, id_column="image_name", decimals=3)
    return path


@pytest.mark.parametrize("method, offsets, extra", [
    ("mean", [2, -2], []),
    ("median", [-3, -1, 0, 1, 500], []),  # the outlier moves the mean by 99 px, not the median
    ("weighted", [2, -6], ["--weights", "3", "1"]),
])
def test_keypoint_fusion_is_exact(tmp_path, method, offsets, extra):
    truth = _truth()
    paths = [_kp(tmp_path / f"kp{k}.csv", truth + d) for k, d in enumerate(offsets)]
    out = tmp_path / "out.csv"
    assert fuse_main([method, *map(str, paths), "-o", str(out), *extra]) == 0
    assert out.read_text() == _kp(tmp_path / "truth.csv", truth).read_text()  # the same text, digit for digit


def test_keypoint_hard_vote_keeps_agreeing_points_and_falls_back_to_the_median(tmp_path, capsys):
    truth = _truth()
    outlier = truth + 50
    outlier[:, 0] = truth[:, 0] + 0.5  # every image's first landmark: all three agree
    paths = [_kp(tmp_path / "a.csv", truth + 1), _kp(tmp_path / "b.csv", truth - 1), _kp(tmp_path / "c.csv", outlier)]
    out = tmp_path / "out.csv"
    assert fuse_main(["hard", *map(str, paths), "-o", str(out), "--radius", "3"]) == 0
    assert "hard: 90 of 90 points had at least 2 of 3 submissions within 3 px" in capsys.readouterr().out
    got = read_submission(out)[3]
    np.testing.assert_allclose(got[:, 1:], truth[:, 1:], atol=1e-9)  # a and b agree (2.8 px apart): their mean
    np.testing.assert_allclose(got[:, 0], truth[:, 0] + 0.5 / 3, atol=1e-6)  # all three agree: the mean of three
    assert fuse_main(["hard", *map(str, paths), "-o", str(out), "--radius", "2.5"]) == 0  # a, b 2.83 px apart
    assert "hard: 6 of 90 points" in capsys.readouterr().out  # the first landmark: c is within 2.5 px of a and b
    np.testing.assert_allclose(read_submission(out)[3][:, 1:], truth[:, 1:] + 1, atol=1e-9)  # median of 3


def test_vote_points_groups_around_one_member():
    xs = np.array([0.0, 3.0, 6.0, 100.0])
    pts = np.stack([xs, np.zeros(4)], axis=-1)[:, None]  # 4 members, one point each
    fused, agreed = vote_points(pts, radius=3, min_votes=3)  # member 1 has 0, 3 and 6 within 3 px
    assert agreed.tolist() == [True] and fused.tolist() == [[3.0, 0.0]]
    fused, agreed = vote_points(pts, radius=3, min_votes=4)
    assert agreed.tolist() == [False] and fused.tolist() == [[4.5, 0.0]]  # median of 0, 3, 6, 100
    fused, _ = vote_points(pts[[0, 1, 3]], radius=3, min_votes=2)  # groups {0, 3} twice: the same mean
    assert fused.tolist() == [[1.5, 0.0]]
    with pytest.raises(ValueError, match="radius must be"):
        vote_points(pts, radius=-1)


@pytest.mark.parametrize("method, extra, expected", [
    ("mean", [], "1,120\n2,36.5\n3,0.125\n"),
    ("median", [], "1,120\n2,36.5\n3,0.125\n"),
    ("weighted", ["--weights", "1", "1"], "1,120\n2,36.5\n3,0.125\n"),
    ("weighted", ["--weights", "2", "1"], "1,120.666667\n2,37.166667\n3,0.791667\n"),  # 6 decimals
])
def test_bone_age_fusion(tmp_path, method, extra, expected):
    truth = np.array([120.0, 36.5, 0.125])
    a = tmp_path / "a.csv"
    write_ages(a, ["1", "2", "3"], truth + 2)
    b = tmp_path / "b.csv"
    b.write_text("id,boneage,male\n3,-1.875,True\n2,34.5,False\n1,118,True\n")  # other order, a male column
    out = tmp_path / "out.csv"
    assert fuse_main([method, str(a), str(b), "-o", str(out), *extra]) == 0
    assert out.read_text() == "id,boneage\n" + expected
    assert read_ages(out)[0] == ["1", "2", "3"]


def _edit(path: Path, old: str, new: str) -> Path:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.mark.parametrize("damage, extra, message", [
    (lambda p: _edit(p, "W5_x", "W6_x"), [], r"kp1.csv: landmark W6 has no W6_y column"),
    (lambda p: _kp(p, _truth()[:, :14], names=SHS15_NAMES[:14]), [], r"kp1.csv: landmarks differ from \S*kp0.csv's: missing W5"),
    (lambda p: _kp(p, _truth()[:5], IDS[:5]), [], r"kp1.csv: no rows for 1 image\(s\) the others have, e.g. 5.png"),
    (lambda p: _kp(p, _truth(), IDS[:5] + ["6.png"]), [], r"kp1.csv: no rows for 1 image\(s\) the others have, e.g. 5.png"),
    (lambda p: _edit(p, "\n1.png,", "\n0.png,"), [], r"kp1.csv: line 3, column 'image_name': duplicate id '0.png'"),
    (lambda p: p.write_text(re.sub(r"\n2\.png,[^,]*,", "\n2.png,nan,", p.read_text())), [],
     r"kp1.csv: line 4, column 'IP_x': NaN or infinite"),
    (lambda p: p.write_text(re.sub(r",[^,]*\n3\.png,", ",12 px\n3.png,", p.read_text())), [],
     r"kp1.csv: line 4, column 'W5_y': not a number: '12 px'"),
    (lambda p: p, ["--weights", "1", "2", "3"], r"weights: got weights of shape \(3,\) for 2 members"),
    (lambda p: _write_csv(p, {"image0000000000000.png": np.zeros((len(CLASSES), 2, 2), np.uint8)}), [],
     r"kp1.csv: a segmentation submission, but \S*kp0.csv is a keypoints one"),
    (lambda p: write_ages(p, IDS, np.ones(len(IDS))), [], r"kp1.csv: a boneage submission"),
])
def test_keypoint_bad_input_is_one_line_naming_the_file(tmp_path, capsys, damage, extra, message):
    paths = [_kp(tmp_path / "kp0.csv", _truth()), _kp(tmp_path / "kp1.csv", _truth())]
    damage(paths[1])
    out = tmp_path / "out.csv"
    method = "weighted" if extra else "mean"
    assert fuse_main([method, *map(str, paths), "-o", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and re.search(message, err), err
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("args, message", [
    (["soft"], r"method 'soft': keypoints submissions fuse by mean, median, weighted, hard"),
    (["hard"], r"keypoints hard needs --radius"),
    (["mean", "--radius", "3"], r"--radius is for keypoints 'hard'"),
    (["mean", "--min-votes", "2"], r"--min-votes is for 'hard'"),
    (["median", "--threshold", "0.5"], r"--threshold, --images and --size are for segmentation"),
    (["mean", "--weights", "1", "1"], r"--weights is for 'weighted'"),
    (["hard", "--radius", "3", "--min-votes", "3"], r"min_votes must be an integer between 1 and 2"),
])
def test_keypoint_options_that_do_not_apply_are_refused(tmp_path, capsys, args, message):
    paths = [_kp(tmp_path / "kp0.csv", _truth()), _kp(tmp_path / "kp1.csv", _truth())]
    assert fuse_main([args[0], *map(str, paths), "-o", str(tmp_path / "o.csv"), *args[1:]]) == 2
    assert re.search(message, capsys.readouterr().err)


_IMPORTS = """
import importlib.util, runpy, sys
sys.argv = ["tools/fuse.py", *sys.argv[1:]]
try:
    runpy.run_path("tools/fuse.py", run_name="__main__")
except SystemExit as end:
    code = end.code
pending = importlib.util._LazyModule  # registered by core.cli.lazy_module and never touched: not loaded
heavy = [m for m in ("torch", "pandas", "cv2", "matplotlib", "timm", "segmentation_models_pytorch")
         if m in sys.modules and not isinstance(sys.modules[m], pending)]
print("heavy modules:", heavy)
sys.exit(code)
"""


def test_fuse_imports_no_torch_pandas_or_opencv(tmp_path):
    """The CLI starts fast and small: --help, a keypoint, a bone-age and a segmentation fuse load numpy only,
    and with an empty cache folder they do not fetch matplotlib to copy ultralytics' font (core.offline)."""
    kp = [_kp(tmp_path / f"kp{k}.csv", _truth() + k) for k in range(2)]
    ages = []
    for k in range(2):
        ages.append(tmp_path / f"ba{k}.csv")
        write_ages(ages[-1], ["1", "2"], [10.0 + k, 20.0])
    _, seg = _members(tmp_path, 3, n_images=1)
    runs = [["--help"], ["hard", *map(str, kp), "--radius", "2", "-o", str(tmp_path / "kp.csv")],
            ["median", *map(str, ages), "-o", str(tmp_path / "ba.csv")],
            ["hard", *map(str, seg), "-o", str(tmp_path / "seg.csv")]]
    cache = tmp_path / "cache"
    env = {**os.environ, "BONEHARNESS_CACHE": str(cache)}
    env.pop("YOLO_CONFIG_DIR", None)
    for argv in runs:
        done = subprocess.run([sys.executable, "-c", _IMPORTS, *argv], cwd=Path(__file__).resolve().parents[1],
                              capture_output=True, text=True, timeout=120, env=env)
        assert done.returncode == 0, done.stderr
        assert "heavy modules: []" in done.stdout, (argv, done.stdout)
    assert (tmp_path / "kp.csv").is_file() and (tmp_path / "ba.csv").is_file() and (tmp_path / "seg.csv").is_file()
    assert not cache.exists()
