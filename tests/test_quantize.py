"""facemark.inference.quantize: `facemark export --quantize int8` writes an int8 ONNX model that
loads in the Predictor, carries its measured speed-up and NME_io change in its metadata, and
predicts close to the fp32 export (tolerance below)."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")  # the [onnx] extra: onnx + onnxruntime
pytest.importorskip("onnxruntime.quantization")

from facemark.data.transforms import CropConvention, crop_to_image
from facemark.errors import CommandError
from facemark.inference.commands import add_export_arguments
from facemark.inference.export import export_model, run_export
from facemark.inference.predictor import Predictor
from facemark.inference.quantize import calibration_faces, face_crops
from facemark.layouts import WFLW98
from facemark.metrics import nme
from facemark.models.slpt import SLPTConfig, build_slpt, load_official_mean_face

CROP = CropConvention("landmarks", 1.2, 64)
FACES = 8
# int8 against fp32 on the validation faces, in pixels of the 64-px crop: measured mean 0.1-0.6, max < 1.5
# for this model; the bounds leave room for other ONNX Runtime versions, and are far below a wrong
# model's error (a landmark off by a quarter of the crop is 16 px).
MEAN_TOLERANCE_PX = 1.5
MAX_TOLERANCE_PX = 4.0


@pytest.fixture(scope="module")
def tiny_slpt():
    torch.manual_seed(0)
    config = SLPTConfig(num_points=98, num_layers=1, embed_dim=32, num_heads=2, feedforward_dim=64, patch_samples=3,
                        backbone="mobilenet_v2_050", num_stages=2)
    return build_slpt(config, mean_face=load_official_mean_face(98)).eval()


@pytest.fixture(scope="module")
def exports(tiny_slpt, tmp_path_factory):
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("int8")
    export_model(tiny_slpt, folder / "fp32.onnx", "onnx", layout="wflw98", crop_convention=CROP, check=False)
    result = export_model(tiny_slpt, folder / "int8.onnx", "onnx", layout="wflw98", crop_convention=CROP,
                          quantize="int8", calibration={"count": FACES, "threads": 1})
    return folder, result


def test_int8_export_loads_and_predicts_close_to_fp32(exports):
    folder, _ = exports
    fp32 = Predictor(folder / "fp32.onnx", detector=None)
    int8 = Predictor(folder / "int8.onnx", detector=None)
    assert int8.backend == "onnx" and int8.layout.name == "wflw98" and int8.crop == CROP
    proto = onnx.load(str(folder / "int8.onnx"))
    assert any(node.op_type == "QuantizeLinear" for node in proto.graph.node)  # really quantized
    _, validation, _ = calibration_faces(WFLW98, FACES)
    crops = face_crops(validation, WFLW98, CROP)[0]
    reference, quantized = fp32.predict_crops(crops), int8.predict_crops(crops)
    assert reference.std() > 1e-3
    distance_px = np.linalg.norm(quantized - reference, axis=-1) * CROP.size
    assert 0 < distance_px.mean() < MEAN_TOLERANCE_PX and distance_px.max() < MAX_TOLERANCE_PX


def test_int8_metadata_carries_the_measurements(exports):
    folder, result = exports
    metadata = Predictor(folder / "int8.onnx", detector=None).bundle.extra  # the file's facemark metadata
    measured = metadata["quantization"]
    assert measured == json.loads(json.dumps(result["quantization"]))
    assert measured["type"] == "int8" and measured["validation_faces"] == FACES
    assert measured["latency_ms_batch1_fp32"] > 0 and measured["latency_ms_batch1_int8"] > 0
    assert measured["speedup_batch1"] == pytest.approx(measured["latency_ms_batch1_fp32"] / measured["latency_ms_batch1_int8"])
    # The NME_io values are those of the two files on the validation faces, recomputed here.
    _, validation, _ = calibration_faces(WFLW98, FACES)
    crops, matrices = face_crops(validation, WFLW98, CROP)
    truth = np.stack([record.landmarks for record in validation])
    for name in ("fp32", "int8"):
        predicted = Predictor(folder / f"{name}.onnx", detector=None).predict_crops(crops) * CROP.size
        expected = np.mean(nme(crop_to_image(predicted, matrices), truth, WFLW98, "inter_ocular"))
        assert measured[f"NME_io_{name}"] == pytest.approx(expected, rel=1e-5)
    assert measured["NME_io_change"] == pytest.approx(measured["NME_io_int8"] - measured["NME_io_fp32"])


def test_calibration_and_validation_faces_differ():
    calibration, validation, description = calibration_faces(WFLW98, 3)
    assert len(calibration) == len(validation) == 3 and "SynthFace" in description
    assert not any(np.array_equal(a.load_image(), b.load_image()) for a in calibration for b in validation)


def _export_args(*extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_export_arguments(parser)
    return parser.parse_args(["--weights", "unused.pt", "--out", "unused.onnx", *extra])


@pytest.mark.parametrize("extra, message", [
    (("--quantize", "int8", "--format", "torchscript"), "format='onnx'"),
    (("--quantize", "int8", "--dataset", "wflw", "--split", "test"), "--calibration-data"),
    (("--quantize", "int8", "--calibration-data", "somewhere"), "--dataset and --split"),
])
def test_int8_option_errors_are_one_line(extra, message, tmp_path):
    args = _export_args(*extra)
    args.weights = str(tmp_path / "missing.pt")
    with pytest.raises(CommandError) as error:
        run_export(args)
    # a bad option is reported before the (missing) weights file is read
    assert message in str(error.value)
