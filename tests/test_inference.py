"""facemark.inference: the Predictor's crop round trip on a real photograph, weights recognition,
the ``facemark predict`` command on files, folders and video, and the One-Euro filter.

The photograph is scikit-image's public-domain ``astronaut`` (read at test time, never stored).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from facemark.data.transforms import CropConvention, landmark_box, slpt_crop_convention
from facemark.inference.commands import add_predict_arguments, run_predict
from facemark.inference.detectors import IDENTITY_CALIBRATION, BoxCalibration, HaarFaceDetector
from facemark.inference.predictor import Predictor, weights_kind
from facemark.inference.smoothing import LandmarkSmoother, OneEuroFilter, OneEuroSettings
from facemark.inference.video import FaceTracker, VideoReader
from facemark.layouts import WFLW98
from facemark.models.slpt import load_official_mean_face

torch.set_num_threads(1)
skimage_data = pytest.importorskip("skimage.data")


@dataclass
class _Output:
    landmarks: torch.Tensor


class MeanFaceModel(nn.Module):
    """Obeys the facemark model contract and always answers the mean face (normalised crop
    coordinates): what it returns mapped to the image shows exactly where the pipeline put the crop."""

    def __init__(self, mean_face: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean_face", mean_face.float())
        self.scale = nn.Parameter(torch.zeros(()))  # a parameter, so that exporters see a graph

    def forward(self, images: torch.Tensor) -> _Output:
        return _Output(self.mean_face.expand(images.shape[0], -1, -1) + self.scale * images.mean())


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage_data.astronaut()


@pytest.fixture(scope="module")
def mean_face() -> torch.Tensor:
    return load_official_mean_face(98)


@pytest.fixture(scope="module")
def mean_face_predictor(mean_face) -> Predictor:
    return Predictor(MeanFaceModel(mean_face), layout="wflw98", crop_convention=slpt_crop_convention(), detector="haar")


# Hand-marked on the astronaut photo (512 x 512): eye centres and mouth centre, in pixels.
ASTRONAUT_LEFT_EYE = (202.0, 100.0)
ASTRONAUT_RIGHT_EYE = (247.0, 102.0)
ASTRONAUT_MOUTH = (224.0, 144.0)


def test_mean_face_lands_on_the_detected_face(astronaut, mean_face, mean_face_predictor):
    faces = mean_face_predictor.predict(astronaut)
    assert len(faces) == 1, "the Haar cascade must find the astronaut's face"
    face = faces[0]
    x_min, y_min, x_max, y_max = face.box
    side = max(x_max - x_min, y_max - y_min)
    assert face.box_source.startswith("detector:haar") and face.landmarks.shape == (98, 2)

    # The crop convention, exactly: the calibrated box enlarged 1.2x is the crop, and the mean face
    # (normalised crop coordinates) maps to centre + (m - 1/2) * crop side.
    calibrated = mean_face_predictor.detector_calibration.apply(face.box[None])[0]
    crop_side = 1.2 * (calibrated[2] - calibrated[0])
    centre = (calibrated[:2] + calibrated[2:]) / 2
    np.testing.assert_allclose(face.crop_box, [*(centre - crop_side / 2), *(centre + crop_side / 2)], atol=1e-9)
    np.testing.assert_allclose(face.landmarks, centre + (mean_face.numpy() - 0.5) * crop_side, atol=1e-3)

    # On the face: eyes and mouth inside the detector's box, every point within the box grown by
    # 20% (the contour and chin reach below a Haar box), eyes above the mouth, left eye on the left.
    layout = face.layout
    left_eye = face.landmarks[list(layout.groups["left_eye"])].mean(axis=0)
    right_eye = face.landmarks[list(layout.groups["right_eye"])].mean(axis=0)
    mouth = face.landmarks[list(layout.groups["outer_lip"])].mean(axis=0)
    for point in (left_eye, right_eye, mouth):
        assert x_min <= point[0] <= x_max and y_min <= point[1] <= y_max
    margin = 0.2 * side
    assert (face.landmarks[:, 0] >= x_min - margin).all() and (face.landmarks[:, 0] <= x_max + margin).all()
    assert (face.landmarks[:, 1] >= y_min - margin).all() and (face.landmarks[:, 1] <= y_max + margin).all()
    assert left_eye[1] < mouth[1] and right_eye[1] < mouth[1] and left_eye[0] < right_eye[0]
    # And close to where a person marks them on the photo (within 12% of the face size).
    for predicted, marked in ((left_eye, ASTRONAUT_LEFT_EYE), (right_eye, ASTRONAUT_RIGHT_EYE), (mouth, ASTRONAUT_MOUTH)):
        assert np.linalg.norm(predicted - np.asarray(marked)) < 0.12 * side


def test_user_boxes_calibration_and_second_pass(astronaut, mean_face):
    model = MeanFaceModel(mean_face)
    box = np.array([180.0, 90.0, 270.0, 170.0])
    plain = Predictor(model, layout="wflw98", crop_convention=slpt_crop_convention(), detector=None)
    face = plain.predict(astronaut, box[None])[0]
    assert face.box_source == "user" and face.score is None
    np.testing.assert_allclose(face.box, box)
    # Identity calibration: the crop is the square of side 1.2 x max(w, h) around the box centre.
    np.testing.assert_allclose(face.crop_box, [171.0, 76.0, 279.0, 184.0], atol=1e-9)
    # The official mean face spans exactly 1/1.2 of the crop in x: its tight box is the user box's width.
    np.testing.assert_allclose(landmark_box(face.landmarks)[0::2], [180.0, 270.0], atol=1e-3)

    shifted = Predictor(model, layout="wflw98", crop_convention=slpt_crop_convention(), detector=None,
                        box_calibration=BoxCalibration(scale=0.5, shift_x=0.1, shift_y=-0.1))
    face = shifted.predict(astronaut, box[None])[0]
    np.testing.assert_allclose(face.crop_box, [225 + 9 - 27, 130 - 9 - 27, 225 + 9 + 27, 130 - 9 + 27], atol=1e-9)

    # A second pass crops around the first pass's landmarks (the training crop of a landmark-box
    # model): with the mean face that is the square 1.2 x its own tight box.
    two_pass = Predictor(model, layout="wflw98", crop_convention=slpt_crop_convention(), detector=None, passes=2)
    first = plain.predict(astronaut, box[None])[0]
    second = two_pass.predict(astronaut, box[None])[0]
    tight = np.asarray(landmark_box(first.landmarks))
    side = 1.2 * max(tight[2] - tight[0], tight[3] - tight[1])
    centre = (tight[:2] + tight[2:]) / 2
    np.testing.assert_allclose(second.crop_box, [*(centre - side / 2), *(centre + side / 2)], atol=1e-6)


def test_batch_68_points_custom_detector_and_bad_input(astronaut, mean_face):
    class TwoFaces:
        name = "fixed"

        def detect(self, image):
            return np.array([[10.0, 10.0, 60.0, 60.0, 0.5], [180.0, 90.0, 270.0, 170.0, 0.9]])

    predictor = Predictor(MeanFaceModel(mean_face), layout="wflw98", crop_convention=slpt_crop_convention(),
                          detector=TwoFaces(), output_layout="300w68")
    small = astronaut[::2, ::2].copy()
    results = predictor.predict_batch([astronaut, small])
    assert [len(faces) for faces in results] == [2, 2]
    face = results[0][1]
    assert face.layout.name == "300w68" and face.landmarks.shape == (68, 2)
    assert face.score == pytest.approx(0.9) and face.box_source == "detector:fixed"
    # Same faces, one image at a time: identical.
    np.testing.assert_allclose(predictor.predict(small)[1].landmarks, results[1][1].landmarks, atol=1e-9)
    json.dumps(face.to_dict())  # JSON-friendly

    with pytest.raises(ValueError, match="uint8"):
        predictor.predict(astronaut.astype(np.float32))
    with pytest.raises(ValueError, match="empty"):
        predictor.predict(astronaut, [[50, 50, 40, 80]])
    with pytest.raises(ValueError, match="cannot convert"):
        Predictor(MeanFaceModel(mean_face[:29]), layout="cofw29", crop_convention=slpt_crop_convention(), output_layout="300w68")
    no_detector = Predictor(MeanFaceModel(mean_face), layout="wflw98", crop_convention=slpt_crop_convention(), detector=None)
    with pytest.raises(ValueError, match="no detector"):
        no_detector.predict(astronaut)
    with pytest.raises(ValueError, match="layout= and crop_convention="):
        Predictor(MeanFaceModel(mean_face))


def test_checkpoint_kinds_are_recognised(tmp_path, astronaut):
    from facemark.engine.checkpoint import save_checkpoint
    from facemark.models.slpt import SLPTConfig, build_slpt

    # An authors'-style state dict is recognised by its keys (the loader itself is SLPT's, tested there).
    fake_official = {"Transformer.landmark_query": torch.zeros(1, 98, 256), "feature_extractor.weight": torch.zeros(1),
                     "backbone.conv1.weight": torch.zeros(1)}
    torch.save(fake_official, tmp_path / "official.pth")
    assert weights_kind(tmp_path / "official.pth") == "official_slpt"
    torch.save({"state_dict": fake_official}, tmp_path / "wrapped.pth")
    assert weights_kind(tmp_path / "wrapped.pth") == "official_slpt"
    torch.save({"something": torch.zeros(1)}, tmp_path / "other.pth")
    assert weights_kind(tmp_path / "other.pth") == "facemark"
    with pytest.raises(FileNotFoundError):
        weights_kind(tmp_path / "missing.pt")

    # A facemark checkpoint: rebuilt from the file alone, crop convention from the file.
    torch.manual_seed(0)
    options = {"num_layers": 1, "embed_dim": 32, "num_heads": 2, "feedforward_dim": 64, "patch_samples": 3}
    crop = CropConvention("landmarks", 1.25, 64)
    mean = load_official_mean_face(98).numpy()
    model = build_slpt(SLPTConfig(num_points=98, **options), mean_face=mean)
    spec = {"method": "slpt", "backbone": "hrnet_w18c_lite", "options": options, "layout": WFLW98.to_dict(),
            "statistics": {"mean_face": mean}, "crop": crop.to_dict(), "image_size": 64}
    path = save_checkpoint({"model": model.state_dict(), "model_spec": spec, "epoch": 1, "config": {}}, tmp_path / "slpt.pt")
    assert weights_kind(path) == "facemark"
    predictor = Predictor(path, detector=None)
    assert predictor.crop == crop and predictor.layout.name == "wflw98"
    face = predictor.predict(astronaut, [[180, 90, 270, 170]])[0]
    assert face.landmarks.shape == (98, 2) and np.isfinite(face.landmarks).all()
    reference = Predictor(model, layout="wflw98", crop_convention=crop, detector=None)
    np.testing.assert_allclose(face.landmarks, reference.predict(astronaut, [[180, 90, 270, 170]])[0].landmarks, atol=1e-6)


# -- facemark predict ---------------------------------------------------------------------------------
def _predict_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_predict_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def mean_face_onnx(tmp_path_factory, mean_face) -> str:
    pytest.importorskip("onnxruntime")  # the [onnx] extra
    from facemark.inference.export import export_model

    path = tmp_path_factory.mktemp("weights") / "mean_face.onnx"
    export_model(MeanFaceModel(mean_face), path, "onnx", layout="wflw98", crop_convention=CropConvention("landmarks", 1.2, 64))
    return str(path)


def test_onnx_file_picks_the_onnx_backend(mean_face_onnx, astronaut, mean_face):
    # README: Predictor("model.onnx") works as it is; the .onnx file needs ONNX Runtime.
    predictor = Predictor(mean_face_onnx, detector=None)
    assert predictor.backend == predictor.bundle.backend == "onnx"
    face = predictor.predict(astronaut, [[180, 90, 270, 170]])[0]
    reference = Predictor(MeanFaceModel(mean_face), layout="wflw98", crop_convention=CropConvention("landmarks", 1.2, 64), detector=None)
    assert reference.backend == "torch"
    np.testing.assert_allclose(face.landmarks, reference.predict(astronaut, [[180, 90, 270, 170]])[0].landmarks, atol=1e-3)
    with pytest.raises(ValueError, match="runs with backend='onnx'"):
        Predictor(mean_face_onnx, backend="torch", detector=None)


def test_predict_command_reports_unreadable_files_and_goes_on(tmp_path, astronaut, mean_face_onnx, capsys):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    cv2.imwrite(str(folder / "astronaut.png"), cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / "sub" / "small.jpg"), cv2.cvtColor(astronaut[::2, ::2], cv2.COLOR_RGB2BGR))
    (folder / "broken.jpg").write_bytes(b"this is not a JPEG")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    code = run_predict(_predict_args([str(folder), str(tmp_path / "missing.png"), "--weights", mean_face_onnx,
                                      "--out", str(out), "--draw", "--no-progress"]))
    captured = capsys.readouterr()
    assert code == 1
    assert "broken.jpg" in captured.err and "could not be decoded" in captured.err
    assert "missing.png" in captured.err and "no such file" in captured.err
    document = json.loads((out / "predictions.json").read_text())
    assert sorted(entry["file"].rsplit("/", 1)[-1] for entry in document["images"]) == ["astronaut.png", "small.jpg"]
    assert all(len(entry["faces"]) == 1 and len(entry["faces"][0]["landmarks"]) == 98 for entry in document["images"])
    assert {f["file"].rsplit("/", 1)[-1] for f in document["failed"]} == {"broken.jpg", "missing.png"}
    assert document["crop_convention"] == {"box_source": "landmarks", "enlarge": 1.2, "size": 64, "normalisation": "imagenet_rgb"}
    drawn = cv2.imread(str(out / "drawn" / "photos" / "astronaut.png"))
    assert drawn is not None and drawn.shape == astronaut.shape
    assert (out / "drawn" / "photos" / "sub" / "small.png").is_file()
    assert "1 files in the folders were not images" in captured.out
    assert f"2 drawings in {out / 'drawn'}" in captured.out


def test_predict_command_csv_boxes_and_68_points(tmp_path, astronaut, mean_face_onnx):
    image = tmp_path / "astronaut.png"
    cv2.imwrite(str(image), cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR))
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("image,x_min,y_min,x_max,y_max\nastronaut.png,180,90,270,170\nastronaut.png,300,300,340,340\n")
    out = tmp_path / "out"
    code = run_predict(_predict_args([str(image), "--weights", mean_face_onnx, "--boxes", str(boxes), "--points", "68",
                                      "--format", "csv", "--out", str(out), "--no-progress"]))
    assert code == 0
    lines = (out / "predictions.csv").read_text().strip().splitlines()
    header = lines[0].split(",")
    assert header[:6] == ["file", "frame", "face", "track", "box_source", "score"] and header[-1] == "y67"
    assert len(lines) == 3 and all(len(line.split(",")) == len(header) for line in lines[1:])
    assert lines[1].split(",")[6:10] == ["180.0", "90.0", "270.0", "170.0"]

    bad = tmp_path / "bad.csv"
    bad.write_text("image,x_min,y_min,x_max,y_max\nastronaut.png,1,2,3\n")
    from facemark.errors import CommandError

    with pytest.raises(CommandError, match=r"bad.csv: line 2: 4 fields, expected 5"):
        run_predict(_predict_args([str(image), "--weights", mean_face_onnx, "--boxes", str(bad), "--out", str(out)]))


def _write_video(path, frames, fps=10.0):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (frames[0].shape[1], frames[0].shape[0]))
    assert writer.isOpened()
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def test_video_tracking_and_command(tmp_path, astronaut, mean_face, mean_face_onnx):
    # The face moves 3 px right per frame.
    frames = [np.ascontiguousarray(np.roll(astronaut, 3 * i, axis=1)[:320, 64:448]) for i in range(6)]
    video = tmp_path / "clip.avi"
    _write_video(video, frames)
    reader = VideoReader(video)
    assert reader.fps == pytest.approx(10.0)

    calls = []

    class CountingHaar(HaarFaceDetector):
        def detect(self, image):
            calls.append(1)
            return super().detect(image)

    predictor = Predictor(MeanFaceModel(mean_face), layout="wflw98", crop_convention=slpt_crop_convention(), detector=CountingHaar())
    # Haar also fires on the space suit here (score ~2 against ~6.5 for the face): keep the best face.
    tracker = FaceTracker(predictor, detect_every=4, smoothing=None, fps=reader.fps, max_faces=1)
    per_frame = [tracker.update(frame) for frame in reader]
    assert [len(faces) for faces in per_frame] == [1] * 6
    assert [faces[0].detected for faces in per_frame] == [True, False, False, False, False, False]
    assert len(calls) == 2  # frames 0 and 4: the detector confirmed the track, which went on
    assert len({faces[0].track_id for faces in per_frame}) == 1
    # The mean face's tight box is its own training box: tracking keeps the crop (a fixed point).
    np.testing.assert_allclose(per_frame[5][0].face.crop_box, per_frame[0][0].face.crop_box, atol=1e-3)  # float32 model

    out = tmp_path / "out"
    code = run_predict(_predict_args([str(video), "--weights", mean_face_onnx, "--out", str(out), "--draw",
                                      "--detect-every", "3", "--max-faces", "1", "--no-progress"]))
    assert code == 0
    document = json.loads((out / "predictions.json").read_text())
    (entry,) = document["videos"]
    assert len(entry["frames"]) == 6 and entry["smoothing"]["min_cutoff"] == 1.0
    assert all(len(frame["faces"]) == 1 for frame in entry["frames"])
    drawn = VideoReader(out / "drawn" / "clip.mp4")
    assert sum(1 for _ in drawn) == 6


def test_unreadable_video_is_reported(tmp_path, mean_face_onnx, capsys):
    video = tmp_path / "broken.mp4"
    video.write_bytes(b"\x00" * 100)
    code = run_predict(_predict_args([str(video), "--weights", mean_face_onnx, "--out", str(tmp_path / "out"), "--no-progress"]))
    assert code == 1
    assert "broken.mp4" in capsys.readouterr().err


def test_partly_decodable_video_is_a_warning(tmp_path, astronaut, mean_face_onnx, capsys):
    # 60 MJPG frames, then the file cut at 60 % of its bytes: OpenCV decodes the first ~35 and
    # ends the stream there as if the video were over; the AVI header still announces 60.
    frames = [np.ascontiguousarray(np.roll(astronaut, 2 * i, axis=1)[::4, ::4]) for i in range(60)]
    whole = tmp_path / "whole.avi"
    _write_video(whole, frames)
    video = tmp_path / "cut.avi"
    video.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * 0.6)])
    reader = VideoReader(video)
    decoded = sum(1 for _ in reader)
    assert reader.frame_count == 60 and 0 < decoded == reader.frames_read < 60
    assert f"only {decoded} of the 60 frames" in reader.shortfall() and "cut.avi" in reader.shortfall()
    complete = VideoReader(whole)
    assert sum(1 for _ in complete) == 60 and complete.shortfall() is None

    out = tmp_path / "out"
    code = run_predict(_predict_args([str(video), str(whole), "--weights", mean_face_onnx, "--out", str(out),
                                      "--detect-every", "0", "--max-faces", "1", "--no-progress"]))
    captured = capsys.readouterr()
    assert code == 0  # landmarks for the decoded frames are still written
    assert f"warning: {video}: only {decoded} of the 60 frames" in captured.err
    assert f"1 warning(s): {video}: only {decoded} of the 60 frames" in captured.out
    document = json.loads((out / "predictions.json").read_text())
    entries = {entry["file"]: entry for entry in document["videos"]}
    assert (entries[str(video)]["frames_read"], entries[str(video)]["frames_announced"]) == (decoded, 60)
    assert len(entries[str(video)]["frames"]) == decoded and "only" in entries[str(video)]["warning"]
    assert entries[str(whole)]["frames_read"] == 60 and "warning" not in entries[str(whole)]


# -- One-Euro filter ----------------------------------------------------------------------------------
def test_one_euro_constant_signal_is_unchanged():
    smoother = OneEuroFilter(OneEuroSettings(min_cutoff=1.0, beta=20.0), frequency=30.0)
    constant = np.array([[12.5, -3.0], [7.0, 100.0]])
    for _ in range(50):
        np.testing.assert_array_equal(smoother(constant), constant)


def test_one_euro_reduces_jitter_and_follows_motion():
    rng = np.random.default_rng(0)
    settings = OneEuroSettings()  # the defaults: min_cutoff 1 Hz, beta 5
    still = LandmarkSmoother(settings, frequency=30.0)
    truth = np.full((98, 2), 100.0)
    noisy = [truth + rng.normal(0, 1.0, truth.shape) for _ in range(120)]
    filtered = np.array([still(frame, face_size=100.0) for frame in noisy])
    # 1% jitter of the face size: less than half is left (measured: x0.39).
    assert np.std(filtered[30:] - truth) < 0.5 * np.std(np.array(noisy)[30:] - truth)

    # A face moving at one face size per second is followed with a small lag.
    moving = LandmarkSmoother(settings, frequency=30.0)
    positions = [truth + 100.0 * t / 30.0 for t in range(60)]
    lagged = np.array([moving(p, face_size=100.0) for p in positions])
    lag = np.abs(lagged[-1] - positions[-1]).max()
    assert lag < 0.05 * 100.0  # less than 1/20 s behind (measured: 1.8 px = 0.018 s)
    # A heavier filter (lower cut-off, no speed adaptation) lags more.
    heavy = LandmarkSmoother(OneEuroSettings(min_cutoff=0.2, beta=0.0), frequency=30.0)
    heavy_lag = np.abs(np.array([heavy(p, face_size=100.0) for p in positions])[-1] - positions[-1]).max()
    assert heavy_lag > lag


def test_one_euro_bad_settings_and_times():
    with pytest.raises(ValueError, match="min_cutoff"):
        OneEuroSettings(min_cutoff=0.0)
    with pytest.raises(ValueError, match="beta"):
        OneEuroSettings(beta=-1.0)
    smoother = OneEuroFilter()
    with pytest.raises(ValueError, match="time"):
        smoother(np.zeros(2))
    smoother(np.zeros(2), time=1.0)
    with pytest.raises(ValueError, match="increase"):
        smoother(np.zeros(2), time=1.0)
    with pytest.raises(ValueError, match="shape"):
        smoother(np.zeros(3), time=2.0)


def test_identity_calibration_is_identity():
    boxes = np.array([[10.0, 20.0, 50.0, 40.0]])
    squared = IDENTITY_CALIBRATION.apply(boxes)
    # Square of side max(w, h) about the same centre: the crop (centre, max side) is unchanged.
    np.testing.assert_allclose(squared, [[10.0, 10.0, 50.0, 50.0]])


def test_authors_slpt_checkpoint_is_loaded_with_the_official_crop(tmp_path, astronaut):
    from facemark.models.official_slpt import to_official_state_dict
    from facemark.models.slpt import SLPTConfig, build_slpt

    torch.manual_seed(0)
    model = build_slpt(SLPTConfig(num_points=68, num_layers=1)).eval()  # the release layout, 1 layer to keep it fast
    path = tmp_path / "300W_1_layer.pth"
    torch.save(to_official_state_dict(model), path)
    predictor = Predictor(path, detector=None)
    assert predictor.layout.name == "300w68" and predictor.crop == slpt_crop_convention()
    assert "authors' SLPT" in predictor.bundle.description
    box = [[180.0, 90.0, 270.0, 170.0]]
    expected = Predictor(model, layout="300w68", crop_convention=slpt_crop_convention(), detector=None).predict(astronaut, box)
    np.testing.assert_allclose(predictor.predict(astronaut, box)[0].landmarks, expected[0].landmarks, atol=1e-4)


# -- facemark predict: inputs that lead nowhere ---------------------------------------------------------
def test_predict_reports_dangling_links_and_loops(tmp_path, astronaut, mean_face_onnx, capsys):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    cv2.imwrite(str(folder / "astronaut.png"), cv2.cvtColor(astronaut[:256, 128:384], cv2.COLOR_RGB2BGR))
    (folder / "dead.jpg").symlink_to(tmp_path / "deleted.jpg")  # dangling
    (folder / "self.jpg").symlink_to(folder / "self.jpg")  # a link to itself: ELOOP
    (folder / "sub" / "up").symlink_to(folder)  # a folder link back to a folder above it
    out = tmp_path / "out"
    code = run_predict(_predict_args([str(folder), "--weights", mean_face_onnx, "--out", str(out), "--no-progress"]))
    captured = capsys.readouterr()
    assert code == 0  # a warning, not a failure
    for name in ("dead.jpg", "self.jpg", "up"):
        assert f"warning: {folder / name if name != 'up' else folder / 'sub' / 'up'}: " in captured.err, captured.err
    assert "deleted.jpg does not exist" in captured.err
    assert "3 symbolic links lead nowhere and were skipped (1 dangling, 2 loop)" in captured.out
    document = json.loads((out / "predictions.json").read_text())
    assert len(document["images"]) == 1  # the image is not found again through the loop
    assert sorted(entry["file"].rsplit("/", 1)[-1] for entry in document["skipped_links"]) == ["dead.jpg", "self.jpg", "up"]


def test_predict_empty_folder_is_an_error(tmp_path, mean_face_onnx):
    from facemark.errors import CommandError

    (tmp_path / "empty").mkdir()
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "notes.txt").write_text("not an image")
    with pytest.raises(CommandError, match=r"nothing to process: .*empty: no image or video files in this folder"):
        run_predict(_predict_args([str(tmp_path / "empty"), "--weights", mean_face_onnx, "--out", str(tmp_path / "o")]))
    with pytest.raises(CommandError, match=r"texts: no image or video files.*1 files in the folders are neither"):
        run_predict(_predict_args([str(tmp_path / "texts"), "--weights", mean_face_onnx, "--out", str(tmp_path / "o")]))


def test_predict_says_no_drawings_when_none_were_written(tmp_path, mean_face_onnx, capsys):
    (tmp_path / "broken.jpg").write_bytes(b"this is not a JPEG")
    out = tmp_path / "out"
    code = run_predict(_predict_args([str(tmp_path / "broken.jpg"), "--weights", mean_face_onnx, "--out", str(out),
                                      "--draw", "--no-progress"]))
    printed = capsys.readouterr().out
    assert code == 1
    assert "drawings in" not in printed and "no drawings written" in printed


def test_predict_command_detector_options(tmp_path, astronaut, mean_face_onnx, capsys):
    image = tmp_path / "astronaut.png"
    cv2.imwrite(str(image), cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR))
    out = tmp_path / "out"
    code = run_predict(_predict_args([str(image), "--weights", mean_face_onnx, "--detector", "haar", "--out", str(out), "--no-progress"]))
    document = json.loads((out / "predictions.json").read_text())
    assert code == 0 and document["detector"] == "haar:haarcascade_frontalface_default"
    assert "real faces" in document["detector_calibration"]["source"] and len(document["images"][0]["faces"]) == 1
    # Her face is ~95 px: a 150-pixel minimum finds nothing, and says so.
    out = tmp_path / "out_min_size"  # a second run into the same --out needs --resume
    code = run_predict(_predict_args([str(image), "--weights", mean_face_onnx, "--detector", "haar", "--min-face-size", "150",
                                      "--out", str(out), "--no-progress"]))
    assert code == 0 and json.loads((out / "predictions.json").read_text())["images"][0]["faces"] == []
    assert "no face found" in capsys.readouterr().err
    from facemark.errors import CommandError

    with pytest.raises(CommandError, match="YuNet model file .*missing.onnx does not exist"):
        run_predict(_predict_args([str(image), "--weights", mean_face_onnx, "--yunet-model", str(tmp_path / "missing.onnx"), "--out", str(tmp_path / "out_yunet")]))
    with pytest.raises(CommandError, match="min_face_size must be a positive number"):
        run_predict(_predict_args([str(image), "--weights", mean_face_onnx, "--min-face-size", "-3", "--out", str(tmp_path / "out_negative")]))
