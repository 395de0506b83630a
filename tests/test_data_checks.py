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



# -- duplicate annotation lines; validation carved by image ---------------------------------------
def _duplicate_lines(root: Path) -> Path:
    """The fixture's training file with line 2 repeated as lines 7 and 8."""
    from engine_fixtures import make_wflw_fixture

    from facemark.data import wflw_annotation_path

    make_wflw_fixture(root)
    path = wflw_annotation_path(root, "train")
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines + [lines[1], "  ".join(lines[1].split())]) + "\n")  # spacing does not matter
    return path


def test_duplicate_annotation_lines_are_warned_with_file_and_lines(tmp_path):
    from facemark.data import DatasetWarning, load_dataset

    path = _duplicate_lines(tmp_path)
    with pytest.warns(DatasetWarning) as caught:
        dataset = load_dataset("wflw", tmp_path, "train")
    (warning,) = [w for w in caught if "duplicate" in str(w.message)]
    message = str(warning.message)
    assert str(path) in message and "2 duplicate annotation line(s)" in message
    assert "line 7 repeats line 2" in message and "line 8 repeats line 2" in message
    assert len(dataset) == 8  # read as released: each line is a face


def test_duplicate_lines_warning_reaches_the_command_line(tmp_path, capsys):
    from facemark.cli import main

    path = _duplicate_lines(tmp_path)
    # A predictions file for none of the faces: the command reads the data, then fails.
    (tmp_path / "p.json").write_text('{"format": "facemark.predictions", "dataset": "wflw", "split": "train", '
                                     '"layout": "wflw98", "box_source": "x", "model": "m", "predictions": {"a": [[0, 0]]}}')
    with pytest.raises(SystemExit):
        main(["score", str(tmp_path / "p.json"), "--data", str(tmp_path)])
    err = capsys.readouterr().err
    assert f"facemark score: warning: {path}: 2 duplicate annotation line(s): line 7 repeats line 2" in err, err


def test_validation_is_carved_by_image(tmp_path):
    from facemark.data import FaceRecord, LandmarkDataset
    from facemark.engine.data import carve_validation
    from facemark.layouts import get_layout

    layout = get_layout("wflw98")
    # 30 images with 1 to 4 faces each (several faces, or repeated lines), 75 faces in all.
    records = []
    for image in range(30):
        for face in range(1 + image % 4):
            records.append(FaceRecord(f"img{image}.jpg#{len(records) + 1}", np.full((98, 2), float(face)), layout,
                                      image_path=tmp_path / f"img{image}.jpg"))
    dataset = LandmarkDataset("wflw", "train", tmp_path, layout, records)
    for seed in range(5):
        train_part, val_part = carve_validation(dataset, 0.2, seed)
        train_images = {r.image_path for r in train_part}
        val_images = {r.image_path for r in val_part}
        assert not train_images & val_images  # no image on both sides
        assert len(train_part) + len(val_part) == len(dataset)
        assert 15 <= len(val_part) <= 15 + 3  # round(0.2 x 75) faces, plus the rest of the last image
        again = carve_validation(dataset, 0.2, seed)[1]
        assert [r.identifier for r in again] == [r.identifier for r in val_part]  # seeded


# -- every image is checked before training and evaluation start ----------------------------------
def _corrupt_two_images(root: Path) -> tuple[Path, Path]:
    """The fixture with two unreadable training images: one not an image at all, one PNG cut
    short after its header (OpenCV cannot decode either)."""
    from engine_fixtures import make_wflw_fixture

    make_wflw_fixture(root)
    garbage = root / "WFLW_images" / "0--Fixture" / "train_1.png"
    garbage.write_bytes(b"these bytes are no image")
    truncated = root / "WFLW_images" / "0--Fixture" / "train_4.png"
    truncated.write_bytes(truncated.read_bytes()[:60])
    assert cv2.imread(str(truncated)) is None and cv2.imread(str(garbage)) is None
    return garbage, truncated


def test_read_image_size_from_headers(tmp_path):
    from facemark.data.image_check import read_image_size

    rgb = _photo_like(24, 32)
    for name in ("a.png", "a.jpg", "a.bmp"):
        assert cv2.imwrite(str(tmp_path / name), rgb)
        assert read_image_size(tmp_path / name) == (32, 24)
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "a.jpg").read_bytes()[:10])
    (tmp_path / "cut.png").write_bytes((tmp_path / "a.png").read_bytes()[:60])
    (tmp_path / "text.jpg").write_text("not an image")
    for name, reason in [("empty.jpg", "empty"), ("cut.jpg", "ends inside"), ("cut.png", "cannot decode"),
                         ("text.jpg", "not an image format"), ("missing.png", "cannot be read")]:
        with pytest.raises(ValueError, match=f"{name}: .*{reason}"):
            read_image_size(tmp_path / name)


def test_unreadable_images_are_all_reported_before_training(tmp_path):
    from engine_fixtures import TINY_METHODS, tiny_config

    from facemark.engine.train import train

    garbage, truncated = _corrupt_two_images(tmp_path / "data")
    with pytest.raises(ValueError) as error:
        train(tiny_config(tmp_path / "data", tmp_path / "run"), methods=TINY_METHODS)
    message = str(error.value)
    assert "2 of 6 image files of wflw/train" in message, message
    assert str(garbage) in message and str(truncated) in message
    assert "0--Fixture/train_1.png#2" in message  # the face (annotation line) using it
    assert not (tmp_path / "run" / "last.pt").exists()


def test_unreadable_images_are_one_error_on_the_command_line(tmp_path, capsys):
    from facemark.cli import main

    garbage, truncated = _corrupt_two_images(tmp_path / "data")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(Path(__file__).resolve().parents[1] / "configs" / "slpt_hrnet_wflw.yaml"),
              f"data.root={tmp_path / 'data'}", "data.workers=0", "runtime.device=cpu", "model.pretrained=null",
              f"runtime.output_dir={tmp_path / 'run'}", "runtime.progress=false", "runtime.tensorboard=false"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "Traceback" not in err and "facemark train: error: 2 of" in err
    assert str(garbage) in err and str(truncated) in err


def test_evaluation_checks_images_first(tmp_path):
    from facemark.data import load_dataset
    from facemark.data.image_check import check_dataset_images

    _corrupt_two_images(tmp_path)
    with pytest.raises(ValueError, match="2 of 6 image files"):
        check_dataset_images(load_dataset("wflw", tmp_path, "train"))
    check_dataset_images(load_dataset("wflw", tmp_path, "test"))  # intact


# -- faces outside their image, images too small to hold one -----------------------------------------
def test_faces_outside_their_image_and_tiny_images_are_warned(tmp_path):
    from engine_fixtures import make_wflw_fixture

    from facemark.data import DatasetWarning, load_dataset, wflw_annotation_path
    from facemark.data.image_check import check_dataset_images

    make_wflw_fixture(tmp_path)  # 64 x 64 images
    path = wflw_annotation_path(tmp_path, "test")
    lines = path.read_text().splitlines()
    fields = lines[1].split()
    fields[:196] = [repr(float(v) + 500.0) for v in fields[:196]]  # the whole face 500 px to the right
    lines[1] = " ".join(fields)
    path.write_text("\n".join(lines) + "\n")
    tiny = tmp_path / "WFLW_images" / lines[2].split()[-1]
    assert cv2.imwrite(str(tiny), np.zeros((1, 1, 3), np.uint8))
    dataset = load_dataset("wflw", tmp_path, "test")
    with pytest.warns(DatasetWarning) as caught:
        check_dataset_images(dataset)
    messages = [str(w.message) for w in caught]
    outside = [m for m in messages if "outside their image" in m]
    small = [m for m in messages if "too small" in m]
    # The moved face, and the face on the 1 x 1 image (its landmarks lie beyond the single pixel).
    assert len(outside) == 1 and "2 face(s)" in outside[0], outside
    assert "0--Fixture/test_1.png#2 (landmarks x 5" in outside[0] and "image 64 x 64" in outside[0]
    assert "0--Fixture/test_2.png#3" in outside[0] and "image 1 x 1" in outside[0]
    assert len(small) == 1 and f"{tiny} (1 x 1)" in small[0]
