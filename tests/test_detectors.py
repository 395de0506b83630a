"""facemark.inference.detectors: the user's boxes (JSON/CSV) with clear errors, box calibration,
the face detectors on a real photograph (scikit-image's astronaut, read at test time; MediaPipe
and dlib only where their extras are installed), the ``auto`` choice and the not-installed error,
and EXIF orientation of JPEGs."""
from __future__ import annotations

import argparse
import struct
import sys

import cv2
import numpy as np
import pytest

from facemark.inference import detectors as detectors_module
from facemark.inference.detectors import (
    AUTO_ORDER,
    DETECTOR_NAMES,
    BoxCalibration,
    BoxesFromFile,
    DetectorNotInstalledError,
    FaceDetector,
    HaarFaceDetector,
    box_iou,
    check_boxes,
    detector_installed,
    estimate_calibration,
    load_boxes,
    make_detector,
    parse_box,
)

# The astronaut's face in scikit-image's 512 x 512 photo: her chin, eyes and brows lie inside.
ASTRONAUT_FACE = (180.0, 70.0, 270.0, 170.0)


def _finds_the_astronaut(boxes) -> None:
    """The best box is her face: its centre near the face's centre, its side near the face's."""
    assert len(boxes) >= 1 and boxes.shape[1] == 5
    x_min, y_min, x_max, y_max = boxes[0, :4]
    centre = np.array([(x_min + x_max) / 2, (y_min + y_max) / 2])
    face_centre = np.array([(ASTRONAUT_FACE[0] + ASTRONAUT_FACE[2]) / 2, (ASTRONAUT_FACE[1] + ASTRONAUT_FACE[3]) / 2])
    assert np.linalg.norm(centre - face_centre) < 25, boxes[0]
    assert 65 < max(x_max - x_min, y_max - y_min) < 130, boxes[0]


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


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return pytest.importorskip("skimage.data").astronaut()


def _mediapipe_or_skip():
    pytest.importorskip("mediapipe")
    if not detector_installed("mediapipe-full"):
        pytest.skip("this mediapipe release has no BlazeFace solution (releases after 0.10.21)")


@pytest.mark.parametrize("name", ["mediapipe-full", "mediapipe-short"])
def test_mediapipe_finds_the_astronaut(astronaut, name):
    _mediapipe_or_skip()
    detector = make_detector(name)
    assert isinstance(detector, FaceDetector) and detector.name == name
    boxes = detector.detect(astronaut)
    _finds_the_astronaut(boxes)
    assert len(boxes) == 1 and 0.5 <= boxes[0, 4] <= 1.0
    assert "real faces" in detector.calibration.source
    assert detector.detect(np.zeros((64, 64, 3), np.uint8)).shape == (0, 5)
    assert make_detector(name, min_face_size=200).detect(astronaut).shape == (0, 5)  # her face is ~100 px


def test_dlib_hog_finds_the_astronaut_and_tiny_faces(astronaut):
    pytest.importorskip("dlib")
    detector = make_detector("dlib-hog")
    assert isinstance(detector, FaceDetector) and detector.name == "dlib-hog"
    _finds_the_astronaut(detector.detect(astronaut))
    assert "real faces" in detector.calibration.source
    # A tiny face (the photo shrunk to 144 px: her face ~25 px) is below the default 40-pixel
    # search and found with min_face_size; the box is in the original image's pixels.
    canvas = np.full((400, 400, 3), 128, np.uint8)
    canvas[200:344, 100:244] = cv2.resize(astronaut, (144, 144), interpolation=cv2.INTER_AREA)
    assert detector.detect(canvas).shape == (0, 5)
    tiny = make_detector("dlib-hog", min_face_size=22).detect(canvas)
    shrunk_face = np.array(ASTRONAUT_FACE) * 144 / 512 + [100, 200, 100, 200]
    assert len(tiny) >= 1 and box_iou(tiny[:1, :4], shrunk_face[None])[0, 0] > 0.4, tiny


def test_haar_min_face_size(astronaut):
    assert make_detector("haar", min_face_size=150).detect(astronaut).shape == (0, 5)  # her face is ~95 px
    _finds_the_astronaut(make_detector("haar", min_face_size=60).detect(astronaut))
    # A face below the default search (8 % of the image's shorter side after downscaling to 640
    # px) is searched for when min_face_size asks for it: the image is downscaled less.
    big = cv2.resize(astronaut, (1536, 1536), interpolation=cv2.INTER_LINEAR)
    canvas = np.full((1536, 3072, 3), 128, np.uint8)
    canvas[:, :1536] = big
    default = make_detector("haar").detect(canvas)
    assert make_detector("haar", min_face_size=100).min_face_size == 100.0
    found = make_detector("haar", min_face_size=100).detect(canvas)
    assert len(found) >= 1 and box_iou(found[:1, :4], np.array(ASTRONAUT_FACE)[None] * 3)[0, 0] > 0.5
    assert len(default) >= 1  # 285-pixel face: found either way, both in the original pixels
    with pytest.raises(ValueError, match="min_face_size must be a positive number"):
        make_detector("haar", min_face_size=0)


def test_auto_picks_the_best_installed_detector(monkeypatch, tmp_path):
    expected = next(name for name in AUTO_ORDER if detector_installed(name))
    assert make_detector("auto").name.startswith("haar" if expected == "haar" else expected)
    # Nothing optional installed: Haar, the built-in one.
    monkeypatch.setattr(detectors_module, "detector_installed", lambda name: name == "haar")
    assert make_detector("auto").name == "haar:haarcascade_frontalface_default"
    # Only dlib: dlib's HOG comes before Haar (the benchmark's order).
    assert AUTO_ORDER.index("dlib-hog") < AUTO_ORDER.index("haar")
    assert AUTO_ORDER.index("mediapipe-full") < AUTO_ORDER.index("dlib-hog")
    # A YuNet model file given: auto means YuNet (here the file does not exist: the error says so).
    with pytest.raises(FileNotFoundError, match="YuNet model file .*missing.onnx does not exist"):
        make_detector("auto", yunet_model=tmp_path / "missing.onnx")


@pytest.mark.parametrize("name, module, extra", [("mediapipe-full", "mediapipe", "mediapipe"), ("mediapipe-short", "mediapipe", "mediapipe"), ("dlib-hog", "dlib", "dlib")])
def test_a_missing_extra_names_the_pip_install(monkeypatch, name, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if the package were absent
    assert not detector_installed(name)
    with pytest.raises(DetectorNotInstalledError, match=rf"{name}.* not installed.*pip install 'facemark\[{extra}\]'"):
        make_detector(name)


def test_detector_names_and_errors(tmp_path):
    from facemark.inference.commands import DETECTOR_CHOICES

    assert DETECTOR_CHOICES == DETECTOR_NAMES
    with pytest.raises(ValueError, match="unknown face detector 'retina'"):
        make_detector("retina")
    with pytest.raises(ValueError, match="needs its ONNX model file"):
        make_detector("yunet")
    with pytest.raises(ValueError, match="a YuNet model file was given but the detector is 'haar'"):
        make_detector("haar", yunet_model=tmp_path / "yunet.onnx")
    not_a_model = tmp_path / "yunet.onnx"
    not_a_model.write_bytes(b"not an ONNX model")
    with pytest.raises(ValueError, match="YuNet model file .*yunet.onnx could not be loaded"):
        make_detector("yunet", yunet_model=not_a_model)


def test_predict_command_names_the_missing_extra(monkeypatch, tmp_path, astronaut):
    from facemark.errors import CommandError
    from facemark.inference.commands import add_predict_arguments, run_predict

    image = tmp_path / "astronaut.png"
    cv2.imwrite(str(image), cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR))
    parser = argparse.ArgumentParser()
    add_predict_arguments(parser)
    monkeypatch.setitem(sys.modules, "dlib", None)
    args = parser.parse_args([str(image), "--weights", str(tmp_path / "w.pt"), "--detector", "dlib-hog", "--out", str(tmp_path / "out")])
    with pytest.raises(CommandError, match=r"pip install 'facemark\[dlib\]'"):
        run_predict(args)


def _jpeg_with_orientation(image_rgb: np.ndarray, orientation: int) -> bytes:
    """A JPEG whose EXIF (an APP1 segment written here: little-endian TIFF header, one IFD entry)
    says ``Orientation = orientation``."""
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    payload = b"Exif\x00\x00" + tiff
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    data = encoded.tobytes()
    return data[:2] + app1 + data[2:]  # right after the SOI marker


def test_jpeg_exif_orientation_is_honoured(tmp_path):
    from facemark.data.records import read_image_rgb

    stored = np.zeros((32, 64, 3), np.uint8)  # landscape as stored, a white band on the left
    stored[:, :16] = 255
    path = tmp_path / "phone.jpg"
    path.write_bytes(_jpeg_with_orientation(stored, 6))  # 6: rotate 90 degrees clockwise to view
    upright = read_image_rgb(path)
    assert upright.shape == (64, 32, 3)
    assert upright[:16].mean() > 200 and upright[20:].mean() < 50  # the band is now on top
    raw = read_image_rgb(path, exif_orientation=False)  # dataset readers: the stored grid
    assert raw.shape == (32, 64, 3) and raw[:, :16].mean() > 200
    path.write_bytes(_jpeg_with_orientation(stored, 1))  # 1: as stored
    assert read_image_rgb(path).shape == (32, 64, 3)


def _write_bright_square_yunet(path) -> None:
    """A stand-in YuNet ONNX model (no real one may be downloaded): the outputs OpenCV's
    cv2.FaceDetectorYN reads (cls/obj/bbox/kps at strides 8, 16, 32), where the stride-32 cell's
    score is its mean brightness / 255 and every box is 64 x 64 pixels, centred at the cell's
    top-left corner (YuNet's box decoding: centre = (column + dx) * stride, side = exp(dw) * stride)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    initialisers = [
        numpy_helper.from_array(np.array([1, -1, 1], np.int64), "to_rows"),
        numpy_helper.from_array(np.array([255.0], np.float32), "white"),
        numpy_helper.from_array(np.array([0.0], np.float32), "zero"),
        numpy_helper.from_array(np.array([[[0.0, 0.0, np.log(2.0), np.log(2.0)]]], np.float32), "box_row"),
        numpy_helper.from_array(np.zeros((1, 1, 10), np.float32), "keypoint_row"),
    ]
    nodes, outputs = [], []
    for stride in (8, 16, 32):
        nodes += [
            helper.make_node("AveragePool", ["input"], [f"pool{stride}"], kernel_shape=[stride, stride], strides=[stride, stride]),
            helper.make_node("ReduceMean", [f"pool{stride}"], [f"grey{stride}"], axes=[1], keepdims=1),
            helper.make_node("Reshape", [f"grey{stride}", "to_rows"], [f"rows{stride}"]),
            helper.make_node("Div", [f"rows{stride}", "white"], [f"bright{stride}"]),
            helper.make_node("Mul", [f"bright{stride}", "zero"], [f"nothing{stride}"]),
        ]
        score = f"bright{stride}" if stride == 32 else f"nothing{stride}"
        nodes += [
            helper.make_node("Identity", [score], [f"cls_{stride}"]),
            helper.make_node("Identity", [score], [f"obj_{stride}"]),
            helper.make_node("Add", [f"nothing{stride}", "box_row"], [f"bbox_{stride}"]),
            helper.make_node("Add", [f"nothing{stride}", "keypoint_row"], [f"kps_{stride}"]),
        ]
        for kind, width in (("cls", 1), ("obj", 1), ("bbox", 4), ("kps", 10)):
            outputs.append(helper.make_tensor_value_info(f"{kind}_{stride}", TensorProto.FLOAT, [1, f"cells{stride}", width]))
    graph = helper.make_graph(nodes, "bright_square_yunet", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "height", "width"])],
                              outputs, initialisers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_yunet_reads_opencv_face_detector_outputs(tmp_path):
    model = tmp_path / "yunet.onnx"
    _write_bright_square_yunet(model)
    detector = make_detector("auto", yunet_model=model)  # a YuNet file given: auto is YuNet
    assert isinstance(detector, FaceDetector) and detector.name == "yunet"
    image = np.zeros((320, 320, 3), np.uint8)
    image[64:96, 96:128] = 255  # the stride-32 cell of row 2, column 3
    np.testing.assert_allclose(detector.detect(image), [[64, 32, 128, 96, 1.0]], atol=1e-4)
    # A large image is downscaled to 640 px first; the boxes come back in its own pixels.
    big = cv2.resize(image, (1280, 1280), interpolation=cv2.INTER_NEAREST)
    half = cv2.resize(big, (640, 640), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(detector.detect(big)[:, :4], 2 * detector.detect(half)[:, :4], atol=1e-3)
    assert make_detector("yunet", yunet_model=model, min_face_size=100).detect(image).shape == (0, 5)
