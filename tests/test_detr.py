"""The DETR-style baseline (SLPT Appendix A.3, facemark/models/detr.py): shapes for 29, 68 and 98
points, cross-attention over every token of the map, Table 8's size, ONNX export, and one engine
epoch through the ``detr`` method adapter."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine_fixtures import make_wflw_fixture, one_thread, tiny_config  # noqa: F401 (autouse fixture)
from facemark.models.detr import build_detr, sine_positional_encoding
from facemark.models.slpt import SLPTOutput, slpt_loss

SMALL = dict(num_layers=2, embed_dim=32, num_heads=2, feedforward_dim=64, dropout=0.0)


@pytest.mark.parametrize("num_points", [29, 68, 98])
@pytest.mark.parametrize("batch", [1, 3])
def test_shapes_and_range_for_each_layout(num_points, batch):
    torch.manual_seed(0)
    model = build_detr(num_points, backbone="mobilenet_v2_050", patch_size=1, **SMALL).eval()
    with torch.no_grad():
        output = model(torch.randn(batch, 3, 64, 64))
    assert isinstance(output, SLPTOutput) and len(output.stages) == 1  # one stage
    assert output.stages[0].shape == (batch, 2, num_points, 2)  # every layer's prediction
    assert output.landmarks.shape == (batch, num_points, 2)
    assert torch.equal(output.landmarks, output.stages[0][:, -1])
    assert (output.landmarks > 0).all() and (output.landmarks < 1).all()  # sigmoid: inside the crop
    assert output.landmarks.std() > 0  # not a constant


def test_every_query_attends_to_all_256_tokens_of_the_map():
    torch.manual_seed(0)
    # A 256 crop gives a 64 x 64 map; patch_size 4 (the default) gives the paper's 16 x 16 tokens.
    model = build_detr(98, backbone="mobilenet_v2_050", **SMALL).eval()
    images = torch.randn(2, 3, 256, 256)
    memory = model.memory(images)
    assert memory.shape == (2, 256, 32)
    weights = model.cross_attention_weights(images)
    assert weights.shape == (2, 2, 2, 98, 256)  # (B, layers, heads, queries, tokens)
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(2, 2, 2, 98))
    assert (weights > 0).all()
    # Not a local patch: the first layer's weights spread over the map (a uniform row would be 1/256).
    assert (weights[:, 0].amax(dim=-1) < 0.5).all()

    # Every token reaches every landmark: a change in one corner token moves all of them.
    features = model.backbone(images[:1])
    tokens = model.token_embedding(features).flatten(2).transpose(1, 2).detach().requires_grad_(True)
    positions = sine_positional_encoding(16, 16, 32)
    content = tokens.new_zeros(1, 98, 32)
    for layer in model.layers:
        content = layer(content, model.landmark_queries, tokens + positions, tokens + positions)
    landmarks = torch.sigmoid(model.prediction_head(model.final_norm(content)))
    for point in (0, 50, 97):
        (gradient,) = torch.autograd.grad(landmarks[0, point, 0], tokens, retain_graph=True)
        assert (gradient.abs().sum(dim=-1) > 0).all()  # all 256 tokens, for every point checked


def test_sine_positions_are_distinct_and_separate_rows_from_columns():
    encoding = sine_positional_encoding(16, 16, 32)
    assert encoding.shape == (256, 32) and encoding.abs().max() <= 1
    grid = encoding.view(16, 16, 32)
    # The first half encodes the row only, the second half the column only.
    torch.testing.assert_close(grid[:, :, :16], grid[:, :1, :16].expand(16, 16, 16))
    torch.testing.assert_close(grid[:, :, 16:], grid[:1, :, 16:].expand(16, 16, 16))
    distances = torch.cdist(encoding, encoding)
    assert (distances + torch.eye(256) * 10 > 1e-3).all()  # every position its own code
    with pytest.raises(ValueError, match="multiple of 4"):
        sine_positional_encoding(4, 4, 30)


def test_a_map_the_patch_does_not_divide_is_an_error():
    model = build_detr(29, backbone="mobilenet_v2_050", patch_size=3, **SMALL)
    with pytest.raises(ValueError, match="not a multiple of patch_size=3"):
        model(torch.randn(1, 3, 64, 64))  # 16 x 16 map
    with pytest.raises(ValueError, match="embedding_init"):
        build_detr(29, backbone="mobilenet_v2_050", embedding_init="xavier")


def test_a_reference_start_predicts_it_then_offsets_from_it():
    torch.manual_seed(0)
    reference = torch.rand(68, 2) * 0.6 + 0.2
    model = build_detr(68, backbone="mobilenet_v2_050", patch_size=1, reference=reference, **SMALL)
    images = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(model(images).landmarks, reference.expand(2, 68, 2))  # the first prediction
    with torch.no_grad():
        model.prediction_head.bias.fill_(1.0)  # +1 in logit space on x and y
    expected = torch.sigmoid(torch.log(reference / (1 - reference)) + 1.0)
    torch.testing.assert_close(model(images).landmarks, expected.expand(2, 68, 2))
    with pytest.raises(ValueError, match="inside the crop"):
        build_detr(68, backbone="mobilenet_v2_050", reference=torch.zeros(68, 2))

    # initial_content="queries": the queries are in the content from the first layer (T^1 = Q).
    torch.manual_seed(0)
    zeros = build_detr(29, backbone="mobilenet_v2_050", patch_size=1, **SMALL).eval()
    torch.manual_seed(0)
    queries = build_detr(29, backbone="mobilenet_v2_050", patch_size=1, initial_content="queries", **SMALL).eval()
    with torch.no_grad():
        assert not torch.allclose(zeros(images).landmarks, queries(images).landmarks)


def test_the_attention_prior_centres_each_landmark_on_its_reference_over_every_token():
    torch.manual_seed(0)
    reference = torch.tensor([[0.1, 0.2], [0.5, 0.5], [0.9, 0.7]]).repeat(10, 1)[:29]
    model = build_detr(29, backbone="mobilenet_v2_050", reference=reference, attention_prior=0.1, **SMALL).eval()
    bias = model.attention_bias(16, 16)  # a 256 crop: 16 x 16 tokens
    assert bias.shape == (29, 256) and (bias <= 0).all()
    # The prior is largest at the token whose centre is nearest the reference, and Gaussian in the distance.
    nearest = bias.argmax(dim=-1)
    centres = torch.stack(((nearest % 16 + 0.5) / 16, (nearest // 16 + 0.5) / 16), dim=-1)
    assert ((centres - reference).abs() <= 1 / 32 + 1e-6).all()
    assert float(bias[1, 0]) == pytest.approx(-((0.5 - 1 / 32) ** 2 * 2) / (2 * 0.1 ** 2), rel=1e-5)  # token (0, 0)
    # The softmax still spans the whole map, and the weights are the ones the layers apply.
    images = torch.randn(2, 3, 256, 256)
    weights = model.cross_attention_weights(images)
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(2, 2, 2, 29))
    assert (weights > 0).all()
    first_layer = weights[:, 0].mean(dim=(0, 1))  # (29, 256): mostly near each reference
    farthest = bias.argmin(dim=-1)
    rows = torch.arange(29)
    assert (first_layer[rows, nearest] > 100 * first_layer[rows, farthest]).all()
    for layer in model.layers:
        layer.cross_attention.expose_weights = True  # the explicit softmax path adds the same prior
    with torch.no_grad():
        explicit = model(images).landmarks
    for layer in model.layers:
        layer.cross_attention.expose_weights = False
    with torch.no_grad():
        torch.testing.assert_close(model(images).landmarks, explicit)
    # Without the option nothing is added (the DETR of the paper recipes).
    assert build_detr(29, backbone="mobilenet_v2_050", reference=reference, **SMALL).attention_bias(16, 16) is None
    with pytest.raises(ValueError, match="attention_prior"):
        build_detr(29, backbone="mobilenet_v2_050", attention_prior=0.1)  # no reference to centre it on


def test_an_attention_prior_without_the_mean_face_reference_names_the_config_key():
    from facemark.engine.config import ConfigError
    from facemark.engine.methods import METHODS
    from facemark.layouts import get_layout

    build = METHODS["detr"].build_model
    options = dict(num_layers=1, embed_dim=32, num_heads=2, feedforward_dim=64, patch_size=1)
    with pytest.raises(ConfigError, match="'model.options.attention_prior' needs model.options.reference"):
        build("mobilenet_v2_050", get_layout("cofw29"), {}, 64, attention_prior=0.1, **options)
    with pytest.raises(ConfigError, match="'model.options.attention_prior': expected a width > 0"):
        build("mobilenet_v2_050", get_layout("cofw29"), {"mean_face": np.full((29, 2), 0.5)}, 64,
              reference="mean_face", attention_prior=0, **options)


def test_the_loss_is_slpt_eq8_averaged_over_every_layer():
    torch.manual_seed(0)
    model = build_detr(98, backbone="mobilenet_v2_050", patch_size=1, **SMALL)
    output = model(torch.randn(2, 3, 64, 64))
    target = torch.rand(2, 98, 2)
    distance = (target[:, 60] - target[:, 72]).norm(dim=-1)
    expected = ((output.stages[0] - target[:, None]).norm(dim=-1).mean(dim=(1, 2)) / distance).mean()
    torch.testing.assert_close(slpt_loss(output, target, (60, 72)), expected)


def test_size_and_compute_match_slpt_table_8():
    from facemark.models.complexity import count_parameters, measure_complexity

    # Table 8, DETR (HRNetW18C-lite, 256 crop): 11.00 / 11.00 / 10.99 M parameters for 98 / 68 / 29
    # points, 4.26 G multiply-adds for 98 (fvcore-style, as the table counts).
    for num_points, parameters in ((98, 11.00), (68, 11.00), (29, 10.99)):
        count = count_parameters(build_detr(num_points))
        assert abs(count / 1e6 - parameters) < 0.0075, (num_points, count)
    report = measure_complexity(build_detr(98).eval(), torch.zeros(1, 3, 256, 256))
    assert round(report.multiply_adds / 1e9, 2) == 4.26, report.multiply_adds


@pytest.mark.parametrize("cpu_preset_options", [False, True], ids=["paper", "reference_and_attention_prior"])
def test_onnx_export_matches_torch(tmp_path, cpu_preset_options):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from facemark.data.transforms import CropConvention
    from facemark.inference.export import export_model
    from facemark.inference.predictor import Predictor

    crop = CropConvention("landmarks", 1.2, 64)
    torch.manual_seed(0)
    options = dict(SMALL)
    if cpu_preset_options:  # the CPU preset's options: offsets from a mean face, the attention prior
        options.update(initial_content="queries", reference=torch.rand(98, 2) * 0.6 + 0.2, attention_prior=0.1)
    model = build_detr(98, backbone="mobilenet_v2_050", patch_size=1, **options).eval()  # 16 x 16 tokens at 64 px
    if cpu_preset_options:
        with torch.no_grad():  # the head starts at zero; give the image a say in the output
            model.prediction_head.weight.normal_(0, 0.5)
    result = export_model(model, tmp_path / "detr.onnx", "onnx", layout="wflw98", crop_convention=crop)
    assert result["max_difference_px"] < 1e-3
    crops = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1)).numpy()
    reference = Predictor(model, layout="wflw98", crop_convention=crop, detector=None).predict_crops(crops)
    assert reference.std() > 1e-3
    onnx_predictor = Predictor(tmp_path / "detr.onnx", backend="onnx", detector=None)
    for batch in (crops[:1], crops):
        assert np.abs(onnx_predictor.predict_crops(batch) - reference[: len(batch)]).max() * crop.size < 1e-3


def test_one_engine_epoch_through_the_detr_method(tmp_path):
    from facemark.engine.checkpoint import load_checkpoint, load_model
    from facemark.engine.config import ConfigError
    from facemark.engine.methods import METHODS
    from facemark.engine.train import train

    root = make_wflw_fixture(tmp_path / "wflw", num_train=6, num_test=2)
    options = ["model.method=detr", "model.backbone=mobilenet_v2_050", "model.options.num_layers=2",
               "model.options.embed_dim=32", "model.options.num_heads=2", "model.options.feedforward_dim=64",
               "model.options.patch_size=1", "optim.epochs=1", "optim.milestones=[]"]
    result = train(tiny_config(root, tmp_path / "run", *options), methods=METHODS)
    assert result.epochs_completed == 1
    loaded = load_model(result.last_checkpoint)
    assert loaded.method == "detr" and loaded.layout.num_points == 98
    images = torch.randn(2, 3, 64, 64)
    result.model.eval()
    with torch.no_grad():
        expected = result.model(images).landmarks
        assert torch.equal(loaded.model(images).landmarks, expected)
    assert torch.isfinite(expected).all()
    assert "reference" not in dict(loaded.model.named_buffers())  # DETR by default: no mean face

    # reference=mean_face: the mean of the training crops, stored with the checkpoint, is the start.
    result = train(tiny_config(root, tmp_path / "reference", *options, "model.options.reference=mean_face",
                               "model.options.initial_content=queries", "optim.lr=1e-12"), methods=METHODS)
    mean_face = torch.as_tensor(load_checkpoint(result.last_checkpoint)["model_spec"]["statistics"]["mean_face"])
    assert mean_face.shape == (98, 2)
    torch.testing.assert_close(result.model.reference, mean_face)
    with torch.no_grad():
        torch.testing.assert_close(result.model.eval()(images).landmarks, mean_face.expand(2, 98, 2))  # lr ~0: the start

    # A patch size that does not divide the map is refused before training, naming the key.
    with pytest.raises(ConfigError, match="model.options.patch_size"):
        train(tiny_config(root, tmp_path / "bad", *options, "model.options.patch_size=3"), methods=METHODS)


# -- the paper recipes ---------------------------------------------------------------------------
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DETR_PAPER_RECIPES = sorted(path.name for path in CONFIG_DIR.glob("detr_*.yaml"))


@pytest.mark.parametrize("name", DETR_PAPER_RECIPES)
def test_paper_recipes_use_slpt_s_protocol_with_8x_the_epochs(name):
    from facemark.engine.config import load_config

    config = load_config(CONFIG_DIR / name)
    slpt = load_config(CONFIG_DIR / name.replace("detr_", "slpt_"))
    assert config.model.method == "detr" and config.model.backbone == "hrnet_w18c_lite"
    assert config.model.options["initial_content"] == "zeros" and config.model.options["reference"] == "none"
    assert config.model.pretrained == slpt.model.pretrained  # the ImageNet HRNet-W18-C file
    assert config.data.val_fraction == 0 and config.runtime.select_on == "test" and config.runtime.report_best_and_last
    assert config.runtime.amp is False and config.data.crop == slpt.data.crop
    assert config.data.dataset == slpt.data.dataset and config.data.test_split == slpt.data.test_split
    assert config.optim.epochs == 8 * slpt.optim.epochs  # "8x" (Sec. 4.4)
    assert config.optim.milestones == [8 * epoch for epoch in slpt.optim.milestones]
    assert (config.optim.lr, config.optim.batch_size) == (slpt.optim.lr, slpt.optim.batch_size)


def test_the_wflw_recipe_trains_end_to_end_from_the_imagenet_file(tmp_path):
    import json

    from engine_fixtures import HRNET_IMAGENET_KEYS, read_key_list, write_state_dict_like
    from facemark.data.synthface import generate_dataset
    from facemark.engine.config import load_config
    from facemark.engine.train import train

    pretrained = tmp_path / "hrnetv2_w18_imagenet_pretrained.pth"
    write_state_dict_like(pretrained, read_key_list(HRNET_IMAGENET_KEYS))
    root = tmp_path / "synthface"
    generate_dataset(root, num_train=4, num_test=3, size=96, format="wflw", progress=False)
    # The recipe as shipped but for 64-px crops (patch 1: 16 x 16 tokens), 1 epoch, no workers.
    config = load_config(CONFIG_DIR / "detr_hrnet_wflw.yaml", [
        f"data.root={root}", f"model.pretrained={pretrained}", f"runtime.output_dir={tmp_path / 'run'}",
        "data.crop.size=64", "model.options.patch_size=1", "optim.epochs=1", "optim.batch_size=2", "data.workers=0",
        "runtime.device=cpu", "runtime.eval_batch_size=4", "runtime.progress=false", "runtime.tensorboard=false"])
    result = train(config)
    report = json.loads((tmp_path / "run" / "pretrained_report.json").read_text())
    assert report["counts"]["matched"] == 696 and report["counts"]["shape_mismatch"] == 0
    rows = {row["protocol"]: row for row in json.loads((tmp_path / "run" / "results.json").read_text())["rows"]}
    assert set(rows) == {"best", "last"} and np.isfinite(rows["last"]["summary"]["all"]["NME_io"])
    assert result.epochs_completed == 1
