"""Face crop, its exact inverse, and the training augmentations of SLPT and SDFL.

Everything a model sees goes through one affine warp: original image -> square ``S x S`` crop
(``S = 256`` by default). The crop is defined by a square :class:`CropBox` (centre and side in
original pixels) taken from one of three *box sources* (:class:`CropConvention`):

* ``"landmarks"``: the tight box of the ground-truth landmarks. The official SLPT code (train and
  test) and the SDFL release crop a square of side ``1.2 x max(w, h)`` around its centre.
* ``"dataset"``: the face rectangle shipped with the dataset (WFLW has one, 300W has none).
* ``"detector"``: a face detector's box (inference; SLPT's webcam demo enlarges it by 1.15).

The crop changes NME (a tighter crop means more pixels per face), so results must record the
convention (``CropConvention.to_dict()``), see ``docs/transforms.md``.

Coordinates follow ``facemark.layouts``: 0-based pixels whose integer values are pixel centres.
The crop maps the box centre to ``(S/2, S/2)``, as the SLPT/HRNet code does::

    x_crop = (x - centre_x) * S / side + S / 2          (no rotation, no mirror)

Rotation turns about the box centre and the horizontal mirror ``x' = S - 1 - x`` is applied after
the warp (as SLPT does), both composed into the same 2x3 matrix, so there is ONE interpolation.
:func:`crop_to_image` maps predictions in crop pixels back to the original image through the
exact inverse; evaluation and inference use it.

Training augmentation (:class:`AugmentationConfig`, presets :func:`slpt_augmentation`,
:func:`sdfl_augmentation` and :func:`hrnet_augmentation`) is drawn from a ``numpy.random.Generator`` that the caller passes in,
never from a global RNG, so a sample is reproducible from its seed.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping, Sequence, Union

import cv2
import numpy as np
import torch

from facemark.layouts import Layout

if TYPE_CHECKING:
    from facemark.data.records import FaceRecord

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INPUT_NORMALISATIONS",
    "BOX_SOURCES",
    "CropConvention",
    "slpt_crop_convention",
    "hrnet_crop_convention",
    "CropBox",
    "landmark_box",
    "square_box",
    "face_box",
    "record_face_box",
    "crop_matrix",
    "invert_affine",
    "transform_points",
    "crop_to_image",
    "warp_image",
    "normalise_landmarks",
    "denormalise_landmarks",
    "image_to_tensor",
    "crop_to_tensor",
    "normalise_crops",
    "ClippedNormal",
    "Uniform",
    "AugmentationConfig",
    "slpt_augmentation",
    "sdfl_augmentation",
    "hrnet_augmentation",
    "AUGMENTATION_PRESETS",
    "AugmentationParams",
    "sample_augmentation",
    "CropSample",
    "apply_augmentation",
    "prepare_sample",
]

# ImageNet statistics of RGB images in [0, 1]: the default input normalisation ("imagenet_rgb").
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# How a crop's pixels become the model's input (:func:`image_to_tensor`):
# "imagenet_rgb": RGB, (pixel / 255 - IMAGENET_MEAN) / IMAGENET_STD (SLPT, facemark's default);
# "per_image_zscore_bgr": BGR, each channel standardised over the crop itself (the SDFL release).
INPUT_NORMALISATIONS = ("imagenet_rgb", "per_image_zscore_bgr")

BOX_SOURCES = ("landmarks", "dataset", "detector")


# ------------------------------------------------------------------------------------------------
# Crop conventions and boxes
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CropConvention:
    """How the square face crop is made; stored with checkpoints and results.

    Attributes:
        box_source: ``"landmarks"`` (tight box of the ground-truth landmarks), ``"dataset"`` (the
            dataset's face rectangle) or ``"detector"`` (a face detector's box).
        enlarge: the square's side is ``enlarge x max(w, h)`` of the source box, centred on it.
        size: S, the side of the crop in pixels (the model's input size).
        normalisation: how the crop's pixels become the model's input, one of
            :data:`INPUT_NORMALISATIONS` (see :func:`image_to_tensor`). It travels with the crop
            so that training, evaluation, prediction and exported files all apply the same one.
    """

    box_source: str = "landmarks"
    enlarge: float = 1.2
    size: int = 256
    normalisation: str = "imagenet_rgb"

    def __post_init__(self) -> None:
        if self.box_source not in BOX_SOURCES:
            raise ValueError(f"CropConvention: box_source must be one of {BOX_SOURCES}, got {self.box_source!r}")
        if not (isinstance(self.enlarge, (int, float)) and math.isfinite(self.enlarge) and self.enlarge > 0):
            raise ValueError(f"CropConvention: enlarge must be a positive number, got {self.enlarge!r}")
        if not (isinstance(self.size, int) and not isinstance(self.size, bool) and self.size >= 2):
            raise ValueError(f"CropConvention: size must be an integer >= 2, got {self.size!r}")
        if self.normalisation not in INPUT_NORMALISATIONS:
            raise ValueError(f"CropConvention: normalisation must be one of {INPUT_NORMALISATIONS}, "
                             f"got {self.normalisation!r}")

    def to_dict(self) -> dict:
        return {"box_source": self.box_source, "enlarge": float(self.enlarge), "size": int(self.size),
                "normalisation": self.normalisation}

    @classmethod
    def from_dict(cls, spec: Mapping, source: str = "crop convention") -> "CropConvention":
        # "normalisation" is optional: files written before it existed used ImageNet RGB.
        _check_keys(spec, required=("box_source", "enlarge", "size"), optional=("normalisation",), source=source)
        try:
            return cls(box_source=spec["box_source"], enlarge=spec["enlarge"], size=spec["size"],
                       normalisation=spec.get("normalisation", "imagenet_rgb"))
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None


def slpt_crop_convention(size: int = 256) -> CropConvention:
    """The official SLPT crop (train and test): tight GT-landmark box, square side 1.2 x max(w, h)."""
    return CropConvention(box_source="landmarks", enlarge=1.2, size=size)


def hrnet_crop_convention(box_source: str = "dataset", size: int = 256) -> CropConvention:
    """HRNet / mmpose style: box centre, side ``max(w, h) x 1.25`` (their ``scale = max(w,h)/200 x 1.25``)."""
    return CropConvention(box_source=box_source, enlarge=1.25, size=size)


@dataclass(frozen=True)
class CropBox:
    """A square region of the original image, in original pixels."""

    centre_x: float
    centre_y: float
    side: float

    def __post_init__(self) -> None:
        values = (self.centre_x, self.centre_y, self.side)
        if not all(math.isfinite(float(v)) for v in values) or not self.side > 0:
            raise ValueError(f"CropBox: centre must be finite and side positive, got {values}")

    def corners(self) -> tuple[float, float, float, float]:
        """``(x_min, y_min, x_max, y_max)`` of the square (for drawing)."""
        half = self.side / 2
        return (self.centre_x - half, self.centre_y - half, self.centre_x + half, self.centre_y + half)


def _as_landmarks(landmarks, where: str) -> np.ndarray:
    points = np.asarray(landmarks, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or points.shape[0] == 0:
        raise ValueError(f"{where}: landmarks must have shape (K, 2), got {points.shape}")
    if not np.isfinite(points).all():
        bad = sorted(set(np.nonzero(~np.isfinite(points))[0].tolist()))
        raise ValueError(f"{where}: landmarks {bad} are NaN or infinite; every point must be finite")
    return points


def landmark_box(landmarks: np.ndarray) -> tuple[float, float, float, float]:
    """The tight box ``(x_min, y_min, x_max, y_max)`` of ``(K, 2)`` landmarks."""
    points = _as_landmarks(landmarks, "landmark_box")
    x_min, y_min = points.min(axis=0)
    x_max, y_max = points.max(axis=0)
    return float(x_min), float(y_min), float(x_max), float(y_max)


def square_box(box: Sequence[float], enlarge: float, where: str = "square_box") -> CropBox:
    """The square of side ``enlarge x max(w, h)`` centred on ``box = (x_min, y_min, x_max, y_max)``."""
    values = np.asarray(box, dtype=np.float64)
    if values.shape != (4,) or not np.isfinite(values).all():
        raise ValueError(f"{where}: box must be four finite numbers (x_min, y_min, x_max, y_max), got {box!r}")
    x_min, y_min, x_max, y_max = values
    width, height = x_max - x_min, y_max - y_min
    if width < 0 or height < 0 or max(width, height) <= 0:
        raise ValueError(f"{where}: box {tuple(values.tolist())} is empty or inverted (need x_max >= x_min, y_max >= y_min, not both equal)")
    return CropBox(float((x_min + x_max) / 2), float((y_min + y_max) / 2), float(enlarge * max(width, height)))


def face_box(
    convention: CropConvention,
    *,
    landmarks: np.ndarray | None = None,
    dataset_box: Sequence[float] | None = None,
    detector_box: Sequence[float] | None = None,
    where: str = "face",
) -> CropBox:
    """The square crop box of one face, from the source ``convention.box_source`` names.

    Only the named source is used; it must be given (``where`` names the face in the error).
    Boxes are ``(x_min, y_min, x_max, y_max)`` in original pixels.
    """
    source = convention.box_source
    if source == "landmarks":
        if landmarks is None:
            raise ValueError(f"{where}: crop convention box_source='landmarks' needs the ground-truth landmarks")
        box = landmark_box(_as_landmarks(landmarks, where))
    elif source == "dataset":
        if dataset_box is None:
            raise ValueError(
                f"{where}: crop convention box_source='dataset' needs the dataset's face rectangle, but it has "
                "none (300W and COFW ship no rectangle); use box_source='landmarks' or 'detector'"
            )
        box = dataset_box
    else:
        if detector_box is None:
            raise ValueError(f"{where}: crop convention box_source='detector' needs a detector box")
        box = detector_box
    return square_box(box, convention.enlarge, where=f"{where} ({source} box)")


def record_face_box(record: "FaceRecord", convention: CropConvention, detector_box: Sequence[float] | None = None) -> CropBox:
    """:func:`face_box` of a :class:`~facemark.data.records.FaceRecord` (its landmarks and box)."""
    return face_box(
        convention,
        landmarks=record.landmarks,
        dataset_box=record.box,
        detector_box=detector_box,
        where=f"record {record.identifier}",
    )


# ------------------------------------------------------------------------------------------------
# The affine and its inverse
# ------------------------------------------------------------------------------------------------
def crop_matrix(box: CropBox, size: int, rotation: float = 0.0, mirror: bool = False) -> np.ndarray:
    """The 2x3 affine mapping original pixels to crop pixels.

    ``x_crop = R(rotation) (x - centre) * size / side + size / 2``, then, with ``mirror``,
    ``x_crop -> size - 1 - x_crop``. ``rotation`` is in degrees; positive turns the image content
    counter-clockwise as displayed (OpenCV's ``getRotationMatrix2D`` and SLPT's convention).
    """
    zoom = size / box.side
    angle = math.radians(rotation)
    cos, sin = math.cos(angle) * zoom, math.sin(angle) * zoom
    # With y pointing down, [[cos, sin], [-sin, cos]] turns content counter-clockwise on screen.
    linear = np.array([[cos, sin], [-sin, cos]])
    centre = np.array([box.centre_x, box.centre_y])
    matrix = np.empty((2, 3))
    matrix[:, :2] = linear
    matrix[:, 2] = size / 2 - linear @ centre
    if mirror:
        matrix[0] = -matrix[0]
        matrix[0, 2] += size - 1
    return matrix


def _as_matrix(matrix) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape[-2:] != (2, 3):
        raise ValueError(f"an affine matrix must have shape (..., 2, 3), got {matrix.shape}")
    return matrix


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """The exact inverse of a 2x3 affine (or a stack ``(..., 2, 3)``)."""
    matrix = _as_matrix(matrix)
    linear_inverse = np.linalg.inv(matrix[..., :2])
    inverse = np.empty_like(matrix)
    inverse[..., :2] = linear_inverse
    inverse[..., 2] = -np.einsum("...ij,...j->...i", linear_inverse, matrix[..., 2])
    return inverse


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine to ``(..., K, 2)`` points; a stack of matrices ``(..., 2, 3)`` broadcasts."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim < 2 or points.shape[-1] != 2:
        raise ValueError(f"points must have shape (..., K, 2), got {points.shape}")
    matrix = _as_matrix(matrix)
    return np.einsum("...ij,...kj->...ki", matrix[..., :2], points) + matrix[..., None, :, 2]


def crop_to_image(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Map points in crop pixels back to the original image.

    ``matrix`` is the original -> crop affine the crop was made with (``(2, 3)``, or ``(B, 2, 3)``
    with points ``(B, K, 2)``). Positions only: for a mirrored crop use :meth:`CropSample.to_image`,
    which also undoes the flip permutation.
    """
    return transform_points(points, invert_affine(matrix))


def warp_image(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """Warp an ``(H, W, 3)`` uint8 image with a 2x3 affine to ``(size, size, 3)``.

    Bilinear interpolation, black outside the image. OpenCV samples at pixel centres, so a point
    ``p`` of the input lands exactly at ``matrix @ [p, 1]`` of the output.
    """
    _check_image(image, "warp_image")
    matrix = _as_matrix(matrix)
    if matrix.shape != (2, 3):
        raise ValueError(f"warp_image: matrix must have shape (2, 3), got {matrix.shape}")
    return cv2.warpAffine(
        np.ascontiguousarray(image), matrix, (int(size), int(size)),
        flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0),
    )


def _check_image(image, where: str) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        description = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"{where}: image must be an (H, W, 3) uint8 RGB array, got {description}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{where}: image is empty (shape {image.shape})")


# ------------------------------------------------------------------------------------------------
# Model input and target units
# ------------------------------------------------------------------------------------------------
def normalise_landmarks(points: np.ndarray, size: int) -> np.ndarray:
    """Crop pixels -> normalised crop coordinates (``x / S``, ``y / S``), the models' units."""
    return np.asarray(points, dtype=np.float64) / size


def denormalise_landmarks(points: np.ndarray, size: int) -> np.ndarray:
    """Normalised crop coordinates -> crop pixels (inverse of :func:`normalise_landmarks`)."""
    return np.asarray(points, dtype=np.float64) * size


def crop_to_tensor(image: np.ndarray) -> torch.Tensor:
    """``(S, S, 3)`` uint8 RGB crop -> ``(3, S, S)`` uint8 tensor, channels R, G, B.

    What data loaders hand over: a quarter of the bytes of the float32 input, normalised where the
    model runs (:func:`normalise_crops`, on the model's device)."""
    _check_image(image, "crop_to_tensor")
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def normalise_crops(crops: torch.Tensor, normalisation: str = "imagenet_rgb") -> torch.Tensor:
    """``(B, 3, S, S)`` uint8 RGB crops -> ``(B, 3, S, S)`` float32 model input, computed on the
    crops' device and in their memory format (channels-last stays channels-last).

    ``normalisation`` (:data:`INPUT_NORMALISATIONS`):

    - ``"imagenet_rgb"``: channels R, G, B, ``(pixel / 255 - IMAGENET_MEAN) / IMAGENET_STD`` in
      float32, in that order of operations;
    - ``"per_image_zscore_bgr"``: channels B, G, R (the order OpenCV reads images in), each
      standardised with the mean and standard deviation (population, over the S x S pixels) of
      that channel of this crop; a channel whose deviation is below 1e-6 (in 0..255 pixel units)
      is divided by 1 instead. This is the SDFL release's input (``datasets/align_transforms.py``
      ``Normalize``, applied after augmentation, so an occluding rectangle counts in the statistics).
      The statistics are exact: sums of integer pixels are exact in float64 and the variance is
      ``(n * sum(x^2) - sum(x)^2) / n^2`` with an int64 numerator, so they do not depend on the
      order in which a device sums (the same on CPU and GPU), then ``(x - mean) / std`` in float64.
    """
    if not isinstance(crops, torch.Tensor) or crops.dtype != torch.uint8 or crops.ndim != 4 or crops.shape[1] != 3:
        description = f"{crops.dtype} tensor of shape {tuple(crops.shape)}" if isinstance(crops, torch.Tensor) else type(crops).__name__
        raise ValueError(f"normalise_crops: crops must be a (B, 3, S, S) uint8 RGB tensor, got {description}")
    device = crops.device
    if normalisation == "imagenet_rgb":
        # Tensors, not Python numbers: CUDA turns a division by a Python scalar into a
        # multiplication by its reciprocal, which rounds differently from the CPU's division.
        scale = torch.full((1, 1, 1, 1), 255.0, dtype=torch.float32, device=device)
        mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        return (crops.float() / scale - mean) / std
    if normalisation == "per_image_zscore_bgr":
        pixels = crops.flip(1).double()
        count = crops.shape[2] * crops.shape[3]
        # Exact while count * 255^2 < 2^53 and count^2 * 255^2 < 2^63 (crops up to ~3,400 px a side).
        total = pixels.sum(dim=(2, 3), keepdim=True)
        squares = pixels.square().sum(dim=(2, 3), keepdim=True)
        spread = count * squares.long() - total.long().square()
        mean = total / count
        std = (spread.double() / (count * count)).sqrt()
        std = torch.where(std < 1e-6, torch.ones_like(std), std)
        return ((pixels - mean) / std).float()
    raise ValueError(f"normalise_crops: normalisation must be one of {INPUT_NORMALISATIONS}, got {normalisation!r}")


def image_to_tensor(image: np.ndarray, normalisation: str = "imagenet_rgb") -> torch.Tensor:
    """``(S, S, 3)`` uint8 RGB crop -> ``(3, S, S)`` float32 model input, normalised as
    :func:`normalise_crops` says (one crop, on the CPU)."""
    if normalisation not in INPUT_NORMALISATIONS:
        raise ValueError(f"image_to_tensor: normalisation must be one of {INPUT_NORMALISATIONS}, got {normalisation!r}")
    _check_image(image, "image_to_tensor")
    return normalise_crops(crop_to_tensor(image)[None], normalisation)[0]


# ------------------------------------------------------------------------------------------------
# Random draws
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClippedNormal:
    """``N(mean, std)`` clipped to ``[low, high]`` (values outside are set to the bound)."""

    mean: float
    std: float
    low: float
    high: float

    def __post_init__(self) -> None:
        if not (self.std >= 0 and self.low <= self.high):
            raise ValueError(f"ClippedNormal needs std >= 0 and low <= high, got {self}")

    def sample(self, rng: np.random.Generator) -> float:
        return float(np.clip(rng.normal(self.mean, self.std), self.low, self.high))

    def to_dict(self) -> dict:
        return {"distribution": "normal", "mean": self.mean, "std": self.std, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class Uniform:
    """``U(low, high)``."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not self.low <= self.high:
            raise ValueError(f"Uniform needs low <= high, got {self}")

    def sample(self, rng: np.random.Generator) -> float:
        return float(rng.uniform(self.low, self.high))

    def to_dict(self) -> dict:
        return {"distribution": "uniform", "low": self.low, "high": self.high}


Distribution = Union[ClippedNormal, Uniform]


def _distribution_from_dict(spec, source: str) -> Distribution | None:
    if spec is None:
        return None
    if not isinstance(spec, Mapping) or spec.get("distribution") not in ("normal", "uniform"):
        raise ValueError(f"{source}: expected a mapping with distribution 'normal' or 'uniform', got {spec!r}")
    kind = spec["distribution"]
    fields_ = ("mean", "std", "low", "high") if kind == "normal" else ("low", "high")
    _check_keys(spec, required=("distribution",) + fields_, optional=(), source=source)
    values = {}
    for key in fields_:
        if not isinstance(spec[key], (int, float)) or isinstance(spec[key], bool):
            raise ValueError(f"{source}: key {key!r} must be a number, got {spec[key]!r}")
        values[key] = float(spec[key])
    try:
        return ClippedNormal(**values) if kind == "normal" else Uniform(**values)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None


# ------------------------------------------------------------------------------------------------
# Augmentation configuration and the two papers' presets
# ------------------------------------------------------------------------------------------------
OCCLUSION_PLACEMENTS = ("inside", "centred")


@dataclass(frozen=True)
class AugmentationConfig:
    """Every knob of the training augmentation; the default is no augmentation at all.

    Geometry (one affine warp, in this order of meaning):
        rotation: degrees about the crop centre (positive = counter-clockwise on screen).
        rotation_probability: the share of samples that are rotated (the others get 0 degrees).
        scale: multiplier on the crop's side (> 1 zooms out: the face gets smaller).
        shift: crop-centre shift as a fraction of the (scaled) crop side, drawn separately for
            x and y in the original image's axes; ``f`` moves the content by ``f x S`` pixels.
        flip_probability: horizontal mirror ``x' = S - 1 - x`` with the layout's flip permutation.
    Appearance (on the crop, in this order):
        grayscale_probability: RGB -> gray, replicated to three channels.
        occlusion_probability: one filled rectangle of a uniformly random RGB colour. Its size is
            either ``occlusion_side`` (width and height drawn separately, as fractions of S,
            truncated to whole pixels) or ``occlusion_area`` (fraction of S^2) with width/height
            ratio ``occlusion_aspect``. ``occlusion_placement``: ``"inside"`` = uniform position
            with the rectangle inside the crop; ``"centred"`` = centre uniform over the crop,
            rectangle cut at the border.
        gaussian_blur_probability / gaussian_blur_sigma (crop pixels), and
        motion_blur_probability / motion_blur_length (odd kernel size, pixels; the direction is
            uniform in [0, 180) degrees): at most one blur per sample. Both kernels are point
            symmetric, so blur never moves a landmark.
    """

    rotation: Distribution | None = None
    rotation_probability: float = 1.0
    scale: Distribution | None = None
    shift: Distribution | None = None
    flip_probability: float = 0.0
    grayscale_probability: float = 0.0
    occlusion_probability: float = 0.0
    occlusion_side: Distribution | None = None
    occlusion_area: float | None = None
    occlusion_aspect: Distribution | None = None
    occlusion_placement: str = "inside"
    gaussian_blur_probability: float = 0.0
    gaussian_blur_sigma: Distribution | None = None
    motion_blur_probability: float = 0.0
    motion_blur_length: int = 5

    def __post_init__(self) -> None:
        where = "AugmentationConfig"
        for name in ("rotation_probability", "flip_probability", "grayscale_probability", "occlusion_probability",
                     "gaussian_blur_probability", "motion_blur_probability"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise ValueError(f"{where}: {name} must be a probability in [0, 1], got {value!r}")
        for name in ("rotation", "scale", "shift", "occlusion_side", "occlusion_aspect", "gaussian_blur_sigma"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (ClippedNormal, Uniform)):
                raise ValueError(f"{where}: {name} must be ClippedNormal, Uniform or None, got {value!r}")
        if self.scale is not None and self.scale.low <= 0:
            raise ValueError(f"{where}: scale must stay positive; its lower bound is {self.scale.low}")
        if self.occlusion_placement not in OCCLUSION_PLACEMENTS:
            raise ValueError(f"{where}: occlusion_placement must be one of {OCCLUSION_PLACEMENTS}, got {self.occlusion_placement!r}")
        by_side = self.occlusion_side is not None
        by_area = self.occlusion_area is not None
        if self.occlusion_probability > 0 and by_side == by_area:
            raise ValueError(f"{where}: with occlusion_probability > 0 set exactly one of occlusion_side or occlusion_area")
        if by_area and not (0 < self.occlusion_area <= 1):
            raise ValueError(f"{where}: occlusion_area is a fraction of S^2 in (0, 1], got {self.occlusion_area!r}")
        if self.occlusion_aspect is not None and self.occlusion_aspect.low <= 0:
            raise ValueError(f"{where}: occlusion_aspect must stay positive; its lower bound is {self.occlusion_aspect.low}")
        if self.gaussian_blur_probability > 0 and (self.gaussian_blur_sigma is None or self.gaussian_blur_sigma.low <= 0):
            raise ValueError(f"{where}: gaussian_blur_probability > 0 needs gaussian_blur_sigma with a positive lower bound")
        if self.gaussian_blur_probability + self.motion_blur_probability > 1.0:
            raise ValueError(f"{where}: gaussian_blur_probability + motion_blur_probability must be <= 1 (one blur at most)")
        length = self.motion_blur_length
        if not (isinstance(length, int) and length >= 1 and length % 2 == 1):
            raise ValueError(f"{where}: motion_blur_length must be an odd positive integer, got {length!r}")

    def to_dict(self) -> dict:
        spec = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            spec[item.name] = value.to_dict() if isinstance(value, (ClippedNormal, Uniform)) else value
        return spec

    @classmethod
    def from_dict(cls, spec: Mapping, source: str = "augmentation") -> "AugmentationConfig":
        names = [item.name for item in dataclasses.fields(cls)]
        _check_keys(spec, required=(), optional=names, source=source)
        distributions = {"rotation", "scale", "shift", "occlusion_side", "occlusion_aspect", "gaussian_blur_sigma"}
        values = {
            key: _distribution_from_dict(value, f"{source}: key {key!r}") if key in distributions else value
            for key, value in spec.items()
        }
        try:
            return cls(**values)
        except (ValueError, TypeError) as error:
            raise ValueError(f"{source}: {error}") from None


def slpt_augmentation() -> AugmentationConfig:
    """The SLPT training release (``shared/facts/slpt.md``, "Training recipe").

    Rotation N(0, 15 deg) clipped to +-30; shift N(0, 0.05) clipped to +-0.05 of the side; flip
    0.5; gray 0.2; occlusion 0.5 with width and height each ``int(S * N(0.2, 0.08))`` placed
    inside the crop, one random RGB colour. The release draws the crop enlargement around the
    tight landmark box as N(1.2, 0.05) clipped to [1.15, 1.25]; relative to the 1.2 crop of
    :func:`slpt_crop_convention` that is the multiplier below (same distribution).
    """
    base = 1.2
    return AugmentationConfig(
        rotation=ClippedNormal(mean=0.0, std=15.0, low=-30.0, high=30.0),
        scale=ClippedNormal(mean=1.2 / base, std=0.05 / base, low=1.15 / base, high=1.25 / base),
        shift=ClippedNormal(mean=0.0, std=0.05, low=-0.05, high=0.05),
        flip_probability=0.5,
        grayscale_probability=0.2,
        occlusion_probability=0.5,
        occlusion_side=ClippedNormal(mean=0.2, std=0.08, low=0.0, high=1.0),
        occlusion_placement="inside",
    )


def sdfl_augmentation() -> AugmentationConfig:
    """The SDFL release (``shared/facts/sdfl.md``): its WFLW config.

    Rotation U(+-40 deg); translation U(+-0.1 of the crop); scale U(0.9314, 1.0686); mirror 0.5;
    occlusion 0.5 of area 0.2 S^2 with width/height ratio U(0.4, 2.5), centre uniform over the
    crop, cut at the border, random colour. No grayscale, no blur (its blur is off in the config).
    The release applies the scale as a zoom of the content; we draw the crop side's multiplier
    from the same range (nearly symmetric about 1; the two differ by < 0.5 % of the side).
    """
    return AugmentationConfig(
        rotation=Uniform(-40.0, 40.0),
        scale=Uniform(0.9314, 1.0686),
        shift=Uniform(-0.1, 0.1),
        flip_probability=0.5,
        occlusion_probability=0.5,
        occlusion_area=0.2,
        occlusion_aspect=Uniform(0.4, 2.5),
        occlusion_placement="centred",
    )


def hrnet_augmentation() -> AugmentationConfig:
    """The HRNet facial-landmark release (``shared/facts/heatmap_baseline.md``; its
    ``lib/datasets/wflw.py:64-74``, the same in ``face300w.py`` and ``cofw.py``).

    Crop side x U(0.75, 1.25) (SCALE_FACTOR 0.25); rotation U(+-30 deg) (ROT_FACTOR 30) for 60 % of
    the samples, none for the rest; mirror 0.5. No shift, no appearance change. The release
    mirrors a point to ``W - x`` (``lib/utils/transforms.py:40``, one pixel off the mirrored image);
    facemark's mirror is exact.
    """
    return AugmentationConfig(
        rotation=Uniform(-30.0, 30.0),
        rotation_probability=0.6,
        scale=Uniform(0.75, 1.25),
        flip_probability=0.5,
    )


# Names accepted in configuration files; "none" is the evaluation path (crop only).
AUGMENTATION_PRESETS = {
    "none": lambda: None,
    "slpt": slpt_augmentation,
    "sdfl": sdfl_augmentation,
    "hrnet": hrnet_augmentation,
}


# ------------------------------------------------------------------------------------------------
# Sampled parameters, and applying them
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AugmentationParams:
    """One draw of :class:`AugmentationConfig` (all zeros/False = plain crop).

    ``occlusion`` is ``(x0, y0, x1, y1)`` in crop pixels, half-open (``image[y0:y1, x0:x1]``).
    ``blur`` is ``None``, ``"gaussian"`` (``blur_size`` = sigma) or ``"motion"`` (``blur_size`` =
    kernel length, ``blur_angle`` its direction in degrees).
    """

    rotation: float = 0.0
    scale: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)
    flip: bool = False
    grayscale: bool = False
    occlusion: tuple[int, int, int, int] | None = None
    occlusion_colour: tuple[int, int, int] = (0, 0, 0)
    blur: str | None = None
    blur_size: float = 0.0
    blur_angle: float = 0.0


def _draw(distribution: Distribution | None, default: float, rng: np.random.Generator) -> float:
    return default if distribution is None else distribution.sample(rng)


def _occlusion_rectangle(config: AugmentationConfig, size: int, rng: np.random.Generator):
    """The rectangle ``(x0, y0, x1, y1)`` (half-open, inside the crop) or None if it is empty."""
    if config.occlusion_side is not None:
        # As the SLPT release: int(S * N(0.2, 0.08)) for the width and, separately, the height.
        width = int(size * config.occlusion_side.sample(rng))
        height = int(size * config.occlusion_side.sample(rng))
    else:
        aspect = config.occlusion_aspect.sample(rng) if config.occlusion_aspect is not None else 1.0
        area = config.occlusion_area * size * size
        width_f = math.sqrt(area * aspect)  # width * height = area, width / height = aspect
        height_f = width_f / aspect
        width, height = width_f, height_f
    if config.occlusion_placement == "inside":
        width, height = min(int(width), size), min(int(height), size)
        if width <= 0 or height <= 0:
            return None
        x0 = int(rng.integers(0, size - width + 1))
        y0 = int(rng.integers(0, size - height + 1))
        return (x0, y0, x0 + width, y0 + height)
    centre_x, centre_y = rng.uniform(0, size), rng.uniform(0, size)
    x0, x1 = int(centre_x - width / 2), int(centre_x + width / 2)
    y0, y1 = int(centre_y - height / 2), int(centre_y + height / 2)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, size), min(y1, size)
    if x1 <= x0 or y1 <= y0:
        return None
    return (x0, y0, x1, y1)


def sample_augmentation(config: AugmentationConfig, size: int, rng: np.random.Generator) -> AugmentationParams:
    """Draw one set of parameters. The draw order is fixed, so a seed gives the same sample."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"sample_augmentation needs a numpy Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
    rotation = _draw(config.rotation, 0.0, rng)
    if config.rotation_probability < 1.0 and rng.random() >= config.rotation_probability:
        rotation = 0.0  # (no extra draw when every sample is rotated: the other presets' samples stay as they were)
    scale = _draw(config.scale, 1.0, rng)
    shift = (_draw(config.shift, 0.0, rng), _draw(config.shift, 0.0, rng))
    flip = bool(rng.random() < config.flip_probability)
    grayscale = bool(rng.random() < config.grayscale_probability)
    occlusion, colour = None, (0, 0, 0)
    if rng.random() < config.occlusion_probability:
        occlusion = _occlusion_rectangle(config, size, rng)
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
    blur, blur_size, blur_angle = None, 0.0, 0.0
    blur_draw = rng.random()
    if blur_draw < config.gaussian_blur_probability:
        blur, blur_size = "gaussian", config.gaussian_blur_sigma.sample(rng)
    elif blur_draw < config.gaussian_blur_probability + config.motion_blur_probability:
        blur, blur_size, blur_angle = "motion", float(config.motion_blur_length), float(rng.uniform(0.0, 180.0))
    return AugmentationParams(rotation, scale, shift, flip, grayscale, occlusion, colour, blur, blur_size, blur_angle)


def _motion_kernel(length: int, angle: float) -> np.ndarray:
    """A normalised line kernel through the centre of a ``length x length`` grid.

    A horizontal line rotated about the exact centre: bilinear resampling of a point-symmetric
    kernel about its centre stays point symmetric, so the blur does not shift the image.
    """
    kernel = np.zeros((length, length), np.float32)
    kernel[length // 2, :] = 1.0
    centre = (length - 1) / 2
    rotation = cv2.getRotationMatrix2D((centre, centre), angle, 1.0)
    kernel = cv2.warpAffine(kernel, rotation, (length, length), flags=cv2.INTER_LINEAR)
    return kernel / kernel.sum()


@dataclass
class CropSample:
    """A face crop ready for a model.

    Attributes:
        image: ``(S, S, 3)`` uint8 RGB.
        landmarks: ``(K, 2)`` in crop pixels (outside the crop when the face is; never clipped),
            or None when no landmarks were given.
        matrix: the 2x3 affine original -> crop (mirror included when ``flipped``).
        flipped: whether the crop is mirrored.
        point_order: crop point ``i`` is original point ``point_order[i]`` (the layout's flip
            permutation when flipped, else ``0..K-1``); None without landmarks.
        params: the augmentation drawn (None on the evaluation path).
    """

    image: np.ndarray
    landmarks: np.ndarray | None
    matrix: np.ndarray
    flipped: bool = False
    point_order: np.ndarray | None = None
    params: AugmentationParams | None = field(default=None)

    def to_image(self, crop_points: np.ndarray) -> np.ndarray:
        """Points ``(K, 2)`` in this crop's pixels, in the crop's point order, -> original image
        pixels in the original point order (undoes the flip permutation too)."""
        positions = crop_to_image(crop_points, self.matrix)
        if self.point_order is None:
            return positions
        original = np.empty_like(positions)
        original[..., self.point_order, :] = positions
        return original


def apply_augmentation(
    image: np.ndarray,
    landmarks: np.ndarray | None,
    layout: Layout | None,
    crop_box: CropBox,
    params: AugmentationParams | None,
    size: int = 256,
) -> CropSample:
    """Crop ``image`` (and ``landmarks``) with fixed augmentation ``params`` (None = plain crop)."""
    _check_image(image, "apply_augmentation")
    points = None if landmarks is None else _as_landmarks(landmarks, "apply_augmentation")
    if points is not None and layout is not None and points.shape[0] != layout.num_points:
        raise ValueError(f"apply_augmentation: layout {layout.name!r} has {layout.num_points} points, landmarks have {points.shape[0]}")
    drawn = params
    params = params or AugmentationParams()
    if params.flip and points is not None and layout is None:
        raise ValueError("apply_augmentation: a flipped sample needs the layout (its flip permutation)")
    if not params.scale > 0:
        raise ValueError(f"apply_augmentation: scale must be positive, got {params.scale}")

    # Geometry: scale the side, shift the centre by a fraction of the scaled side (in the
    # original image's axes, as SLPT does), rotate about that centre, mirror; one warp.
    side = crop_box.side * params.scale
    box = CropBox(crop_box.centre_x + params.shift[0] * side, crop_box.centre_y + params.shift[1] * side, side)
    matrix = crop_matrix(box, size, rotation=params.rotation, mirror=params.flip)
    crop = warp_image(image, matrix, size)

    crop_points, point_order = None, None
    if points is not None:
        crop_points = transform_points(points, matrix)
        point_order = np.arange(points.shape[0])
        if params.flip:
            # After the mirror, the image's left eye is the original right eye: relabel the points.
            point_order = np.asarray(layout.flip_permutation)
            crop_points = crop_points[point_order]

    if params.grayscale:
        crop = np.repeat(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)[:, :, None], 3, axis=2)
    if params.occlusion is not None:
        x0, y0, x1, y1 = params.occlusion
        crop[y0:y1, x0:x1] = np.asarray(params.occlusion_colour, dtype=np.uint8)
    if params.blur == "gaussian":
        crop = cv2.GaussianBlur(crop, (0, 0), sigmaX=params.blur_size, sigmaY=params.blur_size)
    elif params.blur == "motion":
        crop = cv2.filter2D(crop, -1, _motion_kernel(int(params.blur_size), params.blur_angle))
    elif params.blur is not None:
        raise ValueError(f"apply_augmentation: unknown blur {params.blur!r}; expected None, 'gaussian' or 'motion'")

    return CropSample(
        image=np.ascontiguousarray(crop),
        landmarks=crop_points,
        matrix=matrix,
        flipped=bool(params.flip),
        point_order=point_order,
        params=drawn,
    )


def prepare_sample(
    image: np.ndarray,
    landmarks: np.ndarray | None,
    layout: Layout | None,
    crop_box: CropBox,
    size: int = 256,
    augmentation: AugmentationConfig | None = None,
    rng: np.random.Generator | None = None,
) -> CropSample:
    """The one entry point of the training and evaluation pipelines.

    Without ``augmentation`` this only crops (evaluation). With it, one set of parameters is
    drawn from ``rng`` (required: ``np.random.default_rng(seed)``; the global RNG is never used)
    and applied. ``landmarks`` may be None (inference); ``layout`` supplies the flip permutation.
    """
    params = None
    if augmentation is not None:
        if not isinstance(augmentation, AugmentationConfig):
            raise TypeError(f"prepare_sample: augmentation must be an AugmentationConfig or None, got {type(augmentation).__name__}")
        if rng is None:
            raise ValueError("prepare_sample: augmentation needs rng=np.random.default_rng(seed); the global RNG is never used")
        params = sample_augmentation(augmentation, size, rng)
    return apply_augmentation(image, landmarks, layout, crop_box, params, size)


# ------------------------------------------------------------------------------------------------
def _check_keys(spec, required: Sequence[str], optional: Sequence[str], source: str) -> None:
    if not isinstance(spec, Mapping):
        raise ValueError(f"{source}: expected a mapping, got {type(spec).__name__}")
    missing = [key for key in required if key not in spec]
    if missing:
        raise ValueError(f"{source}: missing key(s) {missing}; required keys are {list(required)}")
    unknown = sorted(set(spec) - set(required) - set(optional))
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {unknown}; allowed keys are {sorted(set(required) | set(optional))}")
