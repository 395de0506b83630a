"""SynthFace's rasteriser: one face image and its landmarks from sampled parameters.

Painter's order: cluttered background, shoulders, neck, cranium, ears, hair, face skin (bounded
by the contour landmarks and the hairline), eye shadow, eyes, brows, nose, lips, occluders
(hands, masks, hats, glasses, objects, hair strands), then the light (a per-pixel multiplier from
an ellipsoid approximation of the head), blur, sensor noise. JPEG compression happens when the
image is written (:mod:`facemark.data.synthface.generate`).

Determinism: every random draw comes from the ``numpy.random.Generator`` passed in; drawing is
integer-exact (OpenCV polygon fills without anti-aliasing, at 1/16-pixel vertex precision;
8-bit Gaussian blur and bilinear resize, which OpenCV computes in fixed point); the light and
noise are applied with integer arithmetic. Geometry is rounded to 1/16 pixel before drawing
and landmarks to 1e-4 pixel, so last-bit differences of ``sin``/``cos`` between platforms
do not change the files.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from facemark.data.synthface.head import (
    LANDMARK_GROUPS,
    LANDMARK_SPECS,
    Expression,
    HeadModel,
    Identity,
    Pose,
    facing,
    is_large_pose,
    project,
    project_visible,
    ring_points,
    rotation_matrix,
    sample_expression,
    sample_identity,
    sample_pose,
)

__all__ = ["Appearance", "FaceParams", "RenderedFace", "sample_face_params", "render_face", "ATTRIBUTE_RATES", "OCCLUDERS"]

# Probability of each WFLW attribute, close to the WFLW test set's rates (facts/evaluation.md:
# pose 326, expression 314, illumination 698, make-up 206, occlusion 736, blur 773 of 2,500).
# Occluders are requested a little more often than 29 % because a placed occluder must cover at
# least OCCLUSION_MIN_POINTS landmarks to earn the flag.
ATTRIBUTE_RATES = {"pose": 0.13, "expression": 0.13, "illumination": 0.28, "makeup": 0.08, "occlusion": 0.31, "blur": 0.31}
OCCLUDERS = ("hand", "mask", "hat", "sunglasses", "object", "hair")
OCCLUSION_MIN_POINTS = 5
SHIFT = 4  # OpenCV fixed-point bits for polygon vertices (1/16 pixel)
_ONE = 1 << SHIFT

_SKIN_LIGHT = np.array([238.0, 205.0, 180.0])
_SKIN_DARK = np.array([92.0, 60.0, 42.0])
_HAIR_COLOURS = np.array([[22, 18, 16], [48, 34, 24], [85, 58, 38], [120, 86, 52], [196, 164, 108], [150, 70, 36], [140, 138, 134], [215, 212, 205]], float)
_HAIR_WEIGHTS = np.array([0.28, 0.22, 0.16, 0.1, 0.09, 0.05, 0.06, 0.04])
_EYE_COLOURS = np.array([[78, 48, 26], [42, 28, 18], [70, 110, 160], [82, 118, 80], [128, 98, 50], [118, 128, 140]], float)
_LIPSTICKS = np.array([[190, 20, 40], [130, 10, 30], [220, 90, 130], [120, 40, 90], [230, 100, 80], [60, 20, 30]], float)
_EYESHADOWS = np.array([[110, 70, 50], [110, 60, 140], [60, 90, 160], [40, 40, 45], [170, 120, 90], [60, 120, 90]], float)
_HAIR_STYLES = ("bald", "buzz", "short", "medium", "long")
_HAIR_STYLE_WEIGHTS = np.array([0.05, 0.08, 0.37, 0.25, 0.25])


@dataclass(frozen=True)
class Appearance:
    """Everything about an image except the face's shape, expression and pose."""

    skin: tuple[float, float, float]
    hair_style: str
    hair_colour: tuple[float, float, float]
    hairline: float  # y of the front hairline (head units)
    hair_volume: float
    brow_colour: tuple[float, float, float]
    eye_colour: tuple[float, float, float]
    lip_colour: tuple[float, float, float]
    clothes_colour: tuple[float, float, float]
    makeup: bool
    eyeshadow: tuple[float, float, float] | None
    eyeliner: bool
    glasses: str | None  # None, "clear" (not an occluder) or drawn as the "sunglasses" occluder
    occluder: str | None  # one of OCCLUDERS
    occluder_target: float  # where the occluder sits, in [0, 1) (meaning depends on the kind)
    light_direction: tuple[float, float, float]
    ambient: float
    diffuse: float
    gain: float
    tint: tuple[float, float, float]
    blur_kind: str | None  # None, "defocus" or "motion"
    blur_amount: float  # Gaussian sigma or motion length, pixels at 256
    blur_angle: float
    noise: float  # sensor noise sigma (grey levels)
    jpeg_quality: int
    face_ratio: float  # image side / face side (landmark box side)
    offset: tuple[float, float]  # face centre offset in [-1, 1] of the free margin
    box_jitter: tuple[float, float, float, float]


@dataclass(frozen=True)
class FaceParams:
    """All parameters of one synthetic image (sampled by :func:`sample_face_params`)."""

    identity: Identity
    expression: Expression
    pose: Pose
    appearance: Appearance
    exaggerated_expression: bool
    extreme_illumination: bool
    size: int = 256


@dataclass
class RenderedFace:
    """One rendered sample. Landmarks are 0-based pixels (integer = pixel centre), per layout
    ("wflw98", "300w68", "cofw29"); ``occluded`` per layout: covered by an occluder or turned
    away from the camera; ``box``: detector-like face rectangle ``x_min y_min x_max y_max``
    (ints); ``flags``: WFLW's six attribute flags (pose, expression, illumination, make-up,
    occlusion, blur)."""

    image: np.ndarray
    landmarks: dict[str, np.ndarray]
    occluded: dict[str, np.ndarray]
    box: np.ndarray
    flags: tuple[int, int, int, int, int, int]
    jpeg_quality: int
    params: FaceParams = field(repr=False)


# --- sampling ------------------------------------------------------------------------------------
def _pick(rng: np.random.Generator, weights: np.ndarray) -> int:
    return int(np.searchsorted(np.cumsum(weights) / weights.sum(), rng.random(), side="right"))


def _colour(values) -> tuple[float, float, float]:
    return tuple(float(v) for v in np.clip(values, 0, 255))  # type: ignore[return-value]


def sample_face_params(rng: np.random.Generator, size: int = 256) -> FaceParams:
    """Draw one face: identity, expression, pose and appearance, with each WFLW attribute drawn
    independently at :data:`ATTRIBUTE_RATES`."""
    draws = {name: bool(rng.random() < rate) for name, rate in ATTRIBUTE_RATES.items()}
    identity = sample_identity(rng)
    expression = sample_expression(rng, draws["expression"])
    pose = sample_pose(rng, draws["pose"])

    tone = rng.random() ** 0.9
    skin = _SKIN_LIGHT + (_SKIN_DARK - _SKIN_LIGHT) * tone
    skin = skin * (1.0 + 0.06 * rng.standard_normal(3)) + (0.0, 0.0, -10.0 * rng.random())
    style = _HAIR_STYLES[_pick(rng, _HAIR_STYLE_WEIGHTS)]
    hair = _HAIR_COLOURS[_pick(rng, _HAIR_WEIGHTS)] * (1.0 + 0.12 * rng.standard_normal(3))
    brow = np.minimum(hair, skin * 0.55) * (0.7 + 0.3 * rng.random())
    eye = _EYE_COLOURS[int(rng.integers(len(_EYE_COLOURS)))] * (0.85 + 0.3 * rng.random())
    lip = skin * np.array([0.86, 0.58, 0.58]) * (0.9 + 0.15 * rng.random()) + (12.0, 0.0, 4.0)
    makeup = draws["makeup"]
    eyeshadow = None
    eyeliner = False
    if makeup:
        lip = _LIPSTICKS[int(rng.integers(len(_LIPSTICKS)))] * (0.85 + 0.3 * rng.random())
        if rng.random() < 0.75:
            eyeshadow = _colour(_EYESHADOWS[int(rng.integers(len(_EYESHADOWS)))] * (0.8 + 0.4 * rng.random()))
        eyeliner = bool(rng.random() < 0.7)

    occluder = OCCLUDERS[int(rng.integers(len(OCCLUDERS)))] if draws["occlusion"] else None
    glasses = None
    if occluder is None and rng.random() < 0.1:
        glasses = "clear"

    extreme = draws["illumination"]
    direction = rng.standard_normal(3) * (1.0, 0.6, 0.4) + (0.0, -0.25, 1.6)
    ambient, diffuse, gain = rng.uniform(0.5, 0.72), rng.uniform(0.3, 0.5), rng.uniform(0.9, 1.1)
    tint = 1.0 + 0.04 * rng.standard_normal(3)
    if extreme:
        kind = rng.random()
        if kind < 0.45:  # hard side light, deep shadow on the other half
            side = 1.0 if rng.random() < 0.5 else -1.0
            direction = np.array([side * rng.uniform(0.8, 1.0), rng.uniform(-0.5, 0.3), rng.uniform(-0.15, 0.4)])
            ambient, diffuse = rng.uniform(0.08, 0.25), rng.uniform(1.0, 1.4)
        elif kind < 0.7:  # dark scene
            gain = rng.uniform(0.28, 0.45)
        elif kind < 0.85:  # over-exposed
            gain, ambient = rng.uniform(1.45, 1.9), rng.uniform(0.7, 0.9)
        else:  # strongly coloured light
            tint = np.clip(1.0 + 0.45 * rng.standard_normal(3), 0.35, 1.6)
            ambient, diffuse = rng.uniform(0.3, 0.5), rng.uniform(0.6, 0.9)
    direction = direction / np.linalg.norm(direction)

    blur_kind, blur_amount = None, 0.0
    if draws["blur"]:
        if rng.random() < 0.55:
            blur_kind, blur_amount = "defocus", float(rng.uniform(1.3, 3.5))
        else:
            blur_kind, blur_amount = "motion", float(rng.uniform(5.0, 14.0))

    appearance = Appearance(
        skin=_colour(skin),
        hair_style=style,
        hair_colour=_colour(hair),
        hairline=float(rng.uniform(-0.95, -0.62) if style != "bald" else identity.crown_height),
        hair_volume=float(rng.uniform(0.03, 0.12) if style in ("medium", "long") else rng.uniform(0.0, 0.05)),
        brow_colour=_colour(brow),
        eye_colour=_colour(eye),
        lip_colour=_colour(lip),
        clothes_colour=_colour(rng.uniform(20, 235, 3)),
        makeup=makeup,
        eyeshadow=eyeshadow,
        eyeliner=eyeliner,
        glasses=glasses,
        occluder=occluder,
        occluder_target=float(rng.random()),
        light_direction=tuple(float(v) for v in direction),  # type: ignore[arg-type]
        ambient=float(ambient),
        diffuse=float(diffuse),
        gain=float(gain),
        tint=tuple(float(v) for v in tint),  # type: ignore[arg-type]
        blur_kind=blur_kind,
        blur_amount=blur_amount,
        blur_angle=float(rng.uniform(0.0, math.pi)),
        noise=float(rng.uniform(1.0, 6.0)),
        jpeg_quality=int(rng.integers(60, 96)),
        face_ratio=float(rng.uniform(1.25, 2.0)),
        offset=(float(rng.uniform(-1, 1)), float(rng.uniform(-1, 1))),
        box_jitter=tuple(float(v) for v in rng.normal(0.0, 0.04, 4)),  # type: ignore[arg-type]
    )
    return FaceParams(identity, expression, pose, appearance, draws["expression"], extreme, size)


# --- drawing helpers -----------------------------------------------------------------------------
def _fixed(points: np.ndarray) -> np.ndarray:
    """Pixel coordinates -> OpenCV fixed point (1/16 px), int32 (n, 2)."""
    return np.rint(np.asarray(points) * _ONE).astype(np.int32)


def _fill(canvas: np.ndarray, polygons, colour) -> None:
    cv2.fillPoly(canvas, [_fixed(p) for p in polygons], _bgr(colour), cv2.LINE_8, SHIFT)


def _line(canvas: np.ndarray, points: np.ndarray, colour, thickness: int, closed: bool = False) -> None:
    cv2.polylines(canvas, [_fixed(points)], closed, _bgr(colour), max(1, int(thickness)), cv2.LINE_8, SHIFT)


def _bgr(colour) -> tuple:
    """Colours are RGB here and the canvas is RGB; OpenCV only needs a tuple of ints."""
    if isinstance(colour, (int, float)):
        return (int(colour),)
    return tuple(map(round, map(float, colour)))


def _convex(canvas: np.ndarray, points: np.ndarray, colour) -> None:
    hull = cv2.convexHull(_fixed(points))
    cv2.fillConvexPoly(canvas, hull, _bgr(colour), cv2.LINE_8, SHIFT)


def _scaled(colour, factor) -> np.ndarray:
    return np.minimum(np.maximum(np.asarray(colour, float) * factor, 0.0), 255.0)


def _ellipse_points(centre, axes, angle_degrees: float, count: int = 24) -> np.ndarray:
    theta = np.linspace(0.0, 2 * math.pi, count, endpoint=False)
    a, b = axes
    cos_a, sin_a = math.cos(math.radians(angle_degrees)), math.sin(math.radians(angle_degrees))
    x, y = a * np.cos(theta), b * np.sin(theta)
    return np.stack([centre[0] + cos_a * x - sin_a * y, centre[1] + sin_a * x + cos_a * y], axis=1)


def _surface_at(model: HeadModel, phi: np.ndarray, y: np.ndarray, height) -> dict[str, np.ndarray]:
    """Surface points given by ring angle and height (for the hairline, ears, mask edges)."""
    phi, y = np.broadcast_arrays(np.asarray(phi, float), np.asarray(y, float))
    height = np.broadcast_to(np.asarray(height, float), phi.shape)
    w, c, d = model.rings(y)
    w, d = np.maximum(w, 1e-3), np.maximum(d, 1e-3)
    return {"phi": phi, "w": w, "c": c, "d": d, "y": y, "height": height, "points": ring_points(phi, y, w, c, d, height)}


def _merge(surfaces: list[dict[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], list[slice]]:
    keys = ("phi", "w", "c", "d", "y", "height")
    merged = {k: np.concatenate([s[k] for s in surfaces]) for k in keys}
    merged["points"] = np.concatenate([s["points"] for s in surfaces])
    slices, start = [], 0
    for s in surfaces:
        slices.append(slice(start, start + len(s["phi"])))
        start += len(s["phi"])
    return merged, slices


# --- background ----------------------------------------------------------------------------------
def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth colour field with 10-30 random shapes (shelves, windows, posters, lines), drawn
    at half resolution and defocused (the background is out of focus anyway)."""
    half = size // 2
    grid = rng.integers(0, 256, (3, 3, 3), dtype=np.uint8)
    grid = (grid // 2 + rng.integers(30, 110)).astype(np.uint8)
    canvas = cv2.resize(grid, (half, half), interpolation=cv2.INTER_LINEAR)
    count = int(rng.integers(10, 30))
    values = rng.random((count, 10))
    colours = values[:, 7:10] * 230 + 10
    for v, colour in zip(values, colours):
        kind = v[0]
        x0, y0 = (v[1] * 1.2 - 0.1) * half, (v[2] * 1.2 - 0.1) * half
        w, h = (0.05 + 0.45 * v[3]) * half, (0.05 + 0.45 * v[4]) * half
        if kind < 0.35:
            _fill(canvas, [np.array([[x0, y0], [x0 + w, y0], [x0 + w, y0 + h], [x0, y0 + h]])], colour)
        elif kind < 0.55:
            _fill(canvas, [_ellipse_points((x0, y0), (w / 2, h / 2), v[5] * 180, 16)], colour)
        elif kind < 0.8:
            end = np.array([[x0, y0], [x0 + (v[5] - 0.5) * half, y0 + (v[6] - 0.5) * half]])
            _line(canvas, end, colour, 1 + int(v[3] * 4))
        else:
            angles = np.sort(v[3:7]) * 2 * math.pi
            radius = (0.1 + 0.25 * v[5]) * half
            _fill(canvas, [np.stack([x0 + radius * np.cos(angles), y0 + radius * np.sin(angles)], axis=1)], colour)
    sigma = float(rng.uniform(0.3, 1.3)) * size / 256
    canvas = cv2.GaussianBlur(canvas, (0, 0), sigma)
    return cv2.resize(canvas, (size, size), interpolation=cv2.INTER_LINEAR)


# --- the noise bank: one fixed table per process, windows chosen per image ---------------------------
_NOISE_BANKS: dict[int, np.ndarray] = {}


def _noise_bank(size: int) -> np.ndarray:
    bank = _NOISE_BANKS.get(size)
    if bank is None:
        generator = np.random.Generator(np.random.PCG64(np.random.SeedSequence(20240611)))
        bank = np.clip(np.round(generator.standard_normal((size + 64, size + 64, 3)) * 16), -64, 64).astype(np.int16)
        _NOISE_BANKS[size] = bank
    return bank


# --- the renderer ----------------------------------------------------------------------------------
class _Frame:
    """Head units -> pixels: ``pixel = scale * image_xy + shift``."""

    def __init__(self, scale: float, shift: np.ndarray):
        self.scale, self.shift = scale, shift

    def __call__(self, xy: np.ndarray) -> np.ndarray:
        return xy * self.scale + self.shift


class _Batch:
    """All surface points of one image, lifted and projected together (one numpy pass instead of
    dozens of small ones). Requests are curves (``curve``), frontal points (``frontal``) or ring
    coordinates (``ring``); after :meth:`evaluate`, ``points[key]`` (3D), ``true[key]`` (image,
    head units) and ``drawn[key]`` (pixels, turned-away points moved to the silhouette) and
    ``surface(key)`` are available."""

    def __init__(self, model: HeadModel):
        self.model = model
        self.curves: list[tuple[str, str, np.ndarray]] = []
        self.frontals: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []
        self.rings: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []

    def curve(self, key: str, name: str, params) -> None:
        self.curves.append((key, name, np.asarray(params, dtype=np.float64)))

    def frontal(self, key: str, x, y, height) -> None:
        x, y, height = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (x, y, height)))
        self.frontals.append((key, x.ravel(), y.ravel(), height.ravel()))

    def ring(self, key: str, phi, y, height) -> None:
        phi, y, height = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (phi, y, height)))
        self.rings.append((key, phi.ravel(), y.ravel(), height.ravel()))

    def evaluate(self, rotation: np.ndarray, frame: _Frame | None = None) -> None:
        model = self.model
        x, y, height, slices = model.frontal_many([(name, params) for _, name, params in self.curves])
        keys = [key for key, _, _ in self.curves]
        xs, ys, hs = [x], [y], [height]
        start = len(x)
        for key, fx, fy, fh in self.frontals:
            xs.append(fx), ys.append(fy), hs.append(fh)
            slices.append(slice(start, start + len(fx)))
            keys.append(key)
            start += len(fx)
        lifted = model.lift(np.concatenate(xs), np.concatenate(ys), np.concatenate(hs))
        if self.rings:
            phi = np.concatenate([r[1] for r in self.rings])
            ring_y = np.concatenate([r[2] for r in self.rings])
            ring_h = np.concatenate([r[3] for r in self.rings])
            w, c, d = model.rings(ring_y)
            w, d = np.maximum(w, 1e-3), np.maximum(d, 1e-3)
            extra = {"phi": phi, "w": w, "c": c, "d": d, "y": ring_y, "height": ring_h, "points": ring_points(phi, ring_y, w, c, d, ring_h)}
            lifted = {k: np.concatenate([lifted[k], extra[k]]) for k in lifted}
            for key, p, _, _ in self.rings:
                slices.append(slice(start, start + len(p)))
                keys.append(key)
                start += len(p)
        self.lifted, self.slices = lifted, dict(zip(keys, slices))
        self.points = {k: lifted["points"][s] for k, s in self.slices.items()}
        true = project(lifted["points"], rotation)
        self.true = {k: true[s] for k, s in self.slices.items()}
        self.facing = facing(lifted, rotation)
        if frame is not None:
            self.project_for_drawing(rotation, frame)

    def project_for_drawing(self, rotation: np.ndarray, frame: _Frame) -> None:
        drawn = frame(project_visible(self.lifted, rotation))
        self.drawn = {k: drawn[s] for k, s in self.slices.items()}

    def surface(self, key: str) -> dict[str, np.ndarray]:
        part = self.slices[key]
        return {k: v[part] for k, v in self.lifted.items()}


_LAYOUTS = ("wflw98", "300w68", "cofw29")
_DENSE_CONTOUR = np.arange(97) / 3.0  # every third position is an integer contour index, exactly
_S_DENSE = np.linspace(0.0, 1.0, 11)
_U_DENSE = np.linspace(-1.0, 1.0, 17)


def _landmark_requests() -> tuple[dict[str, np.ndarray], dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]]:
    """All layouts' landmark parameters merged per curve (one request per curve), and per
    layout ``(curve, landmark indices, positions in the curve's merged request)``."""
    merged: dict[str, list[float]] = {}
    placement: dict[str, list] = {}
    for layout in _LAYOUTS:
        placement[layout] = []
        for name, indices, params in LANDMARK_GROUPS[layout]:
            start = len(merged.setdefault(name, []))
            merged[name].extend(params.tolist())
            placement[layout].append((name, indices, np.arange(start, start + len(params))))
    return {name: np.array(values) for name, values in merged.items()}, placement


_LANDMARK_PARAMS, _LANDMARK_PLACEMENT = _landmark_requests()


def _request_landmarks(batch: _Batch) -> None:
    for name, params in _LANDMARK_PARAMS.items():
        if name != "contour":
            batch.curve(f"landmarks/{name}", name, params)


def _landmarks_head_units(batch: _Batch, contour: dict, rotation: np.ndarray) -> tuple[dict, dict]:
    """True image positions (head units) of all layouts' landmarks from an evaluated batch and
    the dense contour, and whether each is turned away from the camera."""
    contour_xy = project(contour["points"], rotation)
    positions, hidden = {}, {}
    for layout in _LAYOUTS:
        count = len(LANDMARK_SPECS[layout])
        xy, away = np.zeros((count, 2)), np.zeros(count, bool)
        for name, indices, where in _LANDMARK_PLACEMENT[layout]:
            if name == "contour":  # on the silhouette: visible by definition
                xy[indices] = contour_xy[np.rint(_LANDMARK_PARAMS[name][where] * 3).astype(int)]
            else:
                key = f"landmarks/{name}"
                xy[indices] = batch.true[key][where]
                away[indices] = batch.facing[batch.slices[key]][where] < 0.0
        positions[layout], hidden[layout] = xy, away
    return positions, hidden


def render_face(params: FaceParams, rng: np.random.Generator) -> RenderedFace:
    """Render one face. ``rng`` supplies the unstructured randomness (background clutter,
    hair strands, occluder shapes); the structured part is in ``params``."""
    size = params.size
    app = params.appearance
    model = HeadModel(params.identity, params.expression)
    rotation = rotation_matrix(params.pose)
    batch = _drawing_batch(model, params)
    _request_landmarks(batch)
    batch.evaluate(rotation)
    contour = model.contour_points(rotation, _DENSE_CONTOUR)
    head_xy, self_hidden = _landmarks_head_units(batch, contour, rotation)

    # Framing: the landmark box fills 1/face_ratio of the image, off centre.
    points = head_xy["wflw98"]
    low, high = points.min(axis=0), points.max(axis=0)
    side = float(max(high - low))
    scale = size / (app.face_ratio * side)
    margin = 0.5 * (size - scale * (high - low)) * 0.9
    centre_pixels = size / 2.0 - 0.5 + np.asarray(app.offset) * np.maximum(margin, 0.0)
    frame = _Frame(scale, centre_pixels - scale * (low + high) / 2.0)
    landmarks = {layout: np.round(frame(xy), 4) for layout, xy in head_xy.items()}
    contour_pixels = frame(project(contour["points"], rotation))
    batch.project_for_drawing(rotation, frame)

    canvas = _background(rng, size)
    occluder_mask = np.zeros((size, size), np.uint8)
    _draw_hanging_hair(canvas, model, params, frame, rotation)
    _draw_body(canvas, model, params, frame, rotation)
    _draw_cranium_and_hair(canvas, model, params, frame, rotation, rng)
    _draw_neck(canvas, model, params, frame, rotation)
    _draw_face(canvas, model, params, frame, rotation, batch, contour_pixels)
    _draw_occluders(canvas, occluder_mask, model, params, frame, rotation, rng, landmarks["wflw98"], batch, contour)
    _apply_light(canvas, model, params, frame, rotation)
    canvas = _apply_blur(canvas, app, size)
    canvas = _apply_noise(canvas, app, rng, size)

    occluded, covered_count = {}, 0
    for layout, xy in landmarks.items():
        pixel = np.round(xy).astype(np.int64)
        inside = (pixel[:, 0] >= 0) & (pixel[:, 0] < size) & (pixel[:, 1] >= 0) & (pixel[:, 1] < size)
        covered = np.zeros(len(xy), bool)
        covered[inside] = occluder_mask[pixel[inside, 1], pixel[inside, 0]] > 0
        occluded[layout] = covered | self_hidden[layout]
        if layout == "wflw98":
            covered_count = int(covered.sum())
    flags = (
        int(is_large_pose(params.pose)),
        int(params.exaggerated_expression),
        int(params.extreme_illumination),
        int(app.makeup),
        int(app.occluder is not None and covered_count >= OCCLUSION_MIN_POINTS),
        int(app.blur_kind is not None),
    )
    return RenderedFace(canvas, landmarks, occluded, _detector_box(landmarks["wflw98"], app), flags, app.jpeg_quality, params)


def _drawing_batch(model: HeadModel, params: FaceParams) -> _Batch:
    """Every surface point the drawing needs, requested at once."""
    app, identity = params.appearance, params.identity
    batch = _Batch(model)
    for side in ("l", "r"):
        for part in ("eye_upper", "eye_lower", "brow_upper", "brow_lower"):
            batch.curve(f"{part}_{side}", f"{part}_{side}", _S_DENSE)
        batch.curve(f"pupil_{side}", f"pupil_{side}", np.zeros(1))
    for name in ("lip_outer_upper", "lip_outer_lower", "lip_inner_upper", "lip_inner_lower"):
        batch.curve(name, name, _U_DENSE)
    batch.curve("teeth_top", "lip_inner_upper", _U_DENSE * 0.8)
    # The midline profile below the nose, raised as far as the lips stick out, and the same
    # points on the base surface: the skin between them fills the profile when the face turns.
    subnasale = identity.nose_tip_y + 0.08
    profile_y = np.linspace(subnasale, model.chin_y - 0.05, 12)
    lips_y = np.array([model.curve("lip_outer_upper", np.zeros(1))[1][0], model.curve("lip_outer_lower", np.zeros(1))[1][0]])
    profile_height = np.interp(profile_y, [subnasale, lips_y[0], lips_y[1], model.chin_y - 0.05], [0.08, 0.09, 0.08, 0.0])
    batch.frontal("profile_raised", 0.0, profile_y, profile_height)
    batch.frontal("profile_base", 0.0, profile_y[::-1], 0.0)
    batch.curve("nose_bridge", "nose_bridge", np.array([0.0, 0.5, 1.0]))
    batch.curve("nose_lower", "nose_lower", np.array([-1.0, -0.5, 0.0, 0.5, 1.0]))
    half = identity.nose_half_width
    batch.frontal("nose_wings", np.array([-0.8 * half, 0.8 * half]), identity.nose_tip_y - 0.07, 0.3 * identity.nose_depth)
    batch.frontal("glasses", np.array([-identity.eye_centre_x, identity.eye_centre_x]), identity.eye_y + 0.01, 0.16)
    if app.eyeshadow is not None:
        for side in ("l", "r"):
            x, y, h = model.curve(f"eye_upper_{side}", _S_DENSE)
            batch.frontal(f"shadow_{side}", x * 1.04, y - 0.045 - 0.05 * np.sin(np.pi * _S_DENSE), h)
    # Face opening above the contour: sideburns and hairline (ring coordinates).
    side_angle = math.radians(92.0)
    top = identity.contour_top
    temple_y = min(app.hairline + 0.5, top - 0.15)
    hairline_phi = np.linspace(side_angle, -side_angle, 25)
    sideburn_y = np.linspace(top, temple_y, 5)
    batch.ring("right_burn", side_angle, sideburn_y, 0.0)
    batch.ring("hairline", hairline_phi, app.hairline + (temple_y - app.hairline) * (np.abs(hairline_phi) / side_angle) ** 2.5, 0.0)
    batch.ring("left_burn", -side_angle, sideburn_y[::-1], 0.0)
    batch.ring("ears", np.array([-1.0, 1.0]) * math.radians(97.0), top + 0.2, 0.0)
    batch.ring("temples", np.array([-1.0, 1.0]) * math.radians(95.0), identity.eye_y, 0.03)
    return batch


def _detector_box(landmarks: np.ndarray, app: Appearance) -> np.ndarray:
    """A face detector's rectangle: the landmark box widened a little, raised to include some
    forehead, then jittered in position and size (like WFLW's rectangles)."""
    low, high = landmarks.min(axis=0), landmarks.max(axis=0)
    width, height = high - low
    x0, x1 = low[0] - 0.04 * width, high[0] + 0.04 * width
    y0, y1 = low[1] - 0.12 * height, high[1] + 0.03 * height
    jx, jy, jw, jh = app.box_jitter
    cx, cy = (x0 + x1) / 2 + jx * width, (y0 + y1) / 2 + jy * height
    half_w, half_h = (x1 - x0) / 2 * (1 + jw), (y1 - y0) / 2 * (1 + jh)
    return np.round([cx - half_w, cy - half_h, cx + half_w, cy + half_h]).astype(np.int64)


def _ring_stack(heights: np.ndarray, w: np.ndarray, c: np.ndarray, d: np.ndarray, phi: np.ndarray, rotation, frame) -> np.ndarray:
    """Pixel outlines (len(heights), len(phi), 2) of horizontal rings (arcs if phi is partial);
    ``phi`` may be (n_phi,) or (len(heights), n_phi)."""
    phi = np.broadcast_to(phi, (len(heights), phi.shape[-1]))
    points = np.stack([w[:, None] * np.sin(phi), np.broadcast_to(heights[:, None], phi.shape), c[:, None] + d[:, None] * np.cos(phi)], axis=-1)
    return frame(points @ rotation[:2].T)


def _fill_ring_stack(canvas, outlines: np.ndarray, colour) -> None:
    """Fill the solid between consecutive rings: the convex hull of each pair of outlines."""
    fixed = _fixed(outlines)
    colour = _bgr(colour)
    for index in range(len(fixed) - 1):
        hull = cv2.convexHull(np.concatenate([fixed[index], fixed[index + 1]]))
        cv2.fillConvexPoly(canvas, hull, colour, cv2.LINE_8, SHIFT)


_FULL_RING = np.linspace(-math.pi, math.pi, 20, endpoint=False)


def _draw_body(canvas, model: HeadModel, params: FaceParams, frame, rotation) -> None:
    app = params.appearance
    body_rotation = rotation_matrix(Pose(0.35 * params.pose.yaw, 0.0, 0.5 * params.pose.roll))
    # The neck's base follows the head; the shoulders turn less than the head.
    neck_bottom_head = np.array([0.0, model.chin_y + 0.7, -0.1])
    offset = project(neck_bottom_head[None], rotation)[0] - project(neck_bottom_head[None], body_rotation)[0]
    y_shoulder = model.chin_y + 0.75
    shoulders = np.array([
        [-2.6, 6.0], [-2.5, 0.9], [-2.2, 0.45], [-1.6, 0.15], [-0.9, 0.0],
        [0.9, 0.0], [1.6, 0.15], [2.2, 0.45], [2.5, 0.9], [2.6, 6.0]]) + (0.0, y_shoulder)
    body = np.concatenate([shoulders, np.full((len(shoulders), 1), -0.3)], axis=1)
    _fill(canvas, [frame(project(body, body_rotation) + offset)], app.clothes_colour)
    collar = np.array([[-0.55, y_shoulder - 0.02, 0.1], [0.0, y_shoulder + 0.55, 0.2], [0.55, y_shoulder - 0.02, 0.1]])
    _fill(canvas, [frame(project(collar, body_rotation) + offset)], _scaled(app.skin, 0.78))


def _draw_neck(canvas, model: HeadModel, params: FaceParams, frame, rotation) -> None:
    """A cylinder from inside the head to the shoulders, drawn after the cranium and the hair
    cap: it hides the back of the head where the face is seen from below."""
    body_rotation = rotation_matrix(Pose(0.35 * params.pose.yaw, 0.0, 0.5 * params.pose.roll))
    neck_bottom_head = np.array([0.0, model.chin_y + 0.7, -0.1])
    offset = project(neck_bottom_head[None], rotation)[0] - project(neck_bottom_head[None], body_rotation)[0]
    ring = np.stack([0.43 * np.sin(_FULL_RING), np.zeros(20), -0.18 + 0.42 * np.cos(_FULL_RING)], axis=1)
    top = frame(project(ring + (0.0, params.identity.contour_top + 0.45, 0.0), rotation))
    bottom = frame(project(ring + (0.0, model.chin_y + 0.85, 0.0), body_rotation) + offset)
    _convex(canvas, np.concatenate([top, bottom]), _scaled(params.appearance.skin, 0.78))


def _hair_rings(model: HeadModel, params: FaceParams, heights: np.ndarray):
    """Half-width, centre depth and half-depth of the hair's rings: the cranium's rings grown by
    the hair's volume; below the cranium, hair hangs straight, a little wider than the head."""
    app, identity = params.appearance, params.identity
    top = identity.contour_top
    volume = 1.0 + app.hair_volume
    w, c, d = model.rings(np.minimum(heights, top))
    below = heights > top
    w = np.where(below, identity.face_half_width * (1.02 + 0.1 * (app.hair_style == "long")), w) * volume + 0.02
    c = np.where(below, 0.0, c)
    d = np.where(below, identity.head_depth * 0.95, d) * volume + 0.02
    return w, c, d


_HAIR_LENGTH = {"buzz": -0.1, "short": 0.15, "medium": None, "long": None}


def _draw_hanging_hair(canvas, model: HeadModel, params: FaceParams, frame, rotation) -> None:
    """Medium and long hair below the ears, drawn first: behind the neck and the shoulders."""
    app, identity = params.appearance, params.identity
    if app.hair_style not in ("medium", "long"):
        return
    top = identity.contour_top
    bottom = model.chin_y - 0.2 if app.hair_style == "medium" else model.chin_y + 1.2
    heights = np.linspace(top, bottom, 6)
    w, c, d = _hair_rings(model, params, heights)
    outlines = _ring_stack(heights, w, c, d, _FULL_RING, rotation, frame)
    # A ragged lower edge: the last ring's points move up and down with the angle.
    ragged = np.stack([np.zeros(20), 0.12 * np.sin(3.0 * _FULL_RING + 7.0 * app.hair_volume), np.zeros(20)], axis=1)
    outlines[-1] += frame.scale * (ragged @ rotation[:2].T)
    _fill_ring_stack(canvas, outlines, app.hair_colour)


def _draw_cranium_and_hair(canvas, model: HeadModel, params: FaceParams, frame, rotation, rng) -> None:
    app, identity = params.appearance, params.identity
    top, crown = identity.contour_top, identity.crown_height
    heights = crown + (top + 0.25 - crown) * (1.0 - np.cos(np.linspace(0.0, math.pi / 2, 10)))
    w, c, d = model.rings(heights)
    _fill_ring_stack(canvas, _ring_stack(heights, w, c, d, _FULL_RING, rotation, frame), app.skin)
    _draw_ears(canvas, model, params, frame, rotation)
    if app.hair_style == "bald":
        return
    # The hair cap: below the front hairline only the back arc of each ring (the face opening
    # stays free), down to the ears (the hanging part was drawn behind the neck).
    bottom = top + (_HAIR_LENGTH[app.hair_style] if _HAIR_LENGTH[app.hair_style] is not None else 0.3)
    heights = crown - 0.02 + (bottom - crown + 0.02) * np.linspace(0.0, 1.0, 12) ** 1.3
    w, c, d = _hair_rings(model, params, heights)
    open_angle = math.radians(70.0 + 25.0 * (app.hair_style in ("buzz", "short"))) * np.clip((heights - app.hairline) / 0.35, 0.0, 1.0)
    t = np.linspace(0.0, 1.0, 18)
    phi = open_angle[:, None] + (2 * math.pi - 2 * open_angle[:, None]) * t[None, :]
    hair = np.asarray(app.hair_colour)
    _fill_ring_stack(canvas, _ring_stack(heights, w, c, d, phi, rotation, frame), hair)
    # Strands: meridians of the hair surface in three shades, only where they face the camera
    # and, in front, only above the hairline.
    cranium = heights <= max(top, app.hairline + 0.3)
    if cranium.sum() < 2:
        return
    hs, ws, cs, ds = heights[cranium], w[cranium], c[cranium], d[cranium]
    count = 27
    phis = np.linspace(-math.pi, math.pi, count, endpoint=False) + rng.uniform(-0.1, 0.1, count)
    outlines = _ring_stack(hs, ws, cs, ds, phis, rotation, frame)  # (rings, strands, 2)
    normal_z = rotation[2, 0] * np.sin(phis)[None] / ws[:, None] + rotation[2, 2] * np.cos(phis)[None] / ds[:, None]
    front = np.abs(np.remainder(phis + math.pi, 2 * math.pi) - math.pi) < math.radians(80)
    visible = (normal_z > 0.02) & ~(front[None, :] & (hs[:, None] > app.hairline))
    for shade_index, shade in enumerate((0.7, 1.3, 0.85)):
        lines = [outlines[visible[:, k], k] for k in range(shade_index, count, 3) if visible[:, k].sum() >= 2]
        if lines:
            cv2.polylines(canvas, [_fixed(line) for line in lines], False, _bgr(_scaled(hair, shade)), 1, cv2.LINE_8, SHIFT)


def _draw_ears(canvas, model: HeadModel, params: FaceParams, frame, rotation) -> None:
    identity, app = params.identity, params.appearance
    if app.hair_style in ("long", "medium"):
        return
    ear_y = identity.contour_top + 0.2
    w, c, d = (float(v[0]) for v in model.rings(np.array([ear_y])))
    theta = np.linspace(0, 2 * math.pi, 14, endpoint=False)
    for sign in (-1.0, 1.0):
        phi = sign * math.radians(97.0)
        if math.cos(phi) * rotation[2, 2] / d + math.sin(phi) * rotation[2, 0] / w < -0.2:
            continue
        centre = np.array([w * math.sin(phi), ear_y, c + d * math.cos(phi) - 0.05])
        for scale_, shade in ((1.0, 0.92), (0.6, 0.72)):
            outline = centre + scale_ * np.stack([sign * 0.054 * (1 + np.cos(theta)), 0.24 * np.sin(theta), -0.12 * np.cos(theta)], axis=1)
            _fill(canvas, [frame(project(outline, rotation))], _scaled(app.skin, shade))


def _draw_face(canvas, model: HeadModel, params: FaceParams, frame, rotation, batch: _Batch, contour_pixels) -> None:
    """Face skin inside the contour and hairline, then eyes, brows, nose and lips."""
    app = params.appearance
    skin = np.asarray(app.skin)
    drawn = batch.drawn
    face_outline = np.concatenate([contour_pixels, drawn["right_burn"], drawn["hairline"], drawn["left_burn"]])
    _fill(canvas, [face_outline], skin)
    for side in ("l", "r"):
        if app.eyeshadow is not None:
            shadow = np.concatenate([drawn[f"eye_upper_{side}"], drawn[f"shadow_{side}"][::-1]])
            _fill(canvas, [shadow], 0.45 * skin + 0.55 * np.asarray(app.eyeshadow))
        _draw_eye(canvas, params, frame, rotation, side, batch)
    brows = [np.concatenate([drawn[f"brow_upper_{side}"], drawn[f"brow_lower_{side}"][::-1]]) for side in ("l", "r")]
    _fill(canvas, brows, app.brow_colour)
    _fill(canvas, [np.concatenate([drawn["profile_raised"], drawn["profile_base"]])], skin)
    _draw_nose(canvas, params, frame, rotation, batch)
    # Lips: outer shape, the open mouth and teeth, the line between the lips.
    outer = np.concatenate([drawn["lip_outer_upper"], drawn["lip_outer_lower"][::-1]])
    _fill(canvas, [outer], app.lip_colour)
    inner_upper, inner_lower = drawn["lip_inner_upper"], drawn["lip_inner_lower"]
    if params.expression.mouth_open > 0.02:
        inner = np.concatenate([inner_upper, inner_lower[::-1]])
        _fill(canvas, [inner], (55, 18, 22))
        teeth_top = drawn["teeth_top"]
        teeth_depth = frame.scale * min(0.35 * params.expression.mouth_open, 0.07)
        teeth = np.concatenate([teeth_top - (0.0, 1.0), teeth_top[::-1] + (0.0, teeth_depth)])
        _fill_clipped(canvas, teeth, inner, (226, 220, 204))
    _line(canvas, inner_upper, _scaled(app.lip_colour, 0.55), max(1, int(round(frame.scale * 0.012))))


def _fill_clipped(canvas, polygon: np.ndarray, clip: np.ndarray, colour, extra=()) -> None:
    """Fill ``polygon`` (and ``extra`` (polygon, colour) pairs) only inside polygon ``clip``."""
    size = canvas.shape[0]
    low = np.minimum(np.maximum(np.floor(clip.min(0)).astype(int) - 1, 0), size)
    high = np.minimum(np.maximum(np.ceil(clip.max(0)).astype(int) + 2, 0), size)
    if np.any(high - low < 1):
        return
    region = canvas[low[1] : high[1], low[0] : high[0]]
    mask = np.zeros(region.shape[:2], np.uint8)
    _fill(mask, [clip - low], 255)
    layer = region.copy()
    for shape, shape_colour in ((polygon, colour),) + tuple(extra):
        _fill(layer, [shape - low], shape_colour)
    np.copyto(region, layer, where=mask[:, :, None] > 0)


def _draw_eye(canvas, params: FaceParams, frame, rotation, side: str, batch: _Batch) -> None:
    app, expression = params.appearance, params.expression
    upper, lower = batch.drawn[f"eye_upper_{side}"], batch.drawn[f"eye_lower_{side}"]
    closure = expression.eye_closure_left if side == "l" else expression.eye_closure_right
    lash = _scaled(app.brow_colour, 0.6)
    thickness = max(1, int(round(frame.scale * (0.022 if app.eyeliner else 0.012))))
    pupil_facing = batch.facing[batch.slices[f"pupil_{side}"]][0]
    if closure < 0.85 and pupil_facing > 0.05:
        eye = np.concatenate([upper, lower[-2:0:-1]])
        white = np.array([232.0, 226.0, 220.0]) * (0.8 + 0.2 * np.asarray(app.skin) / 255.0)
        _fill(canvas, [eye], white)
        # Iris: a disc on the eyeball around the pupil landmark, clipped by the lids.
        centre = batch.points[f"pupil_{side}"][0]
        radius = 0.36 * params.identity.eye_opening + 0.02
        disc = centre + radius * _UNIT_DISC
        iris = frame(project(disc, rotation))
        pupil = frame(project(centre + 0.4 * radius * _UNIT_DISC, rotation))
        glint = frame(project(centre + 0.15 * radius * _UNIT_DISC + (0.02, -0.02, 0.0), rotation))
        _fill_clipped(canvas, iris, eye, app.eye_colour, ((pupil, (15, 12, 12)), (glint, (245, 245, 245))))
        _line(canvas, lower, _scaled(app.skin, 0.7), 1)
    _line(canvas, upper, lash, thickness)


_UNIT_DISC = np.stack([np.cos(np.linspace(0, 2 * math.pi, 16, endpoint=False)), np.sin(np.linspace(0, 2 * math.pi, 16, endpoint=False)), np.zeros(16)], axis=1)
_NOSTRIL = np.stack([0.045 * np.cos(np.linspace(0, 2 * math.pi, 10)), np.full(10, 0.012), 0.022 * np.sin(np.linspace(0, 2 * math.pi, 10))], axis=1)
# Outward direction of each nose wall in the head frame, to orient its (Newell) normal.
_NOSE_OUTWARD = {"left": np.array([-1.0, 0.0, 0.5]), "right": np.array([1.0, 0.0, 0.5]), "under": np.array([0.0, 1.0, 0.3])}


def _draw_nose(canvas, params: FaceParams, frame, rotation, batch: _Batch) -> None:
    """The nose as a small polyhedron (two side walls and the underside), culled and shaded by
    its own normals, with nostrils and the wings' creases."""
    app = params.appearance
    skin = np.asarray(app.skin)
    root, middle, tip = batch.points["nose_bridge"]
    alar_l, nostril_l, columella, nostril_r, alar_r = batch.points["nose_lower"]
    wing_top_l, wing_top_r = batch.points["nose_wings"]
    tip_l, tip_r = tip + (-0.07, 0.04, -0.05), tip + (0.07, 0.04, -0.05)
    root_l, root_r = root + (-0.035, 0.08, -0.03), root + (0.035, 0.08, -0.03)
    walls = (
        ("left", np.array([root, middle, tip, tip_l, alar_l, wing_top_l, root_l])),
        ("right", np.array([root, root_r, wing_top_r, alar_r, tip_r, tip, middle])),
        ("under", np.array([alar_l, tip_l, tip, tip_r, alar_r, nostril_r, columella, nostril_l])),
    )
    light = np.asarray(app.light_direction)
    front = rotation[:, 2]
    for name, vertices in walls:
        camera = vertices @ rotation.T
        normal = np.cross(camera[1:-1] - camera[0], camera[2:] - camera[0]).sum(axis=0)
        norm = float(np.linalg.norm(normal))
        if norm < 1e-9:
            continue
        normal = normal / norm
        if normal @ (rotation @ _NOSE_OUTWARD[name]) < 0:
            normal = -normal
        if normal[2] <= 0.02:  # turned away from the camera
            continue
        # Relative to the light on the face's front there (applied later to the whole face),
        # softened: a real nose is rounded, not faceted.
        ratio = (app.ambient + app.diffuse * max(normal @ light, 0.0)) / (app.ambient + app.diffuse * max(front @ light, 0.05))
        factor = float(np.clip(1.0 + 0.6 * (ratio - 1.0), 0.7, 1.15))
        if name == "under":
            factor = min(factor, 0.82)
        _fill(canvas, [frame(camera[:, :2])], _scaled(skin, factor))
        if name == "under":
            holes = [frame(project(nostril + _NOSTRIL, rotation)) for nostril in (nostril_l, nostril_r)]
            _fill(canvas, holes, _scaled(skin, 0.35))
    crease = max(1, int(round(frame.scale * 0.01)))
    wings = [frame(project(np.array(wing), rotation)) for wing in ((wing_top_l, alar_l, nostril_l), (wing_top_r, alar_r, nostril_r))]
    cv2.polylines(canvas, [_fixed(w) for w in wings], False, _bgr(_scaled(skin, 0.62)), crease, cv2.LINE_8, SHIFT)


# --- occluders -------------------------------------------------------------------------------------
def _draw_occluders(canvas, mask, model: HeadModel, params: FaceParams, frame, rotation, rng, landmarks, batch: _Batch, contour) -> None:
    """Occluders are drawn into the image and into ``mask`` (landmarks under them are occluded)."""
    app = params.appearance
    kind = app.occluder
    scale = frame.scale  # pixels per head unit (about the inter-ocular distance)
    target = app.occluder_target

    def both(polygons, colour):
        _fill(canvas, polygons, colour)
        _fill(mask, polygons, 1)

    if app.glasses == "clear" or kind == "sunglasses":
        _draw_glasses(canvas, mask, params, frame, rotation, batch, dark=kind == "sunglasses")
    if kind == "hand":
        # Palm and fingers over the mouth, chin, a cheek or an eye.
        spots = [(76, 82), (16, 85), (4, 58), (28, 56), (60, 64), (68, 72), (54, 57)]
        a, b = spots[int(target * len(spots))]
        centre = (landmarks[a] + landmarks[b]) / 2 + rng.normal(0, 0.08, 2) * scale
        angle = rng.uniform(-0.9, 0.9) - math.pi / 2  # fingers point up, give or take 50 degrees
        tone = np.asarray(app.skin) * rng.uniform(0.85, 1.1)
        palm_w, palm_h = 0.42 * scale * rng.uniform(0.85, 1.2), 0.5 * scale * rng.uniform(0.85, 1.2)
        direction = np.array([math.cos(angle), math.sin(angle)])
        across = np.array([-direction[1], direction[0]])
        palm_centre = centre - direction * palm_h * 0.9
        both([_ellipse_points(palm_centre, (palm_h, palm_w), math.degrees(angle), 20)], tone)
        finger_width = max(2, int(round(0.13 * scale)))
        for index in range(4):
            base = palm_centre + direction * palm_h * 0.6 + across * palm_w * (0.75 - 0.5 * index)
            length = palm_h * rng.uniform(1.0, 1.5) * (1.0 - 0.12 * abs(index - 1.5))
            finger = np.array([base, base + direction * length])
            _line(canvas, finger, tone, finger_width)
            _line(mask, finger, 1, finger_width)
            _line(canvas, finger + across * finger_width * 0.5, _scaled(tone, 0.75), 1)
        thumb = np.array([palm_centre - across * palm_w * 0.8, palm_centre - across * palm_w * 1.6 + direction * palm_h * 0.7])
        _line(canvas, thumb, tone, finger_width + 1)
        _line(mask, thumb, 1, finger_width + 1)
        arm = np.array([palm_centre - direction * palm_h * 0.6 + across * palm_w * 0.6, palm_centre - direction * palm_h * 6 + across * palm_w * 0.6,
                        palm_centre - direction * palm_h * 6 - across * palm_w * 0.6, palm_centre - direction * palm_h * 0.6 - across * palm_w * 0.6])
        both([arm], _scaled(tone, 0.92) if rng.random() < 0.5 else app.clothes_colour)
    elif kind == "mask":
        # A face mask from the nose bridge down round the chin, following the face outline.
        identity = model.identity
        top_y = identity.nose_root_y + (identity.nose_tip_y - identity.nose_root_y) * rng.uniform(0.3, 0.65)
        x_edge = np.linspace(-0.95, 0.95, 15) * float(model.rings(np.array([top_y]))[0][0])
        edge = _Batch(model)
        edge.frontal("top", x_edge, top_y + 0.04 * (x_edge / x_edge.max()) ** 2, 0.06)
        edge.evaluate(rotation, frame)
        top_pixels = edge.drawn["top"]
        keep = contour["y"] >= top_y
        outline_head = project(contour["points"][keep], rotation)
        centre_head = project(np.array([[0.0, (top_y + model.chin_y) / 2, 0.6]]), rotation)[0]
        outline = frame(centre_head + (outline_head - centre_head) * 1.04)[::-1]
        colour = [(170, 205, 230), (235, 235, 235), (35, 35, 40), (90, 120, 170)][int(target * 4)]
        both([np.concatenate([top_pixels, outline])], colour)
        for fold in (0.35, 0.6):
            _line(canvas, top_pixels + (0.0, fold * (outline[len(outline) // 2, 1] - top_pixels[:, 1].mean())), _scaled(colour, 0.8), 1)
    elif kind == "hat":
        identity = model.identity
        brim_y = identity.eye_y - identity.brow_height - rng.uniform(-0.08, 0.25)
        heights = np.linspace(identity.crown_height - 0.06, brim_y, 8)
        w, c, d = model.rings(heights)
        outlines = _ring_stack(heights, w * 1.08, c, d * 1.08, _FULL_RING, rotation, frame)
        colour = rng.uniform(20, 230, 3)
        _fill_ring_stack(canvas, outlines, colour)
        _fill_ring_stack(mask, outlines, 1)
        if target < 0.6:  # a cap's brim, sticking forward
            w, c, d = (float(v[0]) for v in model.rings(np.array([brim_y])))
            theta = np.linspace(-0.5 * math.pi, 0.5 * math.pi, 15)
            brim = np.stack([w * 1.1 * np.sin(theta), np.full(15, brim_y + 0.02), c + (d + 0.45) * np.cos(theta)], axis=1)
            both([frame(project(brim, rotation))], _scaled(colour, 0.8))
    elif kind == "object":
        # A cup, phone, microphone, book...: a random shape over a random landmark.
        centre = landmarks[int(rng.integers(0, 98))] + rng.normal(0, 0.1, 2) * scale
        size = scale * rng.uniform(0.45, 1.1)
        colour = rng.uniform(10, 245, 3)
        if rng.random() < 0.4:
            polygon = _ellipse_points(centre, (size * rng.uniform(0.5, 1.0), size * rng.uniform(0.4, 1.0)), rng.uniform(0, 180), 20)
        else:
            angles = np.sort(rng.uniform(0, 2 * math.pi, int(rng.integers(4, 8))))
            radii = size * rng.uniform(0.5, 1.0, len(angles))
            polygon = centre + np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
        both([polygon], colour)
        for _ in range(int(rng.integers(0, 4))):  # stripes / print on the object
            offset = rng.uniform(-0.5, 0.5, 2) * size
            _line(canvas, np.array([centre + offset, centre - offset[::-1]]), rng.uniform(0, 255, 3), int(rng.integers(1, 4)))
        if rng.random() < 0.5:  # a handle or stick down out of the image
            stick = np.array([centre, centre + np.array([rng.uniform(-0.4, 0.4), 1.0]) * scale * 3])
            width = max(2, int(0.2 * size))
            _line(canvas, stick, _scaled(colour, 0.7), width)
            _line(mask, stick, 1, width)
    elif kind == "hair":
        # A lock of hair falling over one eye.
        eye = landmarks[60:68].mean(0) if target < 0.5 else landmarks[68:76].mean(0)
        top = eye + np.array([0.0, -0.9]) * scale
        width = scale * rng.uniform(0.25, 0.45)
        end = eye + np.array([rng.uniform(-0.3, 0.3) * scale, rng.uniform(0.25, 0.7) * scale])
        lock = np.array([top - (width, 0), top + (width * 1.3, 0), end + (width * 0.5, 0), end + (0.2 * width, width * 0.3), end - (width * 0.5, 0)])
        hair = np.asarray(app.hair_colour) if app.hair_style != "bald" else np.array([40.0, 30.0, 25.0])
        both([lock], hair)
        for _ in range(6):
            start = top + (rng.uniform(-width, width), 0)
            _line(canvas, np.array([start, end + (rng.uniform(-width, width) * 0.4, 0)]), _scaled(hair, rng.uniform(0.6, 1.4)), 1)


_LENS = np.linspace(0, 2 * math.pi, 20, endpoint=False)


def _draw_glasses(canvas, mask, params: FaceParams, frame, rotation, batch: _Batch, dark: bool) -> None:
    identity = params.identity
    half_w, half_h = identity.eye_width * 0.68, identity.eye_opening * 1.45 + 0.03
    frame_colour = (20, 20, 22) if dark else (60, 45, 35)
    thickness = max(1, int(round(frame.scale * 0.025)))
    lenses = []
    for sign, base in zip((-1.0, 1.0), batch.points["glasses"]):
        ring = base + np.stack([half_w * np.cos(_LENS), half_h * np.sin(_LENS) * (1 - 0.15 * np.sin(_LENS)), -0.05 * sign * np.cos(_LENS)], axis=1)
        lenses.append(ring)
        pixels = frame(project(ring, rotation))
        if dark:
            _fill(canvas, [pixels], (28, 30, 34))
            _fill(mask, [pixels], 1)
        _line(canvas, pixels, frame_colour, thickness, closed=True)
        _line(mask, pixels, 1, thickness, closed=True)
    _line(canvas, frame(project(np.array([lenses[0][0], lenses[1][10]]), rotation)), frame_colour, thickness)
    temples = batch.points["temples"]
    temple_facing = batch.facing[batch.slices["temples"]]
    for ring, index, temple, faces in ((lenses[0], 10, temples[0], temple_facing[0]), (lenses[1], 0, temples[1], temple_facing[1])):
        if faces > 0.0:  # the arm to an ear turned away is hidden behind the head
            _line(canvas, frame(project(np.array([ring[index], temple]), rotation)), frame_colour, thickness)


# --- light, blur, noise ------------------------------------------------------------------------------
def _apply_light(canvas, model: HeadModel, params: FaceParams, frame, rotation) -> None:
    """Multiply the image by the light: Lambertian shading of an ellipsoid standing in for the
    head (a coarse grid, resized), and the ambient + a share of the diffuse light elsewhere."""
    app, identity = params.appearance, params.identity
    size = canvas.shape[0]
    grid = max(16, size // 4)
    centre_y = 0.5 * (identity.crown_height + model.chin_y)
    semi = np.array([identity.face_half_width * 1.02, 0.5 * (model.chin_y - identity.crown_height), identity.head_depth])
    quadric = rotation @ np.diag(1.0 / semi**2) @ rotation.T
    centre = project(np.array([[0.0, centre_y, 0.0]]), rotation)[0]
    # Pixel centres of the grid, in head units relative to the ellipsoid centre.
    step = size / grid
    coords = (np.arange(grid) + 0.5) * step - 0.5
    x = ((coords - frame.shift[0]) / frame.scale - centre[0])[None, :]
    y = ((coords - frame.shift[1]) / frame.scale - centre[1])[:, None]
    qa = quadric[2, 2]
    qb = 2.0 * (quadric[0, 2] * x + quadric[1, 2] * y)
    qc = quadric[0, 0] * x * x + 2.0 * quadric[0, 1] * x * y + quadric[1, 1] * y * y - 1.0
    discriminant = qb * qb - 4.0 * qa * qc
    inside = discriminant > 0.0
    z = (-qb + np.sqrt(np.maximum(discriminant, 0.0))) / (2.0 * qa)
    normal_x = quadric[0, 0] * x + quadric[0, 1] * y + quadric[0, 2] * z
    normal_y = quadric[1, 0] * x + quadric[1, 1] * y + quadric[1, 2] * z
    normal_z = quadric[2, 0] * x + quadric[2, 1] * y + quadric[2, 2] * z
    norm = np.sqrt(normal_x**2 + normal_y**2 + normal_z**2) + 1e-12
    light = np.asarray(app.light_direction)
    lambert = np.maximum((normal_x * light[0] + normal_y * light[1] + normal_z * light[2]) / norm, 0.0)
    outside_level = app.ambient + 0.45 * app.diffuse * max(light[2], 0.2)
    shade = np.where(inside, app.ambient + app.diffuse * lambert, outside_level)
    levels = np.clip(np.round(shade[:, :, None] * app.gain * np.asarray(app.tint) * 128.0), 0, 255).astype(np.uint8)
    field_ = cv2.resize(levels, (size, size), interpolation=cv2.INTER_LINEAR)
    # a * b / 128 with a, b <= 255 is exact in floating point, so OpenCV's rounding is too.
    cv2.multiply(canvas, field_, dst=canvas, scale=1.0 / 128.0)


def _apply_blur(canvas: np.ndarray, app: Appearance, size: int) -> np.ndarray:
    """Defocus (Gaussian) or motion blur (mean of shifted copies along a direction, integer
    arithmetic); every image gets a slight softening standing in for anti-aliasing."""
    factor = size / 256
    if app.blur_kind == "defocus":
        return cv2.GaussianBlur(canvas, (0, 0), app.blur_amount * factor)
    canvas = cv2.GaussianBlur(canvas, (0, 0), 0.6 * factor)
    if app.blur_kind == "motion":
        length = max(2, int(round(app.blur_amount * factor)))
        dx, dy = math.cos(app.blur_angle), math.sin(app.blur_angle)
        pad = length
        padded = cv2.copyMakeBorder(canvas, pad, pad, pad, pad, cv2.BORDER_REFLECT)
        total = np.zeros(canvas.shape, np.uint16)
        for step in range(length):
            t = step - (length - 1) / 2
            ox, oy = int(round(t * dx)), int(round(t * dy))
            total += padded[pad + oy : pad + oy + size, pad + ox : pad + ox + size]
        return ((total + length // 2) // length).astype(np.uint8)
    return canvas


def _apply_noise(canvas: np.ndarray, app: Appearance, rng: np.random.Generator, size: int) -> np.ndarray:
    bank = _noise_bank(size)
    ox, oy = (int(v) for v in rng.integers(0, 64, 2))
    level = int(round(app.noise * 16))  # bank holds N(0,1) * 16
    noise = (bank[oy : oy + size, ox : ox + size] * level) >> 8
    return cv2.add(canvas, noise, dtype=cv2.CV_8U)
