"""``facemark explain``: the tensors behind the papers' figures and the command on tiny checkpoints."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine_fixtures import make_wflw_fixture, one_thread  # noqa: F401  (autouse fixture)
from facemark.cli import main
from facemark.data.transforms import CropConvention
from facemark.explain.sdfl import OCCLUDED_FRACTIONS, occlude, record_sdfl
from facemark.explain.faces import cosine_similarity_matrix
from facemark.explain.slpt import record_slpt
from facemark.layouts import get_layout
from facemark.models.sdfl import build_neighbourhood, sdfl_graph_model
from facemark.models.slpt import SLPTConfig, build_slpt

WFLW98 = get_layout("wflw98")
CROP = CropConvention("landmarks", 1.2, 64)
SLPT_OPTIONS = {"num_stages": 2, "num_layers": 2, "embed_dim": 16, "num_heads": 2, "feedforward_dim": 32,
                "patch_samples": 3, "dropout": 0.0, "embedding_init": "normal"}


def _tiny_slpt(num_points: int = 98, seed: int = 0):
    torch.manual_seed(seed)
    mean_face = 0.2 + 0.6 * torch.rand(num_points, 2, generator=torch.Generator().manual_seed(seed))
    return build_slpt(SLPTConfig(num_points=num_points, backbone="mobilenet_v2_050", **SLPT_OPTIONS), mean_face).eval()


def _neighbourhood(num_points: int, seed: int = 0) -> np.ndarray:
    shapes = np.random.default_rng(seed).normal(size=(40, num_points, 2))
    return build_neighbourhood(shapes, k=3)


def test_exposed_attention_leaves_the_outputs_unchanged_and_rows_sum_to_one():
    model = _tiny_slpt(num_points=7)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fused = model(images)
    # The weights the tap exposes are the ones MultiheadAttention.attention_weights gives for the
    # inputs the layer received (first call = stage 1).
    received = []
    handle = model.layers[1].cross_attention.register_forward_pre_hook(lambda module, args: received.append(args))
    recording = record_slpt(model, images)
    handle.remove()
    query, key, _ = received[0]
    expected_weights = model.layers[1].cross_attention.attention_weights(query, key).mean(dim=1)
    np.testing.assert_allclose(recording.mca[:, 0, 1], expected_weights.detach().numpy(), atol=1e-6)
    for stage, expected in enumerate(fused.stages):
        np.testing.assert_allclose(recording.stages[:, stage], expected.numpy(), atol=1e-5)
    for weights in (recording.mca, recording.msa):
        assert weights.shape == (2, 2, 2, 7, 7)  # faces, stages, layers, queries, keys
        assert (weights >= 0).all()
        np.testing.assert_allclose(weights.sum(axis=-1), 1.0, atol=1e-5)
    # The taps are removed and the fused kernel is back once the recording is done.
    assert not any(layer.cross_attention.expose_weights or layer.cross_attention.weights_tap._forward_hooks
                   for layer in model.layers)
    # Stage 1's boxes are centred on the mean face, of the model's stage-1 side (clamped to the crop).
    half = model.stage_half_sizes()[0]
    mean_face = model.mean_face.numpy()
    np.testing.assert_allclose(recording.boxes[0, 0, :, :2], np.clip(mean_face - half, 0, 1), atol=1e-6)
    np.testing.assert_allclose(recording.boxes[0, 0, :, 2:], np.clip(mean_face + half, 0, 1), atol=1e-6)


def test_exposed_attention_in_training_mode_draws_the_same_dropout_shape():
    # Dropout on the weights applies on the explicit path as on the fused one: same statistics, no error.
    model = _tiny_slpt(num_points=5)
    layer = model.layers[0].cross_attention
    layer.expose_weights = True
    layer.dropout = 0.5
    layer.train()
    out = layer(torch.randn(2, 5, 16), torch.randn(2, 5, 16), torch.randn(2, 5, 16))
    assert out.shape == (2, 5, 16) and torch.isfinite(out).all()


def test_cosine_similarity_matrix_is_symmetric_with_unit_diagonal():
    features = np.random.default_rng(0).normal(size=(3, 9, 5))
    similarity = cosine_similarity_matrix(features)
    assert similarity.shape == (3, 9, 9)
    np.testing.assert_allclose(similarity, np.swapaxes(similarity, -1, -2), atol=1e-12)
    np.testing.assert_allclose(np.diagonal(similarity, axis1=-2, axis2=-1), 1.0, atol=1e-12)
    assert similarity.max() <= 1.0 and similarity.min() >= -1.0


def test_sdfl_recording_adjacency_and_node_features():
    torch.manual_seed(0)
    neighbourhood = _neighbourhood(12)
    model = sdfl_graph_model(12, neighbourhood, backbone="resnet18", input_size=64, hidden_features=16).eval()
    with torch.no_grad():  # a trained-looking adjacency: non-uniform edge weights
        model.head.dynamic_adjacency.fc2.weight.normal_()
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        plain = model(images).landmarks.numpy()
    recording = record_sdfl(model, images)
    np.testing.assert_array_equal(recording.landmarks, plain)  # hooks read, never change
    adjacency = recording.adjacency
    np.testing.assert_allclose(adjacency.sum(axis=-1), 1.0, atol=1e-5)
    assert (adjacency[:, ~neighbourhood] == 0).all() and (adjacency[:, neighbourhood] > 0).all()
    assert not np.allclose(adjacency[0][neighbourhood], adjacency[0][neighbourhood][0])
    assert set(recording.nodes) == {"input", "block2", "block4"}
    assert recording.nodes["input"].shape == (3, 12, 4 * 2 * 2)  # n * H * W node features (Sec. III-A)
    assert recording.nodes["block4"].shape == (3, 12, 16)


def test_occlusion_greys_a_growing_bottom_block_of_the_face_box():
    crops = np.full((1, 20, 20, 3), 7, dtype=np.uint8)
    box = np.array([[4.0, 4.0, 15.0, 15.0]])
    np.testing.assert_array_equal(occlude(crops, box, 0.0), crops)
    half = occlude(crops, box, 0.5)[0]
    assert (half[10:16, 4:16] == 128).all()  # bottom half of the box
    assert (half[:9] == 7).all() and (half[:, :4] == 7).all() and (half[:, 16:] == 7).all()
    assert (occlude(crops, box, 0.6)[0] == 128).sum() > (half == 128).sum()
    assert OCCLUDED_FRACTIONS[0] == 0.0


def _save(model, spec_method, backbone, options, statistics, path):
    from facemark.engine.checkpoint import save_checkpoint

    spec = {"method": spec_method, "backbone": backbone, "options": options, "layout": WFLW98.to_dict(),
            "statistics": statistics, "crop": CROP.to_dict(), "image_size": CROP.size}
    return save_checkpoint({"model": model.state_dict(), "model_spec": spec, "epoch": 1, "config": {}}, path)


def test_explain_command_on_a_tiny_slpt_checkpoint_and_split(tmp_path, capsys):
    root = make_wflw_fixture(tmp_path / "wflw", num_train=1, num_test=2)
    model = _tiny_slpt()
    checkpoint = _save(model, "slpt", "mobilenet_v2_050", SLPT_OPTIONS, {"mean_face": model.mean_face.numpy()},
                       tmp_path / "slpt.pt")
    out = tmp_path / "out"
    assert main(["explain", str(checkpoint), "--data", str(root), "--dataset", "wflw", "--split", "test",
                 "--out", str(out), "--landmark", "33", "--faces", "1"]) == 0
    assert "explain.md" in capsys.readouterr().out
    for name in ("slpt_fig1_patches.png", "slpt_fig2_relation.png", "slpt_fig3_structure_encoding.png",
                 "slpt_fig5_attention.png", "slpt_stage_layer_nme.png"):
        assert (out / name).stat().st_size > 1000
        assert f"]({name})" in (out / "explain.md").read_text()
    assert np.load(out / "slpt_fig1_boxes.npy").shape == (2, 2, 98, 4)
    for kind in ("mca", "msa"):
        mean = np.load(out / f"slpt_fig5_{kind}_mean.npy")
        assert mean.shape == (2, 98, 98)
        np.testing.assert_allclose(mean.sum(axis=-1), 1.0, atol=1e-5)
    cross = np.load(out / "slpt_fig2_first_layer_cross_attention.npy")
    np.testing.assert_array_equal(np.load(out / "slpt_fig2_partner.npy"), cross.argmax(axis=-1))
    similarity = np.load(out / "slpt_fig3_similarity.npy")
    np.testing.assert_allclose(similarity, similarity.T, atol=1e-12)
    np.testing.assert_allclose(np.diag(similarity), 1.0, atol=1e-6)
    nme = np.load(out / "slpt_stage_layer_nme.npy")
    assert nme.shape == (2, 2) and np.isfinite(nme).all() and (nme > 0).all()


def test_explain_command_on_sdfl_with_a_compared_fc_checkpoint(tmp_path):
    from facemark.models.sdfl import sdfl_fc_model

    root = make_wflw_fixture(tmp_path / "wflw", num_train=1, num_test=2)
    neighbourhood = _neighbourhood(98)
    torch.manual_seed(0)
    options = {"adjacency": "dynamic", "hidden_features": 16}
    graph = sdfl_graph_model(98, neighbourhood, backbone="resnet18", input_size=64, hidden_features=16)
    fc = sdfl_fc_model(98, backbone="resnet18", input_size=64, hidden_features=16, neighbourhood=neighbourhood)
    statistics = {"neighbourhood": neighbourhood}
    graph_path = _save(graph, "sdfl", "resnet18", options, statistics, tmp_path / "sdfl.pt")
    fc_path = _save(fc, "fc", "resnet18", {"hidden_features": 16}, statistics, tmp_path / "fc.pt")
    out = tmp_path / "out"
    assert main(["explain", str(graph_path), "--data", str(root), "--dataset", "wflw", "--split", "test",
                 "--out", str(out), "--compare", str(fc_path), "--faces", "1"]) == 0
    for name in ("sdfl_fig4_neighbourhood.png", "sdfl_fig4_adjacency.png", "sdfl_fig9_node_similarity.png",
                 "sdfl_fig2_occlusion.png"):
        assert (out / name).stat().st_size > 1000
    np.testing.assert_array_equal(np.load(out / "sdfl_fig4_neighbourhood.npy"), neighbourhood)
    adjacency = np.load(out / "sdfl_fig4_adjacency.npy")
    assert adjacency.shape == (2, 98, 98)
    np.testing.assert_allclose(adjacency.sum(axis=-1), 1.0, atol=1e-5)
    assert (adjacency[:, ~neighbourhood] == 0).all()
    for name in ("input", "block2", "block4"):
        similarity = np.load(out / f"sdfl_fig9_similarity_{name}.npy")
        np.testing.assert_allclose(similarity, np.swapaxes(similarity, -1, -2), atol=1e-12)
        np.testing.assert_allclose(np.diagonal(similarity, axis1=-2, axis2=-1), 1.0, atol=1e-6)
    curves = np.load(out / "sdfl_fig2_nme.npy")
    assert curves.shape == (2, len(OCCLUDED_FRACTIONS)) and np.isfinite(curves).all()
    np.testing.assert_array_equal(np.load(out / "sdfl_fig2_fractions.npy"), OCCLUDED_FRACTIONS)


def test_explain_command_on_an_authors_format_slpt_file(tmp_path):
    from facemark.models.official_slpt import to_official_state_dict
    from facemark.models.slpt import load_official_mean_face

    root = make_wflw_fixture(tmp_path / "wflw", num_train=1, num_test=1)
    torch.manual_seed(0)
    released = build_slpt(SLPTConfig(num_points=98, num_layers=1), load_official_mean_face(98))
    torch.save(to_official_state_dict(released), tmp_path / "WFLW_1_layer.pth")
    out = tmp_path / "out"
    image = next((root / "WFLW_images").rglob("test_0.png"))
    assert main(["explain", str(tmp_path / "WFLW_1_layer.pth"), "--image", str(image), "--box", "10", "10", "50", "50",
                 "--out", str(out)]) == 0
    assert (out / "slpt_fig1_patches.png").is_file() and (out / "slpt_fig5_attention.png").is_file()
    assert np.load(out / "slpt_fig1_boxes.npy").shape == (1, 3, 98, 4)  # the release: 3 stages
    assert np.load(out / "slpt_fig5_mca_mean.npy").shape == (1, 98, 98)
    assert "Needs ground truth" in (out / "explain.md").read_text()  # one image: no NME plot


def test_explain_command_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["explain", str(tmp_path / "x.pt"), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "either --image FILE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["explain", str(tmp_path / "missing.pt"), "--image", str(tmp_path / "a.png"), "--out", str(tmp_path / "o")])
    assert "missing.pt" in capsys.readouterr().err
