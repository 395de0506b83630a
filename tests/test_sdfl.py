"""SDFL: neighbourhood (eq. 1-2), node embedding, adjacency (eq. 4), graph layers, heads, loss, PDB."""
import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from facemark.data.balancing import pdb_indices, pdb_repeat_counts, pdb_sampling_weights, pose_bins, shapes_in_box_frame
from facemark.models.sdfl import (
    FCHead,
    GraphHead,
    GraphRelationalLayers,
    NodeEmbedding,
    SDFLModel,
    SDFLOutput,
    build_backbone,
    build_neighbourhood,
    export_neighbourhood,
    graph_layers_flops,
    landmark_correlation,
    neighbourhood_from_lists,
    parameter_counts,
    read_neighbour_lists,
    release_wflw98_neighbourhood,
    sdfl_fc_model,
    sdfl_graph_model,
    sdfl_loss,
    sdfl_loss_terms,
    sdfl_model_from_state_dict,
    write_neighbour_lists,
)

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- shape sets
def _grouped_shapes(num_shapes: int = 200, seed: int = 0) -> np.ndarray:
    """Points 0-2 move together, points 3-5 move together, each group independently (+ small noise)."""
    rng = np.random.default_rng(seed)
    base = np.array([[0, 0], [1, 0], [2, 0], [0, 5], [1, 5], [2, 5]], dtype=float) * 10 + 100
    group_a = rng.normal(0, 3, (num_shapes, 1, 2))
    group_b = rng.normal(0, 3, (num_shapes, 1, 2))
    motion = np.concatenate([np.repeat(group_a, 3, axis=1), np.repeat(group_b, 3, axis=1)], axis=1)
    return base + motion + rng.normal(0, 0.3, (num_shapes, 6, 2))


def _chain_shapes(num_points: int = 12, num_shapes: int = 300, seed: int = 1) -> np.ndarray:
    """Points along a line displaced by a smooth random field: adjacent points move most alike."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_points, dtype=float)
    base = np.stack([t * 10, np.zeros_like(t)], axis=1)
    # Gaussian-kernel smoothing of white noise: correlation falls with distance along the chain.
    smoothing = np.exp(-((t[:, None] - t[None, :]) ** 2) / (2 * 2.0 ** 2))
    return base + np.einsum("ij,sjc->sic", smoothing, rng.normal(0, 1, (num_shapes, num_points, 2)))


# ----------------------------------------------------------------------------- neighbourhood
def test_points_moving_together_are_neighbours():
    neighbourhood = build_neighbourhood(_grouped_shapes(), k=2, frame="as_given")
    expected = np.zeros((6, 6), dtype=bool)
    expected[:3, :3] = True
    expected[3:, 3:] = True
    assert np.array_equal(neighbourhood, expected)


def test_correlation_is_mean_of_absolute_x_and_y_correlations():
    shapes = _grouped_shapes(50)
    correlation = landmark_correlation(shapes, frame="as_given")
    x_corr = np.corrcoef(shapes[:, :, 0].T)
    y_corr = np.corrcoef(shapes[:, :, 1].T)
    assert np.allclose(correlation, 0.5 * (np.abs(x_corr) + np.abs(y_corr)))
    # An anti-correlated point counts as related (eq. 1 takes absolute values).
    mirrored = shapes.copy()
    mirrored[:, 5] = 400 - mirrored[:, 0]
    assert landmark_correlation(mirrored, frame="as_given")[0, 5] > 0.99


def test_chain_neighbours_are_adjacent_points_and_self_always_included():
    neighbourhood = build_neighbourhood(_chain_shapes(), k=2, frame="as_given")
    assert np.all(neighbourhood.sum(axis=1) == 3)
    assert np.all(np.diag(neighbourhood))
    for i in range(1, 11):
        assert neighbourhood[i, i - 1] and neighbourhood[i, i + 1], f"point {i}"
    assert neighbourhood[0, 1] and neighbourhood[0, 2] and neighbourhood[11, 10] and neighbourhood[11, 9]


def test_self_kept_when_another_point_moves_identically():
    shapes = _grouped_shapes()
    shapes[:, 1] = shapes[:, 0] + 5.0  # point 1 correlates exactly 1 with point 0
    neighbourhood = build_neighbourhood(shapes, k=1, frame="as_given")
    assert neighbourhood[1, 1] and neighbourhood[1, 0] and neighbourhood[0, 0] and neighbourhood[0, 1]
    assert np.all(neighbourhood.sum(axis=1) == 2)


def _ring_shapes(num_points: int = 16, num_shapes: int = 300, seed: int = 1) -> np.ndarray:
    """A closed contour displaced by a field that is smooth along the ring."""
    rng = np.random.default_rng(seed)
    angles = np.linspace(0, 2 * np.pi, num_points, endpoint=False)
    base = np.stack([np.cos(angles), np.sin(angles)], axis=1) * 50
    steps = np.abs(np.arange(num_points)[:, None] - np.arange(num_points)[None, :])
    steps = np.minimum(steps, num_points - steps)
    smoothing = np.exp(-(steps ** 2) / (2 * 1.5 ** 2))
    return base + np.einsum("ij,sjc->sic", smoothing, rng.normal(0, 1, (num_shapes, num_points, 2)))


@pytest.mark.parametrize("frame", ["centroid", "box"])
def test_frames_ignore_where_and_how_big_the_face_is(frame):
    shapes = _ring_shapes()
    expected = build_neighbourhood(shapes, k=2, frame="as_given")
    assert all(expected[i, (i - 1) % 16] and expected[i, (i + 1) % 16] for i in range(16))
    rng = np.random.default_rng(3)
    # Faces of different sizes all over big images.
    moved = shapes * rng.uniform(0.5, 2.0, (len(shapes), 1, 1)) + rng.uniform(-500, 500, (len(shapes), 1, 2))
    assert np.array_equal(build_neighbourhood(moved, k=2, frame=frame), expected)
    # Without a common frame the translation makes every point correlate with every other.
    assert landmark_correlation(moved, frame="as_given").min() > 0.9


def test_neighbourhood_input_errors():
    with pytest.raises(ValueError, match=r"\(n, N, 2\)"):
        build_neighbourhood(np.zeros((10, 5)))
    with pytest.raises(ValueError, match="k must be"):
        build_neighbourhood(_grouped_shapes(), k=6)
    constant = _grouped_shapes()
    constant[:, 2, 0] = 7.0
    with pytest.warns(UserWarning, match=r"points \[2\]"):
        landmark_correlation(constant, frame="as_given")


def test_release_wflw98_graph():
    neighbourhood = release_wflw98_neighbourhood()
    assert neighbourhood.shape == (98, 98)
    assert neighbourhood.sum() == 470
    assert np.array_equal(neighbourhood, neighbourhood.T) and np.all(np.diag(neighbourhood))
    assert neighbourhood.sum(axis=1).min() == 4 and neighbourhood.sum(axis=1).max() == 8
    directed = release_wflw98_neighbourhood(symmetric=False, self_loops=False)
    assert np.all(directed.sum(axis=1) == 3) and not np.any(np.diag(directed))
    assert directed[0, [1, 2, 3]].all()


def test_neighbour_lists_round_trip_and_bad_file(tmp_path):
    neighbourhood = build_neighbourhood(_chain_shapes(), k=2, frame="as_given")
    path = tmp_path / "graph.txt"
    write_neighbour_lists(neighbourhood, path, comment="chain, k=2")
    assert np.array_equal(neighbourhood_from_lists(read_neighbour_lists(path), symmetric=False), neighbourhood)
    path.write_text("0: 1 2\n1: 0 x\n")
    with pytest.raises(ValueError, match=r"graph.txt:2"):
        read_neighbour_lists(path)
    path.write_text("0: 1\n1: 0 5\n")
    with pytest.raises(ValueError, match="outside"):
        read_neighbour_lists(path)


def test_export_neighbourhood_writes_lists_and_plot(tmp_path):
    shapes = _ring_shapes()
    neighbourhood = export_neighbourhood(shapes * 4 + 300, k=2, out_path=tmp_path / "g.txt", plot_path=tmp_path / "g.png")
    assert np.array_equal(neighbourhood, build_neighbourhood(shapes, k=2))
    lists = read_neighbour_lists(tmp_path / "g.txt")
    assert all(sorted(lists[i]) == sorted({(i - 1) % 16, (i + 1) % 16}) for i in range(16))
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"


# ----------------------------------------------------------------------------- modules
def test_node_embedding_layout():
    embedding = NodeEmbedding(in_channels=8, num_points=5, expansion=4, hidden_channels=16)
    nodes, node_maps = embedding(torch.randn(2, 8, 3, 3))
    assert nodes.shape == (2, 5, 4 * 3 * 3) and node_maps.shape == (2, 20, 3, 3)
    # Node i = channels 4i..4i+3, each 3 x 3 map flattened row-major (the release's view).
    assert torch.equal(nodes[1, 3], node_maps[1, 12:16].flatten())
    assert bool((nodes >= 0).all())  # after the final ReLU


def _random_neighbourhood(num_points: int, k: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lists = [rng.choice([j for j in range(num_points) if j != i], size=k, replace=False) for i in range(num_points)]
    return neighbourhood_from_lists(lists, symmetric=True)


def test_dynamic_adjacency_rows_sum_to_one_over_the_neighbourhood():
    neighbourhood = _random_neighbourhood(10)
    head = GraphHead(in_channels=16, feature_size=2, neighbourhood=neighbourhood, adjacency="dynamic",
                     embed_channels=16, hidden_features=8, num_blocks=1, adjacency_hidden=8)
    torch.nn.init.normal_(head.dynamic_adjacency.fc2.weight, std=1.0)  # away from the uniform start
    _, adjacency = head(torch.randn(3, 16, 2, 2))
    assert adjacency.shape == (3, 10, 10)
    assert torch.allclose(adjacency.sum(dim=-1), torch.ones(3, 10), atol=1e-6)
    mask = torch.as_tensor(neighbourhood)
    assert bool((adjacency[:, ~mask] == 0).all())
    assert bool((adjacency[:, mask] > 0).all())
    assert not torch.allclose(adjacency[0], adjacency[1])  # per image


def test_static_and_release_adjacency_are_uniform_at_start():
    neighbourhood = _random_neighbourhood(10)
    mask = torch.as_tensor(neighbourhood)
    head = GraphHead(16, 2, neighbourhood, adjacency="static", embed_channels=16, hidden_features=8, num_blocks=1)
    _, adjacency = head(torch.randn(2, 16, 2, 2))
    assert torch.allclose(adjacency, mask.float() / mask.sum(1, keepdim=True))
    release = GraphHead(16, 2, neighbourhood, adjacency="release", embed_channels=16, hidden_features=8, num_blocks=1)
    conv = release.graph.input_layer.conv
    with torch.no_grad():
        conv.edge_weight.normal_()
    learned = conv.adjacency()
    assert torch.allclose(learned.sum(-1), torch.ones(10), atol=1e-6) and bool((learned[~mask] == 0).all())


def test_release_graph_part_has_336350_parameters():
    layers = GraphRelationalLayers(in_features=256, neighbourhood=torch.as_tensor(release_wflw98_neighbourhood()),
                                   hidden_features=128, out_features=2, num_blocks=4, variant="release")
    assert sum(p.numel() for p in layers.parameters()) == 336_350


def test_graph_layers_are_permutation_equivariant():
    # Relabelling the landmarks (and the graph with them) relabels the output: no hidden node order.
    neighbourhood = torch.as_tensor(_random_neighbourhood(9))
    layers = GraphRelationalLayers(6, neighbourhood, hidden_features=8, num_blocks=2).eval()
    permutation = torch.randperm(9, generator=torch.Generator().manual_seed(0))
    adjacency = torch.softmax(torch.randn(9, 9).masked_fill(~neighbourhood, float("-inf")), dim=-1)
    nodes = torch.randn(2, 9, 6)
    with torch.no_grad():
        out = layers(nodes, adjacency)
        out_permuted = layers(nodes[:, permutation], adjacency[permutation][:, permutation])
    assert torch.allclose(out[:, permutation], out_permuted, atol=1e-5)


def test_graph_flops_paper_formula_and_flop_counter():
    flops = graph_layers_flops(num_points=98, k=3, in_features=256, hidden_features=128, out_features=2)
    assert flops["paper_formula"] == 29_955_072  # the paper's 29.95 M
    assert flops["paper_formula_all_layers"] == 33_266_688
    layers = GraphRelationalLayers(256, torch.as_tensor(release_wflw98_neighbourhood())).eval()
    adjacency = torch.softmax(torch.zeros(98, 98), dim=-1)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        layers(torch.zeros(1, 98, 256), adjacency)
    assert counter.get_total_flops() == flops["dense_as_implemented"]


# ----------------------------------------------------------------------------- models
BACKBONE_NAMES = ("resnet18", "resnet34", "mobilenet_v2", "vgg16", "hrnet_w18c")
HEADS = ("dynamic", "static", "release", "fc")


def _make_head(head: str, channels: int, neighbourhood: np.ndarray, input_size: int) -> torch.nn.Module:
    if head == "fc":
        return FCHead(channels, input_size // 32, neighbourhood.shape[0], output_offset=input_size / 2)
    return GraphHead(channels, input_size // 32, neighbourhood, adjacency=head, output_offset=input_size / 2)


@pytest.mark.parametrize("backbone_name", BACKBONE_NAMES)
def test_every_backbone_and_head_builds_and_trains_a_step(backbone_name):
    # One backbone per test (building ResNet-34 / VGG-16 is the slow part), every head and point count
    # on it, at a 64 x 64 input (2 x 2 map) to stay fast.
    torch.manual_seed(0)
    input_size = 64
    backbone = build_backbone(backbone_name)
    for num_points in (29, 68, 98):
        neighbourhood = _random_neighbourhood(num_points, seed=num_points)
        for head_name in HEADS:
            head = _make_head(head_name, backbone.out_channels, neighbourhood, input_size)
            model = SDFLModel(backbone, head, torch.as_tensor(neighbourhood), input_size, config={}).train()
            optimiser = torch.optim.SGD(model.head.parameters(), lr=1e-3)
            images = torch.randn(2, 3, input_size, input_size)
            target = torch.rand(2, num_points, 2)
            output = model(images)
            assert isinstance(output, SDFLOutput) and output.landmarks.shape == (2, num_points, 2)
            loss = sdfl_loss(output, target, crop_size=input_size, neighbourhood=model.neighbourhood)
            before = [p.detach().clone() for p in model.head.parameters()]
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            assert torch.isfinite(loss), (backbone_name, head_name, num_points)
            changed = sum(not torch.equal(b, p) for b, p in zip(before, model.head.parameters()))
            assert changed > 0, (backbone_name, head_name, num_points)


def test_builders_contract_and_counts():
    neighbourhood = release_wflw98_neighbourhood()
    model = sdfl_graph_model(98, neighbourhood, backbone="resnet18", adjacency="dynamic", input_size=64).eval()
    with torch.no_grad():
        output = model(torch.zeros(1, 3, 64, 64))
    # Untrained head predicts around the crop centre: landmarks are normalised crop coordinates.
    assert output.landmarks.shape == (1, 98, 2) and abs(float(output.landmarks.mean()) - 0.5) < 0.05
    assert output.adjacency.shape == (1, 98, 98)
    with pytest.raises(ValueError, match=r"\(B, 3, 64, 64\)"):
        model(torch.zeros(1, 3, 96, 96))
    assert "neighbourhood" in model.state_dict() and model.state_dict()["neighbourhood"].dtype == torch.bool

    release = sdfl_graph_model(98, neighbourhood, backbone="resnet34", adjacency="release", bn_momentum=0.01)
    counts = parameter_counts(release)
    # shared/facts/sdfl.md: node embedding 2,084,760; graph part 336,350; ResNet34 + graph head
    # 24,218,782 including the release's unused ImageNet fc (513,000), which facemark does not build.
    assert counts["node_embedding"] == 2_084_760 and counts["graph_layers"] == 336_350
    assert counts["total"] == 24_218_782 - 513_000

    fc = sdfl_fc_model(98, backbone="resnet34")
    assert parameter_counts(fc)["fc_head"] == 256 * 512 * 8 * 8 + 256 + 196 * 256 + 196  # release's fc1/fc2
    assert fc.neighbourhood is None


def test_state_dict_carries_the_neighbourhood():
    torch.manual_seed(0)
    neighbourhood = _random_neighbourhood(12, seed=1)
    model = sdfl_graph_model(12, neighbourhood, backbone="mobilenet_v2", adjacency="release", input_size=64).eval()
    with torch.no_grad():
        for conv in (m for m in model.modules() if hasattr(m, "edge_weight")):
            conv.edge_weight.normal_()
    state, config = model.state_dict(), model.config
    rebuilt = sdfl_model_from_state_dict(config, state).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(rebuilt(images).landmarks, model(images).landmarks, atol=1e-6)
    # A model built with another graph of the same size takes the checkpoint's graph on load.
    permutation = np.random.default_rng(0).permutation(12)
    other = sdfl_graph_model(12, neighbourhood[permutation][:, permutation], backbone="mobilenet_v2",
                             adjacency="release", input_size=64)
    other.load_state_dict(state)
    with torch.no_grad():
        assert torch.allclose(other.eval()(images).landmarks, model(images).landmarks, atol=1e-6)


def test_initial_shape_is_where_the_untrained_model_starts_and_travels_in_the_state_dict():
    """model.options.initial_shape=training: the head's output is an offset from the training crops'
    mean shape instead of from the crop centre (the same weights give the same offsets)."""
    from facemark.engine.methods import METHODS, TrainingShapes, compute_method_statistics
    from facemark.layouts import Layout

    layout = Layout(name="five", num_points=5, groups={}, flip_permutation=None, inter_ocular=(0, 1), inter_pupil=None)
    rng = np.random.default_rng(0)
    crop = np.array([[0.2, 0.15], [0.8, 0.15], [0.5, 0.55], [0.3, 0.85], [0.7, 0.85]]) + rng.normal(0, 0.02, (40, 5, 2))
    shapes = TrainingShapes(original=crop * 100, crop=crop)
    method = METHODS["sdfl"]
    options = dict(hidden_features=16, num_blocks=1, initial_shape="training")
    statistics = compute_method_statistics(method, shapes, layout, options)
    assert np.allclose(statistics["initial_shape"], crop.mean(axis=0))
    torch.manual_seed(0)
    started = method.build_model("mobilenet_v2", layout, statistics, 64, **options).eval()
    torch.manual_seed(0)
    centred = method.build_model("mobilenet_v2", layout, statistics, 64, **{**options, "initial_shape": "centre"}).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        offset = centred(images).landmarks - 0.5  # the centre-start head's offsets from the centre
        assert torch.allclose(started(images).landmarks, torch.as_tensor(crop.mean(axis=0), dtype=torch.float32) + offset,
                              atol=1e-6)
        rebuilt = sdfl_model_from_state_dict(started.config, started.state_dict()).eval()
        assert torch.allclose(rebuilt(images).landmarks, started(images).landmarks, atol=1e-6)
    assert "initial_shape" in started.state_dict() and "initial_shape" not in centred.state_dict()


def test_sdfl_loss_in_crop_pixels():
    neighbourhood = torch.as_tensor(_random_neighbourhood(8))
    target = torch.rand(2, 8, 2)
    perfect = SDFLOutput(landmarks=target.clone())
    assert float(sdfl_loss(perfect, target, neighbourhood=neighbourhood)) == 0.0
    # 1 px error in x on every point of a 256 crop: Soft Wing is linear below 2 px -> 0.5 absolute
    # (averaged over x and y); a pure translation has no relative-location error.
    shifted = SDFLOutput(landmarks=target + torch.tensor([1.0 / 256, 0.0]))
    terms = sdfl_loss_terms(shifted, target, crop_size=256, neighbourhood=neighbourhood)
    assert float(terms["absolute"]) == pytest.approx(0.5, rel=1e-4)
    assert float(terms["relative"]) == pytest.approx(0.0, abs=1e-4)
    with pytest.raises(ValueError, match="neighbourhood"):
        sdfl_loss(shifted, target)
    assert float(sdfl_loss(shifted, target, relative_weight=0.0)) == pytest.approx(0.5, rel=1e-4)


# ----------------------------------------------------------------------------- PDB
def _posed_shapes(num_shapes: int, seed: int = 0) -> np.ndarray:
    """Frontal-ish majority with a tail of 'yawed' faces (x compressed on one side)."""
    rng = np.random.default_rng(seed)
    base = np.stack([np.cos(np.linspace(0, 2 * np.pi, 10, endpoint=False)),
                     np.sin(np.linspace(0, 2 * np.pi, 10, endpoint=False))], axis=1) * 50 + 100
    yaw = np.concatenate([rng.normal(0, 0.05, int(num_shapes * 0.8)), rng.uniform(0.3, 0.8, num_shapes - int(num_shapes * 0.8))])
    shapes = np.repeat(base[None], num_shapes, axis=0)
    shapes[:, :, 0] = 100 + (shapes[:, :, 0] - 100) * (1 - yaw[:, None]) + 40 * yaw[:, None]
    return shapes + rng.normal(0, 0.5, shapes.shape)


def test_pdb_bins_and_repeats():
    shapes = _posed_shapes(300)
    bins = pose_bins(shapes, num_bins=9)
    assert bins.counts.sum() == 300 and len(bins.edges) == 10
    assert np.array_equal(np.bincount(bins.bin_index, minlength=9), bins.counts)
    repeats = pdb_repeat_counts(shapes, num_bins=9)
    for b in range(9):
        members = bins.bin_index == b
        if members.any():
            assert np.all(repeats[members] == int(np.rint(bins.counts.max() / bins.counts[b])))
    # The most populated bin is used once; the rare (strongly posed) faces several times.
    assert repeats[bins.bin_index == np.argmax(bins.counts)].max() == 1 and repeats.max() > 1
    indices = pdb_indices(shapes, num_bins=9, shuffle_seed=0)
    assert len(indices) == repeats.sum() and np.array_equal(np.bincount(indices, minlength=300), repeats)
    weights = pdb_sampling_weights(shapes)
    assert weights.sum() == pytest.approx(1.0) and np.allclose(weights / weights.min(), repeats / repeats.min())


def test_shapes_in_box_frame():
    shapes = _posed_shapes(20)
    framed = shapes_in_box_frame(shapes * 3 + 1000)
    assert np.allclose(framed, shapes_in_box_frame(shapes))
    extent = framed.max(axis=1) - framed.min(axis=1)
    assert np.allclose(extent.max(axis=1), 1.0)
    with pytest.raises(ValueError, match="one position"):
        shapes_in_box_frame(np.ones((3, 4, 2)))
