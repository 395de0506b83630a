"""Writers of the datasets' native release formats: the exact inverses of the readers.

Used by the tests and by the synthetic-data generator to produce files that the readers read
exactly like the real releases. Argument convention everywhere: **facemark's conventions in**
(landmarks ``(K, 2)`` 0-based pixels, boxes ``(x_min, y_min, x_max, y_max)`` 0-based),
**the format's native convention out** (WFLW: 0-based as is; 300W .pts and COFW/COFW68 .mat:
1-based, boxes ``x y w h``). Floats are written with ``repr`` precision so they round-trip
exactly.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from facemark.data.cofw import COFW_KEYS, cofw68_bboxes_path, cofw68_points_path, cofw_mat_path
from facemark.data.wflw import (
    NUM_POINTS as WFLW_NUM_POINTS,
    WFLW_ATTRIBUTES,
    wflw_annotation_path,
    wflw_subset_list_path,
)

__all__ = [
    "wflw_annotation_path",
    "wflw_subset_list_path",
    "write_wflw_annotations",
    "write_wflw_subset_lists",
    "write_pts",
    "cofw_mat_path",
    "write_cofw_mat",
    "write_cofw68_annotations",
    "xyxy_to_xywh_1based",
]

WflwRow = tuple  # (landmarks (98, 2), rect (4,), flags dict or 6-tuple, image relative path)


# --- WFLW --------------------------------------------------------------------------------------
def _flags_tuple(flags: Mapping[str, int] | Sequence[int], where: str) -> tuple[int, ...]:
    if isinstance(flags, Mapping):
        missing = [name for name in WFLW_ATTRIBUTES if name not in flags]
        if missing:
            raise ValueError(f"{where}: flags dict lacks {missing}; expected keys {list(WFLW_ATTRIBUTES)}")
        values = [flags[name] for name in WFLW_ATTRIBUTES]
    else:
        values = list(flags)
        if len(values) != len(WFLW_ATTRIBUTES):
            raise ValueError(f"{where}: {len(values)} flags; expected {len(WFLW_ATTRIBUTES)} ({', '.join(WFLW_ATTRIBUTES)})")
    if any(int(v) != v or int(v) not in (0, 1) for v in values):
        raise ValueError(f"{where}: flags {values}; expected 0 or 1 each")
    return tuple(int(v) for v in values)


def _wflw_line(row: WflwRow, where: str) -> str:
    landmarks, rect, flags, image_path = row
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.shape != (WFLW_NUM_POINTS, 2):
        raise ValueError(f"{where}: landmarks of shape {landmarks.shape}; expected ({WFLW_NUM_POINTS}, 2)")
    if not np.isfinite(landmarks).all():
        raise ValueError(f"{where}: landmarks must be finite")
    rect = np.asarray(rect)
    if rect.shape != (4,) or not np.array_equal(rect, np.round(rect)):
        raise ValueError(f"{where}: rect {rect.tolist()}; expected 4 integers x_min y_min x_max y_max")
    image_path = str(image_path)
    if not image_path or len(image_path.split()) != 1:
        raise ValueError(f"{where}: image path {image_path!r} must be non-empty and contain no whitespace")
    fields = [repr(float(v)) for v in landmarks.reshape(-1)]
    fields += [str(int(v)) for v in rect]
    fields += [str(v) for v in _flags_tuple(flags, where)]
    fields.append(image_path.replace("\\", "/"))
    return " ".join(fields)


def write_wflw_annotations(path: str | Path, rows: Iterable[WflwRow]) -> Path:
    """Write a WFLW annotation file (``list_98pt_rect_attr_*.txt`` format), one face per line.

    Each row is ``(landmarks, rect, flags, image_path)``: landmarks ``(98, 2)`` 0-based (written
    as is: WFLW is 0-based), rect 4 ints ``x_min y_min x_max y_max``, flags a dict by name or a
    6-tuple in the order pose, expression, illumination, makeup, occlusion, blur (0/1), and the
    image path relative to ``WFLW_images/``. Parent folders are created. Returns ``path``.
    """
    path = Path(path)
    lines = [_wflw_line(row, f"WFLW row {index}") for index, row in enumerate(rows)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n" if lines else "")
    return path


def write_wflw_subset_lists(root: str | Path, rows: Sequence[WflwRow]) -> dict[str, Path]:
    """Write the released per-subset test lists under ``root``: for each attribute, the rows
    whose flag is 1 go to ``WFLW_annotations/list_98pt_test/list_98pt_test_<subset>.txt``
    (``largepose`` for pose, as released). Returns subset -> path."""
    rows = list(rows)
    paths = {}
    for column, subset in enumerate(WFLW_ATTRIBUTES):
        selected = [row for index, row in enumerate(rows) if _flags_tuple(row[2], f"WFLW row {index}")[column] == 1]
        paths[subset] = write_wflw_annotations(wflw_subset_list_path(root, subset), selected)
    return paths


# --- 300W --------------------------------------------------------------------------------------
def write_pts(path: str | Path, landmarks: np.ndarray) -> Path:
    """Write a 300W ``.pts`` file from **0-based** landmarks ``(K, 2)`` (the file gets 1-based
    values: 1 is added), with the ``version: 1`` / ``n_points: K`` / ``{`` ... ``}`` frame."""
    path = Path(path)
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.ndim != 2 or landmarks.shape[1] != 2:
        raise ValueError(f"{path}: landmarks of shape {landmarks.shape}; expected (K, 2)")
    if not np.isfinite(landmarks).all():
        raise ValueError(f"{path}: landmarks must be finite")
    one_based = landmarks + 1.0
    lines = ["version: 1", f"n_points: {len(landmarks)}", "{"]
    lines += [f"{x!r} {y!r}" for x, y in one_based.tolist()]
    lines.append("}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


# --- COFW / COFW68 -----------------------------------------------------------------------------
def xyxy_to_xywh_1based(boxes: np.ndarray) -> np.ndarray:
    """facemark boxes ``(n, 4)`` 0-based ``x_min y_min x_max y_max`` -> MATLAB 1-based ``x y w h``
    (the inverse of :func:`facemark.data.cofw.xywh_1based_to_xyxy`)."""
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes of shape {boxes.shape}; expected (n, 4) x_min y_min x_max y_max")
    return np.stack([boxes[:, 0] + 1.0, boxes[:, 1] + 1.0, boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)


def _matlab_header(version_text: str) -> bytes:
    """The 128-byte MATLAB .mat header (text, subsystem offset, version 0x0200, 'IM')."""
    text = f"MATLAB {version_text} MAT-file, Platform: GLNXA64, Created on: {time.strftime('%a %b %d %H:%M:%S %Y')} HDF5 schema 1.00 ."
    return text.encode("ascii").ljust(116, b" ")[:116] + b"\x00" * 8 + b"\x00\x02" + b"IM"


def _create_v73(path: Path):
    """Open a new HDF5 file with MATLAB v7.3's 512-byte user block (header written on close)."""
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    return h5py.File(path, "w", userblock_size=512)


def _finish_v73(path: Path) -> None:
    with open(path, "r+b") as handle:
        handle.write(_matlab_header("7.3"))


def _write_matlab_array(mat, key: str, array: np.ndarray) -> None:
    """Store a MATLAB array as v7.3 does: transposed (column-major), with its MATLAB_class."""
    array = np.asarray(array)
    dataset = mat.create_dataset(key, data=array.T)
    dataset.attrs["MATLAB_class"] = np.bytes_("uint8" if array.dtype == np.uint8 else "double")


def write_cofw_mat(
    path: str | Path,
    split: str,
    images: Sequence[np.ndarray],
    landmarks: np.ndarray,
    boxes_xyxy: np.ndarray,
    occluded: np.ndarray,
) -> Path:
    """Write a COFW release file (MATLAB v7.3 / HDF5) that the COFW reader reads like the real one.

    Args:
        path: the file, normally ``cofw_mat_path(root, split)`` (``COFW_<split>_color.mat``).
        split: "train" (keys IsTr, phisTr, bboxesTr) or "test" (IsT, phisT, bboxesT).
        images: n uint8 images, (H, W, 3) RGB or (H, W) grayscale; stored as a (1, n) cell array
            of object references to ``#refs#/<i>`` datasets, each transposed like MATLAB's.
        landmarks: (n, 29, 2) **0-based**; stored 1-based in ``phis`` (87, n) as the release:
            rows 0..28 x, 29..57 y, 58..86 occlusion flags.
        boxes_xyxy: (n, 4) facemark boxes **0-based** ``x_min y_min x_max y_max``; stored as
            1-based ``x y w h`` in ``bboxes`` (4, n).
        occluded: (n, 29) bool (1 = occluded).
    """
    import h5py

    if split not in COFW_KEYS:
        raise ValueError(f"unknown COFW split {split!r}; expected one of {list(COFW_KEYS)}")
    path = Path(path)
    landmarks = np.asarray(landmarks, dtype=np.float64)
    occluded = np.asarray(occluded)
    count = len(images)
    if landmarks.shape != (count, 29, 2):
        raise ValueError(f"landmarks of shape {landmarks.shape}; expected ({count}, 29, 2) for {count} images")
    if occluded.shape != (count, 29):
        raise ValueError(f"occluded of shape {occluded.shape}; expected ({count}, 29)")
    boxes_xywh = xyxy_to_xywh_1based(boxes_xyxy)
    if boxes_xywh.shape != (count, 4):
        raise ValueError(f"boxes of shape {boxes_xywh.shape}; expected ({count}, 4)")
    for index, image in enumerate(images):
        image = np.asarray(image)
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
            raise ValueError(f"image {index}: dtype {image.dtype} shape {image.shape}; expected uint8 (H, W, 3) or (H, W)")

    # MATLAB (n, 87) rows = faces; x then y (1-based) then the occlusion flags.
    phis = np.concatenate([landmarks[:, :, 0] + 1.0, landmarks[:, :, 1] + 1.0, occluded.astype(np.float64)], axis=1)
    images_key, phis_key, boxes_key = COFW_KEYS[split]
    with _create_v73(path) as mat:
        references_group = mat.create_group("#refs#")
        references = np.empty((1, count), dtype=h5py.ref_dtype)
        for index, image in enumerate(images):
            _write_matlab_array(references_group, str(index), np.asarray(image))
            references[0, index] = references_group[str(index)].ref
        cell = mat.create_dataset(images_key, data=references, dtype=h5py.ref_dtype)
        cell.attrs["MATLAB_class"] = np.bytes_("cell")
        _write_matlab_array(mat, phis_key, phis)  # h5py sees (87, n)
        _write_matlab_array(mat, boxes_key, boxes_xywh)  # h5py sees (4, n)
    _finish_v73(path)
    return path


def _write_mat(path: Path, arrays: dict[str, np.ndarray], version: str) -> None:
    if version == "v5":
        import scipy.io

        path.parent.mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(str(path), arrays, format="5")
    elif version == "v7.3":
        with _create_v73(path) as mat:
            for key, array in arrays.items():
                _write_matlab_array(mat, key, array)
        _finish_v73(path)
    else:
        raise ValueError(f"unknown .mat version {version!r}; expected 'v5' or 'v7.3'")


def write_cofw68_annotations(
    root: str | Path,
    landmarks: np.ndarray,
    occluded: np.ndarray,
    boxes_xyxy: np.ndarray,
    version: str = "v5",
) -> list[Path]:
    """Write the COFW68 annotations under ``root`` (beside ``COFW_test_color.mat``).

    Writes ``cofw68_test_annotations/<i>_points.mat`` (i = 1..n; key ``Points`` (68, 2)
    **1-based** from the 0-based ``landmarks`` (n, 68, 2); key ``Occ`` (68, 1) 0/1 from
    ``occluded`` (n, 68)) and ``cofw68_test_bboxes.mat`` (key ``bboxes`` (n, 4) 1-based
    ``x y w h`` from the 0-based ``boxes_xyxy`` (n, 4)), as MATLAB ``version`` "v5" (scipy.io)
    or "v7.3" (HDF5). Returns the paths written.
    """
    root = Path(root)
    landmarks = np.asarray(landmarks, dtype=np.float64)
    occluded = np.asarray(occluded)
    if landmarks.ndim != 3 or landmarks.shape[1:] != (68, 2):
        raise ValueError(f"landmarks of shape {landmarks.shape}; expected (n, 68, 2)")
    count = len(landmarks)
    if occluded.shape != (count, 68):
        raise ValueError(f"occluded of shape {occluded.shape}; expected ({count}, 68)")
    boxes_xywh = xyxy_to_xywh_1based(boxes_xyxy)
    if boxes_xywh.shape != (count, 4):
        raise ValueError(f"boxes of shape {boxes_xywh.shape}; expected ({count}, 4)")
    paths = []
    for index in range(count):
        points_path = cofw68_points_path(root, index + 1)
        arrays = {"Points": landmarks[index] + 1.0, "Occ": occluded[index].astype(np.float64).reshape(68, 1)}
        _write_mat(points_path, arrays, version)
        paths.append(points_path)
    bboxes_path = cofw68_bboxes_path(root)
    _write_mat(bboxes_path, {"bboxes": boxes_xywh}, version)
    paths.append(bboxes_path)
    return paths
