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


# -- a UTF-8 byte-order mark is accepted by every text reader -------------------------------------
BOM = "\ufeff".encode("utf-8")


def _prepend_bom(path: Path) -> None:
    path.write_bytes(BOM + path.read_bytes())


def test_bom_in_wflw_annotation_file(tmp_path):
    from engine_fixtures import make_wflw_fixture

    from facemark.data import load_dataset, wflw_annotation_path

    make_wflw_fixture(tmp_path)
    expected = load_dataset("wflw", tmp_path, "train")
    _prepend_bom(wflw_annotation_path(tmp_path, "train"))
    with_bom = load_dataset("wflw", tmp_path, "train")
    assert [r.identifier for r in with_bom] == [r.identifier for r in expected]
    np.testing.assert_array_equal(with_bom.landmarks(), expected.landmarks())


def test_bom_in_pts_file(tmp_path):
    from facemark.data import read_pts, write_pts

    landmarks = np.arange(136, dtype=np.float64).reshape(68, 2)
    write_pts(tmp_path / "face.pts", landmarks)
    _prepend_bom(tmp_path / "face.pts")
    np.testing.assert_array_equal(read_pts(tmp_path / "face.pts"), landmarks)


@pytest.mark.parametrize("name, text", [
    ("boxes.csv", "image,x_min,y_min,x_max,y_max\nphoto.jpg,1,2,30,40\n"),
    ("boxes.json", '{"photo.jpg": [[1, 2, 30, 40]]}'),
])
def test_bom_in_boxes_file(tmp_path, name, text):
    from facemark.inference.detectors import load_boxes

    (tmp_path / name).write_bytes(BOM + text.encode("utf-8"))
    boxes = load_boxes(tmp_path / name)
    np.testing.assert_array_equal(np.asarray(boxes["photo.jpg"])[:, :4], [[1, 2, 30, 40]])

