"""Dataset input checks (issue 14): image decoding by the format's range, the image check before
training and evaluation, duplicate annotation lines, faces outside their image, BOMs.

Every file is made by the test, in the real formats."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from facemark.data import read_image_rgb


def _photo_like(height: int = 24, width: int = 32) -> np.ndarray:
    """A low-contrast RGB image (values 20..120): a per-image contrast stretch would change it a lot."""
    rng = np.random.default_rng(3)
    return rng.integers(20, 121, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("channels", [3, 1])
def test_16_bit_png_decodes_like_the_8_bit_png(tmp_path, channels):
    rgb = _photo_like()
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if channels == 3 else rgb[:, :, 0]
    assert cv2.imwrite(str(tmp_path / "photo8.png"), bgr)
    assert cv2.imwrite(str(tmp_path / "photo16.png"), bgr.astype(np.uint16) * 257)  # the same photo, 16 bits
    assert cv2.imread(str(tmp_path / "photo16.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    eight = read_image_rgb(tmp_path / "photo8.png").astype(int)
    sixteen = read_image_rgb(tmp_path / "photo16.png").astype(int)
    assert eight.shape == sixteen.shape == (24, 32, 3)
    assert np.abs(eight - sixteen).max() <= 1
