"""SDFL / FC paper recipes follow the authors' release: per-image z-score BGR input (training,
evaluation, prediction, export), the release's landmark graphs, the ImageNet HRNet-W18 start, and
every recipe running end to end on a tiny SynthFace set in its dataset's format."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engine_fixtures import HRNET_IMAGENET_KEYS, read_key_list, write_state_dict_like, one_thread  # noqa: F401 (autouse fixture)
from facemark.data import load_dataset
from facemark.data.synthface import generate_dataset
from facemark.data.transforms import CropConvention, image_to_tensor
from facemark.engine.checkpoint import load_checkpoint
from facemark.engine.config import ConfigError, load_config
from facemark.engine.data import CropDataset
from facemark.engine.methods import METHODS, TrainingShapes, compute_method_statistics
from facemark.engine.train import train
from facemark.layouts import get_layout
from facemark.models.hrnet import load_imagenet_hrnet
from facemark.models.sdfl import release_neighbourhood, sdfl_graph_model

TESTS_DIR = Path(__file__).resolve().parent
CONFIGS = TESTS_DIR.parent / "configs"
PAPER_RECIPES = ["sdfl_hrnet_wflw", "sdfl_hrnet_300w", "sdfl_hrnet_cofw", "sdfl_release_resnet34_wflw",
                 "fc_hrnet_wflw", "fc_hrnet_300w", "fc_hrnet_cofw"]
# The SynthFace format and test split of each recipe's dataset.
DATASET_OF = {"wflw": ("wflw", "test"), "300w": ("300w", "full"), "cofw": ("cofw", "test")}
IMAGENET_CLASSIFIER_PARTS = ("incre_modules.", "downsamp_modules.", "final_layer.", "classifier.")


def imagenet_hrnet_file(path: Path) -> dict[str, torch.Tensor]:
    """A stand-in for hrnetv2_w18_imagenet_pretrained.pth with exactly its keys and shapes, saved to ``path``."""
    return write_state_dict_like(path, read_key_list(HRNET_IMAGENET_KEYS))


@pytest.fixture(scope="module")
def imagenet_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("imagenet") / "hrnetv2_w18_imagenet_pretrained.pth"
    imagenet_hrnet_file(path)
    return path


# ------------------------------------------------------------------------------------------------
# Input normalisation
# ------------------------------------------------------------------------------------------------
def test_per_image_zscore_bgr_standardises_each_channel_in_bgr_order():
    rng = np.random.default_rng(0)
    image = np.empty((16, 16, 3), np.uint8)
    image[:, :, 0] = rng.integers(100, 200, (16, 16))   # R
    image[:, :, 1] = rng.integers(0, 50, (16, 16))      # G
    image[:, :, 2] = rng.integers(0, 256, (16, 16))     # B
    tensor = image_to_tensor(image, "per_image_zscore_bgr").numpy()
    assert tensor.shape == (3, 16, 16) and tensor.dtype == np.float32
    np.testing.assert_allclose(tensor.mean(axis=(1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(tensor.std(axis=(1, 2)), 1.0, atol=1e-5)
    for channel, rgb_index in enumerate((2, 1, 0)):  # BGR
        values = image[:, :, rgb_index].astype(np.float64)
        np.testing.assert_allclose(tensor[channel], (values - values.mean()) / values.std(), rtol=1e-5, atol=1e-5)

    # A constant channel has no deviation: divided by 1 (the release's guard), so it becomes 0.
    image[:, :, 1] = 77
    tensor = image_to_tensor(image, "per_image_zscore_bgr").numpy()
    assert np.all(tensor[1] == 0.0) and np.isfinite(tensor).all()
    # The default stays ImageNet RGB.
    assert torch.equal(image_to_tensor(image), image_to_tensor(image, "imagenet_rgb"))
    with pytest.raises(ValueError, match="normalisation must be one of"):
        image_to_tensor(image, "zscore")


def test_the_crop_convention_carries_the_normalisation():
    convention = CropConvention("landmarks", 1.2, 64, "per_image_zscore_bgr")
    assert convention.to_dict()["normalisation"] == "per_image_zscore_bgr"
    assert CropConvention.from_dict(convention.to_dict()) == convention
    # Checkpoints and exports written before the field existed used ImageNet RGB.
    assert CropConvention.from_dict({"box_source": "landmarks", "enlarge": 1.2, "size": 64}).normalisation == "imagenet_rgb"
    with pytest.raises(ValueError, match="ckpt.pt: CropConvention: normalisation must be one of"):
        CropConvention.from_dict({**convention.to_dict(), "normalisation": "bgr"}, source="ckpt.pt")
    with pytest.raises(ConfigError, match="data.crop.normalisation"):
        load_config(None, ["data.crop.normalisation=zscore"])


def test_training_and_evaluation_crops_use_the_convention_normalisation(tmp_path):
    from engine_fixtures import TINY_METHODS, TinyRegressor, tiny_config

    generate_dataset(tmp_path / "data", 6, 2, seed=0, size=64, format="wflw", progress=False)
    records = load_dataset("wflw", tmp_path / "data", "train").records
    layout = get_layout("wflw98")
    # The loaders hand over the uint8 crop, the same for both conventions...
    zscore = CropDataset(records, layout, CropConvention("landmarks", 1.2, 64, "per_image_zscore_bgr"))[0]["image"]
    imagenet = CropDataset(records, layout, CropConvention("landmarks", 1.2, 64))[0]["image"]
    assert zscore.dtype == torch.uint8 and torch.equal(zscore, imagenet)
    # ... and the model gets it normalised as the run's convention says, in training steps and in validation.
    seen = []

    def record(module, args):
        if isinstance(module, TinyRegressor):
            seen.append((module.training, args[0].detach().clone()))

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        train(tiny_config(tmp_path / "data", tmp_path / "run", "data.crop.normalisation=per_image_zscore_bgr",
                          "optim.epochs=1"), methods=TINY_METHODS)
    finally:
        handle.remove()
    assert {training for training, _ in seen} == {True, False}
    for _, images in seen:
        assert images.dtype == torch.float32
        np.testing.assert_allclose(images.mean(dim=(2, 3)).numpy(), 0.0, atol=1e-5)
        np.testing.assert_allclose(images.std(dim=(2, 3), unbiased=False).numpy(), 1.0, atol=1e-4)


# ------------------------------------------------------------------------------------------------
# The release's graphs
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout_name, edges, nonzeros", [("wflw98", 294, 470), ("300w68", 99, 266), ("cofw29", 52, 133)])
def test_release_graphs_symmetrised_with_self_loops(layout_name, edges, nonzeros):
    num_points = get_layout(layout_name).num_points
    listed = release_neighbourhood(layout_name, symmetric=False, self_loops=False)
    graph = release_neighbourhood(layout_name)
    assert listed.shape == graph.shape == (num_points, num_points)
    assert listed.sum() == edges and not listed.diagonal().any()
    assert graph.sum() == nonzeros
    assert np.array_equal(graph, graph.T) and graph.diagonal().all()
    # Exactly the listed edges in both directions plus the diagonal, nothing else.
    assert np.array_equal(graph, listed | listed.T | np.eye(num_points, dtype=bool))
    if layout_name == "wflw98":
        assert (listed.sum(axis=1) == 3).all()  # top-3 lists
        assert graph.sum(axis=1).min() == 4 and graph.sum(axis=1).max() == 8
    else:
        # Hand-made graphs list each undirected edge once.
        assert not (listed & listed.T).any()


def test_graph_option_of_the_sdfl_methods(tmp_path):
    layout = get_layout("300w68")
    rng = np.random.default_rng(0)
    shapes = TrainingShapes(original=rng.normal(size=(10, 68, 2)), crop=rng.uniform(size=(10, 68, 2)))
    for method in ("sdfl", "fc"):
        statistics = compute_method_statistics(METHODS[method], shapes, layout, {"graph": "release"})
        assert np.array_equal(statistics["neighbourhood"], release_neighbourhood("300w68"))
        assert np.array_equal(statistics["laplacian_graph"], release_neighbourhood("300w68", symmetric=False, self_loops=False))
    computed = compute_method_statistics(METHODS["sdfl"], shapes, layout, {"neighbours": 3})
    assert (computed["neighbourhood"].sum(axis=1) == 4).all()  # eq. 2: self + top 3, the default
    assert "laplacian_graph" not in computed
    with pytest.raises(ConfigError, match="model.options.neighbours.*applies to graph=computed"):
        compute_method_statistics(METHODS["sdfl"], shapes, layout, {"graph": "release", "neighbours": 5})
    with pytest.raises(ConfigError, match="model.options.graph.*expected one of"):
        compute_method_statistics(METHODS["sdfl"], shapes, layout, {"graph": "hand_made"})
    other = get_layout("wflw98").to_dict()
    other["name"] = "my98"
    with pytest.raises(ConfigError, match="model.options.graph.*not 'my98'.*graph=computed"):
        compute_method_statistics(METHODS["sdfl"], shapes, type(layout).from_dict(other), {"graph": "release"})


def test_release_graph_trains_the_relative_loss_on_the_release_laplacian():
    # The release's Laplacian loss (losses/wing_loss.py there) takes each listed edge in its file's
    # direction, weight 1 / (listed edges of the point); a point with none keeps its own position.
    from facemark.models.sdfl import SDFLOutput, sdfl_loss_terms

    layout = get_layout("300w68")
    shapes = TrainingShapes(original=np.zeros((3, 68, 2)), crop=np.zeros((3, 68, 2)))
    statistics = compute_method_statistics(METHODS["sdfl"], shapes, layout, {"graph": "release"})
    listed = statistics["laplacian_graph"]
    expected = np.eye(68)
    for i in range(68):
        targets = np.flatnonzero(listed[i])
        expected[i, targets] = -1.0 / len(targets) if len(targets) else 0.0
    assert (listed.sum(axis=1) == 0).sum() == 3  # points with no listed edge
    expected = torch.as_tensor(expected, dtype=torch.float32)

    generator = torch.Generator().manual_seed(0)
    prediction, target = torch.rand(2, 68, 2, generator=generator), torch.rand(2, 68, 2, generator=generator)
    loss = METHODS["sdfl"].build_loss(layout, statistics, 64, relative_weight=1.0)
    by_hand = sdfl_loss_terms(SDFLOutput(prediction), target, crop_size=64, laplacian=expected)
    torch.testing.assert_close(loss(SDFLOutput(prediction), target), by_hand["total"])
    on_head_graph = sdfl_loss_terms(SDFLOutput(prediction), target, crop_size=64,
                                    neighbourhood=torch.as_tensor(statistics["neighbourhood"]))
    assert not torch.allclose(by_hand["relative"], on_head_graph["relative"])


# ------------------------------------------------------------------------------------------------
# The ImageNet HRNet-W18 start of the SDFL HRNet backbone
# ------------------------------------------------------------------------------------------------
def test_sdfl_hrnet_backbone_loads_the_imagenet_file_by_name(tmp_path):
    path = tmp_path / "hrnetv2_w18_imagenet_pretrained.pth"
    file_state = imagenet_hrnet_file(path)
    model = sdfl_graph_model(98, release_neighbourhood("wflw98"), backbone="hrnet_w18c", input_size=64)
    head_before = {key: value.clone() for key, value in model.head.state_dict().items()}
    trunk = model.backbone.trunk
    report = load_imagenet_hrnet(trunk, path)

    # Every tensor of the SDFL HRNet trunk comes from the file; only the classifier is left over.
    assert report["missing"] == [] and report["shape_mismatch"] == []
    assert sorted(report["matched"]) == sorted(trunk.state_dict())
    assert report["unexpected"] and all(key.startswith(IMAGENET_CLASSIFIER_PARTS) for key in report["unexpected"])
    assert len(report["matched"]) + len(report["unexpected"]) == len(file_state)
    for key, value in trunk.state_dict().items():
        assert torch.equal(value, file_state[key]), key
    # The graph head keeps its own initialisation.
    for key, value in model.head.state_dict().items():
        assert torch.equal(value, head_before[key]), key


# ------------------------------------------------------------------------------------------------
# Every paper recipe, end to end, on a tiny SynthFace set in its dataset's format
# ------------------------------------------------------------------------------------------------
def _tiny_overrides(root: Path, output_dir: Path) -> list[str]:
    return [f"data.root={root}", "data.workers=0", "data.crop.size=64", "optim.epochs=1", "optim.batch_size=2",
            "runtime.device=cpu", f"runtime.output_dir={output_dir}", "runtime.progress=false",
            "runtime.tensorboard=false", "runtime.eval_interval=1", "runtime.eval_batch_size=4"]


@pytest.mark.parametrize("recipe", PAPER_RECIPES)
def test_paper_recipe_follows_the_release_and_runs_end_to_end(recipe, imagenet_file, tmp_path):
    config = load_config(CONFIGS / f"{recipe}.yaml")
    # The release's protocol and settings, by default.
    assert config.optim.milestones == [200, 350] and config.optim.epochs == 500 and config.optim.gamma == 0.2
    assert config.data.crop.normalisation == "per_image_zscore_bgr"
    assert config.model.options["graph"] == "release"
    assert config.loss.options["relative_weight"] == 1.0
    assert config.runtime.amp is False
    assert config.data.val_fraction == 0.0 and config.runtime.select_on == "test"
    if config.model.backbone == "hrnet_w18c":
        assert Path(config.model.pretrained).name == "hrnetv2_w18_imagenet_pretrained.pth"
    else:
        assert config.model.pretrained is None  # the release's ResNet34 starts from scratch

    dataset_format, test_split = DATASET_OF[config.data.dataset]
    root = tmp_path / "data"
    generate_dataset(root, 4, 3, seed=0, size=64, format=dataset_format, progress=False)
    overrides = _tiny_overrides(root, tmp_path / "run")
    if config.model.pretrained is not None:
        # The HRNet recipes start from a test-made ImageNet file in the real key layout. (From the
        # N(0, 0.001) initialisation, one SGD step at lr 0.01 scales the weights up ~10^4-fold
        # while BN's running statistics still describe the old ones, so a one-step run evaluates
        # to inf/NaN; real runs are thousands of steps.)
        overrides.append(f"model.pretrained={imagenet_file}")
    config = load_config(CONFIGS / f"{recipe}.yaml", overrides)
    result = train(config)

    assert result.epochs_completed == 1 and result.best_checkpoint is not None
    state = load_checkpoint(result.best_checkpoint)
    spec = state["model_spec"]
    assert spec["crop"]["normalisation"] == "per_image_zscore_bgr"
    layout_name = spec["layout"]["name"]
    assert np.array_equal(np.asarray(spec["statistics"]["neighbourhood"]), release_neighbourhood(layout_name))
    assert np.array_equal(np.asarray(spec["statistics"]["laplacian_graph"]),
                          release_neighbourhood(layout_name, symmetric=False, self_loops=False))
    assert config.data.test_split == test_split
    if config.model.pretrained is not None:
        assert str(imagenet_file) in (tmp_path / "run" / "train.log").read_text()


def test_zscore_checkpoint_predicts_the_same_through_torch_and_onnx(tmp_path):
    from facemark import Predictor
    from facemark.inference.export import export_model

    root = tmp_path / "data"
    generate_dataset(root, 4, 2, seed=1, size=64, format="wflw", progress=False)
    overrides = _tiny_overrides(root, tmp_path / "run") + ["model.backbone=resnet18", "model.pretrained=null"]
    result = train(load_config(CONFIGS / "sdfl_hrnet_wflw.yaml", overrides))

    onnx_path = tmp_path / "sdfl.onnx"
    export_model(result.best_checkpoint, onnx_path, format="onnx")
    import onnx

    metadata = json.loads({p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}["facemark"])
    assert metadata["crop"]["normalisation"] == "per_image_zscore_bgr" and metadata["input"]["colour_order"] == "BGR"

    torch_predictor = Predictor(result.best_checkpoint, detector=None)
    onnx_predictor = Predictor(onnx_path, backend="onnx", detector=None)
    assert torch_predictor.crop.normalisation == onnx_predictor.crop.normalisation == "per_image_zscore_bgr"
    records = load_dataset("wflw", root, "test").records
    for record in records:
        image = record.load_image()
        box = np.array([[*record.landmarks.min(axis=0), *record.landmarks.max(axis=0)]])
        from_torch = torch_predictor.predict(image, box)[0].landmarks
        from_onnx = onnx_predictor.predict(image, box)[0].landmarks
        np.testing.assert_allclose(from_onnx, from_torch, atol=1e-3)  # pixels

        # The predictor feeds the model the z-scored BGR crop (what it was trained on).
        from facemark.data.transforms import crop_matrix, crop_to_image, square_box, warp_image

        matrix = crop_matrix(square_box(box[0], 1.2), 64)
        crop = image_to_tensor(warp_image(image, matrix, 64), "per_image_zscore_bgr")[None]
        with torch.no_grad():
            direct = torch_predictor.bundle.model(crop).landmarks[0].numpy() * 64
        np.testing.assert_allclose(from_torch, crop_to_image(direct, matrix), atol=1e-4)


@pytest.mark.parametrize("head", ["dynamic", "static", "release", "fc"])
def test_every_sdfl_head_exports_to_onnx(head):
    import onnxruntime

    from facemark.inference.export import onnx_model_bytes
    from facemark.models.sdfl import sdfl_fc_model

    torch.manual_seed(0)
    graph = release_neighbourhood("cofw29")
    if head == "fc":
        model = sdfl_fc_model(29, backbone="resnet18", input_size=64)
    else:
        model = sdfl_graph_model(29, graph, backbone="resnet18", adjacency=head, input_size=64)
    if head == "dynamic":  # non-uniform edge weights, so the scatter of the edge logits matters
        torch.nn.init.normal_(model.head.dynamic_adjacency.fc2.weight, std=0.5)
    model.eval()
    crop = CropConvention("landmarks", 1.2, 64, "per_image_zscore_bgr")
    session = onnxruntime.InferenceSession(onnx_model_bytes(model, get_layout("cofw29"), crop),
                                           providers=["CPUExecutionProvider"])
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(images).landmarks.numpy()
    (exported,) = session.run(None, {"image": images.numpy()})
    np.testing.assert_allclose(exported, expected, atol=1e-5)
