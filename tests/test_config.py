"""Typed training configs: YAML + base inheritance, typed CLI overrides, errors naming keys, and
every recipe in configs/ validated."""
from __future__ import annotations

from pathlib import Path

import pytest

from facemark.engine.config import (
    ConfigError,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    load_config,
    parse_override,
    save_config,
)
from facemark.engine.methods import METHODS, check_method_options, get_method
from facemark.engine.train import _augmentation

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def test_defaults_are_the_slpt_wflw_recipe():
    config = load_config(None)
    assert isinstance(config, TrainConfig)
    assert config.model.method == "slpt" and config.optim.lr == 1e-3 and config.optim.milestones == [120, 140]
    assert config.data.crop.box_source == "landmarks" and config.runtime.select_on == "val"


def test_overrides_are_parsed_with_types():
    config = load_config(None, [
        "optim.lr=5e-4",            # PyYAML reads this as a string: a float field converts it
        "optim.epochs=3",
        "runtime.amp=false",
        "optim.milestones=[1, 2]",
        "optim.grad_clip_norm=null",
        "model.options.num_layers=12",
        "data.crop.enlarge=1.25",
        "name=my run",
    ])
    assert config.optim.lr == 5e-4 and isinstance(config.optim.lr, float)
    assert config.optim.epochs == 3 and config.runtime.amp is False
    assert config.optim.milestones == [1, 2] and config.optim.grad_clip_norm is None
    assert config.model.options == {"num_layers": 12}
    assert config.data.crop.enlarge == 1.25 and config.name == "my run"
    assert parse_override("a.b=[1,2]") == (["a", "b"], [1, 2])


@pytest.mark.parametrize("override, words", [
    ("optim.lrr=1", ["'optim.lrr'", "did you mean 'lr'", "allowed keys in 'optim'", "milestones"]),
    ("trainer.epochs=1", ["'trainer'", "allowed keys in the top level", "optim"]),
    ("data.crop.sise=128", ["'data.crop.sise'", "box_source, enlarge, size"]),
    ("optim.lr.x=1", ["'optim.lr'", "no sub-keys"]),
])
def test_unknown_override_key_names_it_and_the_allowed_keys(override, words):
    with pytest.raises(ConfigError) as error:
        load_config(None, [override])
    message = str(error.value)
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("override, words", [
    ("optim.epochs=1.5", ["'optim.epochs'", "an integer", "1.5"]),
    ("optim.lr=fast", ["'optim.lr'", "a number"]),
    ("runtime.amp=maybe", ["'runtime.amp'", "true or false"]),
    ("data.crop.box_source=face", ["'data.crop.box_source'", "'landmarks'", "'detector'"]),
    ("optim.milestones=[1, x]", ["'optim.milestones[1]'", "an integer"]),
    ("optim.milestones=[5, 2]", ["'optim.milestones'", "increasing"]),
    ("data.val_fraction=1.5", ["'data.val_fraction'", "[0, 1)"]),
    ("runtime.device=gpu", ["'runtime.device'", "cuda:N"]),
])
def test_wrong_type_or_range_names_the_key_and_the_expected_type(override, words):
    with pytest.raises(ConfigError) as error:
        load_config(None, [override])
    for word in words:
        assert word in str(error.value), str(error.value)


def test_override_without_equals_sign_is_an_error():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["optim.lr"])


def test_yaml_base_inheritance_and_file_named_in_errors(tmp_path):
    (tmp_path / "parent.yaml").write_text("optim:\n  lr: 1e-2\n  epochs: 10\nmodel:\n  options: {num_layers: 6, dropout: 0.2}\n")
    (tmp_path / "child.yaml").write_text("base: parent.yaml\noptim:\n  epochs: 20\nmodel:\n  options: {num_layers: 12}\n")
    config = load_config(tmp_path / "child.yaml", ["optim.batch_size=8"])
    assert config.optim.lr == 0.01 and config.optim.epochs == 20 and config.optim.batch_size == 8
    assert config.model.options == {"num_layers": 12, "dropout": 0.2}  # dicts merge key by key

    (tmp_path / "bad.yaml").write_text("base: parent.yaml\noptim:\n  epoch: 3\n")
    with pytest.raises(ConfigError) as error:
        load_config(tmp_path / "bad.yaml")
    assert "optim.epoch" in str(error.value) and "bad.yaml" in str(error.value) and "epochs" in str(error.value)

    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_config(tmp_path / "loop.yaml")
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_config(tmp_path / "missing.yaml")


def test_save_and_reload_round_trip(tmp_path):
    config = load_config(None, ["optim.lr=0.002", "model.options.num_layers=2", "data.val_split=null"])
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config
    assert config_from_dict(config_to_dict(config)) == config


def test_method_options_are_checked_against_the_builder():
    method = get_method("slpt", METHODS)
    check_method_options(method, {"num_layers": 12}, {"stage_weights": [0.2, 0.3, 0.5]})
    with pytest.raises(ConfigError) as error:
        check_method_options(method, {"num_layer": 12}, {})
    assert "model.options.num_layer" in str(error.value) and "num_layers" in str(error.value)
    with pytest.raises(ConfigError, match="loss.options.weights"):
        check_method_options(method, {}, {"weights": [1]})
    with pytest.raises(ConfigError, match="unknown method 'slpr'"):
        get_method("slpr", METHODS)
    # A known option with a wrong value names the key and the allowed values.
    from facemark.layouts import get_layout

    method.build_loss(get_layout("wflw98"), {}, 128, normalisation="crop")
    with pytest.raises(ConfigError, match="loss.options.normalisation.*'inter_ocular' or 'crop'"):
        method.build_loss(get_layout("wflw98"), {}, 128, normalisation="pupils")


def test_augmentation_overrides_are_checked():
    config = load_config(None, ["augmentation.preset=slpt", "augmentation.overrides.flip_probability=0.0"])
    assert _augmentation(config).flip_probability == 0.0
    with pytest.raises(ConfigError, match="augmentation.overrides.flip"):
        _augmentation(load_config(None, ["augmentation.overrides.flip=0.0"]))
    assert _augmentation(load_config(None, ["augmentation.preset=none"])) is None


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_in_configs_is_valid(path):
    config = load_config(path)
    assert config.name == path.stem, "a recipe's name should be its file name"
    assert config.runtime.output_dir.endswith(path.stem)
    method = get_method(config.model.method, METHODS)
    check_method_options(method, config.model.options, config.loss.options)
    _augmentation(config)


def test_configs_folder_has_every_paper_recipe():
    names = {path.stem for path in CONFIG_DIR.glob("*.yaml")}
    for dataset in ("wflw", "300w", "cofw"):
        for recipe in ("slpt_hrnet", "slpt_resnet34", "sdfl_hrnet", "fc_hrnet", "heatmap_hrnet", "detr_hrnet"):
            assert f"{recipe}_{dataset}" in names


@pytest.mark.parametrize("override", ["optim.lr=inf", "optim.lr=.inf", "optim.momentum=nan", "data.crop.enlarge=inf",
                                      "optim.grad_clip_norm=inf", "optim.time_budget_minutes=.nan"])
def test_non_finite_numbers_are_rejected_naming_the_key(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        load_config(None, [override])


@pytest.mark.parametrize("method", ["slpt", "sdfl", "fc", "detr"])
def test_unknown_backbone_names_the_config_key(method):
    from facemark.engine.methods import build_model_from_spec
    from facemark.layouts import get_layout

    spec = {"method": method, "backbone": "resnet1000", "options": {}, "layout": get_layout("wflw98").to_dict(),
            "statistics": {}, "image_size": 256}
    with pytest.raises(ConfigError) as error:
        build_model_from_spec(spec, METHODS)
    message = str(error.value)
    assert "'model.backbone'" in message and "'resnet1000'" in message and "resnet34" in message, message
    assert "SLPTConfig" not in message
