"""Own annotated faces in three generic formats, read as strictly as the benchmark releases.

Every format gives landmarks in facemark's convention (0-based pixels, integer values at pixel
centres, ``docs/datasets.md``) for any number of points K, with the meaning of the points given
by a :class:`~facemark.layouts.Layout` (a built-in name or a layout YAML file):

``manifest``
    a CSV file (``.csv``) or a JSON Lines file (``.jsonl``), one face per line, image paths
    relative to the manifest's folder. CSV: a header naming the columns ``image``, optionally
    ``x_min, y_min, x_max, y_max`` (the face box), ``x0, y0, ..., x{K-1}, y{K-1}``, optionally
    ``occluded0 ... occluded{K-1}`` (0/1), and any other column as an attribute. JSON Lines:
    ``{"image": ..., "points": [x0, y0, ...], "box": [x_min, y_min, x_max, y_max],
    "occluded": [0/1, ...], "attributes": {...}}`` (``box``, ``occluded``, ``attributes``
    optional). Identifier of a face: ``<image>#<line number>``.
``pts_folder``
    a folder searched recursively for iBUG ``.pts`` files (the format of 300W, Menpo, LS3D-W),
    each beside its image (same name, ``.jpg``/``.jpeg``/``.png``/``.bmp``); 1-based coordinates
    in the files, as in 300W. Identifier: the .pts path relative to the folder, without suffix.
``coco``
    a COCO keypoints JSON file: ``images`` (``id``, ``file_name`` relative to the JSON's folder,
    ``width``, ``height``), ``categories`` (the face category with its K ``keypoints`` names),
    ``annotations`` (``image_id``, ``category_id``, ``keypoints`` ``[x, y, v] * K``, ``bbox``
    ``[x, y, w, h]``); several faces per image. Visibility ``v``: 2 visible, 1 labelled but
    occluded (``occluded`` True), 0 not labelled: an error (every point is needed). Coordinates
    are read as pixel positions as they are (no half-pixel shift). Identifier:
    ``<file_name>#<annotation id>``.

Errors name the file and line (or key) and what was expected; a UTF-8 byte-order mark is
accepted. Warnings (:class:`DatasetWarning`), for data that is still usable: points outside their
image (kept as they are), a line repeating an earlier one. Nothing is dropped silently.
The writers (:func:`write_manifest`, :func:`write_pts_folder`, :func:`write_coco`) are the exact
inverses of the readers.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from facemark.data.records import DatasetWarning, FaceRecord, LandmarkDataset
from facemark.layouts import Layout, get_layout

__all__ = [
    "OWN_FORMATS",
    "PTS_IMAGE_EXTENSIONS",
    "load_own",
    "read_manifest",
    "read_pts_folder",
    "read_coco",
    "write_manifest",
    "write_pts_folder",
    "write_coco",
]

OWN_FORMATS = ("manifest", "pts_folder", "coco")
PTS_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
BOX_COLUMNS = ("x_min", "y_min", "x_max", "y_max")
# How many faces a warning lists by name (the count is always given).
LISTED = 20


def _listed(items: list[str]) -> str:
    return "; ".join(items[:LISTED]) + (f"; ... and {len(items) - LISTED} more" if len(items) > LISTED else "")


def _read_text(path: Path, what: str) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        return path.read_text(encoding="utf-8-sig")  # a BOM (Windows editors) is not part of the text
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not a UTF-8 text file ({error})") from None


def _number(text, where: str, what: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {what} is {text!r}; expected a number") from None
    if isinstance(text, bool) or not math.isfinite(value):
        raise ValueError(f"{where}: {what} is {text!r}; expected a finite number")
    return value


def _flag(text, where: str, what: str) -> bool:
    if isinstance(text, bool) or text not in (0, 1, "0", "1"):
        raise ValueError(f"{where}: {what} is {text!r}; expected 0 or 1")
    return int(text) == 1


def _box(values, where: str) -> tuple[float, float, float, float]:
    box = tuple(_number(v, where, f"box value {name}") for v, name in zip(values, BOX_COLUMNS))
    if box[2] <= box[0] or box[3] <= box[1]:
        raise ValueError(f"{where}: box {list(box)}; expected x_min < x_max and y_min < y_max")
    return box  # type: ignore[return-value]


def _attribute(text: str):
    """A CSV attribute cell: an integer when it is one, else the text (the writer's inverse)."""
    try:
        return int(text) if str(int(text)) == text else text
    except ValueError:
        return text


def _check_layout(layout: Layout | str | None, what: str) -> Layout:
    if layout is None:
        raise ValueError(f"{what}: own data needs a layout (data.layout: a built-in name or a layout YAML file) "
                         "saying what the points mean")
    return get_layout(layout)


def _check_images_and_points(records: list[FaceRecord], where: dict[str, str], source: Path,
                             sizes: dict[str, tuple[int, int]] | None = None) -> None:
    """Every image must exist (an error naming the line); points outside the image are warned
    about and kept. ``sizes`` (image path -> width, height) comes from the file when it has them."""
    from facemark.data.image_check import read_image_size

    missing = [r for r in records if r.image_path is not None and not r.image_path.is_file()]
    if missing:
        first = missing[0]
        raise FileNotFoundError(f"{where[first.identifier]}: image {first.image_path} does not exist "
                                f"({len(missing)} of {len(records)} faces have no image)")
    known: dict[Path, tuple[int, int] | None] = {}
    outside = []
    for record in records:
        path = record.image_path
        if path not in known:
            if sizes is not None and str(path) in sizes:
                known[path] = sizes[str(path)]
            else:
                try:
                    known[path] = read_image_size(path)
                except ValueError:
                    known[path] = None  # unreadable images are reported by check_dataset_images
        size = known[path]
        if size is None:
            continue
        width, height = size
        points = record.landmarks
        bad = np.flatnonzero((points[:, 0] < -0.5) | (points[:, 1] < -0.5) | (points[:, 0] > width - 0.5)
                             | (points[:, 1] > height - 0.5))
        if bad.size:
            shown = ", ".join(f"point {i} ({points[i, 0]:g}, {points[i, 1]:g})" for i in bad[:3])
            outside.append(f"{where[record.identifier]}: {shown}{' ...' if bad.size > 3 else ''} "
                           f"(image {width} x {height})")
    if outside:
        warnings.warn(f"{source}: {len(outside)} face(s) have points outside their image (kept as they are; check "
                      f"the annotation): {_listed(outside)}", DatasetWarning, stacklevel=4)


def _warn_repeats(source: Path, keys: list[tuple], where: list[str]) -> None:
    first: dict[tuple, str] = {}
    repeats = []
    for key, place in zip(keys, where):
        if key in first:
            repeats.append(f"{place} repeats {first[key]}")
        else:
            first[key] = place
    if repeats:
        warnings.warn(f"{source}: {len(repeats)} duplicate face(s) (same image, same points): {_listed(repeats)}; "
                      "each is read as a face of its own", DatasetWarning, stacklevel=4)


# -- manifest: CSV ------------------------------------------------------------------------------
def _csv_columns(header: list[str], path: Path) -> tuple[int, bool, bool, list[str]]:
    """(K, has box, has occlusion flags, attribute columns) from a CSV header."""
    where = f"{path}, line 1 (header)"
    names = [name.strip() for name in header]
    if "image" not in names:
        raise ValueError(f"{where}: no 'image' column; expected image, [x_min, y_min, x_max, y_max,] x0, y0, ..., "
                         "[occluded0, ...,] [attribute columns]")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"{where}: column(s) {repeated} appear more than once")
    num_points = 0
    while f"x{num_points}" in names and f"y{num_points}" in names:
        num_points += 1
    if num_points == 0:
        raise ValueError(f"{where}: no point columns; expected x0, y0, x1, y1, ...")
    stray = [name for name in names if name[:1] in "xy" and name[1:].isdigit() and int(name[1:]) >= num_points]
    lone = [f"{axis}{i}" for i in range(num_points + 1) for axis in "xy"
            if (f"{axis}{i}" in names) != (f"{'y' if axis == 'x' else 'x'}{i}" in names)]
    if stray or lone:
        raise ValueError(f"{where}: point columns {sorted(set(stray + lone))} do not follow x0, y0, ..., "
                         f"x{num_points - 1}, y{num_points - 1} (each point needs an x and a y column, numbered from 0)")
    box_given = [name for name in BOX_COLUMNS if name in names]
    if box_given and len(box_given) != 4:
        raise ValueError(f"{where}: box columns {box_given}; expected all of {list(BOX_COLUMNS)} or none")
    occluded = [f"occluded{i}" for i in range(num_points)]
    occluded_given = [name for name in names if name.startswith("occluded")]
    if occluded_given and sorted(occluded_given) != sorted(occluded):
        raise ValueError(f"{where}: occlusion columns {occluded_given}; expected occluded0 ... occluded{num_points - 1} "
                         "(one per point) or none")
    used = {"image", *BOX_COLUMNS, *occluded_given, *(f"{a}{i}" for i in range(num_points) for a in "xy")}
    attributes = [name for name in names if name not in used]
    return num_points, bool(box_given), bool(occluded_given), attributes


def _read_manifest_csv(path: Path, text: str) -> list[tuple[int, dict]]:
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or not any(cell.strip() for cell in rows[0]):
        raise ValueError(f"{path}: empty manifest; expected a header line (image, x0, y0, ...) and one face per line")
    header = [name.strip() for name in rows[0]]
    num_points, has_box, has_occluded, attribute_names = _csv_columns(header, path)
    faces = []
    for line_number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue  # blank line
        where = f"{path}, line {line_number}"
        if len(row) != len(header):
            raise ValueError(f"{where}: {len(row)} values; expected {len(header)} (one per header column: "
                             f"the image, {2 * num_points} point coordinates for {num_points} points"
                             f"{', 4 box values' if has_box else ''}"
                             f"{f', {len(attribute_names)} attribute(s)' if attribute_names else ''})")
        cells = dict(zip(header, (cell.strip() for cell in row)))
        face = {
            "image": cells["image"],
            "points": [_number(cells[f"{axis}{i}"], where, f"column {axis}{i}") for i in range(num_points) for axis in "xy"],
            "box": [cells[name] for name in BOX_COLUMNS] if has_box else None,
            "occluded": [cells[f"occluded{i}"] for i in range(num_points)] if has_occluded else None,
            "attributes": {name: _attribute(cells[name]) for name in attribute_names},
        }
        faces.append((line_number, face))
    return faces


# -- manifest: JSON Lines -----------------------------------------------------------------------
_JSONL_KEYS = ("image", "points", "box", "occluded", "attributes")


def _read_manifest_jsonl(path: Path, text: str) -> list[tuple[int, dict]]:
    faces = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {line_number}"
        try:
            face = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: not valid JSON ({error.msg}); expected one JSON object per line") from None
        if not isinstance(face, dict):
            raise ValueError(f"{where}: expected a JSON object {{\"image\": ..., \"points\": [...]}}, got {type(face).__name__}")
        unknown = sorted(set(face) - set(_JSONL_KEYS))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; allowed keys are {list(_JSONL_KEYS)}")
        for key in ("image", "points"):
            if key not in face:
                raise ValueError(f"{where}: missing key {key!r}")
        if not isinstance(face["points"], list):
            raise ValueError(f"{where}: 'points' must be a list [x0, y0, x1, y1, ...], got {face['points']!r}")
        face["points"] = [_number(v, where, f"points[{i}]") for i, v in enumerate(face["points"])]
        if face.get("attributes") is not None and not isinstance(face["attributes"], dict):
            raise ValueError(f"{where}: 'attributes' must be an object, got {face['attributes']!r}")
        face.setdefault("attributes", {})
        faces.append((line_number, face))
    if not faces:
        raise ValueError(f"{path}: empty manifest; expected one JSON object per line")
    return faces


def read_manifest(path: str | Path, layout: Layout | str | None, check_images: bool = True,
                  split: str | None = None) -> LandmarkDataset:
    """Read a manifest (``.csv`` or ``.jsonl``, see the module docstring) with ``layout``'s points."""
    path = Path(path)
    layout = _check_layout(layout, str(path))
    text = _read_text(path, "manifest file")
    if path.suffix.lower() == ".csv":
        faces = _read_manifest_csv(path, text)
    elif path.suffix.lower() in (".jsonl", ".ndjson"):
        faces = _read_manifest_jsonl(path, text)
    else:
        raise ValueError(f"manifest file {path}: unknown suffix {path.suffix!r}; expected .csv or .jsonl")
    if not faces:
        raise ValueError(f"{path}: no faces (only a header); expected one face per line")
    first_line, first = faces[0]
    records, where, keys, places = [], {}, [], []
    for line_number, face in faces:
        here = f"{path}, line {line_number}"
        values = face["points"]
        if len(values) % 2:
            raise ValueError(f"{here}: {len(values)} point values; expected an even number (x0, y0, x1, y1, ...)")
        num_points = len(values) // 2
        if num_points != len(first["points"]) // 2:
            raise ValueError(f"{here}: {num_points} points, but line {first_line} has {len(first['points']) // 2}; "
                             "every face of a manifest needs the same points")
        if num_points != layout.num_points:
            raise ValueError(f"{here}: {num_points} points; the layout {layout.name!r} has {layout.num_points}")
        image = face["image"]
        if not isinstance(image, str) or not image.strip():
            raise ValueError(f"{here}: image is {image!r}; expected a path relative to {path.parent}")
        occluded = None
        if face.get("occluded") is not None:
            flags = face["occluded"]
            if not isinstance(flags, list) or len(flags) != num_points:
                raise ValueError(f"{here}: 'occluded' must be a list of {num_points} flags 0/1, got {flags!r}")
            occluded = np.array([_flag(v, here, f"occluded[{i}]") for i, v in enumerate(flags)], dtype=bool)
        box = None
        if face.get("box") is not None:
            if not isinstance(face["box"], list) or len(face["box"]) != 4:
                raise ValueError(f"{here}: 'box' must be [x_min, y_min, x_max, y_max], got {face['box']!r}")
            box = _box(face["box"], here)
        identifier = f"{image}#{line_number}"
        where[identifier] = here
        keys.append((image, tuple(values)))
        places.append(f"line {line_number}")
        records.append(FaceRecord(
            identifier=identifier,
            landmarks=np.array(values, dtype=np.float64).reshape(num_points, 2),
            layout=layout, box=box, attributes=dict(face["attributes"]), occluded=occluded,
            image_path=path.parent / image,
        ))
    _warn_repeats(path, keys, places)
    if check_images:
        _check_images_and_points(records, where, path)
    return LandmarkDataset("manifest", split or path.name, path.parent, layout, records)


def _relative_image(record: FaceRecord, folder: Path) -> str:
    if record.image_path is None:
        raise ValueError(f"record {record.identifier}: no image file (images stored in annotation files cannot be "
                         "written to an own-data format)")
    image = Path(record.image_path)
    relative = os.path.relpath(image if image.is_absolute() else folder / image, folder)
    return relative.replace(os.sep, "/")


def write_manifest(path: str | Path, records: Sequence[FaceRecord]) -> Path:
    """Write ``records`` as a manifest (``.csv`` or ``.jsonl`` by the suffix), image paths relative to
    the manifest's folder (relative ``record.image_path`` values are taken as relative to it).

    CSV columns: image, the box columns when every face has a box, x0, y0, ..., the occlusion
    columns when every face has flags, then the attributes (the union of the records' keys; every
    record must have them all). Floats are written with ``repr`` precision (exact round trip).
    """
    path = Path(path)
    records = list(records)
    if not records:
        raise ValueError(f"{path}: no records to write")
    folder = path.parent
    num_points = len(records[0].landmarks)
    for record in records:
        if np.asarray(record.landmarks).shape != (num_points, 2) or not np.isfinite(record.landmarks).all():
            raise ValueError(f"record {record.identifier}: landmarks of shape {np.shape(record.landmarks)}; expected "
                             f"({num_points}, 2) finite values like the first record")
    suffix = path.suffix.lower()
    folder.mkdir(parents=True, exist_ok=True)
    if suffix in (".jsonl", ".ndjson"):
        lines = []
        for record in records:
            face: dict = {"image": _relative_image(record, folder),
                          "points": [float(v) for v in np.asarray(record.landmarks, dtype=np.float64).reshape(-1)]}
            if record.box is not None:
                face["box"] = [float(v) for v in record.box]
            if record.occluded is not None:
                face["occluded"] = [int(v) for v in record.occluded]
            if record.attributes:
                face["attributes"] = record.attributes
            lines.append(json.dumps(face))
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path
    if suffix != ".csv":
        raise ValueError(f"manifest file {path}: unknown suffix {path.suffix!r}; expected .csv or .jsonl")
    with_box = all(record.box is not None for record in records)
    with_occluded = all(record.occluded is not None for record in records)
    attribute_names = list(dict.fromkeys(name for record in records for name in record.attributes))
    reserved = {"image", *BOX_COLUMNS} | {f"{a}{i}" for i in range(num_points) for a in "xy"} \
        | {f"occluded{i}" for i in range(num_points)}
    clash = [name for name in attribute_names if name in reserved or name.startswith("occluded")]
    if clash:
        raise ValueError(f"{path}: attribute name(s) {clash} clash with the manifest's own columns")
    header = ["image"] + (list(BOX_COLUMNS) if with_box else [])
    header += [f"{axis}{i}" for i in range(num_points) for axis in "xy"]
    header += [f"occluded{i}" for i in range(num_points)] if with_occluded else []
    header += attribute_names
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for record in records:
        missing = [name for name in attribute_names if name not in record.attributes]
        if missing:
            raise ValueError(f"record {record.identifier}: attribute(s) {missing} missing; a CSV manifest needs every "
                             "attribute on every face (or use .jsonl)")
        row = [_relative_image(record, folder)]
        row += [repr(float(v)) for v in record.box] if with_box else []  # type: ignore[union-attr]
        row += [repr(float(v)) for v in np.asarray(record.landmarks, dtype=np.float64).reshape(-1)]
        row += [str(int(v)) for v in record.occluded] if with_occluded else []  # type: ignore[union-attr]
        row += [str(record.attributes[name]) for name in attribute_names]
        writer.writerow(row)
    path.write_text(buffer.getvalue(), encoding="utf-8")
    return path


# -- a folder of images with .pts files ---------------------------------------------------------
def read_pts_folder(folder: str | Path, layout: Layout | str | None, check_images: bool = True,
                    split: str | None = None) -> LandmarkDataset:
    """Read every ``.pts`` file under ``folder`` (recursively, in sorted order) with the image beside it."""
    from facemark.data.w300 import read_pts

    folder = Path(folder)
    layout = _check_layout(layout, str(folder))
    if not folder.is_dir():
        raise FileNotFoundError(f".pts folder {folder} does not exist")
    pts_paths = sorted(path for path in folder.rglob("*") if path.suffix.lower() == ".pts" and path.is_file())
    if not pts_paths:
        raise ValueError(f".pts folder {folder} holds no .pts files (searched recursively); expected one beside each image")
    records, where = [], {}
    first_count = None
    for pts_path in pts_paths:
        landmarks = read_pts(pts_path, num_points=None)
        if first_count is None:
            first_count = (len(landmarks), pts_paths[0])
        if len(landmarks) != first_count[0]:
            raise ValueError(f"{pts_path}, line 2: n_points is {len(landmarks)}, but {first_count[1]} has "
                             f"{first_count[0]}; every face needs the same points")
        if len(landmarks) != layout.num_points:
            raise ValueError(f"{pts_path}, line 2: n_points is {len(landmarks)}; the layout {layout.name!r} has "
                             f"{layout.num_points}")
        images = [path for path in pts_path.parent.glob(pts_path.stem + ".*")
                  if path.stem == pts_path.stem and path.suffix.lower() in PTS_IMAGE_EXTENSIONS and path.is_file()]
        if len(images) > 1:
            raise ValueError(f"{pts_path}: several images beside it ({', '.join(sorted(p.name for p in images))}); "
                             "expected exactly one (remove the duplicates)")
        if not images:
            if check_images:
                raise FileNotFoundError(f"{pts_path}: no image beside it; expected {pts_path.stem} with one of the "
                                        f"suffixes {list(PTS_IMAGE_EXTENSIONS)}")
            images = [pts_path.with_suffix(".jpg")]
        identifier = pts_path.relative_to(folder).with_suffix("").as_posix()
        where[identifier] = str(pts_path)
        records.append(FaceRecord(identifier=identifier, landmarks=landmarks, layout=layout, image_path=images[0]))
    if check_images:
        _check_images_and_points(records, where, folder)
    return LandmarkDataset("pts_folder", split or folder.name, folder, layout, records)


def write_pts_folder(folder: str | Path, records: Sequence[FaceRecord]) -> list[Path]:
    """Write one ``.pts`` file beside each record's image (which must lie under ``folder``).

    The files hold 1-based coordinates (300W's convention): values that are exact binary fractions
    (e.g. multiples of 1/64) round-trip exactly; others to within one unit in the last place."""
    from facemark.data.writers import write_pts

    folder = Path(folder)
    written = []
    for record in records:
        relative = Path(_relative_image(record, folder))
        if relative.parts and relative.parts[0] == "..":
            raise ValueError(f"record {record.identifier}: image {record.image_path} is not under {folder}")
        written.append(write_pts(folder / relative.with_suffix(".pts"), record.landmarks))
    return written


# -- COCO keypoints -----------------------------------------------------------------------------
def _coco_category(data: dict, path: Path, layout: Layout) -> dict:
    categories = data.get("categories")
    if not isinstance(categories, list) or not categories:
        raise ValueError(f"{path}: key 'categories' must be a non-empty list (the face category with its keypoints)")
    with_points = [c for c in categories if isinstance(c, dict) and isinstance(c.get("keypoints"), list)]
    if not with_points:
        raise ValueError(f"{path}: no category has 'keypoints'; expected a face category listing its K keypoint names")
    matching = [c for c in with_points if len(c["keypoints"]) == layout.num_points]
    if not matching:
        found = ", ".join(f"{c.get('name')!r} ({len(c['keypoints'])})" for c in with_points)
        raise ValueError(f"{path}: no category with {layout.num_points} keypoints (layout {layout.name!r}); "
                         f"categories with keypoints: {found}")
    if len(matching) > 1:
        raise ValueError(f"{path}: several categories have {layout.num_points} keypoints "
                         f"({[c.get('name') for c in matching]}); keep one face category per file")
    return matching[0]


def read_coco(path: str | Path, layout: Layout | str | None, check_images: bool = True,
              split: str | None = None) -> LandmarkDataset:
    """Read a COCO keypoints JSON file (see the module docstring) with ``layout``'s points."""
    path = Path(path)
    layout = _check_layout(layout, str(path))
    try:
        data = json.loads(_read_text(path, "COCO file"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object with 'images', 'annotations', 'categories'")
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{path}: key {key!r} must be a list")
    category = _coco_category(data, path, layout)
    images: dict = {}
    by_name: dict[str, int] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for index, image in enumerate(data["images"]):
        where = f"{path}, images[{index}]"
        if not isinstance(image, dict) or "id" not in image or not isinstance(image.get("file_name"), str):
            raise ValueError(f"{where}: expected an object with 'id' and 'file_name'")
        if image["id"] in images:
            raise ValueError(f"{where}: image id {image['id']!r} is used twice")
        if image["file_name"] in by_name:
            raise ValueError(f"{where}: image {image['file_name']!r} is listed twice (ids {by_name[image['file_name']]!r} "
                             f"and {image['id']!r}); list each image once, with all its faces as annotations")
        images[image["id"]] = image
        by_name[image["file_name"]] = image["id"]
        if "width" in image and "height" in image:
            sizes[str(path.parent / image["file_name"])] = (int(image["width"]), int(image["height"]))
    records, where_of, keys, places, skipped, other = [], {}, [], [], [], 0
    seen_ids: set = set()
    for index, annotation in enumerate(data["annotations"]):
        where = f"{path}, annotations[{index}]"
        if not isinstance(annotation, dict):
            raise ValueError(f"{where}: expected an object")
        if annotation.get("category_id") != category.get("id"):
            other += 1
            continue
        if annotation.get("iscrowd"):
            skipped.append(f"annotations[{index}]")
            continue
        if "id" not in annotation:
            raise ValueError(f"{where}: missing key 'id'")
        if annotation["id"] in seen_ids:
            raise ValueError(f"{where}: annotation id {annotation['id']!r} is used twice")
        seen_ids.add(annotation["id"])
        where = f"{path}, annotations[{index}] (id {annotation['id']})"
        image = images.get(annotation.get("image_id"))
        if image is None:
            raise ValueError(f"{where}: image_id {annotation.get('image_id')!r} matches no entry of 'images'")
        keypoints = annotation.get("keypoints")
        if not isinstance(keypoints, list) or len(keypoints) != 3 * layout.num_points:
            count = len(keypoints) if isinstance(keypoints, list) else keypoints
            raise ValueError(f"{where}: 'keypoints' has {count} values; expected {3 * layout.num_points} "
                             f"(x, y, v for each of the {layout.num_points} points)")
        values = np.array([_number(v, where, f"keypoints[{i}]") for i, v in enumerate(keypoints)]).reshape(-1, 3)
        visibility = values[:, 2]
        unlabelled = np.flatnonzero(visibility == 0)
        if unlabelled.size:
            raise ValueError(f"{where}: keypoint(s) {unlabelled.tolist()} have visibility 0 (not labelled); facemark "
                             "needs every point of every face (label them, or remove the face)")
        bad = np.flatnonzero((visibility != 1) & (visibility != 2))
        if bad.size:
            raise ValueError(f"{where}: keypoint {bad[0]} has visibility {visibility[bad[0]]:g}; expected 0, 1 or 2")
        box = None
        if annotation.get("bbox") is not None:
            bbox = annotation["bbox"]
            if not isinstance(bbox, list) or len(bbox) != 4:
                raise ValueError(f"{where}: 'bbox' must be [x, y, width, height], got {bbox!r}")
            x, y, w, h = (_number(v, where, "bbox value") for v in bbox)
            box = _box([x, y, x + w, y + h], where)
        attributes = annotation.get("attributes") or {}
        if not isinstance(attributes, dict):
            raise ValueError(f"{where}: 'attributes' must be an object, got {attributes!r}")
        identifier = f"{image['file_name']}#{annotation['id']}"
        where_of[identifier] = where
        keys.append((image["file_name"], tuple(values[:, :2].reshape(-1))))
        places.append(f"annotations[{index}]")
        records.append(FaceRecord(
            identifier=identifier, landmarks=values[:, :2].copy(), layout=layout, box=box,
            attributes=dict(attributes), occluded=visibility == 1, image_path=path.parent / image["file_name"],
        ))
    if skipped:
        warnings.warn(f"{path}: {len(skipped)} crowd annotation(s) of the face category skipped (iscrowd=1): "
                      f"{_listed(skipped)}", DatasetWarning, stacklevel=3)
    if other:
        warnings.warn(f"{path}: {other} annotation(s) of other categories than {category.get('name')!r} are not "
                      "faces and are not read", DatasetWarning, stacklevel=3)
    if not records:
        raise ValueError(f"{path}: no annotations of the category {category.get('name')!r}")
    _warn_repeats(path, keys, places)
    if check_images:
        _check_images_and_points(records, where_of, path, sizes)
    return LandmarkDataset("coco", split or path.name, path.parent, layout, records)


def write_coco(path: str | Path, records: Sequence[FaceRecord], layout: Layout,
               image_sizes: dict[str, tuple[int, int]] | None = None) -> Path:
    """Write ``records`` as a COCO keypoints file: one image entry per image file, one annotation
    per face (ids from 1, in record order), the category ``face`` with the layout's point names
    and its drawing edges as the skeleton (1-based, as COCO's). ``image_sizes`` (relative image
    path -> width, height) fills ``width``/``height``; without it they are read from the headers."""
    from facemark.data.image_check import read_image_size

    path = Path(path)
    records = list(records)
    if not records:
        raise ValueError(f"{path}: no records to write")
    folder = path.parent
    names = list(layout.point_names) or [f"point_{i}" for i in range(layout.num_points)]
    images: dict[str, dict] = {}
    annotations = []
    for number, record in enumerate(records, start=1):
        landmarks = np.asarray(record.landmarks, dtype=np.float64)
        if landmarks.shape != (layout.num_points, 2) or not np.isfinite(landmarks).all():
            raise ValueError(f"record {record.identifier}: landmarks of shape {landmarks.shape}; expected "
                             f"({layout.num_points}, 2) finite values (layout {layout.name!r})")
        relative = _relative_image(record, folder)
        if relative not in images:
            if image_sizes is not None and relative in image_sizes:
                width, height = image_sizes[relative]
            else:
                width, height = read_image_size(folder / relative)
            images[relative] = {"id": len(images) + 1, "file_name": relative, "width": int(width), "height": int(height)}
        occluded = np.zeros(layout.num_points, bool) if record.occluded is None else np.asarray(record.occluded, bool)
        keypoints = []
        for (x, y), hidden in zip(landmarks.tolist(), occluded.tolist()):
            keypoints += [x, y, 1 if hidden else 2]
        annotation = {"id": number, "image_id": images[relative]["id"], "category_id": 1, "iscrowd": 0,
                      "keypoints": keypoints, "num_keypoints": layout.num_points}
        if record.box is not None:
            x_min, y_min, x_max, y_max = (float(v) for v in record.box)
            annotation["bbox"] = [x_min, y_min, x_max - x_min, y_max - y_min]
            annotation["area"] = (x_max - x_min) * (y_max - y_min)
        if record.attributes:
            annotation["attributes"] = record.attributes
        annotations.append(annotation)
    data = {
        "info": {"description": f"facemark COCO keypoints ({layout.name}, {layout.num_points} points)"},
        "images": list(images.values()),
        "annotations": annotations,
        "categories": [{"id": 1, "name": "face", "supercategory": "face", "keypoints": names,
                        "skeleton": [[a + 1, b + 1] for a, b in layout.edges]}],
    }
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data) + "\n", encoding="utf-8")
    return path


# -- one entry point ----------------------------------------------------------------------------
_READERS = {"manifest": read_manifest, "pts_folder": read_pts_folder, "coco": read_coco}


def load_own(format: str, root: str | Path, split: str, layout: Layout | str | None,
             check_images: bool = True) -> LandmarkDataset:
    """Read own data: ``split`` names the manifest / COCO file or the .pts folder, relative to
    ``root`` (``"."`` = ``root`` itself, for a .pts folder)."""
    if format not in _READERS:
        raise ValueError(f"unknown own-data format {format!r}; expected one of {list(OWN_FORMATS)}")
    root = Path(root)
    target = root / split
    if split.endswith(("[train]", "[val]", "[test]")) and not target.exists():
        raise ValueError(f"split {split!r} is a part of {split.rsplit('[', 1)[0]!r} held out by a training run "
                         "(data.test_fraction / data.val_fraction), not a file; evaluate the run's checkpoint "
                         "(facemark evaluate CHECKPOINT --data ROOT), which carves the same faces, or score its "
                         "predictions with the run's split file (facemark score PREDICTIONS --data ROOT --splits "
                         "RUN/splits.json)")
    return _READERS[format](target, layout, check_images=check_images, split=split)

