"""Landmark layouts: what each point of a dataset's annotation means.

A :class:`Layout` knows how many points there are, how they group into face parts, how they
permute under a horizontal flip, which points define the NME normalisation distances
(inter-ocular, inter-pupil) and which edges to draw. Built-in layouts follow the datasets'
releases (``docs`` and ``shared/facts/datasets.md``); own layouts load from a small YAML file.

Conventions used everywhere in facemark: landmarks are ``(..., K, 2)`` arrays of ``x, y`` in
0-based pixel coordinates whose integer values are pixel centres, so a horizontal flip of an
image ``width`` pixels wide maps ``x`` to ``width - 1 - x``. "Left" means the image's left.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

__all__ = [
    "Layout",
    "NORMALISERS",
    "get_layout",
    "load_layout",
    "available_layouts",
    "wflw98_to_300w68",
    "WFLW98",
    "W300_68",
    "COFW29",
]


# The NME normalisers a layout may name (facemark.metrics.NORMALISATIONS has the same keys).
NORMALISERS = ("inter_ocular", "inter_pupil", "bbox")


@dataclass(frozen=True)
class Layout:
    """The meaning of the points of one annotation scheme.

    Attributes:
        name: short identifier, e.g. ``"wflw98"``.
        num_points: K.
        groups: face part -> point indices, in drawing order along the part.
        flip_permutation: index ``i`` of the horizontally flipped face takes point
            ``flip_permutation[i]`` of the original face. ``None`` for an own layout whose mirror
            pairs are unknown: training then disables flip augmentation (with a warning).
        inter_ocular: the two points whose distance is the inter-ocular normaliser
            (outer eye corners); ``None`` when the layout has no such points.
        inter_pupil: two tuples of points; the distance between their centroids is the
            inter-pupil normaliser (one point each where the layout has pupil landmarks);
            ``None`` when the layout has no such points.
        normalisation: the NME normaliser this layout's results are selected and reported by:
            ``"inter_ocular"``, ``"inter_pupil"`` or ``"bbox"`` (``sqrt(w * h)`` of each face's
            box: needs faces with boxes). The named points must exist.
        closed_groups: groups drawn as closed loops (eyes, lips).
        point_groups: groups drawn as separate points, without edges (pupils).
        point_names: one name per point.
    """

    name: str
    num_points: int
    groups: Mapping[str, tuple[int, ...]]
    flip_permutation: tuple[int, ...] | None
    inter_ocular: tuple[int, int] | None
    inter_pupil: tuple[tuple[int, ...], tuple[int, ...]] | None
    closed_groups: tuple[str, ...] = ()
    point_groups: tuple[str, ...] = ()
    point_names: tuple[str, ...] = field(default=())
    normalisation: str = "inter_ocular"

    def __post_init__(self) -> None:
        where = f"layout {self.name!r}"
        num_points = self.num_points
        if not isinstance(num_points, int) or num_points < 2:
            raise ValueError(f"{where}: num_points must be an integer >= 2, got {num_points!r}")
        if self.flip_permutation is not None:
            permutation = list(self.flip_permutation)
            bad = [i for i in permutation if not 0 <= i < num_points]
            if bad:
                raise ValueError(f"{where}: flip_permutation has indices {bad} outside 0..{num_points - 1}")
            if sorted(permutation) != list(range(num_points)):
                repeated = sorted({i for i in permutation if permutation.count(i) > 1})
                raise ValueError(
                    f"{where}: flip_permutation must be a permutation of 0..{num_points - 1} "
                    f"({len(permutation)} entries given" + (f"; {repeated} repeated" if repeated else "") + ")"
                )
            not_mirrored = [i for i in range(num_points) if permutation[permutation[i]] != i]
            if not_mirrored:
                i = not_mirrored[0]
                raise ValueError(
                    f"{where}: flip_permutation must be its own inverse (flip twice = identity): point {i} maps to "
                    f"{permutation[i]}, which maps to {permutation[permutation[i]]}, not back to {i}"
                )
        for group, indices in self.groups.items():
            bad = [i for i in indices if not 0 <= i < num_points]
            if bad:
                raise ValueError(f"{where}: group {group!r} has indices {bad} outside 0..{num_points - 1}")
        if self.inter_ocular is not None and len(self.inter_ocular) != 2:
            raise ValueError(f"{where}: inter_ocular must be two point indices, got {self.inter_ocular!r}")
        if self.inter_pupil is not None and len(self.inter_pupil) != 2:
            raise ValueError(f"{where}: inter_pupil must be two lists of point indices, got {self.inter_pupil!r}")
        named = []
        if self.inter_ocular is not None:
            named.append(("inter_ocular", self.inter_ocular))
        if self.inter_pupil is not None:
            named += [(f"inter_pupil[{side}]", points) for side, points in enumerate(self.inter_pupil)]
        for key, indices in named:
            bad = [i for i in indices if not 0 <= i < num_points]
            if bad or len(indices) == 0:
                raise ValueError(f"{where}: {key} has indices {list(indices)}; expected indices in 0..{num_points - 1}")
        if self.normalisation not in NORMALISERS:
            raise ValueError(f"{where}: normalisation {self.normalisation!r}; expected one of {list(NORMALISERS)}")
        if self.normalisation != "bbox" and getattr(self, self.normalisation) is None:
            raise ValueError(f"{where}: normalisation is {self.normalisation!r} but the layout gives no "
                             f"{self.normalisation} points; add them or use another normalisation "
                             f"({', '.join(NORMALISERS)})")
        for key in ("closed_groups", "point_groups"):
            unknown = [g for g in getattr(self, key) if g not in self.groups]
            if unknown:
                raise ValueError(f"{where}: {key} names unknown groups {unknown}")
        if self.point_names and len(self.point_names) != num_points:
            raise ValueError(f"{where}: point_names has {len(self.point_names)} names, expected {num_points}")

    # -- geometry ----------------------------------------------------------------------------
    def _check(self, landmarks: np.ndarray) -> np.ndarray:
        landmarks = np.asarray(landmarks, dtype=np.float64)
        if landmarks.ndim < 2 or landmarks.shape[-2:] != (self.num_points, 2):
            raise ValueError(
                f"layout {self.name!r} expects landmarks of shape (..., {self.num_points}, 2), got {landmarks.shape}"
            )
        return landmarks

    def inter_ocular_distance(self, landmarks: np.ndarray) -> np.ndarray:
        """Distance between the outer eye corners, shape ``landmarks.shape[:-2]``."""
        landmarks = self._check(landmarks)
        if self.inter_ocular is None:
            raise ValueError(f"layout {self.name!r} has no inter_ocular points")
        a, b = self.inter_ocular
        return np.linalg.norm(landmarks[..., a, :] - landmarks[..., b, :], axis=-1)

    def inter_pupil_distance(self, landmarks: np.ndarray) -> np.ndarray:
        """Distance between the pupil centres (centroids of ``inter_pupil``'s two point sets)."""
        landmarks = self._check(landmarks)
        if self.inter_pupil is None:
            raise ValueError(f"layout {self.name!r} has no inter_pupil points")
        left = landmarks[..., list(self.inter_pupil[0]), :].mean(axis=-2)
        right = landmarks[..., list(self.inter_pupil[1]), :].mean(axis=-2)
        return np.linalg.norm(left - right, axis=-1)

    def flip_landmarks(self, landmarks: np.ndarray, width: float) -> np.ndarray:
        """Landmarks of the horizontally mirrored image (``x -> width - 1 - x``, points permuted)."""
        landmarks = self._check(landmarks)
        if self.flip_permutation is None:
            raise ValueError(f"layout {self.name!r} has no flip_permutation: its faces cannot be mirrored")
        flipped = landmarks[..., list(self.flip_permutation), :].copy()
        flipped[..., 0] = (width - 1) - flipped[..., 0]
        return flipped

    @property
    def normalisers(self) -> tuple[str, ...]:
        """The NME normalisations this layout's points define (``"bbox"`` needs the faces' boxes)."""
        return tuple(key for key in ("inter_ocular", "inter_pupil") if getattr(self, key) is not None)

    @property
    def edges(self) -> tuple[tuple[int, int], ...]:
        """Point pairs to draw: consecutive points of each group, closing the closed groups."""
        edges: list[tuple[int, int]] = []
        for group, indices in self.groups.items():
            if group in self.point_groups:
                continue
            edges.extend(zip(indices[:-1], indices[1:]))
            if group in self.closed_groups and len(indices) > 2:
                edges.append((indices[-1], indices[0]))
        return tuple(edges)

    def group_of(self, index: int) -> str:
        """The first group that holds point ``index`` (``"other"`` if none)."""
        for group, indices in self.groups.items():
            if index in indices:
                return group
        return "other"

    def to_dict(self) -> dict:
        """Plain-Python form (YAML/JSON/checkpoint friendly); ``Layout.from_dict`` inverts it."""
        return {
            "name": self.name,
            "num_points": self.num_points,
            "groups": {k: list(v) for k, v in self.groups.items()},
            "flip_permutation": None if self.flip_permutation is None else list(self.flip_permutation),
            "inter_ocular": None if self.inter_ocular is None else list(self.inter_ocular),
            "inter_pupil": None if self.inter_pupil is None else [list(p) for p in self.inter_pupil],
            "normalisation": self.normalisation,
            "closed_groups": list(self.closed_groups),
            "point_groups": list(self.point_groups),
            "point_names": list(self.point_names),
        }

    @classmethod
    def from_dict(cls, spec: Mapping, source: str = "layout") -> "Layout":
        """Build a layout from :meth:`to_dict`'s form or a YAML file's mapping.

        Required keys: ``name``, ``num_points``; optional: ``flip_permutation`` (absent or null:
        the faces cannot be mirrored, flip augmentation is off), ``inter_ocular``,
        ``inter_pupil``, ``normalisation`` (default ``inter_ocular``; its points are then required),
        ``groups``, ``closed_groups``, ``point_groups``, ``point_names``. ``inter_pupil`` may be
        two indices (pupil landmarks) or two lists (centroids).
        """
        if not isinstance(spec, Mapping):
            raise ValueError(f"{source}: expected a mapping of layout keys, got {type(spec).__name__}")
        required = ("name", "num_points")
        allowed = set(required) | {"flip_permutation", "inter_ocular", "inter_pupil", "normalisation", "groups",
                                   "closed_groups", "point_groups", "point_names"}
        missing = [k for k in required if k not in spec]
        if missing:
            raise ValueError(f"{source}: missing key(s) {missing}; required keys are {list(required)}")
        unknown = sorted(set(spec) - allowed)
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {unknown}; allowed keys are {sorted(allowed)}")

        def indices(key: str, value) -> tuple[int, ...]:
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                               for v in value):
                raise ValueError(f"{source}: key {key!r} must be a list of integer point indices, got {value!r}")
            return tuple(value)

        def optional(key: str):
            value = spec.get(key)
            return None if value is None else indices(key, value)

        pupil = spec.get("inter_pupil")
        if pupil is not None:
            if isinstance(pupil, (list, tuple)) and len(pupil) == 2 and all(isinstance(p, int) for p in pupil):
                pupil = [[pupil[0]], [pupil[1]]]
            if not isinstance(pupil, (list, tuple)) or len(pupil) != 2:
                raise ValueError(f"{source}: key 'inter_pupil' must be two indices or two lists of indices, got {pupil!r}")
            pupil = (indices("inter_pupil[0]", pupil[0]), indices("inter_pupil[1]", pupil[1]))
        groups = spec.get("groups") or {}
        if not isinstance(groups, Mapping):
            raise ValueError(f"{source}: key 'groups' must map a group name to a list of indices")
        num_points = spec["num_points"]
        if not isinstance(num_points, int) or isinstance(num_points, bool):
            raise ValueError(f"{source}: key 'num_points' must be an integer, got {num_points!r}")
        try:
            return cls(
                name=str(spec["name"]),
                num_points=num_points,
                groups={str(g): indices(f"groups.{g}", v) for g, v in groups.items()},
                flip_permutation=optional("flip_permutation"),
                inter_ocular=optional("inter_ocular"),  # type: ignore[arg-type]
                inter_pupil=pupil,
                normalisation=str(spec.get("normalisation") or "inter_ocular"),
                closed_groups=tuple(spec.get("closed_groups") or ()),
                point_groups=tuple(spec.get("point_groups") or ()),
                point_names=tuple(str(n) for n in (spec.get("point_names") or ())),
            )
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None


def _names(groups: Mapping[str, Sequence[int]], num_points: int) -> tuple[str, ...]:
    names = [f"point_{i}" for i in range(num_points)]
    for group, indices in groups.items():
        for order, index in enumerate(indices):
            if names[index].startswith("point_"):
                names[index] = f"{group}_{order}"
    return tuple(names)


def _range(a: int, b: int) -> tuple[int, ...]:
    return tuple(range(a, b + 1))


# --- WFLW, 98 points (semantics and flip permutation: shared/facts/datasets.md) -------------
_WFLW98_GROUPS = {
    "contour": _range(0, 32),
    "left_brow": _range(33, 41),
    "right_brow": _range(42, 50),
    "nose_bridge": _range(51, 54),
    "nose_lower": _range(55, 59),
    "left_eye": _range(60, 67),
    "right_eye": _range(68, 75),
    "outer_lip": _range(76, 87),
    "inner_lip": _range(88, 95),
    "pupils": (96, 97),
}
_WFLW98_FLIP = (
    tuple(range(32, -1, -1))
    + (46, 45, 44, 43, 42, 50, 49, 48, 47)
    + (37, 36, 35, 34, 33, 41, 40, 39, 38)
    + (51, 52, 53, 54)
    + (59, 58, 57, 56, 55)
    + (72, 71, 70, 69, 68, 75, 74, 73)
    + (64, 63, 62, 61, 60, 67, 66, 65)
    + (82, 81, 80, 79, 78, 77, 76)
    + (87, 86, 85, 84, 83)
    + (92, 91, 90, 89, 88)
    + (95, 94, 93)
    + (97, 96)
)
WFLW98 = Layout(
    name="wflw98",
    num_points=98,
    groups=_WFLW98_GROUPS,
    flip_permutation=_WFLW98_FLIP,
    inter_ocular=(60, 72),
    inter_pupil=((96,), (97,)),
    closed_groups=("left_brow", "right_brow", "left_eye", "right_eye", "outer_lip", "inner_lip"),
    point_groups=("pupils",),
    point_names=_names(_WFLW98_GROUPS, 98),
)

# --- 300W / iBUG, 68 points (also COFW68) ------------------------------------------------------
_W300_GROUPS = {
    "contour": _range(0, 16),
    "left_brow": _range(17, 21),
    "right_brow": _range(22, 26),
    "nose_bridge": _range(27, 30),
    "nose_lower": _range(31, 35),
    "left_eye": _range(36, 41),
    "right_eye": _range(42, 47),
    "outer_lip": _range(48, 59),
    "inner_lip": _range(60, 67),
}
_W300_FLIP = (
    tuple(range(16, -1, -1))
    + tuple(range(26, 16, -1))
    + (27, 28, 29, 30)
    + (35, 34, 33, 32, 31)
    + (45, 44, 43, 42, 47, 46)
    + (39, 38, 37, 36, 41, 40)
    + (54, 53, 52, 51, 50, 49, 48)
    + (59, 58, 57, 56, 55)
    + (64, 63, 62, 61, 60)
    + (67, 66, 65)
)
W300_68 = Layout(
    name="300w68",
    num_points=68,
    groups=_W300_GROUPS,
    flip_permutation=_W300_FLIP,
    inter_ocular=(36, 45),
    # 300W has no pupil landmarks: the pupil is the centroid of each eye's six points.
    inter_pupil=(_range(36, 41), _range(42, 47)),
    closed_groups=("left_eye", "right_eye", "outer_lip", "inner_lip"),
    point_names=_names(_W300_GROUPS, 68),
)

# --- COFW, 29 points (the LFPW 29-point scheme; point 0 is on the image's left) --------------
_COFW29_NAMES = (
    "left_brow_outer", "right_brow_outer", "left_brow_inner", "right_brow_inner",
    "left_brow_top", "left_brow_bottom", "right_brow_top", "right_brow_bottom",
    "left_eye_outer", "right_eye_outer", "left_eye_inner", "right_eye_inner",
    "left_eye_top", "left_eye_bottom", "right_eye_top", "right_eye_bottom",
    "left_pupil", "right_pupil",
    "nose_left", "nose_right", "nose_tip", "nose_bottom",
    "mouth_left", "mouth_right", "upper_lip_top", "upper_lip_bottom",
    "lower_lip_top", "lower_lip_bottom", "chin",
)
_COFW29_GROUPS = {
    "left_brow": (0, 4, 2, 5),
    "right_brow": (3, 6, 1, 7),
    "left_eye": (8, 12, 10, 13),
    "right_eye": (11, 14, 9, 15),
    "nose": (18, 20, 19, 21),
    "outer_lip": (22, 24, 23, 27),
    "inner_lip": (22, 25, 23, 26),
    "pupils": (16, 17),
    "chin": (28,),
}
_COFW29_PAIRS = ((0, 1), (2, 3), (4, 6), (5, 7), (8, 9), (10, 11), (12, 14), (13, 15), (16, 17), (18, 19), (22, 23))


def _pairs_to_permutation(pairs: Sequence[tuple[int, int]], num_points: int) -> tuple[int, ...]:
    permutation = list(range(num_points))
    for a, b in pairs:
        permutation[a], permutation[b] = b, a
    return tuple(permutation)


COFW29 = Layout(
    name="cofw29",
    num_points=29,
    groups=_COFW29_GROUPS,
    flip_permutation=_pairs_to_permutation(_COFW29_PAIRS, 29),
    inter_ocular=(8, 9),
    inter_pupil=((16,), (17,)),
    closed_groups=("left_brow", "right_brow", "left_eye", "right_eye", "nose", "outer_lip", "inner_lip"),
    point_groups=("pupils", "chin"),
    point_names=_COFW29_NAMES,
)

_BUILTIN = {layout.name: layout for layout in (WFLW98, W300_68, COFW29)}
# Accepted spellings of the built-in names.
_ALIASES = {"wflw": "wflw98", "300w": "300w68", "cofw": "cofw29", "cofw68": "300w68", "ibug68": "300w68"}


def available_layouts() -> list[str]:
    """Names accepted by :func:`get_layout` (besides a path to a YAML file)."""
    return sorted(_BUILTIN) + sorted(_ALIASES)


def load_layout(path: str | Path) -> Layout:
    """Load an own layout from a YAML file (keys: see :meth:`Layout.from_dict`)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"layout file {path} does not exist")
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({error})") from None
    return Layout.from_dict(spec, source=str(path))


def get_layout(name: str | Path | Layout) -> Layout:
    """A built-in layout by name (``"wflw98"``, ``"300w68"``, ``"cofw29"``) or a YAML file's layout."""
    if isinstance(name, Layout):
        return name
    key = str(name).lower()
    key = _ALIASES.get(key, key)
    if key in _BUILTIN:
        return _BUILTIN[key]
    if str(name).endswith((".yaml", ".yml")) or Path(str(name)).is_file():
        return load_layout(name)
    raise KeyError(f"unknown layout {name!r}; expected one of {sorted(_BUILTIN)} or a path to a layout YAML file")


# --- WFLW 98 -> 300W 68 --------------------------------------------------------------------
# The conversion used for WFLW-68 cross-dataset work (shared/facts/datasets.md). The eyelid
# weights are the literal 0.666 / 0.333 of that conversion (they sum to 0.999, as published).
_LID_NEAR, _LID_FAR = 0.666, 0.333


def _conversion_matrix() -> np.ndarray:
    matrix = np.zeros((68, 98))
    for i in range(17):  # jaw: every second contour point
        matrix[i, 2 * i] = 1.0
    matrix[17, 33] = 1.0
    matrix[26, 46] = 1.0
    for i in range(27, 36):  # nose
        matrix[i, 51 + i - 27] = 1.0
    for i in range(48, 68):  # mouth
        matrix[i, 76 + i - 48] = 1.0
    for corner68, corner98 in ((36, 60), (39, 64), (42, 68), (45, 72)):
        matrix[corner68, corner98] = 1.0
    for lid68, near, far in (
        (37, 61, 62), (38, 63, 62), (40, 65, 66), (41, 67, 66),
        (43, 69, 70), (44, 71, 70), (46, 73, 74), (47, 75, 74),
    ):
        matrix[lid68, near] = _LID_NEAR
        matrix[lid68, far] = _LID_FAR
    return matrix


_WFLW_TO_300W = _conversion_matrix()
# Brow points 18..21 and 22..25: x of the upper brow point, y the mean of upper and lower.
_BROW_PAIRS = ((18, 34, 41), (19, 35, 40), (20, 36, 39), (21, 37, 38), (22, 42, 50), (23, 43, 49), (24, 44, 48), (25, 45, 47))


def wflw98_to_300w68(landmarks: np.ndarray) -> np.ndarray:
    """Convert WFLW 98-point landmarks ``(..., 98, 2)`` to the 300W 68-point layout ``(..., 68, 2)``."""
    landmarks = WFLW98._check(landmarks)
    converted = np.einsum("ij,...jc->...ic", _WFLW_TO_300W, landmarks)
    for out, upper, lower in _BROW_PAIRS:
        converted[..., out, 0] = landmarks[..., upper, 0]
        converted[..., out, 1] = 0.5 * (landmarks[..., upper, 1] + landmarks[..., lower, 1])
    return converted
