"""Drawing over radiographs: class masks (one colour a class, with a legend), keypoints with their names,
a title (:func:`overlay`), and a grid of such images (:func:`contact_sheet`). RGB uint8 in, RGB uint8 out."""
from __future__ import annotations

import cv2
import numpy as np

from tasks.formats.handbones import CLASSES


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
