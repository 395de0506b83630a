"""The records every dataset reader returns: one :class:`FaceRecord` per annotated face."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from facemark.layouts import Layout

__all__ = ["DatasetWarning", "FaceRecord", "LandmarkDataset", "read_image_rgb"]


class DatasetWarning(UserWarning):
    """Something in a dataset is suspicious but readable (a repeated annotation line, a face
    outside its image): issued with :func:`warnings.warn`, naming the file and line."""


def read_image_rgb(path: str | Path, exif_orientation: bool = True) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB; grayscale is replicated to three channels.

    A JPEG's EXIF orientation tag is honoured (``exif_orientation=True``): a phone photo stored
    sideways with "rotate 90" in its EXIF comes back upright, as photo viewers show it. Dataset
    readers pass ``exif_orientation=False``: their landmarks are in the stored pixel grid.

    Raises ``FileNotFoundError`` naming the file if it is missing and ``ValueError`` if OpenCV
    cannot decode it.
    """
    import cv2

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file {path} does not exist")
    data = np.fromfile(str(path), dtype=np.uint8)
    # IMREAD_UNCHANGED keeps alpha and 16-bit pixels but ignores EXIF orientation; for a JPEG
    # (no alpha) ANYDEPTH | ANYCOLOR keeps the rest and lets OpenCV apply the orientation.
    is_jpeg = data.size >= 2 and data[0] == 0xFF and data[1] == 0xD8
    flags = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR if is_jpeg and exif_orientation else cv2.IMREAD_UNCHANGED
    image = cv2.imdecode(data, flags) if data.size else None
    if image is None:
        raise ValueError(f"image file {path} could not be decoded (not an image OpenCV can read)")
    image = _to_uint8(image, path)
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _to_uint8(image: np.ndarray, path: Path) -> np.ndarray:
    """8-bit pixels by the format's full range, the same for every image (never a per-image
    contrast stretch, which would make a 16-bit copy of a photo differ from the 8-bit one)."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:  # 0..65535 -> 0..255: 65535 / 255 = 257 exactly
        return ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if image.dtype in (np.float32, np.float64):  # floating-point TIFF / EXR: 0.0 .. 1.0
        return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    raise ValueError(f"image file {path} has {image.dtype} pixels; expected 8- or 16-bit integers or 0..1 floats")


@dataclass
class FaceRecord:
    """One annotated face.

    Attributes:
        identifier: unique within its dataset split (e.g. ``"wflw/test/123"``).
        landmarks: ``(K, 2)`` float64, 0-based pixel coordinates of the original image, never
            clipped (they may lie outside the image, as in the releases).
        box: ``(x_min, y_min, x_max, y_max)`` in 0-based pixels (the dataset's face rectangle)
            or ``None`` when the dataset has none.
        attributes: the dataset's flags, e.g. WFLW's ``{"pose": 0, "expression": 1, ...}``.
        occluded: ``(K,)`` bool occlusion flags (COFW) or ``None``.
        image_path: the image file, or ``None`` when the image is stored inside the annotation
            file (COFW's .mat): then ``image_loader`` reads it.
        layout: the :class:`~facemark.layouts.Layout` of ``landmarks``.
    """

    identifier: str
    landmarks: np.ndarray
    layout: Layout
    box: tuple[float, float, float, float] | None = None
    attributes: dict = field(default_factory=dict)
    occluded: np.ndarray | None = None
    image_path: Path | None = None
    image_loader: Callable[[], np.ndarray] | None = field(default=None, repr=False, compare=False)

    def load_image(self) -> np.ndarray:
        """The image as ``(H, W, 3)`` uint8 RGB (read lazily, on every call)."""
        if self.image_loader is not None:
            return self.image_loader()
        if self.image_path is None:
            raise ValueError(f"record {self.identifier}: no image path and no image loader")
        return read_image_rgb(self.image_path, exif_orientation=False)  # landmarks are in the stored grid


@dataclass
class LandmarkDataset(Sequence[FaceRecord]):
    """A list of :class:`FaceRecord` of one split, with where it came from."""

    name: str
    split: str
    root: Path
    layout: Layout
    records: list[FaceRecord]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return LandmarkDataset(self.name, self.split, self.root, self.layout, self.records[index])
        return self.records[index]

    def __iter__(self) -> Iterator[FaceRecord]:
        return iter(self.records)

    def landmarks(self) -> np.ndarray:
        """All ground-truth landmarks stacked, ``(n, K, 2)``."""
        return np.stack([r.landmarks for r in self.records]) if self.records else np.zeros((0, self.layout.num_points, 2))

    def __repr__(self) -> str:
        return f"LandmarkDataset(name={self.name!r}, split={self.split!r}, root='{self.root}', n={len(self)}, layout={self.layout.name!r})"
