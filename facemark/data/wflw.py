"""WFLW (98 points) read exactly as released.

Release layout under ``root`` (the folder the user unpacked)::

    WFLW_annotations/list_98pt_rect_attr_train_test/list_98pt_rect_attr_train.txt   (7,500 lines)
    WFLW_annotations/list_98pt_rect_attr_train_test/list_98pt_rect_attr_test.txt    (2,500 lines)
    WFLW_images/<event folder>/<name>.jpg

One face per line, whitespace separated, 207 fields: 196 floats ``x0 y0 ... x97 y97`` (already
0-based pixel coordinates), the rectangle ``x_min y_min x_max y_max`` (ints, 0-based), six 0/1
flags (pose, expression, illumination, make-up, occlusion, blur) and the image path relative to
``WFLW_images/``. An image can appear on several lines (several faces), so a record's identifier
is ``"<image path>#<line number>"`` (1-based line number in the annotation file).

The test subsets ("test/pose", ...) are the test lines whose flag column is 1; the released
per-subset lists (``WFLW_annotations/list_98pt_test/``) hold the same lines and are not needed.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from facemark.data.records import DatasetWarning, FaceRecord, LandmarkDataset
from facemark.layouts import get_layout

__all__ = [
    "WFLW_ATTRIBUTES",
    "WFLW_SPLITS",
    "WFLW_SUBSET_FILE_NAMES",
    "wflw_annotation_path",
    "wflw_subset_list_path",
    "load_wflw",
]

NUM_POINTS = 98
# The six attribute flags, in the order of their columns.
WFLW_ATTRIBUTES = ("pose", "expression", "illumination", "makeup", "occlusion", "blur")
NUM_FIELDS = 2 * NUM_POINTS + 4 + len(WFLW_ATTRIBUTES) + 1  # 207
WFLW_SPLITS = ("train", "test") + tuple(f"test/{name}" for name in WFLW_ATTRIBUTES)
# File-name stem of each released per-subset list (the release calls the pose subset "largepose").
WFLW_SUBSET_FILE_NAMES = {name: ("largepose" if name == "pose" else name) for name in WFLW_ATTRIBUTES}


def wflw_annotation_path(root: str | Path, split: str) -> Path:
    """The released annotation file of ``split`` ("train" or "test") under ``root``."""
    if split not in ("train", "test"):
        raise ValueError(f"WFLW annotation files exist for splits 'train' and 'test', not {split!r}")
    return Path(root) / "WFLW_annotations" / "list_98pt_rect_attr_train_test" / f"list_98pt_rect_attr_{split}.txt"


def wflw_subset_list_path(root: str | Path, subset: str) -> Path:
    """The released per-subset test list of ``subset`` (one of :data:`WFLW_ATTRIBUTES`)."""
    if subset not in WFLW_SUBSET_FILE_NAMES:
        raise ValueError(f"unknown WFLW subset {subset!r}; expected one of {list(WFLW_ATTRIBUTES)}")
    stem = WFLW_SUBSET_FILE_NAMES[subset]
    return Path(root) / "WFLW_annotations" / "list_98pt_test" / f"list_98pt_test_{stem}.txt"


def _line_error(path: Path, line_number: int, line: str) -> ValueError | None:
    """The error of one malformed annotation line, or None if the line is well formed."""
    fields = line.split()
    if len(fields) != NUM_FIELDS:
        return ValueError(
            f"{path}, line {line_number}: {len(fields)} fields; expected {NUM_FIELDS} "
            f"({2 * NUM_POINTS} landmark coordinates, 4 rectangle values, {len(WFLW_ATTRIBUTES)} flags, image path)"
        )
    for column, text in enumerate(fields[:-1], start=1):
        try:
            float(text)
        except ValueError:
            return ValueError(f"{path}, line {line_number}: field {column} is {text!r}; expected a number")
    return None


def parse_wflw_annotations(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], list[int]]:
    """Parse one WFLW annotation file.

    Returns ``(landmarks (n, 98, 2), rects (n, 4), flags (n, 6) int, image paths, line numbers)``.
    Blank lines are allowed (they hold no face); every other line must have 207 fields.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM (Windows editors) is not part of the text
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not a text file ({error})") from None
    lines = text.splitlines()
    numeric_parts: list[str] = []
    image_paths: list[str] = []
    line_numbers: list[int] = []
    for line_number, line in enumerate(lines, start=1):
        parts = line.rsplit(None, 1)  # the image path is the last field
        if not parts:
            continue
        if len(parts) != 2:
            raise _line_error(path, line_number, line)
        numeric_parts.append(parts[0])
        image_paths.append(parts[1])
        line_numbers.append(line_number)
    count = len(line_numbers)
    if count == 0:
        raise ValueError(f"{path}: no annotation lines; expected {NUM_FIELDS} fields per line")

    # Fast path: numpy's C parser reads all numbers at once (Python float() per field is
    # several times slower). Any failure -- a non-numeric field, a line with a different
    # number of fields -- is then located line by line, for an error naming the line.
    values_per_line = NUM_FIELDS - 1
    try:
        values = np.loadtxt(numeric_parts, dtype=np.float64, comments=None, ndmin=2)
    except ValueError:
        values = None
    if values is None or values.shape != (count, values_per_line):
        for line_number in line_numbers:
            error = _line_error(path, line_number, lines[line_number - 1])
            if error is not None:
                raise error
        for numeric_text, line_number in zip(numeric_parts, line_numbers):  # numbers float() takes but numpy not
            try:
                np.loadtxt([numeric_text], dtype=np.float64, comments=None)
            except ValueError as error:
                raise ValueError(f"{path}, line {line_number}: the numeric fields cannot be read ({error})") from None
        raise ValueError(f"{path}: could not parse the numeric fields")
    values = values.reshape(count, values_per_line)

    not_finite = ~np.isfinite(values)
    if not_finite.any():
        row, column = np.argwhere(not_finite)[0]
        raise ValueError(f"{path}, line {line_numbers[row]}: field {column + 1} is not a finite number")
    landmarks = values[:, : 2 * NUM_POINTS].reshape(count, NUM_POINTS, 2)
    rects = values[:, 2 * NUM_POINTS : 2 * NUM_POINTS + 4]
    flags = values[:, 2 * NUM_POINTS + 4 :]
    bad_flag = (flags != 0) & (flags != 1)
    if bad_flag.any():
        row, column = np.argwhere(bad_flag)[0]
        raise ValueError(
            f"{path}, line {line_numbers[row]}: field {2 * NUM_POINTS + 4 + column + 1} "
            f"({WFLW_ATTRIBUTES[column]} flag) is {flags[row, column]:g}; expected 0 or 1"
        )
    _warn_duplicate_lines(path, values, image_paths, line_numbers)
    return landmarks, rects, flags.astype(np.int64), image_paths, line_numbers


def _warn_duplicate_lines(path: Path, values: np.ndarray, image_paths: list[str], line_numbers: list[int]) -> None:
    """Warn about lines repeating an earlier line (same image, same numbers): they are read as
    faces of their own, like the release, but are almost always a copy-and-paste mistake."""
    first_line: dict[tuple[str, bytes], int] = {}
    repeats: list[str] = []
    for row, (image_path, line_number) in enumerate(zip(image_paths, line_numbers)):
        key = (image_path, values[row].tobytes())
        if key in first_line:
            repeats.append(f"line {line_number} repeats line {first_line[key]}")
        else:
            first_line[key] = line_number
    if repeats:
        shown = ", ".join(repeats[:10]) + (f", ... ({len(repeats) - 10} more)" if len(repeats) > 10 else "")
        warnings.warn(f"{path}: {len(repeats)} duplicate annotation line(s): {shown}; each is read as a face "
                      "of its own", DatasetWarning, stacklevel=3)


def load_wflw(root: str | Path, split: str, check_images: bool = True) -> LandmarkDataset:
    """Read a WFLW split ("train", "test" or "test/<attribute>") as released under ``root``.

    Records: ``landmarks`` (98, 2) 0-based as stored, ``box`` the rectangle columns
    ``(x_min, y_min, x_max, y_max)`` (0-based, as stored), ``attributes`` the six flags by name
    (ints), ``occluded`` None, identifier ``"<image path>#<line number>"``.
    With ``check_images`` every image file must exist (checked at load time, not decoded).
    """
    if split not in WFLW_SPLITS:
        raise ValueError(f"unknown WFLW split {split!r}; expected one of {list(WFLW_SPLITS)}")
    root = Path(root)
    file_split, _, subset = split.partition("/")
    annotation_path = wflw_annotation_path(root, file_split)
    if not annotation_path.is_file():
        raise FileNotFoundError(
            f"WFLW annotation file {annotation_path} does not exist (expected the release's "
            f"WFLW_annotations/ folder under {root})"
        )
    image_folder = root / "WFLW_images"
    if check_images and not image_folder.is_dir():
        raise FileNotFoundError(f"WFLW image folder {image_folder} does not exist")

    landmarks, rects, flags, image_paths, line_numbers = parse_wflw_annotations(annotation_path)
    selected = range(len(line_numbers))
    if subset:
        selected = np.flatnonzero(flags[:, WFLW_ATTRIBUTES.index(subset)] == 1).tolist()

    if check_images:
        exists = {name: (image_folder / name).is_file() for name in {image_paths[i] for i in selected}}
        missing = [i for i in selected if not exists[image_paths[i]]]
        if missing:
            first = missing[0]
            raise FileNotFoundError(
                f"{annotation_path}, line {line_numbers[first]}: image {image_folder / image_paths[first]} "
                f"does not exist ({len(missing)} of {len(selected)} images missing)"
            )

    layout = get_layout("wflw98")
    flag_rows = flags.tolist()
    rect_rows = rects.tolist()
    records = [
        FaceRecord(
            identifier=f"{image_paths[i]}#{line_numbers[i]}",
            landmarks=landmarks[i],
            layout=layout,
            box=tuple(rect_rows[i]),
            attributes=dict(zip(WFLW_ATTRIBUTES, flag_rows[i])),
            image_path=image_folder / image_paths[i],
        )
        for i in selected
    ]
    return LandmarkDataset("wflw", split, root, layout, records)
