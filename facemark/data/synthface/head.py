"""SynthFace's 3D head: the landmarks of WFLW (98), 300W (68) and COFW (29) on one parametric head.

Head frame (units: roughly the outer inter-ocular distance, so the eye corners sit near x = +-0.5):
``x`` to the image's right, ``y`` down, ``z`` towards the camera; the eye line is ``y = 0``.

The head is a stack of horizontal elliptical *rings*: the ring at height ``y`` is
``(w sin(phi), y, c + d cos(phi))`` with half-width ``w(y)``, centre depth ``c(y)`` and half-depth
``d(y)``; ``phi = 0`` faces the camera in the frontal pose. Below the contour top (about the eye
line) the rings narrow towards the chin along a superellipse ``(x / W)^a + t^b = 1`` (``a``, ``b``
set the jaw's squareness) and move forward (the jaw sits in front of the neck).

Every facial feature is a parametric curve drawn on the frontal face (``x``, ``y``) with a height
``h`` above the surface; :func:`lift` puts it on the ring surface. Landmarks of all three layouts
are evaluations of the same curves at fixed parameters (:data:`LANDMARK_SPECS`), so the 68- and
29-point labels are exactly consistent with the 98-point ones, and the renderer draws the same
curves densely, so the drawn features pass through their landmarks.

Contour landmarks are pose dependent, as WFLW annotators place them on the visible outline: point
``k`` lives on the ring at height ``y_k`` (arc-length spaced along the frontal outline) and is that
ring's extreme point in the outline's outward direction (rotated by the roll), limited to the
arc between slightly past the face's midline and the ear (:func:`contour_points`). On the side
turned away it is therefore the silhouette of the cheek; on the side turned towards the camera it
stops at the ear.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Identity",
    "Expression",
    "Pose",
    "sample_identity",
    "sample_expression",
    "sample_pose",
    "HeadModel",
    "rotation_matrix",
    "LANDMARK_SPECS",
    "NUM_CONTOUR",
    "project",
    "project_visible",
    "facing",
    "is_large_pose",
]

NUM_CONTOUR = 33  # WFLW contour points 0..32 (16 is the chin)
# Ring arc that contour points may use: from slightly past the midline (INNER) to the back of
# the jaw (OUTER, by the contour point's height t from the contour top (0) to the chin (1)):
# about the ear at the top, further back along the jaw's vertical ramus, then forward with the
# jaw's body to the chin (radians).
CONTOUR_ARC_INNER = math.radians(-25.0)
CONTOUR_ARC_OUTER_T = (0.0, 0.25, 0.5, 0.75, 1.0)
CONTOUR_ARC_OUTER = tuple(math.radians(v) for v in (105.0, 125.0, 130.0, 110.0, 100.0))


# --- parameters --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Identity:
    """Per-person shape (head units). Sampled by :func:`sample_identity`."""

    face_half_width: float = 0.80  # ring half-width at the contour top (cheekbones)
    head_depth: float = 1.05  # ring half-depth of the cranium
    crown_height: float = -1.22  # y of the top of the head
    chin_height: float = 1.33  # y of the chin (mouth closed)
    contour_top: float = 0.03  # y where the contour starts (ear level, about the eye line)
    jaw_width_exponent: float = 2.1  # a of the jaw superellipse: larger = squarer jaw
    jaw_length_exponent: float = 2.1  # b: larger = longer straight cheeks
    chin_forward: float = 0.70  # ring centre depth at the chin
    jaw_depth: float = 0.38  # ring half-depth at the jaw
    eye_centre_x: float = 0.34
    eye_width: float = 0.32
    eye_opening: float = 0.12
    eye_tilt: float = 0.015  # outer corner above the inner one
    eye_y: float = 0.0
    brow_height: float = 0.20  # brow centre line above the eye line
    brow_thickness: float = 0.065
    brow_arch: float = 0.045
    brow_inner_x: float = 0.10
    brow_outer_x: float = 0.62
    nose_root_y: float = 0.0
    nose_tip_y: float = 0.50
    nose_half_width: float = 0.19
    nose_depth: float = 0.30
    mouth_y: float = 0.85
    mouth_half_width: float = 0.27
    upper_lip: float = 0.085
    lower_lip: float = 0.10


@dataclass(frozen=True)
class Expression:
    """Facial expression. ``mouth_open``: lip gap (head units); ``smile`` in [-0.4, 1] (negative: frown);
    ``brow_raise`` in [-1, 1]; ``eye_closure_left/right`` in [0, 1]; ``pucker`` in [0, 1] (an O mouth);
    ``gaze_x/y`` in [-1, 1]."""

    mouth_open: float = 0.0
    smile: float = 0.0
    brow_raise: float = 0.0
    brow_frown: float = 0.0
    eye_closure_left: float = 0.0
    eye_closure_right: float = 0.0
    pucker: float = 0.0
    gaze_x: float = 0.0
    gaze_y: float = 0.0


@dataclass(frozen=True)
class Pose:
    """Head rotation in degrees: yaw about the vertical axis (positive turns the face to the image's
    right), pitch (positive looks up), roll (positive turns clockwise in the image)."""

    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0


def _lognormal(rng: np.random.Generator, mean: float, spread: float) -> float:
    """``mean * exp(spread * n)`` with ``n`` a standard normal draw cut at +-2.5."""
    return mean * math.exp(spread * min(2.5, max(-2.5, float(rng.standard_normal()))))


def _normal(rng: np.random.Generator, mean: float, std: float, limit: float = 2.5) -> float:
    return mean + std * min(limit, max(-limit, float(rng.standard_normal())))


def sample_identity(rng: np.random.Generator) -> Identity:
    """A random face shape; spreads are a few percent to ~15 % of each size, as between people."""
    return Identity(
        face_half_width=_lognormal(rng, 0.80, 0.06),
        head_depth=_lognormal(rng, 1.05, 0.04),
        crown_height=-_lognormal(rng, 1.22, 0.05),
        chin_height=_lognormal(rng, 1.33, 0.07),
        contour_top=_normal(rng, 0.03, 0.05),
        jaw_width_exponent=float(rng.uniform(1.6, 2.9)),
        jaw_length_exponent=float(rng.uniform(1.6, 2.7)),
        chin_forward=_normal(rng, 0.70, 0.05),
        jaw_depth=_normal(rng, 0.38, 0.04),
        eye_centre_x=_lognormal(rng, 0.335, 0.05),
        eye_width=_lognormal(rng, 0.32, 0.08),
        eye_opening=_lognormal(rng, 0.125, 0.18),
        eye_tilt=_normal(rng, 0.015, 0.02),
        eye_y=0.0,
        brow_height=_lognormal(rng, 0.21, 0.15),
        brow_thickness=_lognormal(rng, 0.065, 0.2),
        brow_arch=_lognormal(rng, 0.045, 0.35),
        brow_inner_x=_lognormal(rng, 0.11, 0.2),
        brow_outer_x=_lognormal(rng, 0.62, 0.06),
        nose_root_y=_normal(rng, -0.01, 0.03),
        nose_tip_y=_lognormal(rng, 0.50, 0.08),
        nose_half_width=_lognormal(rng, 0.19, 0.1),
        nose_depth=_lognormal(rng, 0.30, 0.12),
        mouth_y=_lognormal(rng, 0.85, 0.05),
        mouth_half_width=_lognormal(rng, 0.27, 0.08),
        upper_lip=_lognormal(rng, 0.08, 0.2),
        lower_lip=_lognormal(rng, 0.10, 0.2),
    )


# Exaggerated expressions (WFLW's expression attribute): name -> sampler of the parameters.
EXAGGERATED_EXPRESSIONS = ("scream", "laugh", "surprise", "eyes_closed", "wink", "anger", "pucker")


def sample_expression(rng: np.random.Generator, exaggerated: bool) -> Expression:
    """A mild everyday expression, or one of :data:`EXAGGERATED_EXPRESSIONS` (mouth wide open,
    broad smile, raised brows, closed eyes...)."""
    gaze = dict(gaze_x=_normal(rng, 0.0, 0.35, 2.8), gaze_y=_normal(rng, 0.0, 0.3, 2.8))
    if not exaggerated:
        blink = float(rng.uniform(0.7, 1.0)) if rng.random() < 0.03 else float(rng.uniform(0.0, 0.25))
        return Expression(
            mouth_open=float(rng.uniform(0.0, 0.09)) if rng.random() < 0.4 else 0.0,
            smile=float(rng.uniform(-0.2, 0.45)),
            brow_raise=_normal(rng, 0.0, 0.25),
            brow_frown=float(rng.uniform(0.0, 0.2)),
            eye_closure_left=blink,
            eye_closure_right=blink,
            **gaze,
        )
    kind = EXAGGERATED_EXPRESSIONS[int(rng.integers(len(EXAGGERATED_EXPRESSIONS)))]
    if kind == "scream":
        return Expression(mouth_open=float(rng.uniform(0.35, 0.55)), smile=float(rng.uniform(-0.3, 0.3)),
                          brow_raise=float(rng.uniform(-0.6, 0.9)), brow_frown=float(rng.uniform(0, 0.8)),
                          eye_closure_left=float(rng.uniform(0, 0.7)), eye_closure_right=float(rng.uniform(0, 0.7)), **gaze)
    if kind == "laugh":
        closure = float(rng.uniform(0.3, 0.9))
        return Expression(mouth_open=float(rng.uniform(0.15, 0.4)), smile=float(rng.uniform(0.8, 1.0)),
                          brow_raise=float(rng.uniform(-0.2, 0.5)), eye_closure_left=closure, eye_closure_right=closure, **gaze)
    if kind == "surprise":
        return Expression(mouth_open=float(rng.uniform(0.2, 0.4)), pucker=float(rng.uniform(0.3, 0.8)),
                          brow_raise=float(rng.uniform(0.8, 1.0)), **gaze)
    if kind == "eyes_closed":
        return Expression(eye_closure_left=1.0, eye_closure_right=1.0, smile=float(rng.uniform(-0.2, 0.8)),
                          mouth_open=float(rng.uniform(0.0, 0.1)), brow_raise=_normal(rng, 0, 0.3), **gaze)
    if kind == "wink":
        left = bool(rng.random() < 0.5)
        return Expression(eye_closure_left=1.0 if left else 0.1, eye_closure_right=0.1 if left else 1.0,
                          smile=float(rng.uniform(0.5, 1.0)), mouth_open=float(rng.uniform(0.0, 0.15)), **gaze)
    if kind == "anger":
        return Expression(brow_raise=-1.0, brow_frown=1.0, smile=float(rng.uniform(-0.4, -0.2)),
                          mouth_open=float(rng.uniform(0.0, 0.3)), eye_closure_left=0.3, eye_closure_right=0.3, **gaze)
    return Expression(pucker=1.0, mouth_open=float(rng.uniform(0.05, 0.15)), brow_raise=float(rng.uniform(-0.3, 0.8)), **gaze)


# Large-pose thresholds (degrees): a pose at or beyond any of them gets WFLW's pose flag.
LARGE_YAW, LARGE_PITCH, LARGE_ROLL = 45.0, 30.0, 40.0
MAX_YAW = 80.0


def sample_pose(rng: np.random.Generator, large: bool) -> Pose:
    """Most faces near frontal; ``large`` draws a profile-ish yaw (mostly), a strong pitch or roll."""
    if not large:
        return Pose(
            yaw=float(np.clip(rng.normal(0.0, 16.0), -LARGE_YAW + 1, LARGE_YAW - 1)),
            pitch=float(np.clip(rng.normal(0.0, 9.0), -LARGE_PITCH + 1, LARGE_PITCH - 1)),
            roll=float(np.clip(rng.normal(0.0, 9.0), -LARGE_ROLL + 1, LARGE_ROLL - 1)),
        )
    sign = lambda: 1.0 if rng.random() < 0.5 else -1.0  # noqa: E731
    choice = rng.random()
    yaw, pitch, roll = rng.normal(0.0, 16.0), rng.normal(0.0, 9.0), rng.normal(0.0, 9.0)
    if choice < 0.7:
        # Profiles thin out towards 80 deg (beyond, the outer eye corners -- the NME's
        # inter-ocular normaliser -- nearly coincide in the image).
        yaw = sign() * (LARGE_YAW + (MAX_YAW - LARGE_YAW) * rng.random() ** 1.5)
    elif choice < 0.85:
        pitch = sign() * rng.uniform(LARGE_PITCH, 50.0)
    else:
        roll = sign() * rng.uniform(LARGE_ROLL, 65.0)
    return Pose(float(np.clip(yaw, -MAX_YAW, MAX_YAW)), float(np.clip(pitch, -50, 50)), float(np.clip(roll, -65, 65)))


def is_large_pose(pose: Pose) -> bool:
    return abs(pose.yaw) >= LARGE_YAW or abs(pose.pitch) >= LARGE_PITCH or abs(pose.roll) >= LARGE_ROLL


def rotation_matrix(pose: Pose) -> np.ndarray:
    """Camera-from-head rotation ``Rz(roll) @ Rx(pitch) @ Ry(yaw)`` (3, 3)."""
    yaw, pitch, roll = (math.radians(v) for v in (pose.yaw, pose.pitch, pose.roll))
    cy, sy, cp, sp, cr, sr = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch), math.cos(roll), math.sin(roll)
    rot_yaw = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    rot_pitch = np.array([[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]])
    rot_roll = np.array([[cr, -sr, 0.0], [sr, cr, 0.0], [0.0, 0.0, 1.0]])
    return rot_roll @ rot_pitch @ rot_yaw


# --- landmark definitions ------------------------------------------------------------------------
# Each landmark is (curve, parameter). Curves (see HeadModel.curve): eye_upper/eye_lower
# (s: 0 outer corner -> 1 inner corner), brow_upper/brow_lower/brow_centre (s: 0 outer tip ->
# 1 inner end), pupil, nose_bridge (t: 0 root -> 1 tip), nose_lower (u: -1 image left -> 1 right),
# lip_outer_upper/lip_outer_lower (u: -1 left corner -> 1 right corner), lip_inner_upper/
# lip_inner_lower (u: -1 -> 1 between the inner corners), contour (index 0..32).
# Suffix _l / _r: the image's left / right feature.
def _wflw98_spec() -> list[tuple[str, float]]:
    spec = [("contour", float(k)) for k in range(33)]
    spec += [("brow_upper_l", s) for s in (0.0, 0.25, 0.5, 0.75, 1.0)] + [("brow_lower_l", s) for s in (1.0, 0.75, 0.5, 0.25)]
    spec += [("brow_upper_r", s) for s in (1.0, 0.75, 0.5, 0.25, 0.0)] + [("brow_lower_r", s) for s in (0.25, 0.5, 0.75, 1.0)]
    spec += [("nose_bridge", t) for t in (0.0, 1 / 3, 2 / 3, 1.0)] + [("nose_lower", u) for u in (-1.0, -0.5, 0.0, 0.5, 1.0)]
    spec += [("eye_upper_l", s) for s in (0.0, 0.25, 0.5, 0.75, 1.0)] + [("eye_lower_l", s) for s in (0.75, 0.5, 0.25)]
    spec += [("eye_upper_r", s) for s in (1.0, 0.75, 0.5, 0.25, 0.0)] + [("eye_lower_r", s) for s in (0.25, 0.5, 0.75)]
    spec += [("lip_outer_upper", u) for u in (-1.0, -2 / 3, -1 / 3, 0.0, 1 / 3, 2 / 3, 1.0)]
    spec += [("lip_outer_lower", u) for u in (2 / 3, 1 / 3, 0.0, -1 / 3, -2 / 3)]
    spec += [("lip_inner_upper", u) for u in (-1.0, -0.5, 0.0, 0.5, 1.0)] + [("lip_inner_lower", u) for u in (0.5, 0.0, -0.5)]
    spec += [("pupil_l", 0.0), ("pupil_r", 0.0)]
    return spec


def _w300_68_spec() -> list[tuple[str, float]]:
    # Same 3D points as WFLW's: jaw = every second contour point; brows on the centre line of the
    # brow (WFLW-68's "y = mean of upper and lower"); lids at 1/3 and 2/3 (WFLW-68's 0.666/0.333).
    spec = [("contour", float(2 * k)) for k in range(17)]
    spec += [("brow_upper_l", 0.0)] + [("brow_centre_l", s) for s in (0.25, 0.5, 0.75, 1.0)]
    spec += [("brow_centre_r", s) for s in (1.0, 0.75, 0.5, 0.25)] + [("brow_upper_r", 0.0)]
    spec += [("nose_bridge", t) for t in (0.0, 1 / 3, 2 / 3, 1.0)] + [("nose_lower", u) for u in (-1.0, -0.5, 0.0, 0.5, 1.0)]
    spec += [("eye_upper_l", s) for s in (0.0, 1 / 3, 2 / 3, 1.0)] + [("eye_lower_l", s) for s in (2 / 3, 1 / 3)]
    spec += [("eye_upper_r", s) for s in (1.0, 2 / 3, 1 / 3, 0.0)] + [("eye_lower_r", s) for s in (1 / 3, 2 / 3)]
    spec += [("lip_outer_upper", u) for u in (-1.0, -2 / 3, -1 / 3, 0.0, 1 / 3, 2 / 3, 1.0)]
    spec += [("lip_outer_lower", u) for u in (2 / 3, 1 / 3, 0.0, -1 / 3, -2 / 3)]
    spec += [("lip_inner_upper", u) for u in (-1.0, -0.5, 0.0, 0.5, 1.0)] + [("lip_inner_lower", u) for u in (0.5, 0.0, -0.5)]
    return spec


def _cofw29_spec() -> list[tuple[str, float]]:
    # COFW's point names (facemark.layouts.COFW29): brows' outer/inner ends and top/bottom
    # middles, eye corners, lid middles, pupils, nose wings/tip/bottom, mouth corners, lip
    # middles, chin.
    return [
        ("brow_upper_l", 0.0), ("brow_upper_r", 0.0), ("brow_centre_l", 1.0), ("brow_centre_r", 1.0),
        ("brow_upper_l", 0.5), ("brow_lower_l", 0.5), ("brow_upper_r", 0.5), ("brow_lower_r", 0.5),
        ("eye_upper_l", 0.0), ("eye_upper_r", 0.0), ("eye_upper_l", 1.0), ("eye_upper_r", 1.0),
        ("eye_upper_l", 0.5), ("eye_lower_l", 0.5), ("eye_upper_r", 0.5), ("eye_lower_r", 0.5),
        ("pupil_l", 0.0), ("pupil_r", 0.0),
        ("nose_lower", -1.0), ("nose_lower", 1.0), ("nose_bridge", 1.0), ("nose_lower", 0.0),
        ("lip_outer_upper", -1.0), ("lip_outer_upper", 1.0), ("lip_outer_upper", 0.0), ("lip_inner_upper", 0.0),
        ("lip_inner_lower", 0.0), ("lip_outer_lower", 0.0),
        ("contour", 16.0),
    ]


LANDMARK_SPECS: dict[str, list[tuple[str, float]]] = {
    "wflw98": _wflw98_spec(),
    "300w68": _w300_68_spec(),
    "cofw29": _cofw29_spec(),
}


def _clip01(x: np.ndarray) -> np.ndarray:
    """``x`` limited to [0, 1] (``np.clip``'s Python overhead is too high for small arrays)."""
    return np.minimum(np.maximum(x, 0.0), 1.0)


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = _clip01((x - edge0) / (edge1 - edge0))
    return t * t * (3.0 - 2.0 * t)


# --- the head ------------------------------------------------------------------------------------
class HeadModel:
    """One person with one expression: the ring profile of the head and the feature curves.

    Everything here is pose independent; :meth:`landmarks` and :meth:`contour_points` take a
    rotation. All coordinates are head units (see the module docstring).
    """

    def __init__(self, identity: Identity, expression: Expression):
        self.identity = identity
        self.expression = expression
        i, e = identity, expression
        # The lower jaw drops with the open mouth: the lower lip and chin move down by most of the gap.
        self.jaw_drop = 0.8 * e.mouth_open
        self.chin_y = i.chin_height + self.jaw_drop
        self.contour_heights, self.contour_normals = self._contour_layout()

    # -- ring profile ---------------------------------------------------------------------------
    def rings(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Half-width ``w``, centre depth ``c`` and half-depth ``d`` of the rings at heights ``y``."""
        i = self.identity
        y = np.asarray(y, dtype=np.float64)
        top, chin = i.contour_top, self.chin_y
        # Cranium: an elliptic-ish cap from the contour top up to the crown.
        up = _clip01((top - y) / (top - i.crown_height))
        cap_up = (1.0 - up**2.2) ** (1.0 / 2.2)
        # Lower face: superellipse (x/W)^a + t^b = 1 narrowing to the chin; rings move forward.
        t = _clip01((y - top) / (chin - top))
        cap_low = (1.0 - t**i.jaw_length_exponent) ** (1.0 / i.jaw_width_exponent)
        lower = y > top
        w = i.face_half_width * np.where(lower, cap_low, cap_up)
        c = np.where(lower, i.chin_forward * _smoothstep(0.0, 1.0, t), 0.0)
        depth = i.head_depth + (i.jaw_depth - i.head_depth) * _smoothstep(0.0, 0.8, t)
        d = np.where(lower, depth * np.sqrt(cap_low), i.head_depth * cap_up)
        return w, c, d

    def _contour_layout(self) -> tuple[np.ndarray, np.ndarray]:
        """Heights of the 33 contour rings (arc-length spaced on the frontal outline, 0 and 32 at
        the contour top, 16 at the chin) and the frontal outline's outward normals (33, 2)."""
        top, chin = self.identity.contour_top, self.chin_y
        # Dense in t with more samples near the chin, where the outline turns fast.
        t = 1.0 - (1.0 - np.linspace(0.0, 1.0, 257)) ** 2
        y = top + t * (chin - top)
        w, _, _ = self.rings(y)
        arc = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(w), np.diff(y)))])
        targets = np.linspace(0.0, arc[-1], 17)
        heights_left = np.interp(targets, arc, y)
        # Outward normal of the right half outline (w(y), y): (1, -dw/dy) normalised; by finite
        # differences of the arc-length parametrised outline.
        eps = arc[-1] * 1e-3
        tangent = np.stack(
            [np.interp(targets + eps, arc, w) - np.interp(targets - eps, arc, w),
             np.interp(targets + eps, arc, y) - np.interp(targets - eps, arc, y)], axis=1)
        tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
        normal_right = np.stack([tangent[:, 1], -tangent[:, 0]], axis=1)  # rotate the tangent by -90 deg
        normal_right[-1] = (0.0, 1.0)  # the chin points straight down
        heights = np.concatenate([heights_left, heights_left[-2::-1]])  # 0..16 then 17..32 mirrored
        normals = np.concatenate([normal_right * (-1.0, 1.0), normal_right[-2::-1]])
        return heights, normals

    # -- the surface ----------------------------------------------------------------------------
    def lift(self, x: np.ndarray, y: np.ndarray, height: np.ndarray) -> dict[str, np.ndarray]:
        """Put frontal points ``(x, y)`` on the ring surface, ``height`` above it along the normal.

        Returns a dict with ``points`` (n, 3) and the ring coordinates ``phi``, ``w``, ``c``,
        ``d``, ``y``, ``height`` that :func:`project` needs to hide points turned away.
        """
        x, y, height = (np.broadcast_to(np.asarray(v, dtype=np.float64), np.broadcast(x, y, height).shape) for v in (x, y, height))
        w, c, d = self.rings(y)
        w = np.maximum(w, 1e-3)
        d = np.maximum(d, 1e-3)
        sin_phi = np.minimum(np.maximum(x / w, -0.995), 0.995)
        phi = np.arcsin(sin_phi)
        return {"phi": phi, "w": w, "c": c, "d": d, "y": y, "height": height, "points": ring_points(phi, y, w, c, d, height)}

    # -- features (frontal curves: x, y, height above the surface) ------------------------------
    def curve(self, name: str, params: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Frontal ``(x, y, height)`` of feature curve ``name`` at ``params`` (see LANDMARK_SPECS)."""
        i, e = self.identity, self.expression
        p = np.asarray(params, dtype=np.float64)
        base, _, side = name.rpartition("_")
        if side in ("l", "r"):
            sign = -1.0 if side == "l" else 1.0
        else:
            base, sign = name, 1.0
        zeros = np.zeros_like(p)
        if base in ("eye_upper", "eye_lower", "pupil"):
            closure = e.eye_closure_left if sign < 0 else e.eye_closure_right
            closure = min(1.0, max(0.0, closure + 0.2 * max(e.smile, 0.0)))
            outer = i.eye_centre_x + 0.5 * i.eye_width
            inner = i.eye_centre_x - 0.5 * i.eye_width
            open_upper = 0.62 * i.eye_opening * (1.0 + 0.25 * max(e.brow_raise, 0.0))
            open_lower = 0.38 * i.eye_opening
            if base == "pupil":
                x = sign * (i.eye_centre_x + 0.22 * i.eye_width * e.gaze_x * sign) + zeros
                y = i.eye_y - 0.012 + 0.25 * i.eye_opening * e.gaze_y + zeros
                return x, y, zeros + 0.005
            x = sign * (outer + (inner - outer) * p)
            corner_y = i.eye_y - i.eye_tilt * (1.0 - p)
            if base == "eye_upper":
                bump = np.sin(np.pi * p**1.15) ** 0.8
                lift_up = open_upper * (1.0 - closure) - 0.85 * open_lower * closure
                return x, corner_y - lift_up * bump, zeros - 0.015
            bump = np.sin(np.pi * p**0.9) ** 0.9
            return x, corner_y + open_lower * (1.0 - 0.15 * closure) * bump, zeros - 0.015
        if base in ("brow_upper", "brow_lower", "brow_centre"):
            inner_x = i.brow_inner_x + 0.04 * e.brow_frown
            x = sign * (i.brow_outer_x + (inner_x - i.brow_outer_x) * p)
            shape = p**0.6
            centre = (i.eye_y - i.brow_height - i.brow_arch * 4.0 * shape * (1.0 - shape)
                      - 0.09 * e.brow_raise - 0.03 * max(e.brow_raise, 0.0) * p + 0.05 * e.brow_frown * p)
            thickness = i.brow_thickness * np.minimum(1.0, p / 0.15) ** 0.7 * (0.55 + 0.45 * p)
            offset = {"brow_upper": -0.5, "brow_lower": 0.5, "brow_centre": 0.0}[base]
            return x, centre + offset * thickness, zeros + 0.05
        if base == "nose_bridge":
            y = i.nose_root_y + (i.nose_tip_y - i.nose_root_y) * p
            return zeros, y, i.nose_depth * (0.08 + 0.92 * p**1.6)
        if base == "nose_lower":
            subnasale = i.nose_tip_y + 0.08
            u = p
            x = u * i.nose_half_width * (1.0 + 0.08 * max(e.smile, 0.0))
            y = subnasale - 0.045 * np.abs(u) ** 1.5
            height = i.nose_depth * (0.5 - 0.3 * np.abs(u) ** 1.5)
            return x, y, height
        if base.startswith("lip_"):
            half_width = i.mouth_half_width * (1.0 + 0.2 * e.smile - 0.35 * e.pucker)
            corner_lift = 0.09 * e.smile
            gap = e.mouth_open
            inner = base.startswith("lip_inner")
            u = p * (0.88 if inner else 1.0)
            x = u * half_width
            baseline = i.mouth_y - corner_lift * u**2 + 0.02 * max(e.smile, 0.0)
            opening = (1.0 - u**2) ** 0.7 * (1.0 + 0.6 * e.pucker * (1.0 - u**2))
            pout = 1.0 + 0.5 * e.pucker
            if base == "lip_inner_upper":
                return x, baseline - 0.25 * gap * opening, 0.03 + 0.03 * (1.0 - u**2)
            if base == "lip_inner_lower":
                return x, baseline + 0.75 * gap * opening, 0.03 + 0.03 * (1.0 - u**2)
            if base == "lip_outer_upper":
                bow = np.sqrt(1.0 - u**2) * (1.0 - 0.28 * np.exp(-((u / 0.16) ** 2)))
                return x, baseline - 0.25 * gap * opening - i.upper_lip * pout * bow, 0.04 + 0.05 * (1.0 - u**2) * pout
            if base == "lip_outer_lower":
                return x, baseline + 0.75 * gap * opening + i.lower_lip * pout * (1.0 - u**2) ** 0.6, 0.03 + 0.05 * (1.0 - u**2) * pout
        raise KeyError(f"unknown SynthFace curve {name!r}")

    def feature(self, name: str, params: np.ndarray) -> dict[str, np.ndarray]:
        """Feature curve ``name`` evaluated at ``params`` and lifted onto the surface."""
        return self.lift(*self.curve(name, params))

    # -- pose-dependent contour -----------------------------------------------------------------
    def contour_points(self, rotation: np.ndarray, positions: np.ndarray) -> dict[str, np.ndarray]:
        """Contour points at fractional contour ``positions`` (0..32, may be dense): on ring
        ``y(k)``, the extreme point in the roll-rotated outward direction of the frontal outline,
        restricted to the arc from just past the midline to the back of the jaw. Near the chin,
        where the rings shrink to a point, the rings a little above ``y(k)`` are candidates too,
        so that the chin's outline stays the silhouette when the head pitches."""
        positions = np.asarray(positions, dtype=np.float64)
        index = np.arange(NUM_CONTOUR, dtype=np.float64)
        top, chin = self.identity.contour_top, self.chin_y
        nominal = np.interp(positions, index, self.contour_heights)
        normal = np.stack([np.interp(positions, index, self.contour_normals[:, a]) for a in (0, 1)], axis=1)
        band = 0.12 * (chin - top) * _clip01(1.0 - np.abs(positions - 16.0) / 5.0)
        candidates = np.linspace(0.0, 1.0, 6)
        y = (nominal[:, None] - band[:, None] * candidates[None, :]).ravel()  # (n * 6,)
        w, c, d = self.rings(y)
        w, d = np.maximum(w, 1e-3), np.maximum(d, 1e-3)
        # The outline's direction in the image: the frontal normal turned by the roll only (yaw and
        # pitch keep the cheeks' outline pointing sideways and the chin's pointing down).
        roll_cos, roll_sin = _roll_cos_sin(rotation)
        direction = np.stack([roll_cos * normal[:, 0] - roll_sin * normal[:, 1],
                              roll_sin * normal[:, 0] + roll_cos * normal[:, 1]], axis=1)
        direction = np.repeat(direction, len(candidates), axis=0)
        # Image position of the ring point at phi: R[:2] @ (w sin phi, y, c + d cos phi), so its
        # projection on the direction is a sin(phi) + b cos(phi) + const: maximal at atan2(a, b).
        a = w * (direction[:, 0] * rotation[0, 0] + direction[:, 1] * rotation[1, 0])
        b = d * (direction[:, 0] * rotation[0, 2] + direction[:, 1] * rotation[1, 2])
        constant = (direction[:, 0] * rotation[0, 1] + direction[:, 1] * rotation[1, 1]) * y + (
            direction[:, 0] * rotation[0, 2] + direction[:, 1] * rotation[1, 2]) * c
        side = np.repeat(np.where(positions > 16.0, 1.0, np.where(positions < 16.0, -1.0, 0.0)), len(candidates))
        t = (y - top) / (chin - top)
        outer = np.interp(t, CONTOUR_ARC_OUTER_T, CONTOUR_ARC_OUTER)
        low = np.where(side > 0, CONTOUR_ARC_INNER, np.where(side < 0, -outer, -math.pi))
        high = np.where(side > 0, outer, np.where(side < 0, -CONTOUR_ARC_INNER, math.pi))
        value = lambda phi: a * np.sin(phi) + b * np.cos(phi) + constant  # noqa: E731
        best = np.arctan2(a, b)
        clamped = np.where(value(low) >= value(high), low, high)
        phi = np.where((best >= low) & (best <= high), best, clamped)
        # Per contour point, the candidate ring reaching furthest (the nominal ring on ties).
        # Only front-half points of the rings above qualify (the chin's front, seen from above).
        reach = np.where((np.cos(phi) >= 0.0) | (np.arange(len(y)) % len(candidates) == 0), value(phi), -np.inf)
        reach = reach.reshape(len(positions), len(candidates))
        better = reach.max(axis=1) > reach[:, 0] + 1e-9
        choice = np.where(better, np.argmax(reach, axis=1), 0)
        pick = np.arange(len(positions)) * len(candidates) + choice
        y, w, c, d, phi = y[pick], w[pick], c[pick], d[pick], phi[pick]
        height = np.zeros_like(y)
        return {"phi": phi, "w": w, "c": c, "d": d, "y": y, "height": height, "points": ring_points(phi, y, w, c, d, height)}

    # -- batched evaluation ---------------------------------------------------------------------
    def frontal_many(self, requests: list[tuple[str, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[slice]]:
        """Evaluate many ``(curve name, params)`` requests with one :meth:`curve` call per name.

        Returns the concatenated frontal ``x, y, height`` and one slice per request.
        """
        by_name: dict[str, list[int]] = {}
        for index, (name, _) in enumerate(requests):
            by_name.setdefault(name, []).append(index)
        sizes = [len(params) for _, params in requests]
        starts = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        total = int(starts[-1])
        x, y, height = np.zeros(total), np.zeros(total), np.zeros(total)
        for name, indices in by_name.items():
            params = np.concatenate([np.asarray(requests[i][1], dtype=np.float64) for i in indices])
            values = np.empty((3, len(params)))
            values[:] = self.curve(name, params)  # broadcasts constant heights
            offset = 0
            for i in indices:
                n = sizes[i]
                x[starts[i] : starts[i] + n], y[starts[i] : starts[i] + n], height[starts[i] : starts[i] + n] = values[:, offset : offset + n]
                offset += n
        return x, y, height, [slice(int(starts[i]), int(starts[i + 1])) for i in range(len(requests))]

    def landmark_surface_points(self, layout: str, rotation: np.ndarray) -> dict[str, np.ndarray]:
        """The lifted 3D landmarks of ``layout`` ("wflw98", "300w68", "cofw29") for a rotation
        (only the contour depends on it)."""
        groups = LANDMARK_GROUPS[layout]
        feature_groups = [(name, indices, params) for name, indices, params in groups if name != "contour"]
        x, y, height, slices = self.frontal_many([(name, params) for name, _, params in feature_groups])
        lifted = self.lift(x, y, height)
        count = len(LANDMARK_SPECS[layout])
        out = {key: np.zeros(count) for key in ("phi", "w", "c", "d", "y", "height")}
        out["points"] = np.zeros((count, 3))
        for (name, indices, _), part in zip(feature_groups, slices):
            for key in out:
                out[key][indices] = lifted[key][part]
        for name, indices, params in groups:
            if name == "contour":
                contour = self.contour_points(rotation, params)
                for key in out:
                    out[key][indices] = contour[key]
        return out


def _groups(spec: list[tuple[str, float]]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(curve name, landmark indices, parameters) per curve of a landmark spec."""
    groups: dict[str, list[int]] = {}
    for index, (name, _) in enumerate(spec):
        groups.setdefault(name, []).append(index)
    return [(name, np.array(indices), np.array([spec[i][1] for i in indices])) for name, indices in groups.items()]


LANDMARK_GROUPS = {layout: _groups(spec) for layout, spec in LANDMARK_SPECS.items()}


def _roll_cos_sin(rotation: np.ndarray) -> tuple[float, float]:
    """Cosine and sine of the head's in-image rotation: the angle of its vertical axis in the
    image (exactly the roll for ``Rz(roll) @ Rx(pitch) @ Ry(yaw)`` while |pitch| < 90 deg)."""
    up_x, up_y = rotation[0, 1], rotation[1, 1]  # image of the head's y axis
    norm = math.hypot(up_x, up_y) or 1.0
    # y axis (0, 1) rotated by roll theta is (-sin, cos).
    return up_y / norm, -up_x / norm


def ring_points(phi, y, w, c, d, height) -> np.ndarray:
    """3D points ``(w sin phi, y, c + d cos phi)`` moved ``height`` along the ring normal."""
    sin_phi, cos_phi = np.sin(phi), np.cos(phi)
    # Normal of the ellipse (w sin, d cos): (sin / w, cos / d); w, d >= 1e-3 keeps the chin's
    # degenerate ring (a point) well defined.
    normal_x, normal_z = sin_phi / np.maximum(w, 1e-3), cos_phi / np.maximum(d, 1e-3)
    norm = np.sqrt(normal_x**2 + normal_z**2)
    return np.stack([w * sin_phi + height * normal_x / norm, y, c + d * cos_phi + height * normal_z / norm], axis=-1)


def facing(surface: dict[str, np.ndarray], rotation: np.ndarray) -> np.ndarray:
    """Camera-facing component of the ring normal at each surface point (> 0: visible)."""
    return rotation[2, 0] * np.sin(surface["phi"]) / surface["w"] + rotation[2, 2] * np.cos(surface["phi"]) / surface["d"]


def project_visible(surface: dict[str, np.ndarray], rotation: np.ndarray) -> np.ndarray:
    """Image positions (n, 2) of surface points for DRAWING: a point turned away from the camera
    is moved along its ring to the silhouette (the terminator), so a feature half turned away is
    drawn up to the outline and no further. Landmarks use :func:`project` (true positions)."""
    phi, w, d = surface["phi"], surface["w"], surface["d"]
    a = rotation[2, 0] / w
    b = rotation[2, 2] / d
    toward = np.arctan2(a, b)  # the ring angle facing the camera most
    delta = np.angle(np.exp(1j * (phi - toward)))
    hidden = np.abs(delta) > (math.pi / 2 - 1e-3)
    phi_visible = np.where(hidden, toward + np.sign(delta) * (math.pi / 2 - 1e-3), phi)
    points = ring_points(phi_visible, surface["y"], w, surface["c"], d, surface["height"])
    return points @ rotation[:2].T


def project(points: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """Orthographic image positions (n, 2) of head-frame points (n, 3) (head units)."""
    return np.asarray(points) @ rotation[:2].T
