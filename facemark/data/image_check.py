"""The check of a dataset's images before training or evaluation starts.

Images are decoded lazily, one batch at a time, so a file that cannot be decoded would only be
found when training or evaluation reaches it (after an epoch, in a DataLoader worker). Reading
every image's header instead takes milliseconds per thousand images: :func:`check_dataset_images`
reports every unreadable file at once, in one error, and warns about images too small to hold
a face and faces lying entirely outside their image (the image size comes from the header too).

:func:`read_image_size` parses the headers of JPEG and PNG (the formats of the benchmarks)
itself; files in other formats OpenCV reads are decoded in full (slower, but exact).
"""
from __future__ import annotations

import struct
import warnings
from pathlib import Path
from typing import BinaryIO

from facemark.data.records import DatasetWarning, LandmarkDataset, read_image_rgb

__all__ = ["read_image_size", "check_dataset_images", "MIN_IMAGE_SIDE"]

# Smaller than this on a side, an image cannot hold a face a landmark model could read (the
# smallest crop facemark trains on is 8 x 8, data.crop.size).
MIN_IMAGE_SIDE = 8
# How many unreadable files / suspicious faces a message lists by name (the count is always given).
LISTED = 100

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk every complete PNG ends with
# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic...), which hold the size.
_JPEG_FRAME_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
# Markers without a length field: TEM, RST0..7 (SOI and EOI are handled apart).
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD8)}


class _Unreadable(Exception):
    """Why an image file cannot be read (the message is the reason)."""


def _read_exactly(file: BinaryIO, count: int, what: str) -> bytes:
    data = file.read(count)
    if len(data) != count:
        raise _Unreadable(f"the file ends inside the {what}")
    return data


def _jpeg_size(file: BinaryIO) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header, walking the marker segments; None when the
    frame header defers the height (DNL marker) and only a full decode can tell."""
    file.seek(2)  # after SOI
    while True:
        byte = _read_exactly(file, 1, "JPEG header")
        if byte != b"\xff":
            raise _Unreadable(f"broken JPEG header (byte {file.tell() - 1} is not a marker)")
        marker = _read_exactly(file, 1, "JPEG header")[0]
        while marker == 0xFF:  # fill bytes
            marker = _read_exactly(file, 1, "JPEG header")[0]
        if marker in _JPEG_STANDALONE:
            continue
        if marker in (0xD9, 0xDA):  # EOI or start of scan before any frame header
            raise _Unreadable("JPEG without a frame header (no image size before the image data)")
        (length,) = struct.unpack(">H", _read_exactly(file, 2, "JPEG header"))
        if length < 2:
            raise _Unreadable("broken JPEG header (a segment length below 2)")
        if marker in _JPEG_FRAME_MARKERS:
            _, height, width = struct.unpack(">BHH", _read_exactly(file, 5, "JPEG frame header"))
            return (width, height) if height > 0 else None
        file.seek(length - 2, 1)


def _png_size(file: BinaryIO, file_size: int) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk; None when the file does not end with the IEND
    chunk (truncated, or data after it): then only a full decode can tell."""
    file.seek(8)
    length, kind = struct.unpack(">I4s", _read_exactly(file, 8, "PNG header"))
    if kind != b"IHDR" or length != 13:
        raise _Unreadable("broken PNG header (the first chunk is not IHDR)")
    width, height = struct.unpack(">II", _read_exactly(file, 8, "PNG header"))
    if file_size < 8 + 25 + len(_PNG_END):
        return None
    file.seek(-len(_PNG_END), 2)
    return (width, height) if file.read(len(_PNG_END)) == _PNG_END else None


def _decoded_size(path: Path, suspicion: str) -> tuple[int, int]:
    try:
        image = read_image_rgb(path, exif_orientation=False)  # the header size is of the stored grid
    except (OSError, ValueError):
        raise _Unreadable(f"OpenCV cannot decode it{suspicion}") from None
    return image.shape[1], image.shape[0]


def read_image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of an image file, from its header (JPEG, PNG) or a full decode.

    Raises ``ValueError`` naming the file and why it cannot be read (missing, empty, not an
    image format OpenCV reads, a broken or truncated header, a size of 0).
    """
    import cv2

    path = Path(path)
    try:
        with path.open("rb") as file:
            file_size = path.stat().st_size
            if file_size == 0:
                raise _Unreadable("the file is empty")
            start = file.read(8)
            size: tuple[int, int] | None
            suspicion = ""
            if start[:3] == b"\xff\xd8\xff":
                size = _jpeg_size(file)
            elif start == _PNG_SIGNATURE:
                size = _png_size(file, file_size)
                suspicion = " (a PNG without its end chunk: cut short?)"
            elif cv2.haveImageReader(str(path)):
                size = None
            else:
                raise _Unreadable("not an image format OpenCV can read")
        if size is None:
            size = _decoded_size(path, suspicion)
        if min(size) < 1:
            raise _Unreadable(f"its header gives a size of {size[0]} x {size[1]} pixels")
        return size
    except _Unreadable as reason:
        raise ValueError(f"image file {path}: {reason}") from None
    except OSError as error:
        raise ValueError(f"image file {path}: cannot be read ({error.strerror or error})") from None


def _listed(items: list[str]) -> str:
    shown = "; ".join(items[:LISTED])
    return shown + (f"; ... and {len(items) - LISTED} more" if len(items) > LISTED else "")


def check_dataset_images(*datasets: LandmarkDataset | None) -> None:
    """Check every image of ``datasets`` (None entries are skipped) from its header.

    Raises ``ValueError`` listing every image file that cannot be read, with the faces that use
    it. Warns (:class:`DatasetWarning`) about images smaller than :data:`MIN_IMAGE_SIDE` pixels
    on a side and faces whose landmarks all lie outside their image. Records whose image is
    stored inside the annotation file (COFW) are checked by their reader and skipped here.
    """
    unreadable: dict[Path, tuple[str, list[str]]] = {}
    sizes: dict[Path, tuple[int, int]] = {}
    checked = 0
    for dataset in datasets:
        if dataset is None:
            continue
        for record in dataset.records:
            path = record.image_path
            if path is None:
                continue
            if path in unreadable:
                unreadable[path][1].append(record.identifier)
                continue
            if path not in sizes:
                checked += 1
                try:
                    sizes[path] = read_image_size(path)
                except ValueError as error:
                    unreadable[path] = (str(error), [record.identifier])
    if unreadable:
        names = {f"{dataset.name}/{dataset.split}" for dataset in datasets if dataset is not None}
        items = [f"{reason} (face{'s' if len(faces) > 1 else ''} {', '.join(faces)})"
                 for reason, faces in unreadable.values()]
        raise ValueError(f"{len(unreadable)} of {checked} image files of {', '.join(sorted(names))} cannot be read; "
                         f"fix or remove them (and their annotation lines): {_listed(items)}")
    for dataset in datasets:
        if dataset is not None:
            _warn_suspicious_faces(dataset, sizes)


def _warn_suspicious_faces(dataset: LandmarkDataset, sizes: dict[Path, tuple[int, int]]) -> None:
    where = f"{dataset.name}/{dataset.split}"
    paths = dict.fromkeys(record.image_path for record in dataset.records if record.image_path in sizes)
    tiny = [f"{path} ({sizes[path][0]} x {sizes[path][1]})" for path in paths if min(sizes[path]) < MIN_IMAGE_SIDE]
    if tiny:
        warnings.warn(f"{where}: {len(tiny)} image(s) smaller than {MIN_IMAGE_SIDE} pixels on a side, too small "
                      f"to hold a face: {_listed(tiny)}", DatasetWarning, stacklevel=3)
    outside = []
    for record in dataset.records:
        if record.image_path not in sizes:
            continue
        width, height = sizes[record.image_path]
        low, high = record.landmarks.min(axis=0), record.landmarks.max(axis=0)
        # Pixel centres are integers: the image covers [-0.5, width - 0.5] x [-0.5, height - 0.5].
        if high[0] < -0.5 or high[1] < -0.5 or low[0] > width - 0.5 or low[1] > height - 0.5:
            outside.append(f"{record.identifier} (landmarks x {low[0]:.1f}..{high[0]:.1f}, y {low[1]:.1f}..{high[1]:.1f}; "
                           f"image {width} x {height})")
    if outside:
        warnings.warn(f"{where}: {len(outside)} face(s) lie entirely outside their image (their scores mean "
                      f"nothing): {_listed(outside)}", DatasetWarning, stacklevel=3)
