"""Drawing landmarks on images and laying images out in a grid (previews, reports, ``--draw``)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from facemark.layouts import Layout

__all__ = ["draw_landmarks", "image_grid", "GROUP_COLOURS"]

# RGB colour per face part, so that a swapped left/right or a mislabelled group shows at a glance.
GROUP_COLOURS = {
    "contour": (255, 220, 0),
    "chin": (255, 220, 0),
    "left_brow": (255, 120, 0),
    "right_brow": (255, 60, 160),
    "nose_bridge": (0, 200, 255),
    "nose_lower": (0, 140, 255),
    "nose": (0, 170, 255),
    "left_eye": (60, 255, 60),
    "right_eye": (200, 80, 255),
    "outer_lip": (255, 40, 40),
    "inner_lip": (255, 150, 150),
    "pupils": (255, 255, 255),
}
_DEFAULT_COLOUR = (0, 255, 200)


def draw_landmarks(
    image: np.ndarray,
    landmarks: np.ndarray,
    layout: Layout | None = None,
    colour: tuple[int, int, int] | None = None,
    radius: int | None = None,
    edges: bool = True,
    box: Sequence[float] | None = None,
) -> np.ndarray:
    """Return a copy of ``image`` (H, W, 3 uint8 RGB) with ``landmarks`` (K, 2) drawn.

    Points are drawn with sub-pixel precision (OpenCV ``shift``) so a point lands on its pixel.
    ``colour`` forces one colour (e.g. green for ground truth, red for predictions); otherwise
    each face part has its own colour from :data:`GROUP_COLOURS`.
    """
    import cv2

    canvas = np.ascontiguousarray(image.copy())
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if radius is None:
        radius = max(1, int(round(min(canvas.shape[:2]) / 200)))
    shift = 4
    scale = 1 << shift

    def point(p: np.ndarray) -> tuple[int, int]:
        return int(round(p[0] * scale)), int(round(p[1] * scale))

    def colour_of(index: int) -> tuple[int, int, int]:
        if colour is not None:
            return colour
        if layout is None:
            return _DEFAULT_COLOUR
        return GROUP_COLOURS.get(layout.group_of(index), _DEFAULT_COLOUR)

    finite = np.isfinite(landmarks).all(axis=1)
    if box is not None:
        x0, y0, x1, y1 = (float(v) for v in box)
        cv2.rectangle(canvas, point((x0, y0)), point((x1, y1)), (0, 255, 255), 1, cv2.LINE_AA, shift)
    if edges and layout is not None:
        for a, b in layout.edges:
            if finite[a] and finite[b]:
                cv2.line(canvas, point(landmarks[a]), point(landmarks[b]), colour_of(a), 1, cv2.LINE_AA, shift)
    for index, p in enumerate(landmarks):
        if finite[index]:
            cv2.circle(canvas, point(p), radius * scale, colour_of(index), -1, cv2.LINE_AA, shift)
    return canvas


def image_grid(images: Sequence[np.ndarray], columns: int, cell_size: int | None = None, gap: int = 2) -> np.ndarray:
    """Tile RGB images into one (rows x columns) image; each is resized to ``cell_size`` square."""
    import cv2

    if not images:
        raise ValueError("image_grid needs at least one image")
    cell_size = cell_size or max(max(im.shape[:2]) for im in images)
    rows = (len(images) + columns - 1) // columns
    grid = np.full((rows * (cell_size + gap) + gap, columns * (cell_size + gap) + gap, 3), 30, np.uint8)
    for index, image in enumerate(images):
        if image.shape[:2] != (cell_size, cell_size):
            image = cv2.resize(image, (cell_size, cell_size), interpolation=cv2.INTER_AREA)
        row, column = divmod(index, columns)
        y = gap + row * (cell_size + gap)
        x = gap + column * (cell_size + gap)
        grid[y : y + cell_size, x : x + cell_size] = image
    return grid
