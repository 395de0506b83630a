"""The SLPT paper recipes: the authors' ImageNet start (model.pretrained), their mean face, their data
and selection protocol reported beside the last epoch, and each recipe end to end on SynthFace.

The ImageNet files are made by the tests with exactly the key layout of the real ones:
``tests/data/hrnet_w18_imagenet_state_dict.txt`` is the key/shape list of
``hrnetv2_w18_imagenet_pretrained.pth`` (copied from shared/facts; 1,956 entries), and the ResNet34
file is torchvision's layout (our ResNet34's tensors plus the classifier ``fc``). To keep them
small, every tensor is one value expanded to its shape (``torch.save`` stores one element);
each key gets its own value so that a test can tell which tensor went where.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engine_fixtures import HRNET_IMAGENET_KEYS, read_key_list, write_state_dict_like, one_thread  # noqa: F401 (autouse fixture)
from facemark.engine.checkpoint import load_checkpoint
from facemark.engine.config import load_config
from facemark.engine.pretrained import PretrainedWeightsError, load_pretrained_backbone
from facemark.engine.train import REPORT_LABELS, train

TESTS_DIR = Path(__file__).resolve().parent
CONFIG_DIR = TESTS_DIR.parent / "configs"
SLPT_PAPER_RECIPES = sorted(path.name for path in CONFIG_DIR.glob("slpt_*.yaml"))


@pytest.fixture(scope="module")
def hrnet_imagenet_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pretrained") / "hrnetv2_w18_imagenet_pretrained.pth"
    write_state_dict_like(path, read_key_list(HRNET_IMAGENET_KEYS))
    return path


@pytest.fixture(scope="module")
def resnet34_imagenet_file(tmp_path_factory) -> Path:
    from facemark.models.resnet import resnet34

    shapes = {key: tuple(value.shape) for key, value in resnet34().state_dict().items()}
    shapes.update({"fc.weight": (1000, 512), "fc.bias": (1000,)})  # torchvision's classifier
    path = tmp_path_factory.mktemp("pretrained") / "resnet34-b627a593.pth"
    write_state_dict_like(path, shapes)
    return path


def _slpt_model(backbone: str = "hrnet_w18c_lite"):
    from facemark.models.slpt import SLPTConfig, build_slpt

    return build_slpt(SLPTConfig(num_points=98, backbone=backbone, num_layers=1))


def test_the_hrnet_recipe_loads_what_the_authors_name_filter_loads(hrnet_imagenet_file):
    config = load_config(CONFIG_DIR / "slpt_hrnet_wflw.yaml")
    assert Path(config.model.pretrained).name == "hrnetv2_w18_imagenet_pretrained.pth"
    torch.manual_seed(0)
    model = _slpt_model(config.model.backbone)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    file_state = torch.load(hrnet_imagenet_file, weights_only=True)

    report = load_pretrained_backbone(model, hrnet_imagenet_file)

    # SLPT_Training backbone/HRnet.py:461: {k: v for k, v in file.items() if k in model_dict}.
    authors = {key for key in file_state if key in model.backbone.state_dict()}
    assert set(report.matched) == authors and len(authors) == 696  # shared/facts/slpt.md
    prefixes = {key.split(".")[0] + ("." + key.split(".")[1] if key.startswith("stage") else "") for key in authors}
    assert prefixes == {"conv1", "bn1", "conv2", "bn2", "layer1", "transition1", "transition2", "transition3",
                        "stage2.0", "stage3.0", "stage4.0"}  # the first module of each stage only
    assert report.loaded_into == "backbone" and not report.shape_mismatch
    assert report.missing and all(key.startswith("head.") for key in report.missing)
    assert len(report.unused) == 1956 - 696 and "stage3.1.branches.0.0.conv1.weight" in report.unused
    after = model.state_dict()
    for key in authors:
        assert torch.equal(after[f"backbone.{key}"], file_state[key]), key
    # The landmark head and everything outside the backbone keep their own initialisation.
    untouched = [key for key in before if not key.startswith("backbone.") or key.startswith("backbone.head.")]
    assert any(key.startswith("backbone.head.") for key in untouched)
    for key in untouched:
        assert torch.equal(after[key], before[key]), key


def test_a_file_of_another_architecture_is_refused_with_what_did_not_match(hrnet_imagenet_file,
                                                                           resnet34_imagenet_file, tmp_path):
    with pytest.raises(PretrainedWeightsError) as error:
        load_pretrained_backbone(_slpt_model(), resnet34_imagenet_file)  # a ResNet file for an HRNet recipe
    message = str(error.value)
    assert str(resnet34_imagenet_file) in message and "partial load is refused" in message
    assert "conv1.weight: file (64, 3, 7, 7) vs module (64, 3, 3, 3)" in message  # a shape that differs
    assert "38 tensors matched" in message  # BatchNorm vectors of equal size: loaded silently before
    assert "654 tensors of the network are not in the file (conv2.weight" in message  # e.g. the stem's 2nd conv
    assert "model.pretrained=null" in message
    with pytest.raises(PretrainedWeightsError, match="ResNet"):
        load_pretrained_backbone(_slpt_model("resnet34"), hrnet_imagenet_file)
    # A truncated HRNet file (stage 4 missing) is refused too, naming what is missing.
    truncated = {key: shape for key, shape in read_key_list(HRNET_IMAGENET_KEYS).items() if not key.startswith("stage4")}
    write_state_dict_like(tmp_path / "truncated.pth", truncated)
    with pytest.raises(PretrainedWeightsError, match=r"stage4\.0\.branches"):
        load_pretrained_backbone(_slpt_model(), tmp_path / "truncated.pth")


def test_a_missing_pretrained_file_names_it_links_the_download_and_the_override(tmp_path):
    from facemark.cli import CommandError
    from facemark.engine.commands import add_train_arguments
    import argparse

    parser = argparse.ArgumentParser()
    run = add_train_arguments(parser)
    missing = tmp_path / "nowhere" / "hrnetv2_w18_imagenet_pretrained.pth"
    with pytest.raises(CommandError) as error:
        run(parser.parse_args([str(CONFIG_DIR / "slpt_hrnet_wflw.yaml"), f"model.pretrained={missing}",
                               f"runtime.output_dir={tmp_path / 'run'}"]))
    message = str(error.value)
    assert str(missing) in message and "model.pretrained=null" in message
    assert "https://github.com/HRNet/HRNet-Image-Classification" in message and "HRNet-W18-C" in message
    assert not (tmp_path / "run").exists()  # refused before anything is written


@pytest.mark.parametrize("name", SLPT_PAPER_RECIPES)
def test_paper_recipes_follow_the_authors_code(name, capsys):
    from facemark.engine.commands import add_train_arguments
    import argparse

    parser = argparse.ArgumentParser()
    run = add_train_arguments(parser)
    assert run(parser.parse_args([str(CONFIG_DIR / name), "--print-config"])) == 0
    printed = capsys.readouterr().out
    config = load_config(CONFIG_DIR / name)
    assert config.model.pretrained and config.model.pretrained in printed  # the ImageNet file
    assert config.data.val_fraction == 0 and config.data.val_split is None  # the whole training split
    assert config.runtime.select_on == "test" and config.runtime.report_best_and_last  # + the last epoch
    assert config.runtime.amp is False
    cofw = config.data.dataset == "cofw"  # no authors' mean face for 29 points (their code has no COFW)
    assert config.model.options["mean_face"] == ("training" if cofw else "authors")
    for line in ("val_fraction: 0.0", "select_on: test", "report_best_and_last: true", "amp: false",
                 f"mean_face: {'training' if cofw else 'authors'}"):
        assert line in printed, line


# -- end to end on SynthFace ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def synthface_roots(tmp_path_factory) -> dict[str, Path]:
    from facemark.data.synthface import generate_dataset

    roots = {}
    for dataset in ("wflw", "300w", "cofw"):
        root = tmp_path_factory.mktemp(f"synthface_{dataset}")
        generate_dataset(root, num_train=4, num_test=3, size=96, format=dataset, progress=False)
        roots[dataset] = root
    return roots


# Overrides that keep each run to seconds on a 2-core CPU, everything else is the recipe as
# shipped (backbone, layers, stages, loss, protocol, precision, mean face): 64-px crops (the model
# works in normalised crop coordinates; the HRNet map is 16 x 16 instead of 64 x 64), one epoch of
# batch 2 (4 SynthFace training faces, 3 test faces), no loader processes, CPU, no progress bars.
FAST = ["data.crop.size=64", "optim.epochs=1", "optim.batch_size=2", "data.workers=0", "runtime.device=cpu",
        "runtime.eval_batch_size=4", "runtime.progress=false", "runtime.tensorboard=false"]


@pytest.mark.parametrize("name", SLPT_PAPER_RECIPES)
def test_each_slpt_paper_recipe_trains_end_to_end_on_synthface(name, synthface_roots, hrnet_imagenet_file,
                                                               resnet34_imagenet_file, tmp_path):
    from facemark.models.slpt import load_official_mean_face

    recipe = load_config(CONFIG_DIR / name)
    pretrained = resnet34_imagenet_file if recipe.model.backbone == "resnet34" else hrnet_imagenet_file
    output = tmp_path / "run"
    config = load_config(CONFIG_DIR / name, [f"data.root={synthface_roots[recipe.data.dataset]}",
                                             f"model.pretrained={pretrained}", f"runtime.output_dir={output}", *FAST])
    result = train(config)

    report = json.loads((output / "pretrained_report.json").read_text())
    assert report["counts"]["shape_mismatch"] == 0
    if recipe.model.backbone == "resnet34":
        assert report["counts"]["matched"] == len(torch.load(pretrained, weights_only=True)) - 2  # all but fc
    else:
        assert report["counts"]["matched"] == 696
    assert "model.pretrained: " in (output / "train.log").read_text()

    # The final table and results.json: the test-selected epoch and the last epoch, labelled.
    results = json.loads((output / "results.json").read_text())
    assert results["split"] == recipe.data.test_split and results["select_on"] == "test"
    rows = {row["protocol"]: row for row in results["rows"]}
    assert rows["best"]["label"] == REPORT_LABELS["test"] == "best epoch on the test set (authors' protocol)"
    assert rows["last"]["label"] == REPORT_LABELS["last"] == "last epoch (no test-set selection)"
    assert rows["best"]["epoch"] == rows["last"]["epoch"] == 1
    # One epoch from a made-up ImageNet file: the numbers are meaningless, but real and from the test split.
    assert np.isfinite(rows["last"]["summary"]["all"]["NME_io"])
    assert rows["last"]["summary"]["all"]["n"] == 3 and rows["best"]["checkpoint"] == "best.pt"
    assert (output / rows["last"]["evaluation"] / "predictions.json").is_file()
    assert "best epoch on the test set (authors' protocol), epoch 1" in result.report_table
    assert "last epoch (no test-set selection), epoch 1" in result.report_table

    # The initial landmarks: the authors' mean face (98 / 68 points), COFW: the training crops' mean.
    mean_face = load_checkpoint(result.last_checkpoint)["model_spec"]["statistics"]["mean_face"]
    if recipe.data.dataset == "cofw":
        assert mean_face.shape == (29, 2)
    else:
        np.testing.assert_array_equal(mean_face, load_official_mean_face(mean_face.shape[0]).numpy())


def test_the_authors_mean_face_exists_for_98_and_68_points_only():
    from facemark.engine.config import ConfigError
    from facemark.engine.methods import METHODS, TrainingShapes, compute_method_statistics
    from facemark.layouts import get_layout
    from facemark.models.slpt import load_official_mean_face

    def statistics(layout_name: str, mean_face: str) -> np.ndarray:
        layout = get_layout(layout_name)
        crops = np.random.default_rng(0).uniform(0.2, 0.8, size=(5, layout.num_points, 2))
        shapes = TrainingShapes(original=crops * 100, crop=crops)
        return compute_method_statistics(METHODS["slpt"], shapes, layout, {"mean_face": mean_face})["mean_face"]

    for layout_name, points in (("wflw98", 98), ("300w68", 68)):
        np.testing.assert_array_equal(statistics(layout_name, "authors"), load_official_mean_face(points).numpy())
    assert statistics("cofw29", "training").shape == (29, 2)
    with pytest.raises(ConfigError, match="model.options.mean_face.*98 and 68 points.*mean_face=training"):
        statistics("cofw29", "authors")
    with pytest.raises(ConfigError, match="model.options.mean_face"):
        statistics("wflw98", "average")
