"""facemark.inference.export: ONNX and TorchScript files of a small random SLPT run through the
same Predictor and agree with torch to 1e-3 px on the same crops, with any batch size."""
from __future__ import annotations

import argparse
import json
import warnings

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")  # the [onnx] extra: onnx + onnxruntime
pytest.importorskip("onnxruntime")

from facemark.data.transforms import CropConvention
from facemark.inference.commands import add_export_arguments, run_export
from facemark.inference.export import MIN_OPSET, export_model, onnx_model_bytes
from facemark.inference.predictor import Predictor, weights_kind
from facemark.layouts import WFLW98
from facemark.models.slpt import SLPTConfig, build_slpt, load_official_mean_face

torch.set_num_threads(1)
CROP = CropConvention("landmarks", 1.2, 64)  # a small input keeps the HRNet backbone fast


@pytest.fixture(scope="module")
def small_slpt():
    """SLPT with the real sampling, attention and stages, but narrow and 1 layer."""
    torch.manual_seed(0)
    config = SLPTConfig(num_points=98, num_layers=1, embed_dim=32, num_heads=2, feedforward_dim=64, patch_samples=3)
    return build_slpt(config, mean_face=load_official_mean_face(98)).eval()


@pytest.fixture(scope="module")
def crops():
    return torch.randn(3, 3, CROP.size, CROP.size, generator=torch.Generator().manual_seed(1)).numpy()


@pytest.fixture(scope="module")
def exported(small_slpt, tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    onnx_result = export_model(small_slpt, folder / "slpt.onnx", "onnx", layout="wflw98", crop_convention=CROP)
    script_result = export_model(small_slpt, folder / "slpt.ts", "torchscript", layout="wflw98", crop_convention=CROP)
    return folder, onnx_result, script_result


def test_onnx_and_torch_agree_on_the_same_crops(small_slpt, crops, exported):
    folder, onnx_result, script_result = exported
    assert onnx_result["max_difference_px"] < 1e-3 and script_result["max_difference_px"] < 1e-3
    torch_predictor = Predictor(small_slpt, layout="wflw98", crop_convention=CROP, detector=None)
    reference = torch_predictor.predict_crops(crops)
    assert reference.std() > 1e-3  # a model whose output depends on its input
    for predictor in (
        Predictor(folder / "slpt.onnx", backend="onnx", detector=None),
        Predictor(folder / "slpt.ts", detector=None, trust_torchscript=True),
        Predictor(small_slpt, backend="onnx", layout="wflw98", crop_convention=CROP, detector=None),  # in memory
    ):
        assert predictor.crop == CROP and predictor.layout.name == "wflw98"
        for batch in (crops[:1], crops):  # batch sizes other than the one traced (2)
            difference_px = np.abs(predictor.predict_crops(batch) - reference[: len(batch)]).max() * CROP.size
            assert difference_px < 1e-3, predictor
    # The torch model is still in eval mode after being exported (dropout off: deterministic).
    assert not small_slpt.training
    np.testing.assert_array_equal(torch_predictor.predict_crops(crops), reference)


def test_onnx_predictor_on_a_photo_matches_torch(small_slpt, exported):
    data = pytest.importorskip("skimage.data")
    image = data.astronaut()
    folder = exported[0]
    boxes = np.array([[180.0, 90.0, 270.0, 170.0], [20.0, 300.0, 120.0, 420.0]])
    torch_faces = Predictor(small_slpt, layout="wflw98", crop_convention=CROP, detector=None).predict(image, boxes)
    onnx_faces = Predictor(folder / "slpt.onnx", backend="onnx", detector=None).predict(image, boxes)
    for ours, theirs in zip(onnx_faces, torch_faces):
        assert np.abs(ours.landmarks - theirs.landmarks).max() < 1e-3  # image pixels
        np.testing.assert_allclose(ours.crop_box, theirs.crop_box)


def test_exported_files_describe_themselves(exported):
    folder = exported[0]
    assert weights_kind(folder / "slpt.onnx") == "onnx" and weights_kind(folder / "slpt.ts") == "torchscript"
    proto = onnx.load(str(folder / "slpt.onnx"))
    assert max(entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")) >= MIN_OPSET
    # Patches are sampled by row gathers in exports (ONNX Runtime's GridSample is ~4x slower).
    assert any(node.op_type == "Gather" for node in proto.graph.node)
    assert not any(node.op_type == "GridSample" for node in proto.graph.node)
    (image_input,) = proto.graph.input
    dims = image_input.type.tensor_type.shape.dim
    assert image_input.name == "image" and dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, 64, 64]
    assert proto.graph.output[0].name == "landmarks"
    metadata = json.loads({p.key: p.value for p in proto.metadata_props}["facemark"])
    assert metadata["crop"] == CROP.to_dict() and metadata["layout"]["name"] == "wflw98"
    assert metadata["input"]["colour_order"] == "RGB" and metadata["output"]["shape"] == ["batch", 98, 2]

    with pytest.raises(ValueError, match="backend='onnx'"):
        Predictor(folder / "slpt.onnx", backend="torch")
    # A TorchScript file is a program: it runs only when the user says they trust it.
    with pytest.raises(ValueError, match=r"slpt\.ts is a TorchScript program.*trust_torchscript=True"):
        Predictor(folder / "slpt.ts", detector=None)
    with pytest.raises(ValueError, match="opset"):
        onnx_model_bytes(torch.nn.Identity(), WFLW98, CROP, opset=15)
    bare = folder / "bare.onnx"
    proto.ClearField("metadata_props")
    onnx.save(proto, str(bare))
    with pytest.raises(ValueError, match="without facemark metadata"):
        Predictor(bare, backend="onnx")


def test_export_command(small_slpt, tmp_path, capsys):
    from facemark.engine.checkpoint import save_checkpoint

    options = {"num_layers": 1, "embed_dim": 32, "num_heads": 2, "feedforward_dim": 64, "patch_samples": 3}
    spec = {"method": "slpt", "backbone": "hrnet_w18c_lite", "options": options, "layout": WFLW98.to_dict(),
            "statistics": {"mean_face": small_slpt.mean_face.numpy()}, "crop": CROP.to_dict(), "image_size": CROP.size}
    checkpoint = save_checkpoint({"model": small_slpt.state_dict(), "model_spec": spec, "epoch": 1, "config": {}}, tmp_path / "slpt.pt")
    parser = argparse.ArgumentParser()
    add_export_arguments(parser)
    out = tmp_path / "model.onnx"
    assert run_export(parser.parse_args(["--weights", str(checkpoint), "--format", "onnx", "--out", str(out)])) == 0
    printed = capsys.readouterr().out
    assert "input  'image': (batch, 3, 64, 64) float32, RGB" in printed and "(batch, 98, 2)" in printed
    assert "max difference" in printed and out.is_file()
