"""facemark.inference.detectors: the user's boxes (JSON/CSV) with clear errors, box calibration,
and OpenCV's Haar cascade on a real photograph (scikit-image's astronaut, read at test time)."""
from __future__ import annotations

import numpy as np
import pytest

from facemark.inference.detectors import (
    BoxCalibration,
    BoxesFromFile,
    FaceDetector,
    HaarFaceDetector,
    box_iou,
    check_boxes,
    estimate_calibration,
    load_boxes,
    parse_box,
)


def test_boxes_from_json_and_csv(tmp_path):
    json_file = tmp_path / "boxes.json"
    json_file.write_text('{"a.jpg": [[1, 2, 30, 40], [5, 5, 9, 9.5]], "sub/b.png": [0, 0, 10, 10, 0.7]}')
    boxes = load_boxes(json_file)
    np.testing.assert_allclose(boxes["a.jpg"], [[1, 2, 30, 40], [5, 5, 9, 9.5]])
    np.testing.assert_allclose(boxes["sub/b.png"], [[0, 0, 10, 10, 0.7]])

    csv_file = tmp_path / "boxes.csv"
    csv_file.write_text("image,x_min,y_min,x_max,y_max\na.jpg,1,2,30,40\n\na.jpg,5,5,9,9.5\nsub/b.png,0,0,10,10\n")
    boxes = load_boxes(csv_file)
    np.testing.assert_allclose(boxes["a.jpg"], [[1, 2, 30, 40], [5, 5, 9, 9.5]])
    assert boxes["sub/b.png"].shape == (1, 4)

    lookup = BoxesFromFile(boxes, source=str(csv_file))
    assert lookup.lookup(tmp_path / "photos" / "sub" / "b.png", root=tmp_path / "photos") is not None
    assert lookup.lookup("elsewhere/a.jpg") is not None  # by file name
    assert lookup.lookup("c.jpg") is None
    assert lookup.unused() == []


@pytest.mark.parametrize(
    "text, message",
    [
        ("image,x_min,y_min,x_max,y_max\na.jpg,1,2,30\n", r"boxes.csv: line 2: 4 fields, expected 5"),
        ("image,x_min,y_min,x_max,y_max\na.jpg,1,2,30,40\nb.jpg,1,two,30,40\n", r"boxes.csv: line 3: .* not all numbers"),
        ("image,x_min,y_min,x_max,y_max\na.jpg,30,2,10,40\n", r"boxes.csv: line 2: .*empty; expected x_min < x_max"),
        ("image,x_min,y_min,x_max,y_max\na.jpg,1,2,nan,40\n", r"boxes.csv: line 2: boxes must be finite"),
        ("file,x0,y0,x1,y1\na.jpg,1,2,3,4\n", r"boxes.csv: line 1: header"),
        ("", r"boxes.csv: empty file"),
    ],
)
def test_bad_csv_rows_name_file_and_line(tmp_path, text, message):
    path = tmp_path / "boxes.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_boxes(path)


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"a.jpg": [[1, 2, 3, 4]]', r"boxes.json: line 1, column \d+: not valid JSON"),
        ('[[1, 2, 3, 4]]', r"boxes.json: expected a JSON object mapping image files"),
        ('{"a.jpg": [[1, 2, 3]]}', r"boxes.json: image 'a.jpg', box 0: expected four numbers"),
        ('{"a.jpg": [[1, 2, 3, 4], [5, 6, 5, 9]]}', r"boxes.json: image 'a.jpg', box 1: .*empty"),
        ('{"a.jpg": "1,2,3,4"}', r"boxes.json: image 'a.jpg': expected a box"),
    ],
)
def test_bad_json_names_file_and_image(tmp_path, text, message):
    path = tmp_path / "boxes.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_boxes(path)


def test_other_box_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_boxes(tmp_path / "missing.json")
    (tmp_path / "boxes.txt").write_text("")
    with pytest.raises(ValueError, match="expected .json or .csv"):
        load_boxes(tmp_path / "boxes.txt")
    with pytest.raises(ValueError, match="four numbers"):
        parse_box("1,2,3")
    np.testing.assert_allclose(parse_box(" 1, 2,3,4"), [1, 2, 3, 4])
    with pytest.raises(ValueError, match=r"shape \(n, 4\)"):
        check_boxes(np.zeros((2, 3)))
    ambiguous = BoxesFromFile({"x/a.jpg": np.ones((1, 4)), "y/a.jpg": np.ones((1, 4))}, source="f.json")
    with pytest.raises(ValueError, match="matches several entries"):
        ambiguous.lookup("z/a.jpg")
    assert ambiguous.lookup("x/a.jpg") is not None and ambiguous.unused() == ["y/a.jpg"]


def test_calibration_apply_parse_and_estimate():
    calibration = BoxCalibration(scale=0.9, shift_x=0.05, shift_y=0.2)
    box = np.array([[100.0, 100.0, 200.0, 180.0]])  # side = max(w, h) = 100, centre (150, 140)
    np.testing.assert_allclose(calibration.apply(box), [[155 - 45, 160 - 45, 155 + 45, 160 + 45]])
    assert BoxCalibration.from_dict(calibration.to_dict()) == calibration
    assert BoxCalibration.parse("0.9,0.05,0.2") == BoxCalibration(0.9, 0.05, 0.2, source="command line")
    with pytest.raises(ValueError, match="SCALE,SHIFT_X,SHIFT_Y"):
        BoxCalibration.parse("0.9,0.1")
    with pytest.raises(ValueError, match="scale must be positive"):
        BoxCalibration(scale=0.0)

    # Detector boxes of random faces whose landmark boxes follow a known calibration (+ noise):
    # the estimate recovers it.
    rng = np.random.default_rng(0)
    centres = rng.uniform(100, 400, (50, 2))
    sides = rng.uniform(40, 200, 50)
    detector = np.column_stack([centres - sides[:, None] / 2, centres + sides[:, None] / 2])
    target = calibration.apply(detector) + rng.normal(0, 0.5, (50, 4))
    estimated, spread = estimate_calibration(detector, target, source="synthetic")
    assert estimated.scale == pytest.approx(0.9, abs=0.01)
    assert estimated.shift_x == pytest.approx(0.05, abs=0.01) and estimated.shift_y == pytest.approx(0.2, abs=0.01)
    assert spread["faces"] == 50 and spread["scale_iqr"] < 0.02
    with pytest.raises(ValueError, match="same non-zero number"):
        estimate_calibration(detector, target[:3])


def test_iou():
    a = np.array([[0.0, 0.0, 10.0, 10.0]])
    b = np.array([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    np.testing.assert_allclose(box_iou(a, b), [[1.0, 1 / 3, 0.0]])


def test_haar_finds_the_astronaut_and_errors_clearly(tmp_path):
    data = pytest.importorskip("skimage.data")
    image = data.astronaut()
    detector = HaarFaceDetector()
    assert isinstance(detector, FaceDetector)
    boxes = detector.detect(image)
    assert boxes.shape == (1, 5)
    x_min, y_min, x_max, y_max, score = boxes[0]
    # Her face is around x 180..270, y 70..170 of the 512 x 512 photo.
    assert 160 < x_min < 200 and 250 < x_max < 290 and 50 < y_min < 90 and 140 < y_max < 180 and score > 0
    # Downscaled for speed, boxes still in the original pixels.
    big = np.repeat(np.repeat(image, 2, axis=0), 2, axis=1)
    np.testing.assert_allclose(detector.detect(big)[0, :4] / 2, boxes[0, :4], atol=6)
    assert detector.detect(np.zeros((64, 64, 3), np.uint8)).shape == (0, 5)

    with pytest.raises(FileNotFoundError, match="Haar cascade .*missing_cascade.xml does not exist.*--boxes"):
        HaarFaceDetector("missing_cascade.xml")
    not_a_cascade = tmp_path / "cascade.xml"
    not_a_cascade.write_text("<opencv_storage></opencv_storage>")
    with pytest.raises(ValueError, match="could not be loaded"):
        HaarFaceDetector(str(not_a_cascade))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        detector.detect(np.zeros((64, 64), np.uint8))
