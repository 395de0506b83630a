"""Face boxes for inference: a small detector interface, OpenCV's Haar cascade, the user's own
boxes (JSON/CSV), and the calibration that maps a detector's box to the box a model was trained on.

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
    "HaarFaceDetector",
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

# OpenCV haarcascade_frontalface_default.xml -> tight box of the 98/68 landmarks. A rough default,
# measured by hand on ONE photo (scikit-image's astronaut: Haar box side 93 px; the landmarks' extent
# is 0.90 of it and centred 0.18 sides lower; shift_x 0 by symmetry): no landmark-annotated real
# photos are available offline. docs/inference.md shows how to estimate it on a dataset with
# estimate_calibration; Predictor(passes=2) makes results nearly independent of it.
HAAR_FRONTALFACE_CALIBRATION = BoxCalibration(
    scale=0.90,
    shift_x=0.0,
    shift_y=0.18,
    source="haarcascade_frontalface_default -> tight landmark box, hand-measured on one photo; docs/inference.md",
)


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
    """

    def __init__(
        self,
        cascade: str = "haarcascade_frontalface_default.xml",
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_face_fraction: float = 0.08,
        max_side: int = 640,
        calibration: BoxCalibration = HAAR_FRONTALFACE_CALIBRATION,
    ) -> None:
        import cv2

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
        factor = min(1.0, self.max_side / max(gray.shape))
        if factor < 1.0:
            gray = cv2.resize(gray, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
        gray = cv2.equalizeHist(gray)
        min_size = max(16, int(self.min_face_fraction * min(gray.shape)))
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
        return boxes[np.argsort(-scores, kind="stable")]


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
