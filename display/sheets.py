"""Contact sheets of any dataset the readers read: masks, keypoints and ages drawn over the radiographs
(``tools/visualize.py``). Each ``show_*`` returns one RGB tile an image; :func:`write_sheet` writes them."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from display.overlay import contact_sheet, overlay
from tasks.formats import FormatError
from core.atomic import write_bytes


def _months(age: float) -> str:
    return f"{age:g} m ({age / 12:.1f} y)"


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


def show_shs(csv_path, images_dir, n: int = 8, tile: int = 512, numbers: bool = False) -> list[np.ndarray]:
    """SHS_NET joints: the coordinate list ``csv_path`` over the images of ``images_dir`` (points named unless
    ``numbers``)."""
    from tasks.formats.shs import SHS15_NAMES, read_coords

    ids, coords = read_coords(csv_path)
    return show_landmarks(ids, coords, images_dir, None if numbers else SHS15_NAMES, n, tile, id_is_file=True)


def show_dha(csv_path, images_dir, n: int = 8, tile: int = 512, numbers: bool = False) -> list[np.ndarray]:
    """DHA landmarks of the images of ``images_dir`` that the table ``csv_path`` lists (points named unless
    ``numbers``)."""
    from tasks.formats.dha import read_all
    from tasks.keypoint_sets import get_set

    ids, coords = read_all(csv_path)
    have = {p.stem for p in Path(images_dir).iterdir()}
    pairs = [(i, c) for i, c in zip(ids, coords) if i in have]
    names = None if numbers else get_set("dha37").names
    return show_landmarks([i for i, _ in pairs], [c for _, c in pairs], images_dir, names, n, tile)


def write_sheet(tiles: list[np.ndarray], out: str | Path, cols: int | None = None, tile: int = 512) -> Path:
    """One tile as it is, several as a :func:`contact_sheet` (rows at most 720 px high), encoded by ``out``'s
    suffix and written atomically."""
    sheet = tiles[0] if len(tiles) == 1 else contact_sheet(tiles, cols, tile_height=min(tile, 720))
    ok, buf = cv2.imencode(Path(out).suffix or ".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"{out}: cannot encode an image of that type")
    return write_bytes(out, buf.tobytes())
