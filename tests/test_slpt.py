"""SLPT: parity with a reference of the authors' computation, the official checkpoint layout
(strict round trips), shapes, ablation switches, gradients, loss, mean face, sizes and compute."""
import dataclasses
import sys
from pathlib import Path

import pytest
import torch

from facemark.layouts import get_layout
from facemark.models.complexity import count_parameters, measure_complexity
from facemark.models.official_slpt import (
    OfficialCheckpointError,
    convert_official_state_dict,
    infer_official_config,
    load_official_slpt,
    load_official_state_dict,
    to_official_state_dict,
)
from facemark.models.slpt import (
    SLPT,
    SLPTConfig,
    SLPTOutput,
    build_slpt,
    compute_mean_face,
    load_official_mean_face,
    sample_local_patches,
    slpt_loss,
    stage_nme,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from slpt_reference import ReferenceSLPT, reference_crop  # noqa: E402  (the authors' computation, re-implemented)

torch.set_num_threads(1)
# The authors' released key lists (key<TAB>shape), shipped with the tests (from shared/facts).
OFFICIAL_KEYS = Path(__file__).parent / "data"


def _random_mean_face(num_points, seed=0):
    return torch.rand(num_points, 2, generator=torch.Generator().manual_seed(seed)) * 0.6 + 0.2


def _calibrated(model):
    """Random weights at a trained network's scale: He-initialised backbone convs, BatchNorm
    statistics from one batch, small random biases/norms in the transformer."""
    torch.manual_seed(1)
    for name, parameter in model.named_parameters():
        if name.startswith("backbone.") and parameter.dim() > 1:
            torch.nn.init.kaiming_normal_(parameter)
        elif not name.startswith("backbone.") and parameter.dim() == 1:
            parameter.data.normal_(0, 0.02).add_(1.0 if "norm" in name and name.endswith("weight") else 0.0)
    norms = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in norms:
        bn.momentum = 1.0
    model.backbone.train()
    with torch.no_grad():
        model.backbone(torch.randn(2, 3, 256, 256))
    for bn in norms:
        bn.momentum = 0.01
    return model.eval()


# ------------------------------------------------------------------------------------------------
# Parity with the authors' computation (reference in benchmarks/slpt_reference.py)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_points,num_layers", [(98, 6), (68, 6), (98, 12), (68, 12)])
def test_stages_equal_reference_float32(num_points, num_layers):
    mean_face = load_official_mean_face(num_points)
    model = _calibrated(build_slpt(SLPTConfig(num_points=num_points, num_layers=num_layers)))
    reference = ReferenceSLPT(mean_face, num_layers=num_layers)
    reference.load_state_dict(to_official_state_dict(model), strict=True)  # official names fit as they are
    reference.eval()
    images = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(num_points + num_layers))
    with torch.no_grad():
        ours, theirs = model(images).stages, reference(images)
    assert len(ours) == len(theirs) == 3
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape == (2, num_layers, num_points, 2)
        assert (a - b).abs().max() < 1e-5


def test_stages_equal_reference_float64_any_weights():
    """In float64 the two computations agree to rounding for arbitrary weights: same maths."""
    torch.manual_seed(2)
    reference = ReferenceSLPT(_random_mean_face(98), num_layers=6)
    state = {}
    for key, value in reference.state_dict().items():
        if "running_var" in key:
            value = torch.rand_like(value) + 0.5
        elif value.is_floating_point():
            value = torch.randn_like(value) * (0.05 if value.dim() > 1 else 0.2)
        state[key] = value
    reference.load_state_dict(state)
    model = build_slpt(infer_official_config(state), mean_face=reference.mean_face)
    load_official_state_dict(model, state)
    model, reference = model.double().eval(), reference.double().eval()
    images = torch.randn(1, 3, 128, 128, dtype=torch.float64)
    with torch.no_grad():
        for a, b in zip(model(images).stages, reference(images)):
            assert (a - b).abs().max() < 1e-10


def test_sampling_equals_index_arithmetic_and_clamps_boxes():
    feature_map = torch.randn(2, 5, 16, 16, dtype=torch.float64)
    centres = torch.tensor([[[0.01, 0.5], [0.5, 0.99], [0.3, 0.7]],
                            [[1.2, -0.3], [0.0, 1.0], [0.45, 0.55]]], dtype=torch.float64)
    patches, box_min, box_size = sample_local_patches(feature_map, centres, 0.125, 7)
    expected, expected_min, expected_size = reference_crop(feature_map, centres, 0.125, 7)
    assert torch.allclose(patches.reshape(expected.shape), expected, atol=1e-12)
    assert torch.equal(box_min, expected_min) and torch.allclose(box_size, expected_size)
    # Clamped, not shifted: a landmark at x=0.01 has the box 0 .. 0.135; one at 1.2 an empty box at 1.
    assert box_min[0, 0, 0] == 0 and torch.isclose(box_size[0, 0, 0], torch.tensor(0.135, dtype=torch.float64))
    assert box_min[1, 0, 0] == 1 and box_size[1, 0, 0] == 0
    # Positions carry no gradient (detached, paper Sec. 3.2).
    trainable_centres = centres.clone().requires_grad_(True)
    patches, box_min, box_size = sample_local_patches(feature_map, trainable_centres, 0.125, 7)
    assert not (patches.requires_grad or box_min.requires_grad or box_size.requires_grad)


def test_training_sampling_matches_index_arithmetic_in_values_and_gradients():
    # With a gradient needed on CPU the patches come from a sparse matrix product (a faster
    # backward than grid_sample's); the test above covers the grid_sample path. Both must equal
    # the reference's index arithmetic, borders included, and so must the feature-map gradient.
    torch.manual_seed(0)
    feature_map = torch.randn(2, 6, 9, 11, dtype=torch.float64)
    centres = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [0.37, 0.81], [0.05, 0.97]],
                            [[1.3, -0.2], [0.5, 0.5], [0.99, 0.02], [0.61, 0.33]]], dtype=torch.float64)
    weights = torch.randn(2 * 4, 6, 5, 5, dtype=torch.float64)

    source = feature_map.clone().requires_grad_(True)
    patches, box_min, box_size = sample_local_patches(source, centres, 0.2, 5)
    patches = patches.reshape(weights.shape)
    (patches * weights).sum().backward()

    reference_source = feature_map.clone().requires_grad_(True)
    expected, expected_min, expected_size = reference_crop(reference_source, centres, 0.2, 5)
    (expected * weights).sum().backward()
    assert torch.allclose(patches, expected, atol=1e-12)
    assert torch.allclose(source.grad, reference_source.grad, atol=1e-12)
    assert torch.equal(box_min, expected_min) and torch.allclose(box_size, expected_size)
    # The export path (row gathers, used inside ONNX exports) gives the same samples.
    from facemark.models.slpt import _bilinear_by_row_gather

    steps = torch.linspace(0, 1, 5, dtype=torch.float64)
    sample_x = (box_min[..., 0, None] + box_size[..., 0, None] * steps).unsqueeze(-2).expand(2, 4, 5, 5)
    sample_y = (box_min[..., 1, None] + box_size[..., 1, None] * steps).unsqueeze(-1).expand(2, 4, 5, 5)
    gathered = _bilinear_by_row_gather(feature_map, sample_x, sample_y).view(2, 4, 5, 5, 6).permute(0, 1, 4, 2, 3)
    assert torch.allclose(gathered.reshape(weights.shape), expected, atol=1e-12)
    # The patch embedding reads both memory layouts (channels-last from the sparse product) alike.
    model = build_slpt(SLPTConfig(num_points=4, num_layers=1, patch_samples=5, embed_dim=8, num_heads=2,
                                  backbone="mobilenet_v2"), mean_face=torch.rand(4, 2)).double()
    model.patch_embedding = torch.nn.Conv2d(6, 8, 5, bias=False).double()
    training_patches = sample_local_patches(feature_map.clone().requires_grad_(True), centres, 0.2, 5)[0]
    assert training_patches.permute(0, 1, 3, 4, 2).is_contiguous()
    assert torch.allclose(model.embed_patches(training_patches), model.embed_patches(training_patches.contiguous()),
                          atol=1e-12)


# ------------------------------------------------------------------------------------------------
# Official checkpoint layout: conversion, strict loading, round trips
# ------------------------------------------------------------------------------------------------
def _official_state(num_points=98, num_layers=6, seed=0):
    torch.manual_seed(seed)
    model = build_slpt(SLPTConfig(num_points=num_points, num_layers=num_layers),
                       mean_face=_random_mean_face(num_points))
    for parameter in model.parameters():
        parameter.data.normal_(0, 0.02)
    return to_official_state_dict(model)


def test_official_layout_matches_release_key_list():
    official = _official_state()
    assert len(official) == 822
    spot_checks = {
        "feature_extractor.weight": (256, 256, 7, 7),
        "feature_norm.bias": (256,),
        "Transformer.structure_encoding": (1, 98, 256),
        "Transformer.landmark_query": (1, 98, 256),
        "Transformer.Transformer_block.layers.5.self_attn.in_proj_weight": (768, 256),
        "Transformer.Transformer_block.layers.0.multihead_attn.out_proj.bias": (256,),
        "Transformer.Transformer_block.layers.3.linear1.weight": (1024, 256),
        "Transformer.Transformer_block.layers.3.norm3.weight": (256,),
        "Transformer.Transformer_block.norm.weight": (256,),
        "out_layer.weight": (2, 256),
        "backbone.head.3.bias": (256,),
    }
    for key, shape in spot_checks.items():
        assert tuple(official[key].shape) == shape, key
    for num_layers in (6, 12):
        keys_file = OFFICIAL_KEYS / f"slpt_official_state_dict_wflw98_{num_layers}layers.txt"
        expected = dict(line.split("\t") for line in keys_file.read_text().splitlines())
        ours = _official_state(num_layers=num_layers)
        assert {k: str(tuple(v.shape)) for k, v in ours.items()} == {k: v.strip() for k, v in expected.items()}


def test_official_round_trip_and_loader(tmp_path):
    official = _official_state(num_points=68, num_layers=12)
    path = tmp_path / "slpt_300w_12layers.pth"
    torch.save(official, path)
    loaded = load_official_slpt(path)
    assert not loaded.training
    assert (loaded.config.num_points, loaded.config.num_layers) == (68, 12)
    assert torch.equal(loaded.mean_face, load_official_mean_face(68))
    exported = to_official_state_dict(loaded)
    assert exported.keys() == official.keys()
    assert all(torch.equal(exported[k], official[k]) for k in official)

    # A facemark checkpoint converted from it predicts identically.
    converted = convert_official_state_dict(official)
    rebuilt = build_slpt(infer_official_config(official), mean_face=converted["mean_face"])
    rebuilt.load_state_dict(converted, strict=True)
    rebuilt.eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(loaded(images).stages, rebuilt(images).stages):
            assert torch.equal(a, b)


def test_strict_loading_names_the_problem_keys():
    six_layer_model = build_slpt(SLPTConfig(num_layers=6))
    with pytest.raises(OfficialCheckpointError, match=r"unexpected keys \(108\).*layers\.6\.self_attn"):
        load_official_state_dict(six_layer_model, _official_state(num_layers=12))

    official = _official_state()
    official["out_layer.weight"] = torch.zeros(3, 256)
    with pytest.raises(OfficialCheckpointError, match=r"out_layer\.weight: file \(3, 256\) vs model \(2, 256\)"):
        load_official_state_dict(six_layer_model, official)

    official = _official_state()
    del official["Transformer.Transformer_block.layers.2.norm2.bias"]
    with pytest.raises(OfficialCheckpointError, match=r"missing keys \(1\): Transformer\.Transformer_block\.layers\.2\.norm2\.bias"):
        load_official_state_dict(six_layer_model, official)

    official = _official_state()
    official["decoder.extra"] = torch.zeros(1)
    with pytest.raises(OfficialCheckpointError, match="decoder.extra"):
        load_official_state_dict(six_layer_model, official)

    # Nothing was loaded by the failed attempts: a 68-point file into a 98-point model fails too.
    with pytest.raises(OfficialCheckpointError, match=r"landmark_query: file \(1, 68, 256\) vs model \(1, 98, 256\)"):
        load_official_state_dict(six_layer_model, _official_state(num_points=68))


def test_export_refuses_non_release_architectures():
    model = build_slpt(SLPTConfig(num_points=29, use_self_attention=False, num_layers=1), _random_mean_face(29))
    with pytest.raises(OfficialCheckpointError):
        to_official_state_dict(model)


# ------------------------------------------------------------------------------------------------
# Shapes, switches, gradients
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_points", [29, 68, 98])
def test_output_shapes(num_points):
    model = build_slpt(SLPTConfig(num_points=num_points, num_layers=2), _random_mean_face(num_points)).eval()
    with torch.no_grad():
        output = model(torch.randn(2, 3, 64, 64))
    assert isinstance(output, SLPTOutput)
    assert [s.shape for s in output.stages] == [(2, 2, num_points, 2)] * 3
    assert torch.equal(output.landmarks, output.stages[-1][:, -1])


def _train_one_step(config, num_points=29):
    torch.manual_seed(0)
    model = build_slpt(config, _random_mean_face(num_points)).train()
    layout_indices = (8, 9)
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    images = torch.randn(2, 3, 64, 64)
    target = _random_mean_face(num_points, seed=1).expand(2, -1, -1)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    output = model(images)
    loss = slpt_loss(output, target, layout_indices)
    loss.backward()
    optimiser.step()
    assert torch.isfinite(loss)
    return model, output, before


ABLATIONS = {
    "one_stage": dict(num_stages=1),
    "two_stages": dict(num_stages=2),
    "four_stages": dict(num_stages=4),
    "three_layers": dict(num_layers=3),
    "five_samples": dict(patch_samples=5),
    "large_initial_patch": dict(initial_patch_size=0.5),
    "no_self_attention": dict(use_self_attention=False),
    "no_cross_attention": dict(use_cross_attention=False),
    "no_attention": dict(use_self_attention=False, use_cross_attention=False),
    "no_structure_encoding": dict(use_structure_encoding=False),
    "full_hrnet_backbone": dict(backbone="hrnet_w18c"),
    "resnet34_backbone": dict(backbone="resnet34"),
    "resnet18_backbone": dict(backbone="resnet18", embed_dim=128),
    "mobilenet_v2_backbone": dict(backbone="mobilenet_v2", embed_dim=128),
}


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_ablation_switch_trains_one_step(name):
    config = SLPTConfig(**{"num_points": 29, "num_layers": 2, **ABLATIONS[name]})
    model, output, before = _train_one_step(config)
    assert len(output.stages) == config.num_stages
    assert output.stages[0].shape == (2, config.num_layers, 29, 2)
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert "prediction_head.weight" in changed and "patch_embedding.weight" in changed
    if not config.use_cross_attention:
        assert model.layers[0].cross_attention is None
    if not config.use_self_attention:
        assert model.layers[0].self_attention is None
    if not (config.use_self_attention or config.use_cross_attention):
        assert model.landmark_queries is None
    assert (model.structure_encoding is None) == (not config.use_structure_encoding)


# T^1 = 0 (Sec. 3.1, as released): layer 0's MSA sees LN(0) = its bias for every token, so its
# values are identical across tokens and its output is a learned constant: W_q, W_k never get a
# gradient, and at initialisation (LN biases and in_proj_bias 0) neither do the LN scale, W_v,
# out_proj's weight nor the next LN's scale (its input is then the constant out_proj.bias = 0).
FIRST_LAYER_ZERO_GRADIENT_AT_INIT = {
    "layers.0.norm_before_self_attention.weight",
    "layers.0.self_attention.in_proj_weight",
    "layers.0.self_attention.out_proj.weight",
    "layers.0.norm_before_cross_attention.weight",
}


def test_gradients_reach_every_learnable_parameter_and_not_the_positions():
    config = SLPTConfig(num_points=29, num_layers=2, dropout=0.0)
    model = build_slpt(config, _random_mean_face(29)).train()
    mean_face = model.mean_face.clone().requires_grad_(True)
    model.mean_face = mean_face  # if positions were not detached, a gradient would reach it
    output = model(torch.randn(2, 3, 64, 64))
    slpt_loss(output, _random_mean_face(29, seed=3).expand(2, -1, -1), (8, 9)).backward()
    assert mean_face.grad is None
    for name, parameter in model.named_parameters():
        if name.startswith("unused_feature_norm"):
            assert not parameter.requires_grad and parameter.grad is None  # frozen, as unused
        elif name in FIRST_LAYER_ZERO_GRADIENT_AT_INIT:
            assert parameter.grad is not None and parameter.grad.abs().sum() == 0, name
        else:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


# ------------------------------------------------------------------------------------------------
# Loss, per-stage error, mean face
# ------------------------------------------------------------------------------------------------
def test_loss_is_equation_8_with_stage_weights():
    target = torch.zeros(1, 4, 2)
    target[0, 1] = torch.tensor([0.5, 0.0])  # inter-ocular pair (0, 1): d = 0.5
    stage_errors = [0.1, 0.05, 0.02]
    stages = [(target + torch.tensor([error, 0.0])).unsqueeze(1).repeat(1, 2, 1, 1) for error in stage_errors]
    output = SLPTOutput(stages)
    assert torch.isclose(slpt_loss(output, target, (0, 1)), torch.tensor(0.2 * 0.2 + 0.3 * 0.1 + 0.5 * 0.04))
    assert torch.isclose(slpt_loss(output, target, (0, 1), stage_weights=[1 / 3] * 3),
                         torch.tensor((0.2 + 0.1 + 0.04) / 3))
    assert torch.allclose(stage_nme(output, target, (0, 1)), torch.tensor([0.2, 0.1, 0.04]))
    with pytest.raises(ValueError, match="2 stage weights for 3 stages"):
        slpt_loss(output, target, (0, 1), stage_weights=[0.5, 0.5])
    with pytest.raises(ValueError, match="inter-ocular distance"):
        slpt_loss(output, target, (2, 3))
    wflw = get_layout("wflw98")
    target = torch.rand(2, 98, 2)
    output = SLPTOutput([target.unsqueeze(1) + 0.01])
    expected = (0.01 * 2 ** 0.5) / (target[:, 60] - target[:, 72]).norm(dim=-1)
    assert torch.isclose(slpt_loss(output, target, wflw), expected.mean())
    # facemark's option: the error in crop sides, every face weighted alike (no inter-ocular division).
    assert torch.isclose(slpt_loss(output, target, wflw, normalisation="crop"), torch.tensor(0.01 * 2 ** 0.5))
    with pytest.raises(ValueError, match="normalisation"):
        slpt_loss(output, target, wflw, normalisation="pupils")


def test_mean_faces():
    wflw = load_official_mean_face(98)
    assert wflw.shape == (98, 2) and abs(float(wflw[0, 0]) - 21.3333395946 / 256) < 1e-7
    assert load_official_mean_face(68).shape == (68, 2)
    with pytest.raises(ValueError):
        load_official_mean_face(29)
    with pytest.raises(ValueError, match="no default mean face for 29 points"):
        build_slpt(SLPTConfig(num_points=29))
    landmarks = torch.rand(5, 29, 2)
    assert torch.allclose(compute_mean_face(landmarks), landmarks.mean(0))
    landmarks[3, 4, 0] = float("nan")
    with pytest.raises(ValueError, match=r"samples \[3\]"):
        compute_mean_face(landmarks)
    with pytest.raises(ValueError, match=r"mean_face has shape \(29, 2\); expected \(98, 2\)"):
        SLPT(SLPTConfig(), torch.rand(29, 2))


# ------------------------------------------------------------------------------------------------
# Size and compute of the released configuration
# ------------------------------------------------------------------------------------------------
def test_parameter_counts_of_the_releases():
    assert count_parameters(build_slpt(SLPTConfig())) == 13_194_380
    assert count_parameters(build_slpt(SLPTConfig(num_layers=12))) == 19_515_020
    assert count_parameters(build_slpt(SLPTConfig(num_points=68))) == 13_179_020
    without_unused_norm = build_slpt(SLPTConfig(keep_unused_feature_norm=False))
    assert count_parameters(without_unused_norm) == 13_194_380 - 512


def test_compute_of_the_released_configuration():
    report = measure_complexity(build_slpt(SLPTConfig()).eval(), torch.zeros(1, 3, 256, 256))
    assert report.flops == 12_162_398_208  # facts: 12.1624 GFLOP by torch.utils.flop_counter
    assert abs(report.multiply_adds / 6.12e9 - 1) < 0.01  # paper Table 8: 6.12 G


def test_embedding_init_normal_gives_unit_scale_queries_and_structure_encoding():
    torch.manual_seed(0)
    release = build_slpt(SLPTConfig(num_points=98, num_layers=1), mean_face=torch.rand(98, 2))
    normal = build_slpt(SLPTConfig(num_points=98, num_layers=1, embedding_init="normal"), mean_face=torch.rand(98, 2))
    for name in ("landmark_queries", "structure_encoding"):
        # Release: xavier over (1, 98, 256) -> bound sqrt(6 / (98 * 256 + 256)), std ~0.009.
        assert getattr(release, name).abs().max() <= (6 / (98 * 256 + 256)) ** 0.5 + 1e-7
        assert 0.95 < getattr(normal, name).std().item() < 1.05
    with pytest.raises(ValueError, match="embedding_init"):
        SLPTConfig(embedding_init="zeros")


def test_initial_content_queries_starts_the_relation_layers_at_the_landmark_queries():
    # initial_content="queries": T^1 = Q instead of the paper's zero matrix; same parameters.
    torch.manual_seed(0)
    config = SLPTConfig(num_points=7, num_layers=2, embed_dim=16, num_heads=2, feedforward_dim=32, dropout=0.0,
                        backbone="mobilenet_v2", embedding_init="normal", initial_content="queries")
    model = build_slpt(config, mean_face=torch.rand(7, 2)).eval()
    paper = build_slpt(dataclasses.replace(config, initial_content="zeros"), mean_face=model.mean_face).eval()
    paper.load_state_dict(model.state_dict())
    representations = torch.randn(3, 7, 16)
    content = model.landmark_queries.expand(3, -1, -1)
    keys = representations + model.structure_encoding
    outputs = []
    with torch.no_grad():
        for layer in model.layers:
            content = layer(content, model.landmark_queries, keys, representations)
            outputs.append(content)
        expected = model.final_norm(torch.stack(outputs, dim=1))
        torch.testing.assert_close(model.relate(representations), expected)
        assert not torch.allclose(paper.relate(representations), expected, atol=1e-3)
    with pytest.raises(ValueError, match="initial_content"):
        SLPTConfig(initial_content="ones")
    with pytest.raises(ValueError, match="needs use_cross_attention"):
        SLPTConfig(initial_content="queries", use_cross_attention=False)


def test_centre_head_init_starts_every_stage_at_its_patch_centre():
    # head_init="centre": t = 0.5 for any input, so every layer of every stage predicts the patch
    # centre, i.e. the mean face (stage 1 starts there and each stage starts where the last ended).
    mean_face = torch.rand(29, 2) * 0.6 + 0.2
    config = SLPTConfig(num_points=29, num_layers=2, embed_dim=64, num_heads=4, feedforward_dim=128,
                        backbone="mobilenet_v2", head_init="centre")
    model = build_slpt(config, mean_face=mean_face).eval()
    with torch.no_grad():
        output = model(torch.randn(2, 3, 64, 64))
    for stage in output.stages:
        torch.testing.assert_close(stage, mean_face.expand_as(stage))
    with pytest.raises(ValueError, match="head_init"):
        SLPTConfig(head_init="zeros")
