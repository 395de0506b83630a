"""Inference and deployment: landmarks on your own images and videos, export, speed.

- :class:`Predictor` (``predictor.py``): weights -> landmarks in image pixels, any number of faces.
- ``detectors.py``: the detector interface, the face detectors (Haar built in; MediaPipe BlazeFace,
  dlib HOG, YuNet as optional extras; ``make_detector``), your own boxes (JSON/CSV) and
  the calibration of a detector's box to the model's training crop.
- ``video.py``: tracking from the previous frame's landmarks; ``smoothing.py``: One-Euro filter.
- ``export.py``: ONNX / TorchScript; ``bench.py``: the speed table; ``batch.py``: ``facemark predict``.

Command-line entry points (wired into ``facemark`` by :mod:`facemark.cli`), in ``commands.py``:
``add_predict_arguments`` / ``run_predict``, ``add_export_arguments`` / ``run_export``,
``add_bench_arguments`` / ``run_bench``; the ``add_*`` functions import nothing heavy.
"""
from importlib import import_module

# Name -> submodule. Imported on first use, so that `import facemark.inference.batch` (the CLI's
# argument parsers) does not pull in torch, ONNX and OpenCV when only `--help` is wanted.
_WHERE = {
    "Predictor": "predictor", "FaceLandmarks": "predictor", "ModelBundle": "predictor",
    "load_weights": "predictor", "weights_kind": "predictor", "onnx_session": "predictor",
    "FaceDetector": "detectors", "HaarFaceDetector": "detectors", "BoxCalibration": "detectors",
    "IDENTITY_CALIBRATION": "detectors", "HAAR_FRONTALFACE_CALIBRATION": "detectors",
    "estimate_calibration": "detectors", "load_boxes": "detectors", "BoxesFromFile": "detectors",
    "make_detector": "detectors", "MediaPipeFaceDetector": "detectors", "DlibHogFaceDetector": "detectors",
    "YuNetFaceDetector": "detectors", "DetectorNotInstalledError": "detectors",
    "OneEuroSettings": "smoothing", "OneEuroFilter": "smoothing", "LandmarkSmoother": "smoothing",
    "FaceTracker": "video", "VideoReader": "video", "VideoWriter": "video",
    "export_model": "export",
    "add_predict_arguments": "commands", "run_predict": "commands",
    "add_export_arguments": "commands", "run_export": "commands",
    "add_bench_arguments": "commands", "run_bench": "commands",
}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(f"facemark.inference.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'facemark.inference' has no attribute {name!r}")


__all__ = [
    "Predictor",
    "FaceLandmarks",
    "ModelBundle",
    "load_weights",
    "weights_kind",
    "onnx_session",
    "FaceDetector",
    "HaarFaceDetector",
    "BoxCalibration",
    "IDENTITY_CALIBRATION",
    "HAAR_FRONTALFACE_CALIBRATION",
    "make_detector",
    "MediaPipeFaceDetector",
    "DlibHogFaceDetector",
    "YuNetFaceDetector",
    "DetectorNotInstalledError",
    "estimate_calibration",
    "load_boxes",
    "BoxesFromFile",
    "OneEuroSettings",
    "OneEuroFilter",
    "LandmarkSmoother",
    "FaceTracker",
    "VideoReader",
    "VideoWriter",
    "export_model",
    "add_predict_arguments",
    "run_predict",
    "add_export_arguments",
    "run_export",
    "add_bench_arguments",
    "run_bench",
]
