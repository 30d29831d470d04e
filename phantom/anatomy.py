"""Anatomy of the phantom hand: bone numbering, landmarks, fitted hand shape, growth and ossification.

Everything here is in a canonical frame: a LEFT hand seen postero-anterior (as a radiograph shows it),
fingers up, thumb on the right; x to the right, y down, units millimetres, origin at the base of the
third metacarpal. A right hand is the mirror image (done by the renderer).

Bone numbering (the 29 classes of the hand-bone segmentation competition, indices 0-28, in the order of
``tasks.formats.handbones.CLASSES``)::

    finger-1   thumb distal phalanx          finger-2   thumb proximal phalanx    finger-3   first metacarpal
    finger-4   index distal phalanx          finger-5   index middle phalanx
    finger-6   index proximal phalanx        finger-7   second metacarpal
    finger-8..11   middle finger (distal, middle, proximal phalanx, third metacarpal)
    finger-12..15  ring finger   (distal, middle, proximal phalanx, fourth metacarpal)
    finger-16..19  little finger (distal, middle, proximal phalanx, fifth metacarpal)
    Trapezium, Trapezoid, Capitate, Hamate, Scaphoid, Lunate, Triquetrum, Pisiform (indices 19-26)
    Radius, Ulna (27, 28)

Each finger is numbered from its tip to its base; the thumb has no middle phalanx. The hand shape
(joint positions, finger lengths and spread) comes from a point distribution model fitted to the 907
landmark sets of the Digital Hand Atlas (``SHAPE_MEAN``, ``SHAPE_MODES``, ``SHAPE_SD``, see
:func:`fit_shape_model`); bone widths, joint spaces, epiphyses and carpals are modelled on that
skeleton. Age (months) and sex set the hand size, which epiphyses and carpals have ossified, how large
they are and which growth plates have fused (girls mature earlier).

Landmarks (``DHA37_NAMES``, ``SHS15_NAMES``) are defined on the bones (``LANDMARKS``): a joint landmark
lies on the articular end of its first ("primary") bone, just inside it, facing its partner bone, so
it always lies inside the union of the two adjacent bone masks; when the primary bone has not ossified
yet it lies on the partner, and when neither has, halfway between their nominal centres.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from tasks.formats.handbones import CLASSES
from tasks.formats.shs import SHS15_NAMES as _SHS15_FORMAT

# --------------------------------------------------------------------------------------------------
# Numbering
# --------------------------------------------------------------------------------------------------

#: Bones of each ray, from the tip to the base (ray 1 = thumb: distal, proximal phalanx, metacarpal).
RAY_BONES: dict[int, tuple[str, ...]] = {
    1: ("finger-1", "finger-2", "finger-3"),
    2: ("finger-4", "finger-5", "finger-6", "finger-7"),
    3: ("finger-8", "finger-9", "finger-10", "finger-11"),
    4: ("finger-12", "finger-13", "finger-14", "finger-15"),
    5: ("finger-16", "finger-17", "finger-18", "finger-19"),
}
CARPALS: tuple[str, ...] = ("Trapezium", "Trapezoid", "Capitate", "Hamate", "Scaphoid", "Lunate",
                            "Triquetrum", "Pisiform")
assert CLASSES[19:27] == CARPALS

#: The 37 landmarks of the Digital Hand Atlas layout (``all.csv``), in file order. Real DHA files use
#: the same order: ulna and radius (0-5), carpal points (6-12), carpometacarpal joints from the little
#: finger to the thumb (13-17), then thumb MCP/IP/tip and each finger MCP/PIP/DIP/tip (18-36).
DHA37_NAMES: tuple[str, ...] = (
    "ULNA_PHYSIS_MED", "ULNA_STYLOID", "ULNA_PHYSIS_LAT", "RADIUS_PHYSIS_MED", "RADIUS_PHYSIS_LAT",
    "RADIAL_STYLOID", "TRIQUETRUM_HAMATE", "RADIUS_LUNATE", "RADIUS_SCAPHOID", "HAMATE_LUNATE",
    "CAPITATE_LUNATE", "SCAPHOID_TRAPEZOID", "SCAPHOID_TRAPEZIUM",
    "CMC5", "CMC4", "CMC3", "CMC2", "CMC1",
    "MCP1", "IP1", "TIP1",
    "MCP2", "PIP2", "DIP2", "TIP2",
    "MCP3", "PIP3", "DIP3", "TIP3",
    "MCP4", "PIP4", "DIP4", "TIP4",
    "MCP5", "PIP5", "DIP5", "TIP5",
)
#: The 15 joints of SHS_NET (``coord_list.csv``), in its column (= heatmap channel) order.
SHS15_NAMES: tuple[str, ...] = ("IP", "PIP2", "PIP3", "PIP4", "PIP5", "MP", "MCP2", "MCP3", "MCP4",
                                "MCP5", "W1", "W2", "W3", "W4", "W5")


@dataclass(frozen=True)
class LandmarkSpec:
    """Where a landmark lies. ``kind``: ``head``/``base`` (centre of that end of a long bone),
    ``facing`` (boundary point of ``primary`` closest to ``secondary``), ``physis_med``/``physis_lat``
    (corner of the radius/ulna shaft at the growth plate), ``styloid``, ``druj``."""

    kind: str
    primary: str
    secondary: str | None = None


def _finger_specs() -> dict[str, LandmarkSpec]:
    out = {}
    for r in (2, 3, 4, 5):
        dp, mp, pp, mc = RAY_BONES[r]
        out[f"MCP{r}"] = LandmarkSpec("head", mc, pp)
        out[f"PIP{r}"] = LandmarkSpec("head", pp, mp)
        out[f"DIP{r}"] = LandmarkSpec("head", mp, dp)
        out[f"TIP{r}"] = LandmarkSpec("head", dp, None)
    dp, pp, mc = RAY_BONES[1]
    out["MCP1"] = LandmarkSpec("head", mc, pp)
    out["IP1"] = LandmarkSpec("head", pp, dp)
    out["TIP1"] = LandmarkSpec("head", dp, None)
    return out


#: Definition of every landmark name (DHA37 and SHS15) on the bones.
LANDMARKS: dict[str, LandmarkSpec] = {
    "ULNA_PHYSIS_MED": LandmarkSpec("physis_med", "Ulna"),
    "ULNA_STYLOID": LandmarkSpec("styloid", "Ulna"),
    "ULNA_PHYSIS_LAT": LandmarkSpec("physis_lat", "Ulna"),
    "RADIUS_PHYSIS_MED": LandmarkSpec("physis_med", "Radius"),
    "RADIUS_PHYSIS_LAT": LandmarkSpec("physis_lat", "Radius"),
    "RADIAL_STYLOID": LandmarkSpec("styloid", "Radius"),
    "TRIQUETRUM_HAMATE": LandmarkSpec("facing", "Hamate", "Triquetrum"),
    "RADIUS_LUNATE": LandmarkSpec("facing", "Radius", "Lunate"),
    "RADIUS_SCAPHOID": LandmarkSpec("facing", "Radius", "Scaphoid"),
    "HAMATE_LUNATE": LandmarkSpec("facing", "Hamate", "Lunate"),
    "CAPITATE_LUNATE": LandmarkSpec("facing", "Capitate", "Lunate"),
    "SCAPHOID_TRAPEZOID": LandmarkSpec("facing", "Scaphoid", "Trapezoid"),
    "SCAPHOID_TRAPEZIUM": LandmarkSpec("facing", "Scaphoid", "Trapezium"),
    "CMC5": LandmarkSpec("base", "finger-19", "Hamate"),
    "CMC4": LandmarkSpec("base", "finger-15", "Hamate"),
    "CMC3": LandmarkSpec("base", "finger-11", "Capitate"),
    "CMC2": LandmarkSpec("base", "finger-7", "Trapezoid"),
    "CMC1": LandmarkSpec("base", "finger-3", "Trapezium"),
    **_finger_specs(),
    # SHS_NET names: thumb IP and MP, finger PIP/MCP as above; wrist scoring sites W1-W5.
    "IP": LandmarkSpec("head", "finger-2", "finger-1"),
    "MP": LandmarkSpec("head", "finger-3", "finger-2"),
    "W1": LandmarkSpec("base", "finger-3", "Trapezium"),      # first carpometacarpal joint
    "W2": LandmarkSpec("base", "finger-11", "Capitate"),      # third carpometacarpal joint
    "W3": LandmarkSpec("druj", "Ulna", "Radius"),             # distal radio-ulnar joint
    "W4": LandmarkSpec("facing", "Radius", "Lunate"),         # radiolunate joint
    "W5": LandmarkSpec("facing", "Radius", "Scaphoid"),       # radioscaphoid joint
}
assert all(n in LANDMARKS for n in DHA37_NAMES + SHS15_NAMES)
assert SHS15_NAMES == _SHS15_FORMAT, "SHS15 order must match tasks.formats.shs"


def landmark_bones(name: str) -> tuple[str, ...]:
    """The bone(s) a landmark is defined on: it lies inside the union of their masks when present."""
    spec = LANDMARKS[name]
    return (spec.primary,) if spec.secondary is None else (spec.primary, spec.secondary)


#: Left/right pairs do not exist within one hand; for horizontal-flip TTA no landmark swaps.
FLIP_PAIRS: tuple[tuple[str, str], ...] = ()

# --------------------------------------------------------------------------------------------------
# Hand shape: point distribution model of the 37 DHA landmarks (fitted numbers, see fit_shape_model)
# Frame: origin landmark 15 (CMC3), third metacarpal axis pointing up (-y), unit = ray-3 length
# (landmark 15 to 28). Modes are unit vectors (37x2 flattened), SHAPE_SD their standard deviations.
# --------------------------------------------------------------------------------------------------
SHAPE_MEAN = np.array([
    [-0.1784, 0.2748],
    [-0.1577, 0.2122],
    [-0.0842, 0.2781],
    [-0.0661, 0.2692],
    [0.1056, 0.2757],
    [0.1028, 0.1753],
    [-0.1158, 0.1781],
    [-0.0491, 0.2146],
    [0.0315, 0.1984],
    [-0.0609, 0.1304],
    [-0.0042, 0.1541],
    [0.0866, 0.0827],
    [0.1232, 0.1134],
    [-0.1172, 0.0218],
    [-0.0681, 0.0034],
    [0.0000, 0.0000],
    [0.0829, 0.0095],
    [0.1691, 0.0525],
    [0.3408, -0.1794],
    [0.4287, -0.3500],
    [0.4980, -0.4718],
    [0.1497, -0.4169],
    [0.1996, -0.6588],
    [0.2239, -0.8060],
    [0.2360, -0.9159],
    [0.0000, -0.4191],
    [0.0092, -0.6977],
    [0.0084, -0.8789],
    [-0.0007, -0.9977],
    [-0.1265, -0.3647],
    [-0.1632, -0.6230],
    [-0.1892, -0.7922],
    [-0.2033, -0.9125],
    [-0.2438, -0.2958],
    [-0.3225, -0.4814],
    [-0.3667, -0.5908],
    [-0.3978, -0.6923],
])
SHAPE_SD = np.array([0.15714, 0.07247, 0.06409, 0.05721, 0.04379, 0.03723, 0.02912, 0.02619])
SHAPE_MODES = np.array([
    [[-0.0190, -0.0065], [-0.0162, -0.0016], [-0.0252, -0.0069], [-0.0221, 0.0005], [-0.0241, 0.0126], [-0.0197, 0.0208], [-0.0112, -0.0063], [-0.0111, 0.0023], [-0.0047, 0.0021], [-0.0141, -0.0040], [-0.0090, 0.0024], [-0.0124, 0.0091], [-0.0100, 0.0220], [-0.0075, 0.0031], [0.0007, 0.0012], [0.0000, 0.0000], [-0.0035, 0.0082], [-0.0044, 0.0427], [0.1045, 0.1601], [0.2442, 0.2688], [0.3582, 0.3560], [0.0390, 0.0598], [0.1048, 0.0981], [0.1412, 0.1151], [0.1742, 0.1254], [0.0113, 0.0441], [-0.0112, 0.0703], [-0.0298, 0.0875], [-0.0372, 0.0975], [-0.0149, 0.0415], [-0.1085, 0.0820], [-0.1782, 0.1117], [-0.2281, 0.1269], [-0.0297, 0.0534], [-0.1615, 0.1371], [-0.2461, 0.1915], [-0.3303, 0.2245]],
    [[0.1745, 0.2540], [0.1203, 0.2603], [0.2146, 0.2160], [0.2052, 0.1466], [0.2451, 0.0154], [0.1464, 0.0067], [0.0838, 0.1110], [0.1180, 0.0983], [0.1649, 0.0151], [0.0438, 0.0456], [0.0751, 0.0471], [0.0714, 0.0078], [0.1217, -0.0061], [0.0133, 0.0348], [-0.0007, 0.0208], [0.0000, 0.0000], [0.0506, -0.0062], [0.1027, -0.0062], [0.1518, 0.0248], [0.1517, 0.0509], [0.1645, 0.0535], [0.0781, 0.0265], [0.0934, 0.0690], [0.0894, 0.0784], [0.0800, 0.0730], [0.0658, 0.0384], [0.1138, 0.0879], [0.1435, 0.1104], [0.1617, 0.1089], [0.0541, 0.0535], [0.1177, 0.0841], [0.1742, 0.0970], [0.2180, 0.0912], [0.0461, 0.0528], [0.1312, 0.0455], [0.1921, 0.0338], [0.2453, 0.0065]],
    [[-0.0726, 0.0398], [-0.0741, 0.0275], [-0.0653, 0.0358], [-0.0665, 0.0271], [-0.0467, 0.0541], [-0.0438, 0.0489], [-0.0632, 0.0056], [-0.0357, 0.0218], [-0.0316, 0.0312], [-0.0445, 0.0107], [-0.0234, 0.0252], [-0.0099, 0.0341], [0.0064, 0.0428], [-0.0287, -0.0189], [-0.0232, -0.0150], [0.0000, 0.0000], [-0.0023, 0.0243], [0.0041, 0.0743], [0.0944, 0.1703], [0.1663, 0.2351], [0.2340, 0.2915], [-0.0334, 0.0222], [-0.2259, 0.0059], [-0.3511, -0.0072], [-0.4551, -0.0125], [-0.0157, 0.0066], [-0.1381, 0.0215], [-0.2269, 0.0301], [-0.2917, 0.0425], [0.0009, -0.0103], [0.0176, 0.0038], [0.0338, 0.0087], [0.0401, 0.0108], [0.0058, -0.0353], [0.1174, -0.0680], [0.1831, -0.1019], [0.2468, -0.1170]],
    [[0.1972, -0.1828], [0.2131, -0.1911], [0.1513, -0.2237], [0.1160, -0.1989], [0.0696, -0.2416], [0.0403, -0.2368], [0.1242, -0.0875], [0.0855, -0.1314], [0.0162, -0.1279], [0.0821, -0.0693], [0.0434, -0.0998], [-0.0040, -0.0681], [-0.0410, -0.0807], [0.1103, -0.0204], [0.0706, -0.0012], [0.0000, -0.0000], [-0.0179, -0.0244], [-0.0639, -0.0623], [0.0625, -0.0197], [0.2329, 0.0428], [0.3770, 0.1395], [-0.0494, -0.0912], [-0.0088, -0.1390], [0.0289, -0.1483], [0.0563, -0.1486], [-0.0000, -0.0573], [0.0275, -0.1200], [0.0427, -0.1447], [0.0363, -0.1480], [0.0473, -0.0541], [0.0752, -0.1078], [0.0768, -0.1324], [0.0773, -0.1304], [0.0799, -0.0677], [0.0417, -0.0930], [0.0104, -0.1009], [-0.0201, -0.0806]],
    [[-0.1460, -0.1627], [-0.0143, -0.1866], [-0.1955, -0.1332], [-0.1887, -0.0054], [-0.1572, 0.2138], [-0.0300, 0.2021], [0.0261, 0.0055], [0.0368, 0.0052], [0.0041, 0.1053], [0.1201, 0.0596], [0.0962, 0.0317], [0.1010, -0.0365], [0.1104, -0.0090], [0.0560, 0.0903], [0.0255, 0.0470], [0.0000, -0.0000], [0.0543, -0.0473], [0.1241, -0.0864], [0.0730, -0.2070], [0.1950, -0.1707], [0.2659, -0.1444], [-0.0829, -0.0807], [-0.0981, -0.0845], [-0.1104, -0.0909], [-0.1158, -0.0972], [-0.0695, 0.0269], [0.0476, 0.0377], [0.1308, 0.0434], [0.1854, 0.0320], [-0.0643, 0.0836], [0.0697, 0.0817], [0.1728, 0.0761], [0.2489, 0.0647], [-0.0869, 0.1621], [-0.0434, 0.1716], [-0.0057, 0.1922], [0.0097, 0.1881]],
    [[0.0694, 0.0762], [-0.0129, 0.1187], [0.0779, 0.0666], [0.0964, -0.0220], [0.0728, -0.1143], [0.0191, -0.0673], [-0.0191, 0.0219], [-0.0026, -0.0157], [0.0399, -0.0643], [-0.0532, -0.0088], [-0.0238, -0.0085], [-0.0433, 0.0025], [-0.0442, 0.0066], [-0.0707, 0.0131], [-0.0568, 0.0011], [0.0000, -0.0000], [-0.0354, 0.0101], [-0.0461, 0.0599], [-0.0693, 0.1619], [-0.1361, 0.1625], [-0.1484, 0.1357], [-0.0979, 0.0379], [-0.1679, 0.0378], [-0.2174, 0.0367], [-0.2602, 0.0188], [-0.0797, 0.0097], [0.0557, -0.0028], [0.1451, -0.0315], [0.2110, -0.0551], [-0.1043, -0.0101], [0.0901, -0.0709], [0.2389, -0.1321], [0.3633, -0.1678], [-0.1857, 0.0713], [-0.2422, 0.0896], [-0.2823, 0.0884], [-0.2999, 0.0799]],
    [[-0.0071, 0.1010], [0.0184, 0.0591], [-0.0139, 0.0357], [-0.0348, 0.0985], [0.0050, 0.0317], [-0.0485, 0.0125], [-0.0430, -0.0210], [-0.0394, 0.0645], [-0.0562, 0.0590], [-0.0725, -0.0322], [-0.0736, 0.0292], [-0.0051, 0.0460], [0.0281, -0.0367], [0.0530, -0.1589], [0.0342, -0.0820], [0.0000, 0.0000], [0.0297, 0.0290], [-0.0144, -0.1420], [-0.0786, -0.2608], [0.0490, -0.1693], [0.1667, -0.0887], [0.1967, 0.0142], [0.0317, 0.0376], [-0.0952, 0.0662], [-0.1905, 0.0858], [0.2693, -0.0477], [0.0950, 0.0104], [-0.0244, 0.0903], [-0.1169, 0.1322], [0.3095, -0.1383], [0.1799, -0.0802], [0.1323, -0.0084], [0.0819, 0.0193], [0.2839, -0.2862], [-0.0227, -0.1390], [-0.1805, -0.0415], [-0.3474, 0.0406]],
    [[0.0044, 0.0250], [-0.0052, 0.0062], [0.0199, 0.0169], [0.0193, 0.0064], [0.0392, -0.0219], [0.0170, -0.0402], [-0.0400, 0.0643], [-0.0378, 0.0207], [-0.0441, 0.0261], [0.0023, 0.0543], [-0.0185, 0.0015], [-0.0350, -0.0536], [-0.0460, -0.0926], [-0.0678, 0.0265], [-0.0777, 0.0071], [0.0000, 0.0000], [-0.0527, -0.0340], [-0.0657, -0.1240], [0.0172, -0.1064], [0.0920, -0.1472], [0.1833, -0.1696], [-0.1860, 0.0716], [0.0086, 0.1312], [0.1268, 0.1113], [0.2313, 0.0953], [-0.2143, 0.0975], [-0.2179, 0.1539], [-0.2512, 0.1280], [-0.2851, 0.1140], [-0.1540, 0.0971], [0.0149, 0.0744], [0.1532, -0.0143], [0.2583, -0.0515], [-0.1998, 0.0506], [-0.1394, -0.0701], [-0.1287, -0.2345], [-0.0983, -0.3137]],
])


def fit_shape_model(all_csv, n_modes: int = 8):
    """Refit ``SHAPE_MEAN, SHAPE_MODES, SHAPE_SD`` from a DHA ``all.csv`` (no header, id + 37 x,y).

    Generalised Procrustes alignment (similarity) of all shapes, rotated so that the third metacarpal
    points up, scaled to unit ray-3 length, origin at CMC3; then PCA. The constants above were made
    with ``fit_shape_model('../shared/data/real/dha_hand_landmarks37/all.csv')`` and rounded.
    """
    import csv

    with open(all_csv, newline="") as fh:
        rows = [r for r in csv.reader(fh) if r]
    pts = np.array([[float(v) for v in r[1:75]] for r in rows]).reshape(-1, 37, 2)

    def norm(x):
        x = x - x.mean(0)
        return x / np.sqrt((x ** 2).sum())

    aligned = np.array([norm(p) for p in pts])
    mean = aligned[0].copy()
    for _ in range(20):
        out = []
        for a in aligned:
            u, _, vt = np.linalg.svd(a.T @ mean)
            out.append(a @ (u @ vt))
        aligned = np.array(out)
        m = aligned.mean(0)
        mean = m / np.sqrt((m ** 2).sum())
    d = mean[25] - mean[15]
    ang = -np.pi / 2 - np.arctan2(d[1], d[0])
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    scale = np.linalg.norm(((mean - mean[15]) @ rot.T)[28])
    canon = np.array([(a - a[15]) @ rot.T / scale for a in aligned])
    mean2 = canon.mean(0)
    x = (canon - mean2).reshape(len(canon), -1)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    sd = s / np.sqrt(len(canon) - 1)
    return mean2, vt[:n_modes].reshape(n_modes, 37, 2), sd[:n_modes]


# --------------------------------------------------------------------------------------------------
# Growth and maturation (months; (male, female)). Rough Greulich-Pyle style timings.
# --------------------------------------------------------------------------------------------------

#: Ray-3 length (CMC3 to the middle fingertip, mm) by age in years: males, females.
_AGE_YEARS = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 25])
_RAY3_MALE = np.array([54, 66, 74, 81, 87, 93, 99, 105, 110, 115, 120, 125, 131, 139, 148, 157, 163, 167, 169, 170, 170])
_RAY3_FEMALE = np.array([52, 64, 72, 79, 85, 91, 97, 102, 107, 112, 118, 124, 131, 138, 144, 147, 149, 150, 150, 150, 150])

#: Onset of ossification of the carpals (months after birth).
CARPAL_ONSET: dict[str, tuple[float, float]] = {
    "Capitate": (3, 2), "Hamate": (4, 3), "Triquetrum": (30, 24), "Lunate": (46, 38),
    "Trapezium": (62, 48), "Trapezoid": (68, 52), "Scaphoid": (66, 54), "Pisiform": (140, 112),
}
#: Age at which the carpals reach their adult shape.
CARPAL_MATURE: tuple[float, float] = (180, 156)
#: Onset of ossification of the epiphyses (by bone group).
EPIPHYSIS_ONSET: dict[str, tuple[float, float]] = {
    "pp": (18, 12), "mc": (22, 15), "mp": (30, 20), "dp": (28, 19), "pp1": (22, 15), "dp1": (18, 13),
    "mc1": (30, 20), "radius": (14, 10), "ulna": (84, 70),
}
#: Fusion of the growth plates (epiphysis joins the shaft; the gap closes over the year before).
FUSION: dict[str, tuple[float, float]] = {
    "dp": (186, 162), "dp1": (186, 162), "mp": (192, 168), "pp": (194, 170), "pp1": (194, 170),
    "mc": (198, 174), "mc1": (196, 172), "ulna": (210, 186), "radius": (216, 192),
}
#: Thumb sesamoids (not a class: unlabelled bone, as in real radiographs) appear at puberty.
SESAMOID_ONSET: tuple[float, float] = (160, 134)

#: Long-bone shapes, half-widths as fractions of bone length: base, shaft, head; base/head cap length
#: (fraction of that end's half-width); flare lengths (fraction of length); epiphysis zone (fraction of
#: length) and at which end the epiphysis sits.
LONG_SHAPES: dict[str, dict] = {
    "mc":  dict(hb=0.125, hs=0.078, hh=0.125, cb=0.30, ch=1.00, lb=0.10, lh=0.10, ef=0.15, epi="head"),
    "mc1": dict(hb=0.185, hs=0.118, hh=0.170, cb=0.35, ch=0.90, lb=0.12, lh=0.12, ef=0.13, epi="base"),
    "pp":  dict(hb=0.185, hs=0.115, hh=0.148, cb=0.35, ch=0.70, lb=0.13, lh=0.10, ef=0.11, epi="base"),
    "mp":  dict(hb=0.245, hs=0.152, hh=0.195, cb=0.35, ch=0.70, lb=0.15, lh=0.12, ef=0.14, epi="base"),
    "dp":  dict(hb=0.280, hs=0.150, hh=0.200, cb=0.35, ch=1.00, lb=0.16, lh=0.08, ef=0.18, epi="base"),
    "pp1": dict(hb=0.225, hs=0.135, hh=0.180, cb=0.35, ch=0.80, lb=0.14, lh=0.11, ef=0.13, epi="base"),
    "dp1": dict(hb=0.285, hs=0.165, hh=0.215, cb=0.35, ch=1.00, lb=0.16, lh=0.08, ef=0.18, epi="base"),
}
#: The group (shape, timings) of each finger bone.
BONE_GROUP: dict[str, str] = {"finger-1": "dp1", "finger-2": "pp1", "finger-3": "mc1"}
for _r in (2, 3, 4, 5):
    for _name, _grp in zip(RAY_BONES[_r], ("dp", "mp", "pp", "mc")):
        BONE_GROUP[_name] = _grp

#: Carpal template for an adult male hand with ray-3 length 170 mm (mm, canonical frame; the centre is
#: mapped through the wrist landmarks of each sampled hand): centre x, y, long-axis angle (deg, from +x
#: towards +y), half-length, half-width, superellipse exponent, (k, amplitude, phase) outline ripple.
CARPAL_TEMPLATE: dict[str, tuple] = {
    "Capitate":   (-1.5, 13.5, 90, 12.0, 7.6, 2.8, ((2, 0.06, 0.3), (3, 0.05, 1.0))),
    "Hamate":     (-13.8, 13.0, 75, 10.4, 7.8, 2.7, ((3, 0.09, 0.5), (2, 0.04, 1.4))),
    "Triquetrum": (-19.8, 23.5, 55, 8.3, 5.9, 2.4, ((2, 0.06, 1.2), (3, 0.05, 0.3))),
    "Pisiform":   (-22.0, 26.0, 70, 5.6, 4.6, 2.1, ((2, 0.03, 0.0),)),
    "Lunate":     (-8.8, 29.5, 95, 8.0, 7.6, 2.5, ((3, 0.10, 0.0), (2, 0.04, 0.7))),
    "Scaphoid":   (12.0, 27.5, -42, 13.5, 6.6, 2.2, ((2, 0.07, 0.8), (3, 0.06, 0.2))),
    "Trapezoid":  (13.3, 8.5, 90, 6.8, 5.8, 2.9, ((3, 0.06, 0.6), (2, 0.04, 0.0))),
    "Trapezium":  (22.5, 12.5, -50, 9.2, 7.2, 2.7, ((2, 0.07, 0.0), (3, 0.06, 0.9))),
}
_TEMPLATE_RAY3 = 170.0

# Attenuation (1/mm) of cortical bone and soft tissue; marrow/trabecular bone is a fraction of cortex.
MU_BONE = 0.11
MU_SOFT = 0.028


def _by_sex(table: tuple[float, float], male: bool) -> float:
    return float(table[0] if male else table[1])


def ray3_length_mm(age_months: float, male: bool) -> float:
    """Expected ray-3 length (CMC3 to middle fingertip) at an age, in mm."""
    return float(np.interp(age_months / 12.0, _AGE_YEARS, _RAY3_MALE if male else _RAY3_FEMALE))


def height_weight(age_months: float, male: bool, rng: np.random.Generator) -> tuple[float, float]:
    """A plausible body height (cm) and weight (kg) for the metadata table."""
    yrs = np.array([0, 1, 2, 4, 6, 8, 10, 12, 14, 16, 18, 25])
    hm = np.array([50, 76, 87, 103, 116, 128, 139, 150, 164, 174, 177, 177])
    hf = np.array([49, 74, 86, 102, 115, 127, 139, 152, 160, 162, 163, 163])
    h = float(np.interp(age_months / 12, yrs, hm if male else hf)) * (1 + 0.04 * rng.standard_normal())
    bmi = float(np.interp(age_months / 12, [0, 1, 5, 10, 15, 19], [13.5, 17, 15.5, 17, 20, 22]))
    bmi *= 1 + 0.12 * rng.standard_normal()
    return round(h, 1), round(bmi * (h / 100) ** 2, 1)


# --------------------------------------------------------------------------------------------------
# Parts: smooth shapes in the canonical frame that know their outline and their projected density
# --------------------------------------------------------------------------------------------------

def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / max(float(np.hypot(v[0], v[1])), 1e-12)


@dataclass
class LongPart:
    """A long bone (or its shaft): a half-width profile ``w(u)`` along an axis, a tube with a cortex.

    ``origin`` is the base end (u=0), ``axis`` points to the head (u=L), ``normal`` is perpendicular.
    ``ct`` is the cortical fraction of the half-width and ``md`` the relative density of the inside
    (marrow in the shaft, trabecular bone near the ends), both sampled on ``u`` like ``w``.
    """

    cls: str | None
    origin: np.ndarray
    axis: np.ndarray
    normal: np.ndarray
    u: np.ndarray
    w: np.ndarray
    ct: np.ndarray
    md: np.ndarray
    mu: float = MU_BONE
    role: str = "shaft"

    @property
    def length(self) -> float:
        return float(self.u[-1])

    def polygon(self) -> np.ndarray:
        right = self.origin + np.outer(self.u, self.axis) + np.outer(self.w, self.normal)
        left = self.origin + np.outer(self.u, self.axis) - np.outer(self.w, self.normal)
        keep_r = np.ones(len(self.u), bool)
        keep_l = self.w > 1e-9
        pts = np.concatenate([right[keep_r], left[keep_l][::-1]])
        return pts

    def width_at(self, u: float) -> float:
        return float(np.interp(u, self.u, self.w))

    def point(self, u: float, v: float = 0.0) -> np.ndarray:
        return self.origin + u * self.axis + v * self.normal

    def density(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        dx, dy = x - self.origin[0], y - self.origin[1]
        u = dx * self.axis[0] + dy * self.axis[1]
        v = dx * self.normal[0] + dy * self.normal[1]
        inside = (u >= 0) & (u <= self.u[-1])
        uu = np.clip(u, 0, self.u[-1])
        w = np.interp(uu, self.u, self.w)
        ct = np.interp(uu, self.u, self.ct)
        md = np.interp(uu, self.u, self.md)
        v2 = v * v
        outer = 2 * np.sqrt(np.clip(w * w - v2, 0, None))
        r = w * (1 - ct)
        inner = 2 * np.sqrt(np.clip(r * r - v2, 0, None))
        return np.where(inside, self.mu * (outer - inner + md * inner), 0.0)


@dataclass
class BlobPart:
    """A compact bone (carpal, epiphysis, sesamoid): a superellipse with ripples, optionally a wedge.

    Local coordinates: ``x`` along ``ex`` (half-size ``ra``), ``y`` along ``ey`` (half-size ``rb``).
    ``taper`` makes the half-height grow with x (``rb * (1 + taper * x / ra)``) and ``shear`` tilts it
    (``y += shear * x``); ``shear = rb * taper / ra`` keeps the -y side flat: a wedge.
    Projected thickness is that of an ellipsoid of half-depth ``depth`` with a cortex ``ct``.
    """

    cls: str | None
    centre: np.ndarray
    ex: np.ndarray
    ey: np.ndarray
    ra: float
    rb: float
    p: float = 2.0
    ripples: tuple = ()
    taper: float = 0.0
    shear: float = 0.0
    depth: float = 1.0
    ct: float = 0.15
    md: float = 0.45
    mu: float = MU_BONE
    role: str = "carpal"
    n_vertices: int = 40

    def _radius(self, theta: np.ndarray) -> np.ndarray:
        c, s = np.abs(np.cos(theta)), np.abs(np.sin(theta))
        r = 1.0 / np.power(np.power(c, self.p) + np.power(s, self.p), 1.0 / self.p)
        h = np.ones_like(theta)
        for k, amp, ph in self.ripples:
            h = h + amp * np.cos(k * theta + ph)
        return r * h

    def polygon(self) -> np.ndarray:
        th = np.linspace(0, 2 * np.pi, self.n_vertices, endpoint=False)
        r = self._radius(th)
        x = self.ra * r * np.cos(th)
        y2 = self.rb * r * np.sin(th)
        y = y2 * (1 + self.taper * x / self.ra) + self.shear * x
        return self.centre + np.outer(x, self.ex) + np.outer(y, self.ey)

    def density(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        dx, dy = x - self.centre[0], y - self.centre[1]
        lx = dx * self.ex[0] + dy * self.ex[1]
        ly = dx * self.ey[0] + dy * self.ey[1]
        y1 = ly - self.shear * lx
        y2 = y1 / np.clip(1 + self.taper * lx / self.ra, 0.2, None)
        nx, ny = lx / self.ra, y2 / self.rb
        th = np.arctan2(ny, nx)
        rho = np.hypot(nx, ny) / self._radius(th)
        outer = np.sqrt(np.clip(1 - rho * rho, 0, None))
        ri = 1 - self.ct
        inner = ri * np.sqrt(np.clip(1 - (rho / ri) ** 2, 0, None))
        return self.mu * 2 * self.depth * (outer - inner + self.md * inner)


def _long_profile(length: float, hb: float, hs: float, hh: float, cb: float, ch: float, lb: float,
                  lh: float, n: int = 22, flat_base: bool = False, flat_head: bool = False):
    """``u`` (cosine-spaced, dense at the ends) and half-width ``w`` of a long bone, caps included."""
    t = (1 - np.cos(np.linspace(0, np.pi, n))) / 2
    u = t * length
    w = hs + (hb - hs) * np.exp(-u / lb) + (hh - hs) * np.exp(-(length - u) / lh)
    cap_b = max(cb * hb, 1e-3) if not flat_base else max(0.12 * hb, 1e-3)
    cap_h = max(ch * hh, 1e-3) if not flat_head else max(0.12 * hh, 1e-3)
    cap_b = min(cap_b, 0.45 * length)
    cap_h = min(cap_h, 0.45 * length)
    fb = np.where(u < cap_b, np.sqrt(np.clip(1 - ((cap_b - u) / cap_b) ** 2, 0, 1)), 1.0)
    fh = np.where(u > length - cap_h, np.sqrt(np.clip(1 - ((u - (length - cap_h)) / cap_h) ** 2, 0, 1)), 1.0)
    return u, w * fb * fh


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


# --------------------------------------------------------------------------------------------------
# A patient and a hand
# --------------------------------------------------------------------------------------------------

@dataclass
class Patient:
    """What both hands of one person share: age, sex, size, maturity and hand shape."""

    age_months: float
    male: bool
    size: float            # multiplies the expected ray-3 length
    maturity_shift: float  # months added to the age for every ossification/fusion timing
    shape_b: np.ndarray    # shape-model coefficients (in SDs) of modes 1.. (mode 0, the spread, is per hand)
    bone_jitter: dict = field(default_factory=dict)   # months, per timing key
    width_factor: float = 1.0

    @property
    def ray3_mm(self) -> float:
        return ray3_length_mm(self.age_months, self.male) * self.size


def sample_patient(rng: np.random.Generator, age_months: float | None = None, male: bool | None = None
                   ) -> Patient:
    """Draw a patient: age uniform over 1-228 months unless given, sex 50/50 unless given."""
    if age_months is None:
        age_months = float(rng.integers(1, 229))
    if male is None:
        male = bool(rng.random() < 0.5)
    b = np.clip(rng.standard_normal(len(SHAPE_SD) - 1), -2.2, 2.2)
    keys = list(CARPAL_ONSET) + list(EPIPHYSIS_ONSET) + ["fusion_" + k for k in FUSION] + ["sesamoid"]
    jitter = {k: float(rng.normal(0, 1.0)) for k in keys}
    return Patient(age_months=float(age_months), male=bool(male), size=float(np.clip(rng.normal(1, 0.04), 0.9, 1.1)),
                   maturity_shift=float(rng.normal(0, 1.0)), shape_b=b, bone_jitter=jitter,
                   width_factor=float(np.clip(rng.normal(1, 0.04), 0.9, 1.1)))


@dataclass
class Hand:
    """A hand in the canonical frame (mm): its parts, the class polygons and the landmarks."""

    patient: Patient
    joints: np.ndarray                       # (37, 2) skeleton (DHA landmark positions, joint centres)
    parts: list                              # LongPart / BlobPart, labelled (cls) or not (cls None)
    class_parts: dict                        # class -> list of parts
    soft: list                               # soft-tissue polygons (mm)
    soft_radius: float                       # mm: soft tissue gets its full thickness this far inside
    info: dict                               # per bone: frame, ossified extent, physis (for landmarks, tests)
    fused: dict                              # class -> growth plate fused (True/False), None: no epiphysis yet


def _timing(p: Patient, key: str, table: dict, sd_frac: float = 0.025) -> float:
    base = _by_sex(table[key], p.male)
    jit = p.bone_jitter.get(key, 0.0) * (1.0 + sd_frac * base)
    return base + jit


def _effective_age(p: Patient) -> float:
    """Age on the maturation clock: the age plus a small individual shift (~2 % of the age)."""
    return p.age_months + p.maturity_shift * (1.0 + 0.02 * p.age_months)


def skeleton(p: Patient, spread_b: float) -> np.ndarray:
    """The 37 joint positions (mm) of a hand: mean + modes, scaled to the patient's ray-3 length."""
    b = np.concatenate([[spread_b], p.shape_b])
    shape = SHAPE_MEAN + np.tensordot(b * SHAPE_SD, SHAPE_MODES, axes=1)
    return shape * p.ray3_mm


def _wrist_affine(joints: np.ndarray, ray3: float):
    src = SHAPE_MEAN[:18] * ray3
    dst = joints[:18]
    xs = np.hstack([src, np.ones((18, 1))])
    sol, *_ = np.linalg.lstsq(xs, dst, rcond=None)
    A, t = sol[:2].T, sol[2]
    return A, t


def build_hand(p: Patient, rng: np.random.Generator, joints: np.ndarray | None = None) -> Hand:
    """Bones, soft tissue and landmarks of one hand of ``p`` (own finger spread drawn from ``rng``).

    ``joints`` (37, 2) replaces the sampled skeleton (e.g. real DHA landmarks, to check the model).
    """
    age = _effective_age(p)
    male = p.male
    spread = float(np.clip(rng.normal(0, 1), -2.2, 2.2))
    J = skeleton(p, spread) if joints is None else np.asarray(joints, dtype=np.float64)
    ray3 = p.ray3_mm if joints is None else float(np.linalg.norm(J[28] - J[15]))
    k = ray3 / _TEMPLATE_RAY3
    mat = float(np.clip(age / 200.0, 0, 1))          # 0 newborn .. 1 adult
    widthf = p.width_factor * (0.94 + 0.06 * mat) * (1.03 if male else 0.97)
    density_f = 0.72 + 0.28 * mat
    ct_shaft = 0.20 + 0.18 * mat
    js_mm = (0.9 + 0.6 * (1 - mat)) * max(k, 0.45)  # joint space (cartilage) in mm

    parts: list = []
    class_parts: dict[str, list] = {c: [] for c in CLASSES}
    info: dict[str, dict] = {}
    fused: dict[str, bool | None] = {}

    def add(part):
        parts.append(part)
        if part.cls is not None:
            class_parts[part.cls].append(part)

    # ---- long bones of the rays: (bone, proximal joint index, distal joint index)
    chains = {1: [("finger-3", 17, 18), ("finger-2", 18, 19), ("finger-1", 19, 20)]}
    for r, (cmc, mcp, pip, dip, tip) in {2: (16, 21, 22, 23, 24), 3: (15, 25, 26, 27, 28),
                                         4: (14, 29, 30, 31, 32), 5: (13, 33, 34, 35, 36)}.items():
        dp, mp, pp, mc = RAY_BONES[r]
        chains[r] = [(mc, cmc, mcp), (pp, mcp, pip), (mp, pip, dip), (dp, dip, tip)]
    for r, chain in chains.items():
        for name, j0, j1 in chain:
            grp = BONE_GROUP[name]
            sh = LONG_SHAPES[grp]
            a = _unit(J[j1] - J[j0])
            n = np.array([-a[1], a[0]])
            js0 = js_mm * (1.3 if grp in ("mc", "mc1") else 1.0) * 0.5
            js1 = 0.0 if name in ("finger-1", "finger-4", "finger-8", "finger-12", "finger-16") else js_mm * 0.5
            if name in ("finger-1", "finger-4", "finger-8", "finger-12", "finger-16"):
                js1 = 0.10 * np.linalg.norm(J[j1] - J[j0])   # the bone tip lies under the finger pad
            P0 = J[j0] + a * js0
            L = float(np.linalg.norm(J[j1] - J[j0]) - js0 - js1)
            hb, hs, hh = (sh[key] * L * widthf for key in ("hb", "hs", "hh"))
            lb, lh = sh["lb"] * L, sh["lh"] * L
            e = sh["ef"] * L
            onset = _timing(p, grp, EPIPHYSIS_ONSET)
            fuse = _timing(p, "fusion_" + grp, {"fusion_" + kk: vv for kk, vv in FUSION.items()})
            _add_long_bone(add, info, fused, name, P0, a, n, L, hb, hs, hh, sh["cb"], sh["ch"], lb, lh, e,
                           sh["epi"], age, onset, fuse, density_f, ct_shaft, k, epi_round=(grp == "mc"))

    # ---- radius and ulna
    for name, i_med, i_lat, i_sty, lat_sign in (("Radius", 3, 4, 5, +1), ("Ulna", 0, 2, 1, -1)):
        grp = name.lower()
        d = _unit(J[i_lat] - J[i_med])
        a = np.array([d[1], -d[0]])         # distal
        n = d.copy()                         # lateral (towards the thumb)
        C = (J[i_lat] + J[i_med]) / 2
        Wp = float(np.linalg.norm(J[i_lat] - J[i_med])) / 2 * (0.96 + 0.04 * mat) * widthf
        h_sty = float(max((J[i_sty] - C) @ a, 3.0 * k))
        onset = _timing(p, grp, EPIPHYSIS_ONSET)
        fuse = _timing(p, "fusion_" + grp, {"fusion_" + kk: vv for kk, vv in FUSION.items()})
        _add_forearm_bone(add, info, fused, name, C, a, n, Wp, h_sty, lat_sign, age, onset, fuse, density_f,
                          ct_shaft, k, ray3)

    # ---- carpals
    A, t = _wrist_affine(J, ray3)
    sA = math.sqrt(abs(np.linalg.det(A)))
    mature = _by_sex(CARPAL_MATURE, male)
    for name in CARPALS:
        cx, cy, ang, ra, rb, pexp, ripples = CARPAL_TEMPLATE[name]
        centre = A @ (np.array([cx, cy]) / _TEMPLATE_RAY3 * ray3) + t
        th = math.radians(ang)
        ex = _unit(A @ np.array([math.cos(th), math.sin(th)]))
        ey = np.array([-ex[1], ex[0]])
        scale = sA * ray3 / _TEMPLATE_RAY3 * widthf
        onset = _timing(p, name, CARPAL_ONSET)
        info[name] = dict(kind="carpal", centre=centre, ex=ex, ey=ey, ra=ra * scale, rb=rb * scale)
        if age < onset:
            continue
        g = float(np.clip((age - onset) / max(mature - onset, 1.0), 0, 1)) ** 0.5
        nucleus = 1.8 * max(k, 0.5)
        ra_e = nucleus + (ra * scale - nucleus) * g
        rb_e = nucleus + (rb * scale - nucleus) * g
        add(BlobPart(name, centre, ex, ey, ra_e, rb_e, p=2.0 + (pexp - 2.0) * g,
                     ripples=tuple((kk, amp * g, ph) for kk, amp, ph in ripples),
                     depth=0.6 * (ra_e + rb_e) / 2, ct=0.10 + 0.10 * g, md=0.36,
                     mu=MU_BONE * density_f, role="carpal"))

    # ---- thumb sesamoids (unlabelled)
    if age > _timing(p, "sesamoid", {"sesamoid": SESAMOID_ONSET}):
        mc1 = info["finger-3"]
        g = float(np.clip((age - _by_sex(SESAMOID_ONSET, male)) / 36.0, 0.2, 1.0))
        for side in (-1, 1):
            c = mc1["head_point"] - mc1["axis"] * 2.0 * k + mc1["normal"] * side * 0.55 * mc1["head_w"]
            r = (1.4 + 1.4 * g) * k
            add(BlobPart(None, c, mc1["axis"], mc1["normal"], r * 1.1, r, p=2.0, depth=r,
                         ct=0.2, md=0.5, mu=MU_BONE * density_f, role="sesamoid", n_vertices=20))

    soft, soft_r = _soft_tissue(J, ray3, mat)
    return Hand(p, J, parts, class_parts, soft, soft_r, info, fused)


def _add_long_bone(add, info, fused, name, P0, a, n, L, hb, hs, hh, cb, ch, lb, lh, e, epi, age, onset, fuse,
                   density_f, ct_shaft, k, epi_round=False):
    """A finger bone: shaft (+ separate epiphysis while the growth plate is open), or one fused bone."""
    mu = MU_BONE * density_f

    def dens_profile(u, length, zpc_at=None, scar_at=None, scar_amp=0.0):
        # cortex thick in the middle of the shaft, thin at the (trabecular) ends
        mid = _smoothstep(np.minimum(u, length - u) / max(0.22 * length, 1e-6))
        ct = 0.10 + (ct_shaft - 0.10) * mid
        md = 0.55 - 0.46 * mid
        if zpc_at is not None:           # dense zone of provisional calcification at the growth plate
            md = md + 0.9 * np.exp(-((u - zpc_at) / max(0.35 * k, 0.15)) ** 2)
        if scar_at is not None and scar_amp > 0:   # epiphyseal scar after fusion
            md = md + scar_amp * np.exp(-((u - scar_at) / max(0.3 * k, 0.12)) ** 2)
        return ct, md

    meta_w = hs + 0.8 * ((hb if epi == "base" else hh) - hs)     # metaphysis half-width at the plate
    rec = dict(kind="long", origin=P0, axis=a, normal=n, length=L, epi=epi, head_w=hh)
    if age >= fuse:
        u, w = _long_profile(L, hb, hs, hh, cb, ch, lb, lh)
        scar_u = e if epi == "base" else L - e
        scar_amp = float(np.clip(1 - (age - fuse) / 30.0, 0, 1)) * 0.35
        ct, md = dens_profile(u, L, scar_at=scar_u, scar_amp=scar_amp)
        add(LongPart(name, P0, a, n, u, w, ct, md, mu, role="bone"))
        rec.update(umin=0.0, umax=L, physis=None)
        fused[name] = True
    else:
        # the shaft stops at the growth plate
        if epi == "base":
            s0, s1 = e, L
        else:
            s0, s1 = 0.0, L - e
        Ls = s1 - s0
        u, w = _long_profile(Ls, meta_w if epi == "base" else hb, hs, meta_w if epi == "head" else hh,
                             cb, ch, lb, lh, flat_base=(epi == "base"), flat_head=(epi == "head"))
        zpc = 0.0 if epi == "base" else Ls
        ct, md = dens_profile(u, Ls, zpc_at=zpc)
        add(LongPart(name, P0 + a * s0, a, n, u, w, ct, md, mu, role="shaft"))
        umin, umax = s0, s1
        physis_u = s0 if epi == "base" else s1
        rec.update(physis=physis_u, plate_w=meta_w)
        if age >= onset:
            t = float(np.clip((age - onset) / max(fuse - onset, 1.0), 0, 1))
            gap = (0.5 + 1.4 * (1 - t)) * max(k, 0.5) * (1 - 0.75 * _smoothstep((t - 0.85) / 0.15))
            zone = max(e - gap, 0.3)
            wf = 0.30 + 0.78 * t ** 0.6
            hf = 0.40 + 0.60 * t ** 0.5
            rb = zone / 2 * hf
            ra = meta_w * wf * (1.05 if epi_round else 1.0)
            if epi_round:   # metacarpal head: a rounded ball, not a disc
                rb = max(rb, min(ra * 0.75, zone / 2))
            if epi == "base":
                c_u = s0 - gap - rb
            else:
                c_u = s1 + gap + rb
            c = P0 + a * c_u
            add(BlobPart(name, c, n, a, ra, rb, p=2.0 if epi_round else 2.6, depth=0.8 * ra, ct=0.12,
                         md=0.42, mu=mu, role="epiphysis", n_vertices=32))
            if epi == "base":
                umin = c_u - rb
            else:
                umax = c_u + rb
            rec.update(epi_centre=c, epi_ra=ra, epi_rb=rb, gap=gap)
            fused[name] = False
        else:
            fused[name] = None
        rec.update(umin=umin, umax=umax)
    rec["head_point"] = P0 + a * rec["umax"]
    info[name] = rec


def _add_forearm_bone(add, info, fused, name, C, a, n, Wp, h_sty, lat_sign, age, onset, fuse, density_f,
                      ct_shaft, k, ray3):
    """Distal radius or ulna: a long shaft from the forearm up to the growth plate at ``C`` and a wedge
    epiphysis (higher on the styloid side: lateral for the radius, medial for the ulna)."""
    mu = MU_BONE * density_f
    Ls = 1.6 * ray3                         # shaft length below the plate (leaves the image)
    origin = C - a * Ls
    hs = Wp * (0.52 if name == "Radius" else 0.55)
    u, w = _long_profile(Ls, hs * 1.1, hs, Wp * 0.98, 0.5, 0.1, 0.1 * Ls, 0.9 * Wp, n=26, flat_head=True)
    mid = _smoothstep((Ls - u) / (2.5 * Wp))
    ct = 0.10 + (ct_shaft - 0.10) * mid
    md = 0.55 - 0.46 * mid
    rec = dict(kind="forearm", origin=origin, axis=a, normal=n, length=Ls, plate_w=Wp * 0.98, physis=Ls,
               lat_sign=lat_sign, umin=0.0)
    # epiphysis geometry (adult): wedge, height at the styloid side h_sty, other side ~45 %
    h_other = (0.45 if name == "Radius" else 0.6) * h_sty
    if age >= fuse:
        t, gap = 1.0, -0.5 * (1.45 if name == "Radius" else 1.6) * h_sty / 4   # fused: sunk into the shaft (no gap)
        fused[name] = True
        md = md + 0.35 * float(np.clip(1 - (age - fuse) / 30.0, 0.2, 1)) * np.exp(-((u - Ls) / max(0.4 * k, 0.15)) ** 2)
    else:
        md = md + 0.9 * np.exp(-((u - Ls) / max(0.4 * k, 0.15)) ** 2)
        if age >= onset:
            t = float(np.clip((age - onset) / max(fuse - onset, 1.0), 0, 1))
            gap = (0.6 + 1.8 * (1 - t)) * max(k, 0.5) * (1 - 0.75 * _smoothstep((t - 0.85) / 0.15))
            fused[name] = False
        else:
            t, gap = None, None
            fused[name] = None
    add(LongPart(name, origin, a, n, u, w, ct, md, mu, role="shaft"))
    rec["umax"] = Ls
    if t is not None:
        wf = 0.30 + 0.72 * t ** 0.6
        hf = 0.35 + 0.65 * t ** 0.6
        ra = Wp * wf
        hl, hm = h_sty * hf, h_other * hf            # heights at the styloid side and the other side
        hmean = (hl + hm) / 2
        rb = hmean / 2
        taper = (hl - hm) / (hl + hm) * lat_sign     # positive: higher towards +x (lateral)
        shear = rb * taper / ra
        # blob local frame: ex = lateral (n), ey = distal (a); bottom flat at the plate + gap
        centre = C + a * (gap + rb)
        add(BlobPart(name, centre, n, a, ra, rb, p=3.0 if name == "Radius" else 2.4, taper=taper,
                     shear=shear, depth=0.55 * ra if name == "Radius" else 0.75 * ra, ct=0.10, md=0.42,
                     mu=mu, role="epiphysis", n_vertices=40))
        rec.update(epi_centre=centre, epi_ra=ra, epi_rb=rb, epi_taper=taper, gap=gap,
                   umax=Ls + gap + 2 * rb)
    info[name] = rec


def _capsule(p0, p1, r0, r1, n=10) -> np.ndarray:
    """A tapered capsule polygon from p0 (radius r0) to p1 (radius r1)."""
    a = _unit(p1 - p0)
    nrm = np.array([-a[1], a[0]])
    th = np.linspace(-np.pi / 2, np.pi / 2, n)
    cap1 = p1 + r1 * (np.outer(np.cos(th), a) + np.outer(np.sin(th), nrm))
    cap0 = p0 + r0 * (np.outer(-np.cos(th), a) + np.outer(-np.sin(th), nrm))
    return np.concatenate([cap1, cap0])


def _soft_tissue(J, ray3, mat):
    """Soft-tissue outline (list of polygons, mm) and the depth scale: fingers, thumb, palm, forearm."""
    chub = 1.12 - 0.12 * mat
    f = ray3 * chub
    polys = []
    rays = {2: (21, 22, 23, 24), 3: (25, 26, 27, 28), 4: (29, 30, 31, 32), 5: (33, 34, 35, 36)}
    for r, (mcp, pip, dip, tip) in rays.items():
        s = 0.86 if r == 5 else 1.0
        tip_soft = J[tip] + _unit(J[tip] - J[dip]) * 0.045 * ray3
        widths = [0.084 * f * s, 0.076 * f * s, 0.067 * f * s, 0.058 * f * s]
        pts = [J[mcp] - _unit(J[pip] - J[mcp]) * 0.05 * ray3, J[pip], J[dip], tip_soft]
        for q0, q1, w0, w1 in zip(pts[:-1], pts[1:], widths[:-1], widths[1:]):
            polys.append(_capsule(q0, q1, w0, w1))
    tip_soft = J[20] + _unit(J[20] - J[19]) * 0.045 * ray3
    th = [J[17], J[18], J[19], tip_soft]
    tw = [0.095 * f, 0.078 * f, 0.070 * f, 0.060 * f]
    for q0, q1, w0, w1 in zip(th[:-1], th[1:], tw[:-1], tw[1:]):
        polys.append(_capsule(q0, q1, w0, w1))
    # palm: hull of MCP heads, CMC joints and the wrist, padded
    m = 0.05 * ray3
    pal = [J[33] + np.array([-1.3 * m, 0.3 * m]), J[29] + np.array([0, -0.4 * m]), J[25] + np.array([0, -0.5 * m]),
           J[21] + np.array([0.3 * m, -0.4 * m]), J[21] + np.array([1.0 * m, 0.2 * m]),
           0.55 * J[21] + 0.45 * J[18] + np.array([0, 0.9 * m]),
           J[17] + np.array([1.2 * m, 0.0]), J[4] + np.array([1.0 * m, 0.0]),
           J[0] + np.array([-1.0 * m, 0.0]), J[13] + np.array([-1.4 * m, 0.0])]
    polys.append(np.array(pal))
    # forearm: from the wrist down out of the picture
    d = _unit(J[4] - J[0])
    down = np.array([-d[1], d[0]])
    if down[1] < 0:
        down = -down
    far = 2.5 * ray3
    polys.append(np.array([J[0] - d * m * 0.9, J[4] + d * m * 0.9,
                           J[4] + d * m * 1.6 + down * far, J[0] - d * m * 1.6 + down * far]))
    return polys, 0.06 * f


# --------------------------------------------------------------------------------------------------
# Landmarks on the bones
# --------------------------------------------------------------------------------------------------

def closest_on_polygon(poly: np.ndarray, q: np.ndarray) -> np.ndarray:
    """The point of a closed polygon's boundary nearest to ``q``."""
    a = poly
    b = np.roll(poly, -1, axis=0)
    ab = b - a
    t = np.clip(((q - a) * ab).sum(1) / np.maximum((ab * ab).sum(1), 1e-12), 0, 1)
    c = a + ab * t[:, None]
    return c[np.argmin(((c - q) ** 2).sum(1))]


def _inward(part, pt: np.ndarray) -> np.ndarray:
    """A point well inside ``part`` near ``pt`` (to move a boundary point inwards)."""
    if isinstance(part, BlobPart):
        return part.centre
    u = float((pt - part.origin) @ part.axis)
    return part.point(float(np.clip(u, 0.2 * part.length, 0.8 * part.length)), 0.0)


def _facing_point(hand: Hand, bone: str, target: np.ndarray, delta: float) -> np.ndarray | None:
    parts = hand.class_parts.get(bone) or []
    best, best_d, best_part = None, np.inf, None
    for part in parts:
        c = closest_on_polygon(part.polygon(), target)
        d = float(np.linalg.norm(c - target))
        if d < best_d:
            best, best_d, best_part = c, d, part
    if best is None:
        return None
    ref = _inward(best_part, best)
    return best + _unit(ref - best) * min(delta, 0.45 * float(np.linalg.norm(ref - best)))


def _nominal_centre(hand: Hand, bone: str) -> np.ndarray:
    rec = hand.info[bone]
    if rec["kind"] == "carpal":
        return rec["centre"]
    return rec["origin"] + rec["axis"] * (rec["umin"] + rec["umax"]) / 2


def landmarks_mm(hand: Hand, delta: float = 0.3) -> dict[str, np.ndarray]:
    """Every landmark of ``LANDMARKS`` (canonical frame, mm), ``delta`` mm inside its bone."""
    out = {}
    for name, spec in LANDMARKS.items():
        rec = hand.info[spec.primary]
        present = bool(hand.class_parts.get(spec.primary))
        if spec.kind in ("head", "base"):
            u = rec["umax"] - delta if spec.kind == "head" else rec["umin"] + delta
            if spec.kind == "head" and spec.secondary is None:      # fingertip: a bit further in
                u = rec["umax"] - 2 * delta
            out[name] = rec["origin"] + rec["axis"] * u
        elif spec.kind in ("physis_med", "physis_lat", "druj") or (spec.kind == "styloid" and "epi_centre" not in rec):
            shaft = [p for p in hand.class_parts[spec.primary] if p.role == "shaft"][0]
            side = {"physis_med": -1, "physis_lat": 1, "druj": 1}.get(spec.kind, rec["lat_sign"])
            if spec.kind == "druj":
                u = shaft.length - 0.45 * rec["plate_w"]
            else:
                u = shaft.length - 2.5 * delta
            v = side * max(shaft.width_at(u) - delta, 0.0)
            out[name] = shaft.point(u, v)
        elif spec.kind == "styloid":
            epi = [p for p in hand.class_parts[spec.primary] if p.role == "epiphysis"][0]
            poly = epi.polygon()
            direction = _unit(rec["axis"] + rec["lat_sign"] * 0.8 * rec["normal"])
            tip = poly[np.argmax(poly @ direction)]
            out[name] = tip + _unit(epi.centre - tip) * delta
        elif spec.kind == "facing":
            sec_c = _nominal_centre(hand, spec.secondary)
            pt = _facing_point(hand, spec.primary, sec_c, delta) if present else None
            if pt is None:
                pt = _facing_point(hand, spec.secondary, _nominal_centre(hand, spec.primary), delta)
            if pt is None:
                pt = (_nominal_centre(hand, spec.primary) + sec_c) / 2
            out[name] = pt
        else:  # pragma: no cover
            raise ValueError(spec.kind)
    return out
