"""Landmark sets as data: names (= heatmap channel order), left/right flip pairs, skeleton edges.

A set is what the keypoint task needs to know about its landmarks: their names (the column stems of the
wide CSVs, ``<name>_x`` / ``<name>_y``), which pairs swap under a horizontal flip, which edges to draw,
the label file its folders usually hold, the SDR radii its scores report by default (px, and mm where the
pixel spacing is known: validation and ``tools/score.py`` alike) and the patient of an image in its
dataset's naming (folds and the public/private split keep a patient's images together). One hand on a radiograph has no left/right pairs: a flipped left
hand is a right hand with the same landmark names, so ``shs15`` and ``dha37`` flip with the identity.
A spine does have them (the left and right corners of each vertebra), so ``aasce68`` swaps.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from tasks.formats import aasce, dha, shs
from tasks.formats.images import stem


@dataclass(frozen=True)
class LandmarkSet:
    """Names in channel order, flip pairs and skeleton edges (both by name), the usual label file, the
    default SDR radii and the patient of an image name."""

    name: str
    names: tuple[str, ...]
    flip_pairs: tuple[tuple[str, str], ...] = ()
    skeleton: tuple[tuple[str, str], ...] = ()
    label_file: str = "labels.csv"
    description: str = ""
    sdr_px: tuple[float, ...] = (2.0, 4.0, 8.0)
    sdr_mm: tuple[float, ...] = (2.0, 4.0, 10.0)
    patient_of: Callable[[str], str] = field(default=stem, repr=False, compare=False)  # default: one image a patient
    index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"landmark set {self.name}: duplicate names")
        object.__setattr__(self, "index", {n: i for i, n in enumerate(self.names)})
        for a, b in self.flip_pairs + self.skeleton:
            for n in (a, b):
                if n not in self.index:
                    raise ValueError(f"landmark set {self.name}: unknown landmark {n!r} in pairs/skeleton")

    def __len__(self) -> int:
        return len(self.names)

    @property
    def flip_perm(self) -> list[int]:
        """Channel permutation applied after a horizontal flip (identity when there are no pairs)."""
        perm = list(range(len(self.names)))
        for a, b in self.flip_pairs:
            i, j = self.index[a], self.index[b]
            perm[i], perm[j] = j, i
        return perm

    @property
    def edges(self) -> list[tuple[int, int]]:
        """Skeleton edges as channel indices (for drawing)."""
        return [(self.index[a], self.index[b]) for a, b in self.skeleton]

    def columns(self) -> list[str]:
        """Wide CSV coordinate columns: every ``<name>_x`` then every ``<name>_y`` (the SHS_NET layout)."""
        return [f"{n}_x" for n in self.names] + [f"{n}_y" for n in self.names]


SHS15 = LandmarkSet(
    name="shs15",
    names=("IP", "PIP2", "PIP3", "PIP4", "PIP5", "MP", "MCP2", "MCP3", "MCP4", "MCP5", "W1", "W2", "W3", "W4", "W5"),
    skeleton=(("W1", "MP"), ("MP", "IP"), ("MCP2", "PIP2"), ("MCP3", "PIP3"), ("MCP4", "PIP4"), ("MCP5", "PIP5"),
              ("W2", "MCP3"), ("W3", "W4"), ("W4", "W5")),
    label_file="coord_list.csv",
    description="SHS_NET joints: thumb IP/MP, finger PIP and MCP 2-5, wrist sites W1-W5",
    sdr_px=(5.0, 10.0, 20.0),           # 630x910 films (the SHS_NET figures of docs/benchmarks.md)
    patient_of=shs.patient_of,
)

_DHA_FINGERS = tuple(n for r in (2, 3, 4, 5) for n in (f"MCP{r}", f"PIP{r}", f"DIP{r}", f"TIP{r}"))
DHA37 = LandmarkSet(
    name="dha37",
    names=("ULNA_PHYSIS_MED", "ULNA_STYLOID", "ULNA_PHYSIS_LAT", "RADIUS_PHYSIS_MED", "RADIUS_PHYSIS_LAT",
           "RADIAL_STYLOID", "TRIQUETRUM_HAMATE", "RADIUS_LUNATE", "RADIUS_SCAPHOID", "HAMATE_LUNATE",
           "CAPITATE_LUNATE", "SCAPHOID_TRAPEZOID", "SCAPHOID_TRAPEZIUM", "CMC5", "CMC4", "CMC3", "CMC2", "CMC1",
           "MCP1", "IP1", "TIP1") + _DHA_FINGERS,
    skeleton=(("CMC1", "MCP1"), ("MCP1", "IP1"), ("IP1", "TIP1"))
    + tuple(e for r in (2, 3, 4, 5) for e in ((f"CMC{r}", f"MCP{r}"), (f"MCP{r}", f"PIP{r}"), (f"PIP{r}", f"DIP{r}"),
                                              (f"DIP{r}", f"TIP{r}")))
    + (("ULNA_PHYSIS_MED", "ULNA_PHYSIS_LAT"), ("RADIUS_PHYSIS_MED", "RADIUS_PHYSIS_LAT")),
    label_file="all.csv",
    description="Digital Hand Atlas landmarks (Payer et al.): radius/ulna, carpals, CMC, finger joints and tips",
    sdr_px=(10.0, 20.0, 40.0),          # 1200-1600 x 1913-2350 px films; in mm 2 / 4 / 10 (Payer et al.)
    patient_of=dha.patient_of,
)

_VERTEBRAE = tuple(f"T{i}" for i in range(1, 13)) + tuple(f"L{i}" for i in range(1, 6))
AASCE68 = LandmarkSet(
    name="aasce68",
    names=tuple(f"{v}_{c}" for v in _VERTEBRAE for c in ("TL", "TR", "BL", "BR")),
    flip_pairs=tuple(p for v in _VERTEBRAE for p in ((f"{v}_TL", f"{v}_TR"), (f"{v}_BL", f"{v}_BR"))),
    skeleton=tuple(e for v in _VERTEBRAE for e in ((f"{v}_TL", f"{v}_TR"), (f"{v}_TR", f"{v}_BR"),
                                                    (f"{v}_BR", f"{v}_BL"), (f"{v}_BL", f"{v}_TL"))),
    label_file="landmarks.csv",
    description="AASCE spine: 17 vertebrae (T1-L5) x 4 corners (top-left, top-right, bottom-left, bottom-right)",
    sdr_px=(10.0, 20.0, 40.0),          # 1146-2765 px tall spines, no spacing
    patient_of=aasce.patient_of,
)

LANDMARK_SETS: dict[str, LandmarkSet] = {s.name: s for s in (SHS15, DHA37, AASCE68)}


def get_set(name: str) -> LandmarkSet:
    """The registered set ``name``; an unknown name lists the valid ones."""
    if name not in LANDMARK_SETS:
        raise ValueError(f"unknown landmark set {name!r}; valid: {', '.join(LANDMARK_SETS)}")
    return LANDMARK_SETS[name]


def set_for_columns(columns: list[str]) -> LandmarkSet | None:
    """The largest registered set whose every ``<lm>_x``/``<lm>_y`` column is in ``columns``, else None."""
    present = set(columns)
    matches = [s for s in LANDMARK_SETS.values() if set(s.columns()) <= present]
    return max(matches, key=len) if matches else None
