#!/usr/bin/env python
"""Look at any dataset the readers read: masks, keypoints and ages drawn over the radiographs.

    python tools/visualize.py handbones DIR/handbones/train --n 8 -o sheet.png
    python tools/visualize.py handbones DIR/handbones/test --labels DIR/handbones/test_gt/outputs_json -o t.png
    python tools/visualize.py rsna DIR/boneage --n 8 -o ages.png            # or ../shared/data/real/rsna_boneage
    python tools/visualize.py shs  COORD_LIST.csv IMAGES_DIR -o joints.png
    python tools/visualize.py dha  ALL.csv IMAGES_DIR [--numbers] -o landmarks.png

Functions: :func:`overlay` (one image -> RGB uint8 with a legend) and :func:`contact_sheet` (a grid).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from tasks.formats.atomic import write_bytes
from tasks.formats.handbones import CLASSES

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # first: before tools/, whose phantom.py and leaderboard.py share the packages' names


from engine.cli import run_main  # noqa: E402
from tasks.formats import FormatError  # noqa: E402


def class_colours(n: int = len(CLASSES)) -> np.ndarray:
    """``(n, 3)`` uint8 RGB, distinct: fingers in warm/cool cycles, wrist bones in strong colours."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import colormaps

    cols = [colormaps["tab20"](i % 20)[:3] for i in range(19)] + \
           [colormaps["Set1"](i % 9)[:3] for i in range(8)] + [colormaps["Dark2"](i)[:3] for i in range(2)]
    cols = (np.array(cols[:n]) * 255).round().astype(np.uint8)
    return cols


def _to_rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    return image[..., :3].copy()


def _font(h: int) -> float:
    return max(0.3, h / 1400)


def overlay(image: np.ndarray, masks: np.ndarray | None = None, keypoints=None, names=None,
            title: str | None = None, legend: bool = True, alpha: float = 0.4, label_points: bool = True,
            max_side: int | None = None) -> np.ndarray:
    """Draw class masks (one colour per class, with a legend), keypoints (with names) and a title.

    ``masks``: ``(C, H, W)`` binary, classes in ``CLASSES`` order (or ``names`` when given with masks).
    ``keypoints``: dict name -> (x, y), or an ``(K, 2)`` array with ``names`` (indices when None).
    ``max_side`` downsizes the result (coordinates are scaled along). Returns RGB uint8.
    """
    rgb = _to_rgb(np.asarray(image))
    h, w = rgb.shape[:2]
    f = 1.0
    if max_side is not None and max(h, w) > max_side:
        f = max_side / max(h, w)
        rgb = cv2.resize(rgb, (int(round(w * f)), int(round(h * f))), interpolation=cv2.INTER_AREA)
        if masks is not None:
            masks = np.stack([cv2.resize(m.astype(np.uint8), (rgb.shape[1], rgb.shape[0]),
                                         interpolation=cv2.INTER_NEAREST) for m in masks])
        h, w = rgb.shape[:2]
    out = rgb.astype(np.float32)
    class_names = list(CLASSES)
    cols = class_colours(max(len(class_names), 1))
    present = []
    if masks is not None:
        masks = np.asarray(masks)
        if names is not None and keypoints is None:
            class_names = list(names)
            cols = class_colours(len(class_names)) if len(class_names) <= len(CLASSES) else \
                np.array([cols[i % len(cols)] for i in range(len(class_names))])
        for k in range(masks.shape[0]):
            m = masks[k].astype(bool)
            if not m.any():
                continue
            present.append(k)
            out[m] = out[m] * (1 - alpha) + cols[k % len(cols)] * alpha
        out = out.clip(0, 255).astype(np.uint8)
        for k in present:
            contours, _ = cv2.findContours(masks[k].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, contours, -1, tuple(int(c) for c in cols[k % len(cols)]), 1, cv2.LINE_AA)
    else:
        out = out.astype(np.uint8)
    if keypoints is not None:
        if isinstance(keypoints, dict):
            items = list(keypoints.items())
            if names is not None:
                items = [(n, keypoints[n]) for n in names if n in keypoints]
        else:
            arr = np.asarray(keypoints, dtype=np.float64).reshape(-1, 2)
            labels = list(names) if names is not None else [str(i) for i in range(len(arr))]
            items = list(zip(labels, arr))
        r = max(2, int(round(max(h, w) / 220)))
        fs = _font(max(h, w))
        for i, (name, (x, y)) in enumerate(items):
            p = (int(round(x * f)), int(round(y * f)))
            cv2.circle(out, p, r + 1, (0, 0, 0), -1, cv2.LINE_AA)
            cv2.circle(out, p, r, (255, 40, 40), -1, cv2.LINE_AA)
            if label_points:
                org = (p[0] + r + 2, p[1] - r)
                cv2.putText(out, str(name), org, cv2.FONT_HERSHEY_SIMPLEX, fs, (0, 0, 0), 3, cv2.LINE_AA)
                cv2.putText(out, str(name), org, cv2.FONT_HERSHEY_SIMPLEX, fs, (255, 255, 90), 1, cv2.LINE_AA)
    if masks is not None and legend and present:
        out = _add_legend(out, [class_names[k] if k < len(class_names) else str(k) for k in present],
                          [cols[k % len(cols)] for k in present])
    if title:
        out = _add_title(out, title)
    return out


def _add_legend(img: np.ndarray, labels: list[str], colours) -> np.ndarray:
    h = img.shape[0]
    row = max(10, min(22, h // max(len(labels), 1)))
    fs = row / 30
    width = int(row * 7.6)
    panel = np.full((h, width, 3), 255, np.uint8)
    for i, (lab, c) in enumerate(zip(labels, colours)):
        y = 4 + i * row
        if y + row > h:
            break
        cv2.rectangle(panel, (4, y + 2), (4 + row - 4, y + row - 2), tuple(int(v) for v in c), -1)
        cv2.putText(panel, lab, (row + 4, y + row - 5), cv2.FONT_HERSHEY_SIMPLEX, fs, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([img, panel], axis=1)


def _add_title(img: np.ndarray, title: str) -> np.ndarray:
    w = img.shape[1]
    bar = max(16, min(34, w // 16))
    fs = bar / 36
    (tw, _), _ = cv2.getTextSize(title, cv2.FONT_HERSHEY_SIMPLEX, fs, 1)
    if tw > w - 8:
        fs *= (w - 8) / tw
    panel = np.full((bar, w, 3), 255, np.uint8)
    cv2.putText(panel, title, (4, bar - bar // 4), cv2.FONT_HERSHEY_SIMPLEX, fs, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([panel, img], axis=0)


def contact_sheet(tiles: list[np.ndarray], cols: int | None = None, tile_height: int = 320,
                  pad: int = 4) -> np.ndarray:
    """A grid of RGB tiles resized to a common height (aspect kept), left to right, top to bottom."""
    if not tiles:
        raise ValueError("no images to show")
    cols = cols or int(np.ceil(np.sqrt(len(tiles))))
    rs = []
    for t in tiles:
        t = _to_rgb(t)
        s = tile_height / t.shape[0]
        rs.append(cv2.resize(t, (max(1, int(round(t.shape[1] * s))), tile_height), interpolation=cv2.INTER_AREA))
    tw = max(t.shape[1] for t in rs)
    rows = int(np.ceil(len(rs) / cols))
    sheet = np.full((rows * (tile_height + pad) + pad, cols * (tw + pad) + pad, 3), 255, np.uint8)
    for i, t in enumerate(rs):
        r, c = divmod(i, cols)
        y, x = pad + r * (tile_height + pad), pad + c * (tw + pad) + (tw - t.shape[1]) // 2
        sheet[y:y + tile_height, x:x + t.shape[1]] = t
    return sheet


def _months(age: float) -> str:
    return f"{age:g} m ({age / 12:.1f} y)"


# ---------------------------------------------------------------- datasets

def show_handbones(root, n: int = 8, labels="auto", tile: int = 512) -> list[np.ndarray]:
    from tasks.formats.handbones import list_samples, read_masks
    from tasks.formats.images import read_grey

    samples = list_samples(root, labels=labels)[:n]
    tiles = []
    for s in samples:
        img = read_grey(s.image_path)
        masks = read_masks(s.label_path, *img.shape) if s.label_path is not None else None
        tiles.append(overlay(img, masks, title=f"{s.patient}/{s.name}", max_side=tile, legend=tile >= 400))
    return tiles


def _rsna_tables(root: Path):
    for csv_name, img_dir in (("boneage-training-dataset.csv", "boneage-training-dataset"), ("labels.csv", "images"),
                              ("boneage-test-dataset.csv", "boneage-test-dataset")):
        if (root / csv_name).is_file() and (root / img_dir).is_dir():
            return root / csv_name, root / img_dir
    raise FormatError(f"{root}: no RSNA table with its image folder (boneage-training-dataset.csv + folder, "
                      f"or labels.csv + images/)")


def show_rsna(root, n: int = 8, tile: int = 512, by_age: bool = True) -> list[np.ndarray]:
    from tasks.formats.images import read_grey
    from tasks.formats.rsna import image_path, read_labels

    csv_path, img_dir = _rsna_tables(Path(root))
    df = read_labels(csv_path)
    if by_age and df["boneage"].notna().any():
        df = df.sort_values("boneage", kind="stable")
        idx = np.linspace(0, len(df) - 1, min(n, len(df))).round().astype(int)
        df = df.iloc[np.unique(idx)]
    else:
        df = df.head(n)
    tiles = []
    for rec in df.itertuples(index=False):
        img = read_grey(image_path(img_dir, rec.id))
        age = "?" if np.isnan(rec.boneage) else _months(rec.boneage)
        tiles.append(overlay(img, title=f"{rec.id}: {age} {'M' if rec.male else 'F'}", max_side=tile))
    return tiles


def show_landmarks(ids, coords, images_dir, names, n: int = 8, tile: int = 512, label_points=True,
                   id_is_file: bool = False) -> list[np.ndarray]:
    from tasks.formats.images import IMAGE_SUFFIXES, read_grey

    tiles = []
    for rid, c in list(zip(ids, coords))[:n]:
        path = Path(images_dir) / rid if id_is_file else next(
            (Path(images_dir) / f"{rid}{s}" for s in IMAGE_SUFFIXES if (Path(images_dir) / f"{rid}{s}").is_file()),
            Path(images_dir) / f"{rid}.png")
        img = read_grey(path)
        tiles.append(overlay(img, keypoints=c, names=names, title=str(rid), max_side=tile,
                             label_points=label_points))
    return tiles


SHEET_SUFFIXES = (".png", ".jpg", ".jpeg")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="kind", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--n", type=int, default=8, help="images to show")
    common.add_argument("-o", "--out", default="sheet.png", help="output PNG")
    common.add_argument("--tile", type=int, default=512, help="longest side of each tile")
    common.add_argument("--cols", type=int, default=None)
    p = sub.add_parser("handbones", parents=[common], help="DIR with DCM/ (+ outputs_json/)")
    p.add_argument("root")
    p.add_argument("--labels", default="auto", help="label folder (default: ROOT/outputs_json when present)")
    p = sub.add_parser("rsna", parents=[common], help="DIR with an RSNA CSV and its images")
    p.add_argument("root")
    for kind in ("shs", "dha"):
        p = sub.add_parser(kind, parents=[common], help=f"{kind.upper()} CSV + image folder")
        p.add_argument("csv")
        p.add_argument("images")
        p.add_argument("--numbers", action="store_true", help="label points by index instead of name")
    args = ap.parse_args(argv)
    if args.n < 1 or args.tile < 16:
        raise ValueError(f"--n {args.n} --tile {args.tile}: show at least 1 image, tiles of at least 16 px")
    if Path(args.out).suffix.lower() not in SHEET_SUFFIXES:
        raise ValueError(f"--out {args.out}: the sheet is an image; name it {' or '.join(SHEET_SUFFIXES)}")

    if args.kind == "handbones":
        tiles = show_handbones(args.root, args.n, labels=None if args.labels == "none" else args.labels, tile=args.tile)
    elif args.kind == "rsna":
        tiles = show_rsna(args.root, args.n, tile=args.tile)
    elif args.kind == "shs":
        from tasks.formats.shs import SHS15_NAMES, read_coords

        ids, coords = read_coords(args.csv)
        names = None if args.numbers else SHS15_NAMES
        tiles = show_landmarks(ids, coords, args.images, names, args.n, args.tile, id_is_file=True)
    else:
        from tasks.formats.dha import read_all
        from phantom.anatomy import DHA37_NAMES

        ids, coords = read_all(args.csv)
        have = {p.stem for p in Path(args.images).iterdir()}
        pairs = [(i, c) for i, c in zip(ids, coords) if i in have]
        names = None if args.numbers else DHA37_NAMES
        tiles = show_landmarks([i for i, _ in pairs], [c for _, c in pairs], args.images, names, args.n, args.tile)
    sheet = tiles[0] if len(tiles) == 1 else contact_sheet(tiles, args.cols, tile_height=min(args.tile, 720))
    ok, buf = cv2.imencode(Path(args.out).suffix or ".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"{args.out}: cannot encode an image of that type")
    write_bytes(args.out, buf.tobytes())
    print(f"wrote {args.out} ({len(tiles)} images)")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
