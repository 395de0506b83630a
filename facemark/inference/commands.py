"""The command-line entry points of ``facemark predict``, ``facemark export`` and ``facemark bench``.

``add_*_arguments(parser)`` declare the options (with help text for each) and import nothing
heavy, so that building the ``facemark`` parser stays fast; ``run_*(args) -> exit code`` import
the implementation on use (:mod:`facemark.inference.batch`, ``export``, ``bench``).
"""
from __future__ import annotations

import argparse

__all__ = [
    "add_predict_arguments",
    "run_predict",
    "add_export_arguments",
    "run_export",
    "add_bench_arguments",
    "run_bench",
]

# Defined here so that --help needs neither torch nor ONNX; export.py and bench.py import them.
# The lowest opset facemark's exports are tested with (tests/test_export.py).
DEFAULT_OPSET = 17
MIN_OPSET = 16
# The names of facemark.inference.detectors.DETECTOR_NAMES (kept in step by tests/test_detectors.py).
DETECTOR_CHOICES = ("auto", "mediapipe-full", "mediapipe-short", "dlib-hog", "yunet", "haar")
BENCH_PRESETS = {
    "slpt": "SLPT, HRNetW18C-lite backbone, 6 layers, 98 points, 256 x 256 (the authors' WFLW release)",
    "slpt-12": "SLPT, HRNetW18C-lite backbone, 12 layers, 98 points, 256 x 256",
}


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``facemark predict``."""
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (searched recursively) and video files")
    parser.add_argument("--weights", required=True, help="a facemark checkpoint, an authors' SLPT checkpoint, or an exported .onnx / TorchScript file")
    parser.add_argument("--out", default="facemark_output", help="output folder for predictions (predictions.jsonl, written as results come, then predictions.json or .csv) and drawings (default: facemark_output)")
    parser.add_argument("--format", choices=("json", "csv"), default="json", help="predictions file format: predictions.json (default) or predictions.csv (one row per face)")
    parser.add_argument("--draw", action="store_true", help="also write the images / videos with the landmarks drawn, under OUT/drawn/")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--backend", choices=("torch", "onnx"), default=None, help="torch or onnx (ONNX Runtime); default: onnx for .onnx weights, else torch")
    parser.add_argument("--trust-torchscript", action="store_true", help="run a TorchScript --weights file: it is a program, so it is refused unless you trust it (e.g. you exported it yourself); checkpoints and .onnx files need no trust")
    parser.add_argument("--boxes", default=None, help="face boxes file: .json {\"image\": [[x_min, y_min, x_max, y_max], ...]} or .csv with header image,x_min,y_min,x_max,y_max; images without an entry use the detector")
    parser.add_argument("--box", action="append", default=None, metavar="X_MIN,Y_MIN,X_MAX,Y_MAX", help="a face box used for every input image (repeat for several faces); overrides the detector")
    parser.add_argument("--box-calibration", default=None, metavar="SCALE,SHIFT_X,SHIFT_Y", help="map your boxes to the model's box (default 1,0,0: your boxes are the model's box, e.g. the tight landmark box for SLPT); see docs/inference.md")
    parser.add_argument("--detector", choices=DETECTOR_CHOICES, default="auto", help="face detector: auto (default: YuNet when --yunet-model is given, else the best installed: mediapipe-full, dlib-hog, then haar, which is built in), mediapipe-full / mediapipe-short (pip install 'facemark[mediapipe]'), dlib-hog (pip install 'facemark[dlib]'), yunet (needs --yunet-model), haar; see docs/inference.md")
    parser.add_argument("--yunet-model", default=None, metavar="FILE", help="the YuNet face detector's .onnx file (OpenCV model zoo; never downloaded); selects --detector yunet under auto")
    parser.add_argument("--min-face-size", type=float, default=None, metavar="PIXELS", help="smallest face to find, in pixels of the image (default: the detector's own; smaller finds tiny faces, slower)")
    parser.add_argument("--detector-calibration", default=None, metavar="SCALE,SHIFT_X,SHIFT_Y", help="replace the detector's calibration (default: the one measured for it on real faces, docs/inference.md)")
    parser.add_argument("--haar-cascade", default="haarcascade_frontalface_default.xml", help="Haar cascade: a file in cv2.data.haarcascades or a path (default: haarcascade_frontalface_default.xml)")
    parser.add_argument("--points", type=int, choices=(68,), default=None, help="68: return 300W 68-point landmarks from a 98-point WFLW model")
    parser.add_argument("--passes", type=int, default=1, help="crops per face; 2 re-crops around the first pass's landmarks (the training crop), removing detector-box error (default 1)")
    parser.add_argument("--batch-size", type=int, default=32, help="faces per forward pass, gathered from as many images as needed (default 32)")
    parser.add_argument("--workers", type=int, default=0, help="processes that decode images, run the face detector and cut the faces out while the model runs (default 0: in the main process)")
    parser.add_argument("--resume", action="store_true", help="add to the predictions already in --out, skipping the inputs it holds (e.g. after a stopped run); without it an --out holding predictions is an error")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for the model (default: library default)")
    video = parser.add_argument_group("video")
    video.add_argument("--detect-every", type=int, default=10, help="run the face detector every N frames; in between, faces are tracked from the previous frame's landmarks (0: detect only at the start and when a track is lost; default 10)")
    video.add_argument("--max-faces", type=int, default=None, help="track at most this many faces per video (default: all)")
    video.add_argument("--no-smoothing", action="store_true", help="turn the One-Euro temporal smoothing off")
    video.add_argument("--min-cutoff", type=float, default=1.0, help="One-Euro minimum cut-off in Hz: lower = smoother at rest, more lag (default 1.0)")
    video.add_argument("--beta", type=float, default=5.0, help="One-Euro speed coefficient (Hz per face size per second): higher = less lag when moving, more jitter (default 5)")
    video.add_argument("--derivative-cutoff", type=float, default=1.0, help="One-Euro cut-off of the speed estimate in Hz (default 1.0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``facemark export``."""
    parser.add_argument("--weights", required=True, help="a facemark checkpoint (.pt) or an authors' SLPT checkpoint (.pth)")
    parser.add_argument("--format", choices=("onnx", "torchscript"), default="onnx", help="output format (default: onnx)")
    parser.add_argument("--out", required=True, help="the file to write (e.g. slpt.onnx, slpt.ts)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET}; at least {MIN_OPSET})")
    parser.add_argument("--layout", default=None, help="layout of an authors' checkpoint whose point count is not 98 or 68 (a name or YAML file)")
    parser.add_argument("--no-check", action="store_true", help="skip running the exported model against the torch model")
    int8 = parser.add_argument_group("int8 quantization (ONNX Runtime static quantization; docs/inference.md says when it pays)")
    int8.add_argument("--quantize", choices=("int8",), default=None, help="write an int8 ONNX model, calibrated on face crops; its speed-up and NME_io change against fp32 are measured, printed and stored in the file")
    int8.add_argument("--calibration-data", default=None, metavar="ROOT", help="dataset folder for calibration and validation faces (with --dataset and --split); default: SynthFace faces rendered on the fly")
    int8.add_argument("--dataset", default=None, help="dataset of --calibration-data: wflw, 300w, cofw or cofw68")
    int8.add_argument("--split", default=None, help="split of --calibration-data (e.g. test)")
    int8.add_argument("--calibration-count", type=int, default=200, help="faces that calibrate (and as many others that validate; default 200)")
    int8.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads for the speed measurement (default: its own)")


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``facemark bench``."""
    parser.add_argument("--weights", default=None, help="a facemark checkpoint or authors' SLPT checkpoint to time (default: a random model of --preset)")
    parser.add_argument("--preset", choices=sorted(BENCH_PRESETS), default="slpt", help="model to time without --weights: " + "; ".join(f"{k}: {v}" for k, v in BENCH_PRESETS.items()))
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch and ONNX Runtime (default 2)")
    parser.add_argument("--batch", type=int, default=8, help="batch size of the throughput measurement (default 8)")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per latency measurement; the median is reported (default 10)")
    parser.add_argument("--backends", default="eager,compile,onnx", help="comma-separated subset of eager, compile, onnx (default: all three)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto (default): the CPU, and the GPU when one is present")
    parser.add_argument("--json", default=None, help="also write the measurements to this JSON file")


def run_predict(args: argparse.Namespace) -> int:
    """``facemark predict``: 0 when every input was processed, 1 when any failed."""
    from facemark.inference.batch import run_predict as run

    return run(args)


def run_export(args: argparse.Namespace) -> int:
    """``facemark export``: writes, checks and describes the exported file."""
    from facemark.inference.export import run_export as run

    return run(args)


def run_bench(args: argparse.Namespace) -> int:
    """``facemark bench``: prints the speed table."""
    from facemark.inference.bench import run_bench as run

    return run(args)
