"""The hand-bone segmentation competition layout (boostcamp): ``DCM/IDxxx/*.png`` + ``outputs_json/IDxxx/*.json``.

Each JSON holds ``{"annotations": [{"id", "type": "poly_seg", "attributes", "points": [[x, y], ...],
"label"}]}``; one polygon per bone. Classes overlap, so a label is a ``(29, H, W)`` stack of binary masks.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from core.atomic import write_text
from core.cli import lazy_module
from tasks.formats import FormatError
from tasks.formats.folds import group_folds
from tasks.formats.images import IMAGE_SUFFIXES
from tasks.formats.names import check_name
from tasks.formats.tables import TEXT_ENCODING

np = lazy_module("numpy")  # the segmentation spec reads CLASSES without it

CLASSES: tuple[str, ...] = (
    *(f"finger-{i}" for i in range(1, 20)),
    "Trapezium", "Trapezoid", "Capitate", "Hamate", "Scaphoid", "Lunate", "Triquetrum", "Pisiform",
    "Radius", "Ulna",
)
CLASS_INDEX: dict[str, int] = {name: i for i, name in enumerate(CLASSES)}
WRIST_CLASSES: tuple[str, ...] = CLASSES[19:27]
_PATIENT_RE = re.compile(r"^ID\d+$")


@dataclass(frozen=True)
class HandboneSample:
    """One radiograph: its image, its label file (None for a test image) and its patient (``IDxxx``)."""

    image_path: Path
    label_path: Path | None
    patient: str

    @property
    def name(self) -> str:
        """The image file name, the key of the submission CSV (``image_name``)."""
        return self.image_path.name


def files_under(folder: Path, suffixes: Sequence[str]) -> list[Path]:
    """Files below ``folder`` with one of ``suffixes`` (any case), sorted, as paths through ``folder``: symlinked
    folders (a patient folder linked from elsewhere) and files are followed; a link back to a folder above
    it is not entered again."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        here = Path(dirpath)
        above = {os.path.realpath(p) for p in (here, *here.parents[:len(here.relative_to(folder).parts)])}
        dirnames[:] = [d for d in dirnames if os.path.realpath(here / d) not in above]
        found.extend(here / f for f in filenames if Path(f).suffix.lower() in suffixes)
    return sorted(found)


def list_samples(root: str | os.PathLike, labels: str | os.PathLike | None = "auto") -> list[HandboneSample]:
    """Every image under ``root/DCM`` (sorted by patient, then name) with its JSON under ``labels``.

    ``labels="auto"`` takes ``root/outputs_json`` when it exists; ``None`` lists images only; a path
    takes the JSONs from there (e.g. ``test_gt/outputs_json``). An image without its JSON when labels
    are expected, or a JSON without its image, is an error naming the file; so is a file or patient folder
    name that cannot be a submission's ``image_name`` (not UTF-8, a control character: ``tasks.formats.names``).
    """
    root = Path(root)
    dcm = root / "DCM"
    if not dcm.is_dir():
        raise FormatError(f"{root}: no DCM/ folder (expected DCM/IDxxx/<image>.png)")
    if labels == "auto":
        label_dir = root / "outputs_json" if (root / "outputs_json").is_dir() else None
    else:
        label_dir = Path(labels) if labels is not None else None
    samples = []
    for image_path in files_under(dcm, IMAGE_SUFFIXES):
        rel = image_path.relative_to(dcm)
        check_name(image_path.name, str(image_path.parent))
        patient = check_name(rel.parts[0], str(dcm)) if len(rel.parts) > 1 else image_path.stem
        label_path = None
        if label_dir is not None:
            label_path = label_dir / rel.with_suffix(".json")
            if not label_path.is_file():
                raise FormatError(f"{image_path}: no label file at {label_path}")
        samples.append(HandboneSample(image_path, label_path, patient))
    if not samples:
        raise FormatError(f"{dcm}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
    if label_dir is not None:
        expected = {s.label_path for s in samples}
        for json_path in files_under(label_dir, (".json",)):
            if json_path not in expected:
                raise FormatError(f"{json_path}: label file has no image under {dcm}")
    return samples


def split_folds(samples: Sequence[HandboneSample], n_folds: int, fold: int) -> tuple[list[int], list[int]]:
    """Train/val indices of ``fold``: ``GroupKFold`` on the patient ID, so both hands stay together."""
    return group_folds([s.patient for s in samples], n_folds, fold, "patients (IDxxx folders)")


def read_polygons(path: str | os.PathLike, height: int | None = None, width: int | None = None
                  ) -> dict[str, list[np.ndarray]]:
    """Polygons per class name from one JSON. Checked: structure, labels, ≥3 points, inside the image, no
    annotation repeated. A class may hold several polygons (an unfused epiphysis is a separate piece of its bone)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding=TEXT_ENCODING))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FormatError(f"{path}: not a readable JSON file ({err})") from None
    except RecursionError:
        raise FormatError(f"{path}: not a label file (nested too deeply)") from None
    if not isinstance(data, dict) or "annotations" not in data:
        raise FormatError(f"{path}: no 'annotations' key")
    if not isinstance(data["annotations"], list):
        raise FormatError(f"{path}: 'annotations' is a {type(data['annotations']).__name__}, not a list")
    polygons: dict[str, list[np.ndarray]] = {}
    first: dict[tuple[str, bytes], int] = {}
    for k, ann in enumerate(data["annotations"]):
        where = f"{path}: annotation {k}"
        if not isinstance(ann, dict) or "label" not in ann or "points" not in ann:
            raise FormatError(f"{where}: needs 'label' and 'points'")
        label = ann["label"]
        if not isinstance(label, str) or label not in CLASS_INDEX:
            raise FormatError(f"{where}: unknown class label {label!r}")
        try:
            pts = np.asarray(ann["points"], dtype=np.float64)
        except (TypeError, ValueError):
            raise FormatError(f"{where} ({label}): points are not [[x, y], ...] numbers") from None
        if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 3:
            raise FormatError(f"{where} ({label}): a polygon needs at least 3 [x, y] points, got shape {pts.shape}")
        if not np.isfinite(pts).all():
            raise FormatError(f"{where} ({label}): NaN or infinite coordinate")
        if height is not None and width is not None:
            outside = (pts[:, 0] < -0.5) | (pts[:, 0] > width - 0.5 + 1) | (pts[:, 1] < -0.5) | (pts[:, 1] > height - 0.5 + 1)
            if outside.any():
                x, y = pts[outside][0]
                raise FormatError(f"{where} ({label}): point ({x:g}, {y:g}) outside the {width}x{height} image")
        key = (label, pts.tobytes())
        if key in first:
            raise FormatError(f"{where} ({label}): repeats annotation {first[key]} (same label, same points); "
                              "a bone is annotated once")
        first[key] = k
        polygons.setdefault(label, []).append(pts)
    return polygons


# How many polygons one bone may have: a long bone of a growing hand is annotated as its shaft and its
# epiphysis (the growth plate between them), a carpal bone as one piece.
MAX_PARTS: dict[str, int] = {c: 2 for c in CLASSES if c.startswith("finger-") or c in ("Radius", "Ulna")}


def mislabelled_bones(path: str | os.PathLike | None) -> list[str]:
    """A note (a list of one) when a label file lacks a bone while another label has more pieces than that bone
    has (:data:`MAX_PARTS`: the missing bone was probably annotated under the repeated label), naming the file
    and the bones; ``[]`` otherwise, and for no file. Such a file reads fine (a bone may be in several pieces, a child may lack one), so this is a
    warning, which the dataset integrity pass (``engine.run_folder.check_dataset``) prints and counts."""
    if path is None:
        return []
    polygons = read_polygons(path)
    missing = [c for c in CLASSES if c not in polygons]
    repeated = [f"{c} {len(p)} times" for c, p in polygons.items() if len(p) > MAX_PARTS.get(c, 1)]
    if not missing or not repeated:
        return []
    return [f"{path}: no annotation of {', '.join(missing)}, while {', '.join(repeated)} appears; a label may "
            "name the wrong bone"]


def rasterize(polygons: dict[str, list[np.ndarray]], height: int, width: int) -> np.ndarray:
    """``(29, H, W)`` uint8 masks (0/1) from polygons, in canonical class order."""
    masks = np.zeros((len(CLASSES), height, width), dtype=np.uint8)
    for label, polys in polygons.items():
        fill_polygons(masks[CLASS_INDEX[label]], polys)
    return masks


def fill_polygons(mask: np.ndarray, polygons: Sequence[np.ndarray]) -> np.ndarray:
    """Set the pixels of one class's ``polygons`` in its uint8 ``(H, W)`` ``mask`` to 1 (in place; returned)."""
    import cv2  # here, not at the top: the CSV tools read CLASSES without loading OpenCV

    for p in polygons:   # one call per polygon: a single call XORs overlapping polygons of a class
        cv2.fillPoly(mask, [np.round(p).astype(np.int32)], 1)
    return mask


def read_masks(path: str | os.PathLike, height: int, width: int) -> np.ndarray:
    """Read and rasterise one label file at the image's size."""
    return rasterize(read_polygons(path, height, width), height, width)


def write_polygons(path: str | os.PathLike, polygons: dict[str, list[np.ndarray]]) -> None:
    """Write a label JSON in the competition format, atomically, classes in canonical order."""
    path = Path(path)
    annotations = []
    for label in CLASSES:
        for k, pts in enumerate(polygons.get(label, [])):
            annotations.append({
                "id": f"{label}-{k}",
                "type": "poly_seg",
                "attributes": {},
                "points": [[int(round(x)), int(round(y))] for x, y in np.asarray(pts)],
                "label": label,
            })
    write_text(path, json.dumps({"annotations": annotations}))


def mask_to_polygons(mask: np.ndarray) -> list[np.ndarray]:
    """Outer contours of a binary mask as ``(N, 2)`` x,y polygons (≥3 points each)."""
    import cv2

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return [c[:, 0, :].astype(np.float64) for c in contours if len(c) >= 3]
