"""The heatmap-regression baseline (facemark.models.heatmap): the HRNet facial-landmark release's
decoding, targets and checkpoints, the facemark model contract, ONNX export and engine training.

The release's checkpoints are made by the tests in exactly the key layout of the real ones:
``tests/data/hrnet_fld_wflw_state_dict.txt`` is the key/shape list of HR18-WFLW.pth (copied from
shared/facts; 1,839 entries); the 300W / COFW files differ only in the head's last conv.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from engine_fixtures import make_wflw_fixture, one_thread, read_key_list, tiny_config, write_state_dict_like  # noqa: F401 (autouse fixture)
from facemark.data.transforms import AugmentationConfig, CropConvention, Uniform, hrnet_augmentation, sample_augmentation
from facemark.models.heatmap import (
    HeatmapRegression,
    HRNetFLDCheckpointError,
    decode_heatmaps,
    gaussian_heatmaps,
    heatmap_loss,
    load_hrnet_fld,
)

HRNET_FLD_KEYS = Path(__file__).resolve().parent / "data" / "hrnet_fld_wflw_state_dict.txt"


def release_decode(heatmaps: torch.Tensor) -> torch.Tensor:
    """The release's decoding (lib/core/evaluation.py:15-77) as its loops read, 1-based, stopped
    before the inverse crop: the position in map pixels, 0-based."""
    batch, points, height, width = heatmaps.shape
    out = torch.zeros(batch, points, 2)
    for n in range(batch):
        for p in range(points):
            hm = heatmaps[n, p]
            index = int(hm.flatten().argmax()) + 1
            px = (index - 1) % width + 1
            py = (index - 1) // width + 1
            coords = torch.tensor([float(px), float(py)])
            if px > 1 and px < width and py > 1 and py < height:
                diff = torch.tensor([hm[py - 1][px] - hm[py - 1][px - 2], hm[py][px - 1] - hm[py - 2][px - 1]])
                coords += diff.sign() * 0.25
            coords += 0.5
            out[n, p] = coords - 1  # transform_pixel subtracts 1 before the inverse affine
    return out


def peak_map(height: int, width: int, column: int, row: int, right: float, left: float, below: float,
             above: float) -> torch.Tensor:
    """A (1, 1, H, W) map: 1 at (column, row), the given values at its four neighbours, 0 elsewhere."""
    hm = torch.zeros(1, 1, height, width)
    for (c, r), value in (((column + 1, row), right), ((column - 1, row), left), ((column, row + 1), below),
                          ((column, row - 1), above)):
        if 0 <= c < width and 0 <= r < height:
            hm[0, 0, r, c] = value
    hm[0, 0, row, column] = 1.0
    return hm


def test_a_known_peak_decodes_to_its_sub_pixel_place_with_the_quarter_shift():
    # Right neighbour higher than the left one, the one above higher than the one below.
    hm = peak_map(64, 64, column=10, row=20, right=0.6, left=0.2, below=0.1, above=0.5)
    x, y = (decode_heatmaps(hm)[0, 0] * 64).tolist()
    assert x == pytest.approx(10 + 0.25 + 0.5) and y == pytest.approx(20 - 0.25 + 0.5)
    # Equal neighbours: no shift, the middle of the cell.
    hm = peak_map(64, 64, column=33, row=7, right=0.4, left=0.4, below=0.3, above=0.3)
    assert (decode_heatmaps(hm)[0, 0] * 64).tolist() == pytest.approx([33.5, 7.5])


@pytest.mark.parametrize("column,row,shifted", [
    (0, 20, False), (63, 20, False), (20, 0, False), (20, 63, False),  # on the border: no shift at all
    (1, 62, True), (62, 1, True),  # one pixel inside: shifted
])
def test_the_quarter_shift_is_made_only_inside_the_border(column, row, shifted):
    hm = peak_map(64, 64, column, row, right=0.6, left=0.2, below=0.6, above=0.2)
    x, y = (decode_heatmaps(hm)[0, 0] * 64).tolist()
    shift = 0.25 if shifted else 0.0
    assert (x, y) == pytest.approx((column + 0.5 + shift, row + 0.5 + shift))


def test_decoding_equals_the_release_on_random_and_peaked_maps():
    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(2, 7, 16, 12, generator=generator)
    maps[0, 0, 0, 5] = 2.0  # a peak on the border
    maps[1, 3, 15, 11] = 2.0  # in a corner
    maps[1, 4, 8, 3] = 2.0
    maps[1, 4, 8, 2] = maps[1, 4, 8, 4]  # a tie between the neighbours: no shift in x
    ours = decode_heatmaps(maps) * torch.tensor([12.0, 16.0])
    assert torch.allclose(ours, release_decode(maps), atol=1e-6)


def test_targets_are_the_release_gaussians_and_decode_back_to_the_cell():
    landmarks = torch.tensor([[[10.3, 20.9], [0.2, 63.7], [40.99, 5.0]]]) / 64
    for sigma, before, after in ((1.5, 5, 4), (1.0, 3, 3)):  # generate_target's window: 10 and 7 pixels
        maps = gaussian_heatmaps(landmarks, 64, 64, sigma)
        assert maps.shape == (1, 3, 64, 64)
        first = maps[0, 0]
        assert first[20, 10] == 1.0 and first.max() == 1.0
        assert first[20, 10 - before] == pytest.approx(math.exp(-before ** 2 / (2 * sigma ** 2)))
        assert first[20, 10 - before - 1] == 0 and first[20, 10 + after] > 0 and first[20, 10 + after + 1] == 0
        assert first[21, 11] == pytest.approx(math.exp(-2 / (2 * sigma ** 2)))
        assert int((first > 0).sum()) == (before + after + 1) ** 2
        # A landmark in the cell [k, k + 1) decodes to k + 0.5: within half a map pixel.
        decoded = decode_heatmaps(maps) * 64
        assert torch.equal(decoded, torch.floor(landmarks * 64) + 0.5)
    # the MSE loss is zero at the target and positive elsewhere
    output = type("Output", (), {"heatmaps": gaussian_heatmaps(landmarks, 64, 64, 1.5)})()
    assert float(heatmap_loss(output, landmarks)) == 0.0
    assert float(heatmap_loss(output, landmarks + 2 / 64)) > 0.0


@pytest.mark.parametrize("num_points", [29, 68, 98])
def test_the_model_follows_the_facemark_contract_for_29_68_98_points(num_points):
    torch.manual_seed(0)
    model = HeatmapRegression(num_points, backbone="hrnet_w18c_lite").eval()
    with torch.no_grad():
        output = model(torch.randn(2, 3, 64, 64))
    assert output.heatmaps.shape == (2, num_points, 16, 16)  # stride 4
    assert output.landmarks.shape == (2, num_points, 2)
    assert (output.landmarks > 0).all() and (output.landmarks < 1).all()
    assert torch.equal(output.landmarks, decode_heatmaps(output.heatmaps))


def test_the_cpu_backbone_gives_stride_4_maps_and_keeps_the_contract():
    torch.manual_seed(0)
    model = HeatmapRegression(68, backbone="mobilenet_v2_050").eval()
    with torch.no_grad():
        output = model(torch.randn(2, 3, 128, 128))
    assert output.heatmaps.shape == (2, 68, 32, 32)  # stride 4, like the HRNet's
    assert torch.equal(output.landmarks, decode_heatmaps(output.heatmaps))
    with pytest.raises(ValueError, match="unknown backbone 'resnet34'"):
        HeatmapRegression(68, backbone="resnet34")


# -- the release's checkpoints --------------------------------------------------------------------
def release_shapes(num_points: int) -> dict[str, tuple[int, ...]]:
    shapes = read_key_list(HRNET_FLD_KEYS)
    shapes["head.3.weight"] = (num_points, 270, 1, 1)
    shapes["head.3.bias"] = (num_points,)
    return shapes


def test_the_key_list_is_the_facts_file():
    assert len(read_key_list(HRNET_FLD_KEYS)) == 1839
    model = HeatmapRegression(98, backbone="hrnet_w18c")
    assert sum(p.numel() for p in model.parameters()) == 9662528  # the count in the facts file


@pytest.mark.parametrize("num_points", [98, 68, 29])
def test_release_files_load_strictly_with_the_points_from_the_last_conv(tmp_path, num_points):
    path = tmp_path / f"HR18-{num_points}.pth"
    state = write_state_dict_like(path, release_shapes(num_points))
    model = load_hrnet_fld(path)
    assert model.num_points == num_points and not model.training
    loaded = model.backbone.state_dict()
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[key], value) for key, value in state.items())


def test_release_files_saved_from_data_parallel_or_wrapped_load(tmp_path):
    state = {key: torch.zeros(shape) for key, shape in release_shapes(29).items()}
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {"module." + key: value for key, value in state.items()}, "epoch": 60}, path)
    assert load_hrnet_fld(path).num_points == 29


@pytest.mark.parametrize("change,named", [
    ("drop", "missing keys (1): stage3.2.branches.1.3.bn2.running_var"),
    ("extra", "unexpected keys (1): head.4.weight"),
    ("shape", "shape mismatches (1): stage2.0.fuse_layers.0.1.0.weight: file (18, 36, 3, 3) vs model (18, 36, 1, 1)"),
])
def test_a_file_that_does_not_fit_is_an_error_naming_the_key(tmp_path, change, named):
    shapes = release_shapes(98)
    if change == "drop":
        del shapes["stage3.2.branches.1.3.bn2.running_var"]
    elif change == "extra":
        shapes["head.4.weight"] = (98,)
    else:
        shapes["stage2.0.fuse_layers.0.1.0.weight"] = (18, 36, 3, 3)
    path = tmp_path / "bad.pth"
    write_state_dict_like(path, shapes)
    with pytest.raises(HRNetFLDCheckpointError) as error:
        load_hrnet_fld(path)
    assert str(path) in str(error.value) and named in str(error.value)


def test_a_file_without_the_heatmap_head_is_refused(tmp_path):
    path = tmp_path / "imagenet.pth"
    write_state_dict_like(path, {key: shape for key, shape in release_shapes(98).items() if not key.startswith("head.3")})
    with pytest.raises(HRNetFLDCheckpointError, match="head.3.weight"):
        load_hrnet_fld(path)


def test_predict_and_evaluate_take_a_release_file_with_its_crop(tmp_path):
    from facemark.engine.evaluate import evaluate
    from facemark.inference.predictor import Predictor, weights_kind

    path = tmp_path / "HR18-WFLW.pth"
    write_state_dict_like(path, release_shapes(98))
    assert weights_kind(path) == "hrnet_fld"
    predictor = Predictor(path, detector=None)
    assert predictor.layout.name == "wflw98"
    assert predictor.crop == CropConvention(box_source="landmarks", enlarge=1.25, size=256)
    faces = predictor.predict(np.zeros((300, 300, 3), np.uint8), boxes=[[100, 100, 200, 180]])
    assert faces[0].landmarks.shape == (98, 2)
    # the crop is a square of side 1.25 x 100 around the box centre
    assert faces[0].crop_box.tolist() == pytest.approx([87.5, 77.5, 212.5, 202.5])

    root = make_wflw_fixture(tmp_path / "wflw", num_train=1, num_test=1)
    with pytest.raises(ValueError, match="--dataset"):
        evaluate(path, root, output_dir=tmp_path / "eval", device="cpu", workers=0, progress=False)
    results = evaluate(path, root, dataset="wflw", output_dir=tmp_path / "eval", device="cpu", workers=0,
                       progress=False)
    assert len(results.per_image("inter_ocular")) == 1
    assert "HR18-WFLW.pth" in results.model and (tmp_path / "eval" / "predictions.json").is_file()


# -- export and training ----------------------------------------------------------------------------
def test_onnx_export_matches_torch(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from facemark.inference.export import export_model
    from facemark.inference.predictor import Predictor

    torch.manual_seed(0)
    model = HeatmapRegression(29, backbone="hrnet_w18c_lite")
    for parameter in model.parameters():  # weights far from the release's N(0, 0.001) init: distinct peaks
        torch.nn.init.normal_(parameter, std=0.2)
    model.eval()
    crop = CropConvention("landmarks", 1.25, 64)
    result = export_model(model, tmp_path / "heatmap.onnx", "onnx", layout="cofw29", crop_convention=crop)
    assert result["max_difference_px"] < 1e-3
    crops = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1)).numpy()
    reference = Predictor(model, layout="cofw29", crop_convention=crop, detector=None).predict_crops(crops)
    exported = Predictor(tmp_path / "heatmap.onnx", detector=None).predict_crops(crops)
    assert reference.std() > 1e-3
    assert np.abs(exported - reference).max() * 64 < 1e-3


def test_the_heatmap_method_trains_through_the_engine(tmp_path):
    from facemark.engine.checkpoint import load_model
    from facemark.engine.train import train

    root = make_wflw_fixture(tmp_path / "wflw", num_train=4, num_test=2)
    config = tiny_config(root, tmp_path / "run", "model.method=heatmap", "model.backbone=hrnet_w18c_lite",
                         "optim.epochs=1", "optim.milestones=[]", "augmentation.preset=hrnet",
                         "loss.options={sigma: 1.0}", "data.val_fraction=0.25")
    result = train(config)
    loaded = load_model(result.last_checkpoint)
    assert isinstance(loaded.model, HeatmapRegression) and loaded.method == "heatmap"
    with torch.no_grad():
        output = loaded.model(torch.zeros(1, 3, 64, 64))
    assert output.landmarks.shape == (1, 98, 2) and torch.isfinite(output.landmarks).all()


def test_the_hrnet_preset_rotates_six_samples_in_ten():
    preset = hrnet_augmentation()
    rng = np.random.default_rng(0)
    draws = [sample_augmentation(preset, 64, rng) for _ in range(2000)]
    rotated = np.mean([d.rotation != 0.0 for d in draws])
    assert 0.56 < rotated < 0.64
    assert all(-30 <= d.rotation <= 30 and 0.75 <= d.scale <= 1.25 and d.shift == (0.0, 0.0) for d in draws)
    # every sample rotated: no extra random draw, so the other presets' samples are unchanged
    always = AugmentationConfig(rotation=Uniform(-30.0, 30.0))
    first, second = np.random.default_rng(1), np.random.default_rng(1)
    sample_augmentation(always, 64, first)
    _ = Uniform(-30.0, 30.0).sample(second), [second.random() for _ in range(4)]
    assert first.random() == second.random()


def test_evaluate_takes_an_authors_slpt_file_too(tmp_path):
    from facemark.engine.evaluate import evaluate

    path = tmp_path / "WFLW_6_layer.pth"
    write_state_dict_like(path, read_key_list(HRNET_FLD_KEYS.parent / "slpt_official_state_dict_wflw98_6layers.txt"))
    root = make_wflw_fixture(tmp_path / "wflw", num_train=1, num_test=1)
    results = evaluate(path, root, dataset="wflw", output_dir=tmp_path / "eval", device="cpu", workers=0,
                       progress=False)
    assert "WFLW_6_layer.pth" in results.model and "slpt" in results.model
    assert results.box_source == "gt_landmarks x1.2"  # the authors' crop


@pytest.mark.parametrize("spec_change,key", [
    ({"backbone": "resnet34"}, "'model.backbone'"),
    ({"image_size": 48}, "'data.crop.size'"),
])
def test_a_recipe_the_heatmap_model_cannot_take_names_the_config_key(spec_change, key):
    from facemark.engine.config import ConfigError
    from facemark.engine.methods import METHODS, build_model_from_spec
    from facemark.layouts import get_layout

    spec = {"method": "heatmap", "backbone": "hrnet_w18c_lite", "options": {}, "layout": get_layout("cofw29").to_dict(),
            "statistics": {}, "image_size": 64, **spec_change}
    with pytest.raises(ConfigError, match=key):
        build_model_from_spec(spec, METHODS)


def test_a_bad_sigma_names_its_config_key():
    from facemark.engine.config import ConfigError
    from facemark.engine.methods import METHODS
    from facemark.layouts import get_layout

    with pytest.raises(ConfigError, match="'loss.options.sigma'"):
        METHODS["heatmap"].build_loss(get_layout("wflw98"), {}, 256, sigma=0)
