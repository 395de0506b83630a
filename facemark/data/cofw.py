"""COFW (29 points) and COFW68 (68 points) read exactly as released.

Release layout under ``root`` (one folder)::

    COFW_train_color.mat            MATLAB v7.3 (HDF5): IsTr, phisTr, bboxesTr   (1,345 faces)
    COFW_test_color.mat             MATLAB v7.3 (HDF5): IsT, phisT, bboxesT      (507 faces)
    cofw68_test_bboxes.mat          COFW68: bboxes (507, 4) x y w h
    cofw68_test_annotations/<i>_points.mat   COFW68: Points (68, 2), Occ (68 flags), i = 1..507

MATLAB v7.3 files are HDF5 files; h5py sees every array transposed (MATLAB is column-major):
``phis`` is (87, n) with rows 0..28 the x, 29..57 the y (**1-based**) and 58..86 the occlusion
flags (1 = occluded); ``bboxes`` is (4, n) with x, y, w, h (1-based); the images form a cell
array of HDF5 object references, each ``np.array(file[ref]).T`` an (H, W, 3) RGB or (H, W)
grayscale uint8 image. The COFW68 files may be MATLAB v5 (scipy.io) or v7.3 (h5py); both are read.

Conventions (the same for every facemark dataset):
* landmarks are 0-based: 1 is subtracted from COFW's and COFW68's MATLAB 1-based coordinates
  (for COFW68 we treat ``Points`` as MATLAB 1-based like the COFW release it re-annotates);
  values are never clipped, so the release's slightly negative coordinates stay negative;
* boxes are ``(x_min, y_min, x_max, y_max)`` 0-based: from a 1-based ``x y w h`` box,
  ``x_min = x - 1``, ``y_min = y - 1``, ``x_max = x_min + w``, ``y_max = y_min + h``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from facemark.data.records import FaceRecord, LandmarkDataset
from facemark.layouts import get_layout

__all__ = [
    "COFW_SPLITS",
    "COFW68_SPLITS",
    "COFW_KEYS",
    "cofw_mat_path",
    "cofw68_points_path",
    "cofw68_bboxes_path",
    "xywh_1based_to_xyxy",
    "read_mat",
    "load_cofw",
    "load_cofw68",
]

NUM_POINTS = 29
NUM_POINTS_68 = 68
COFW_SPLITS = ("train", "test")
COFW68_SPLITS = ("test",)
# split -> (images key, landmarks key, boxes key) of the release's .mat file.
COFW_KEYS = {"train": ("IsTr", "phisTr", "bboxesTr"), "test": ("IsT", "phisT", "bboxesT")}


def cofw_mat_path(root: str | Path, split: str) -> Path:
    """The released COFW file of ``split`` ("train" or "test") under ``root``."""
    if split not in COFW_KEYS:
        raise ValueError(f"unknown COFW split {split!r}; expected one of {list(COFW_SPLITS)}")
    return Path(root) / f"COFW_{split}_color.mat"


def cofw68_points_path(root: str | Path, index: int) -> Path:
    """The COFW68 annotation file of test face ``index`` (1-based, as in the release)."""
    return Path(root) / "cofw68_test_annotations" / f"{index}_points.mat"


def cofw68_bboxes_path(root: str | Path) -> Path:
    return Path(root) / "cofw68_test_bboxes.mat"


def xywh_1based_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """MATLAB ``x y w h`` (1-based) boxes ``(n, 4)`` -> facemark's 0-based ``x_min y_min x_max y_max``."""
    boxes = np.asarray(boxes, dtype=np.float64)
    x_min = boxes[:, 0] - 1.0
    y_min = boxes[:, 1] - 1.0
    return np.stack([x_min, y_min, x_min + boxes[:, 2], y_min + boxes[:, 3]], axis=1)


# --- MATLAB files ------------------------------------------------------------------------------
def read_mat(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Read numeric arrays ``keys`` from a MATLAB v5 or v7.3 .mat file, in MATLAB's orientation.

    v7.3 files are HDF5 (h5py sees arrays transposed, so they are transposed back); older
    versions go through scipy.io. A missing key raises an error naming it and the keys present.
    """
    import h5py

    if not path.is_file():
        raise FileNotFoundError(f"MATLAB file {path} does not exist")
    if h5py.is_hdf5(str(path)):
        with h5py.File(path, "r") as mat:
            _require_keys(path, mat.keys(), keys)
            arrays = {}
            for key in keys:
                if not isinstance(mat[key], h5py.Dataset) or mat[key].dtype.kind not in "biuf":
                    raise ValueError(f"{path}: key {key!r} is not a numeric array; expected one")
                arrays[key] = np.asarray(mat[key][()], dtype=np.float64).T
            return arrays
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as error:  # scipy raises several types for corrupt files
        raise ValueError(f"{path}: not a readable MATLAB .mat file (v5 or v7.3): {error}") from None
    _require_keys(path, [k for k in mat if not k.startswith("__")], keys)
    arrays = {}
    for key in keys:
        value = mat[key]
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
            raise ValueError(f"{path}: key {key!r} is not a numeric array; expected one")
        arrays[key] = value.astype(np.float64)
    return arrays


def _require_keys(path: Path, present, keys: tuple[str, ...]) -> None:
    present = sorted(present)
    for key in keys:
        if key not in present:
            raise KeyError(f"{path}: missing key {key!r}; keys present: {present}")


class MatImageLoader:
    """Reads image ``index`` of the cell array ``key`` of a MATLAB v7.3 file, lazily.

    A small class rather than a closure so that records stay picklable (DataLoader workers).
    Opens the file on every call; returns (H, W, 3) uint8 RGB (grayscale replicated).
    """

    def __init__(self, path: Path, key: str, index: int):
        self.path, self.key, self.index = Path(path), key, index

    def __call__(self) -> np.ndarray:
        import h5py

        with h5py.File(self.path, "r") as mat:
            image = np.asarray(mat[_image_references(self.path, mat, self.key)[self.index]][()]).T
        where = f"{self.path}: image {self.index + 1} of {self.key!r}"
        if image.dtype != np.uint8:
            raise ValueError(f"{where} has dtype {image.dtype}; expected uint8")
        if image.ndim == 2:
            return np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim == 3 and image.shape[2] == 3:
            return np.ascontiguousarray(image)
        raise ValueError(f"{where} has shape {image.shape} after transposing; expected (H, W, 3) or (H, W)")

    def __repr__(self) -> str:
        return f"MatImageLoader({str(self.path)!r}, {self.key!r}, {self.index})"


def _image_references(path: Path, mat, key: str) -> np.ndarray:
    """The object references of a MATLAB cell array of images, flattened to (n,)."""
    import h5py

    dataset = mat[key]
    if not isinstance(dataset, h5py.Dataset) or dataset.dtype != h5py.ref_dtype:
        raise ValueError(f"{path}: key {key!r} is not a cell array of images (HDF5 object references)")
    references = dataset[()]
    if references.ndim != 2 or 1 not in references.shape:
        raise ValueError(f"{path}: key {key!r} has shape {references.shape}; expected a (1, n) cell array")
    return references.reshape(-1)


def _read_cofw_file(path: Path, keys: tuple[str, str, str], check_images: bool):
    """``(number of images, phis, bboxes)`` of a COFW v7.3 file, arrays as h5py sees them."""
    import h5py

    if not path.is_file():
        raise FileNotFoundError(f"COFW file {path} does not exist")
    if not h5py.is_hdf5(str(path)):
        raise ValueError(f"{path}: not a MATLAB v7.3 (HDF5) file; expected the COFW release")
    images_key, phis_key, boxes_key = keys
    with h5py.File(path, "r") as mat:
        _require_keys(path, mat.keys(), keys)
        references = _image_references(path, mat, images_key)
        if check_images:  # metadata only: every reference resolves to a 2-D or 3-channel array
            for index, reference in enumerate(references):
                try:
                    shape = mat[reference].shape
                except Exception as error:
                    raise ValueError(f"{path}: image {index + 1} of {images_key!r} cannot be read ({error})") from None
                if not (len(shape) == 2 or (len(shape) == 3 and shape[0] == 3)):
                    raise ValueError(
                        f"{path}: image {index + 1} of {images_key!r} has stored shape {shape}; "
                        f"expected (3, W, H) or (W, H)"
                    )
        phis = np.asarray(mat[phis_key][()], dtype=np.float64)
        boxes = np.asarray(mat[boxes_key][()], dtype=np.float64)
    return len(references), phis, boxes


def load_cofw(root: str | Path, split: str, check_images: bool = True) -> LandmarkDataset:
    """Read COFW ``split`` ("train" or "test") from ``COFW_<split>_color.mat`` under ``root``.

    Records: ``landmarks`` (29, 2) 0-based (1 subtracted, never clipped), ``occluded`` (29,)
    bool, ``box`` 0-based ``(x_min, y_min, x_max, y_max)`` from the 1-based ``x y w h``
    (``x_min = x - 1``, ``x_max = x_min + w``), ``attributes`` {}, identifier
    ``"COFW_<split>_color.mat#<i>"`` (i 1-based) and an ``image_loader`` reading the image from
    the .mat file lazily.
    """
    if split not in COFW_SPLITS:
        raise ValueError(f"unknown COFW split {split!r}; expected one of {list(COFW_SPLITS)}")
    root = Path(root)
    path = cofw_mat_path(root, split)
    images_key, phis_key, boxes_key = COFW_KEYS[split]
    count, phis, boxes = _read_cofw_file(path, COFW_KEYS[split], check_images)
    if phis.shape != (3 * NUM_POINTS, count):
        raise ValueError(
            f"{path}: key {phis_key!r} has shape {phis.shape}; expected ({3 * NUM_POINTS}, {count}) "
            f"(x, y and occlusion rows for the {count} images of {images_key!r})"
        )
    if boxes.shape != (4, count):
        raise ValueError(f"{path}: key {boxes_key!r} has shape {boxes.shape}; expected (4, {count})")
    phis = phis.T  # (n, 87)
    landmarks = np.stack([phis[:, :NUM_POINTS], phis[:, NUM_POINTS : 2 * NUM_POINTS]], axis=2) - 1.0
    flags = phis[:, 2 * NUM_POINTS :]
    _check_finite_and_flags(path, f"key {phis_key!r}", landmarks, flags)
    boxes_xyxy = xywh_1based_to_xyxy(boxes.T)
    if not np.isfinite(boxes_xyxy).all():
        raise ValueError(f"{path}: key {boxes_key!r} holds non-finite values")

    layout = get_layout("cofw29")
    records = [
        FaceRecord(
            identifier=f"{path.name}#{i + 1}",
            landmarks=landmarks[i],
            layout=layout,
            box=tuple(boxes_xyxy[i].tolist()),
            attributes={},
            occluded=flags[i] == 1,
            image_loader=MatImageLoader(path, images_key, i),
        )
        for i in range(count)
    ]
    return LandmarkDataset("cofw", split, root, layout, records)


def _check_finite_and_flags(path: Path, what: str, landmarks: np.ndarray, flags: np.ndarray) -> None:
    if not np.isfinite(landmarks).all():
        face = int(np.argwhere(~np.isfinite(landmarks))[0][0]) + 1
        raise ValueError(f"{path}: {what}: face {face} has non-finite coordinates")
    bad = (flags != 0) & (flags != 1)
    if bad.any():
        face, point = np.argwhere(bad)[0]
        raise ValueError(
            f"{path}: {what}: occlusion flag of face {face + 1}, point {point + 1} is {flags[face, point]:g}; expected 0 or 1"
        )


def load_cofw68(root: str | Path, split: str = "test", check_images: bool = True) -> LandmarkDataset:
    """Read COFW68 (split "test"): the COFW test images with the 68-point re-annotation.

    Images come from ``COFW_test_color.mat`` (lazily); landmarks from
    ``cofw68_test_annotations/<i>_points.mat`` (key ``Points`` (68, 2), treated as MATLAB
    1-based: 1 is subtracted; key ``Occ`` -> ``occluded`` (68,) bool); boxes from
    ``cofw68_test_bboxes.mat`` (key ``bboxes`` (n, 4) 1-based ``x y w h`` -> 0-based
    ``(x_min, y_min, x_max, y_max)``). Identifier ``"cofw68_test_annotations/<i>_points.mat"``.
    """
    if split not in COFW68_SPLITS:
        raise ValueError(f"unknown COFW68 split {split!r}; expected one of {list(COFW68_SPLITS)}")
    root = Path(root)
    images_path = cofw_mat_path(root, "test")
    images_key = COFW_KEYS["test"][0]
    count, _, _ = _read_cofw_file(images_path, COFW_KEYS["test"], check_images)

    boxes_path = cofw68_bboxes_path(root)
    boxes = read_mat(boxes_path, ("bboxes",))["bboxes"]
    if boxes.shape != (count, 4):
        raise ValueError(
            f"{boxes_path}: key 'bboxes' has shape {boxes.shape}; expected ({count}, 4) "
            f"(x y w h for the {count} test images of {images_path.name})"
        )
    boxes_xyxy = xywh_1based_to_xyxy(boxes)
    if not np.isfinite(boxes_xyxy).all():
        raise ValueError(f"{boxes_path}: key 'bboxes' holds non-finite values")

    annotations_folder = root / "cofw68_test_annotations"
    if not annotations_folder.is_dir():
        raise FileNotFoundError(f"COFW68 annotation folder {annotations_folder} does not exist")
    layout = get_layout("300w68")
    records = []
    for i in range(count):
        points_path = cofw68_points_path(root, i + 1)
        arrays = read_mat(points_path, ("Points", "Occ"))
        points, occlusion = arrays["Points"], arrays["Occ"]
        if points.shape != (NUM_POINTS_68, 2):
            raise ValueError(f"{points_path}: key 'Points' has shape {points.shape}; expected ({NUM_POINTS_68}, 2)")
        if occlusion.size != NUM_POINTS_68:
            raise ValueError(f"{points_path}: key 'Occ' has {occlusion.size} values; expected {NUM_POINTS_68}")
        landmarks = points - 1.0  # MATLAB 1-based -> 0-based
        flags = occlusion.reshape(1, NUM_POINTS_68)
        _check_finite_and_flags(points_path, "keys 'Points'/'Occ'", landmarks[None], flags)
        records.append(
            FaceRecord(
                identifier=f"cofw68_test_annotations/{points_path.name}",
                landmarks=landmarks,
                layout=layout,
                box=tuple(boxes_xyxy[i].tolist()),
                attributes={},
                occluded=flags[0] == 1,
                image_loader=MatImageLoader(images_path, images_key, i),
            )
        )
    return LandmarkDataset("cofw68", split, root, layout, records)
