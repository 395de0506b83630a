"""Typed training configuration: dataclasses, YAML loading with ``base:`` inheritance, CLI overrides.

A recipe is a YAML file whose top-level sections mirror :class:`TrainConfig`::

    base: slpt_wflw.yaml          # optional: another YAML (relative to this one) to start from
    data:  {dataset: wflw, root: data/WFLW}
    model: {method: slpt, backbone: resnet34}
    optim: {lr: 1.0e-3, epochs: 150, milestones: [120, 140]}

and any value can be replaced from the command line with a dotted ``key=value`` override
(``optim.lr=5e-4``, ``runtime.amp=false``, ``optim.milestones=[80,100]``). Values are parsed as
YAML and then checked against the field's type. An unknown key or a value of the wrong type is a
:class:`ConfigError` that names the dotted key, where it came from, and what is allowed.

Method-specific knobs (``model.options``, ``loss.options``) and augmentation overrides are free
dicts here; they are checked against the keyword arguments of the method's model/loss builder
(:mod:`facemark.engine.methods`) and the augmentation settings when the run is set up, with the
same kind of error.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import yaml

__all__ = [
    "ConfigError",
    "CropSettings",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "LossConfig",
    "AugmentationSettings",
    "RuntimeConfig",
    "TrainConfig",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "save_config",
    "parse_override",
    "check_options",
]


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names the key and what is allowed."""


# -- the schema ---------------------------------------------------------------------------------
@dataclass
class CropSettings:
    """How a face is cropped to the network input (see ``facemark.data.transforms.CropConvention``).

    ``box_source``: ``"landmarks"`` = tight box of the ground-truth landmarks (the SLPT code, train
    and test), ``"dataset"`` = the dataset's face rectangle, ``"detector"`` = a face detector's box.
    ``enlarge``: the square side is ``enlarge * max(w, h)`` of that box. ``size``: S, the crop side.
    ``normalisation``: how the crop's pixels become the model's input: ``"imagenet_rgb"`` (RGB,
    ImageNet mean/std) or ``"per_image_zscore_bgr"`` (BGR, each channel standardised over the crop:
    the SDFL release); stored with the checkpoint and exported files.
    """

    box_source: Literal["landmarks", "dataset", "detector"] = "landmarks"
    enlarge: float = 1.2
    size: int = 256
    normalisation: Literal["imagenet_rgb", "per_image_zscore_bgr"] = "imagenet_rgb"


@dataclass
class DataConfig:
    """Which dataset, which splits, and how the training set is loaded."""

    # A benchmark (wflw, 300w, cofw, cofw68) or an own-data format (manifest, pts_folder, coco:
    # docs/own_data.md), as facemark.data.load_dataset takes it.
    dataset: str = "wflw"
    root: str = "data/WFLW"  # the folder the dataset was unpacked into (own data: the splits' folder)
    # A benchmark's split name; own data: the manifest / COCO file or the .pts folder, relative to root.
    train_split: str = "train"
    # Validation split for best-model selection. None: carve ``val_fraction`` of the training
    # split (seeded by runtime.seed) and train on the rest.
    val_split: str | None = None
    val_fraction: float = 0.1
    test_split: str = "test"
    # Own data only: what the points mean, a built-in layout name or a layout YAML file (relative
    # paths: from the current folder). Benchmarks use their own layout.
    layout: str | None = None
    # Own data without a test file: > 0 holds out this fraction of data.train_split's images as
    # the test split (by image, seeded by split_seed: the same faces on every run; data.test_split
    # is then not read). The faces of each split are listed in the run's splits.json.
    test_fraction: float = 0.0
    split_seed: int = 0
    crop: CropSettings = field(default_factory=CropSettings)
    workers: int = 2  # DataLoader worker processes (0 = load in the main process)
    # Keep the training loader's workers for the whole run (no process start and dataset copy per
    # epoch; each epoch still draws new augmentations: docs/training.md, "Data loading").
    persistent_workers: bool = True
    # "pdb": SDFL's pose-based data balancing (repeat rare poses; facemark.data.balancing).
    balancing: Literal["none", "pdb"] = "none"
    balancing_bins: int = 9


@dataclass
class ModelConfig:
    """The method, its backbone and its knobs (``options`` go to the method's model builder)."""

    method: str = "slpt"  # slpt | sdfl | fc | detr (keys of facemark.engine.methods.METHODS)
    backbone: str = "hrnet_w18c_lite"
    # A local ImageNet weight file for the backbone, matched by tensor name (relative paths: from the
    # current folder; never downloaded). null: random initialisation. See facemark.engine.pretrained.
    pretrained: str | None = None
    options: dict = field(default_factory=dict)


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule. ``batch_size`` is the GLOBAL batch (all processes)."""

    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9  # SGD only
    nesterov: bool = False  # SGD only
    scheduler: Literal["multistep", "cosine", "constant"] = "multistep"
    milestones: list[int] = field(default_factory=lambda: [120, 140])  # epochs (multistep)
    gamma: float = 0.1  # lr factor at each milestone
    epochs: int = 150
    batch_size: int = 32
    grad_clip_norm: float | None = None  # clip the global gradient norm (None: no clipping)
    # Wall-clock limit of one invocation of `facemark train` (None: none). After every epoch the
    # plan is re-fitted: `epochs`, or fewer if they do not fit at the mean epoch time so far;
    # milestones not yet reached move with the plan (docs/training.md). Multistep / constant only.
    time_budget_minutes: float | None = None


@dataclass
class LossConfig:
    """Knobs of the method's loss (keyword arguments of its loss builder)."""

    options: dict = field(default_factory=dict)


@dataclass
class AugmentationSettings:
    """A preset of ``facemark.data.transforms.AugmentationConfig`` plus field overrides."""

    preset: Literal["slpt", "sdfl", "hrnet", "none"] = "slpt"
    overrides: dict = field(default_factory=dict)


@dataclass
class RuntimeConfig:
    """Where and how the run executes."""

    device: str = "auto"  # auto (CUDA when available) | cpu | cuda | cuda:N
    # Mixed precision on CUDA (ignored on CPU): true or "fp16" (float16 with loss scaling), "bf16"
    # (bfloat16, no scaling; Ampere and later), false. The loss is computed in float32.
    amp: bool | Literal["fp16", "bf16"] = True
    # Train on channels-last (NHWC) weights and images: a speed setting, the same model. On CPU a
    # MobileNetV2 SLPT step is ~1.2x faster (docs/training.md); results differ by float rounding.
    channels_last: bool = False
    seed: int = 0
    # Deterministic kernels. Resume is bit-exact on the CPU with or without it. On CUDA it asks
    # torch for deterministic kernels (and turns cuDNN benchmarking off), but kernels that have no
    # deterministic version (e.g. grid_sample's and bilinear interpolation's backward) still run,
    # with a warning: a GPU resume is then close to, not bit-identical with, an uninterrupted run.
    deterministic: bool = False
    output_dir: str = "runs/default"
    log_interval: int = 50  # optimisation steps between log lines / TensorBoard points
    eval_interval: int = 1  # epochs between validations
    eval_batch_size: int = 32
    select_on: Literal["val", "test"] = "val"  # "test" = the authors' practice (warned about)
    # After the last epoch, evaluate best.pt (the selected epoch) and last.pt on data.test_split
    # and write results.json / results.md in output_dir with both rows, labelled with their epochs.
    report_best_and_last: bool = False
    sync_bn: bool = False  # distributed only: synchronise BatchNorm statistics across processes
    tensorboard: bool = True  # also log to TensorBoard when it is installed
    progress: bool = True  # tqdm progress bars


@dataclass
class TrainConfig:
    """A complete training recipe."""

    name: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augmentation: AugmentationSettings = field(default_factory=AugmentationSettings)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def __post_init__(self) -> None:
        _check_values(self)


def _check_values(config: TrainConfig) -> None:
    """Range checks that types cannot express; each error names the dotted key."""
    checks = [
        ("data.val_fraction", 0.0 <= config.data.val_fraction < 1.0, "a number in [0, 1)"),
        ("data.test_fraction", 0.0 <= config.data.test_fraction < 1.0, "a number in [0, 1)"),
        ("data.workers", config.data.workers >= 0, "an integer >= 0"),
        ("data.crop.enlarge", config.data.crop.enlarge > 0, "a number > 0"),
        ("data.crop.size", config.data.crop.size >= 8, "an integer >= 8"),
        ("data.balancing_bins", config.data.balancing_bins >= 1, "an integer >= 1"),
        ("optim.lr", config.optim.lr > 0, "a number > 0"),
        ("optim.weight_decay", config.optim.weight_decay >= 0, "a number >= 0"),
        ("optim.epochs", config.optim.epochs >= 1, "an integer >= 1"),
        ("optim.batch_size", config.optim.batch_size >= 1, "an integer >= 1"),
        ("optim.gamma", config.optim.gamma > 0, "a number > 0"),
        ("optim.milestones", list(config.optim.milestones) == sorted(set(config.optim.milestones)),
         "strictly increasing epochs"),
        ("optim.time_budget_minutes", config.optim.time_budget_minutes is None
         or config.optim.time_budget_minutes > 0, "a number > 0 or null"),
        ("optim.scheduler", config.optim.time_budget_minutes is None or config.optim.scheduler != "cosine",
         "multistep or constant when optim.time_budget_minutes is set (a cosine schedule cannot be cut)"),
        ("optim.grad_clip_norm", config.optim.grad_clip_norm is None or config.optim.grad_clip_norm > 0,
         "null or a number > 0"),
        ("runtime.log_interval", config.runtime.log_interval >= 1, "an integer >= 1"),
        ("runtime.eval_interval", config.runtime.eval_interval >= 1, "an integer >= 1"),
        ("runtime.eval_batch_size", config.runtime.eval_batch_size >= 1, "an integer >= 1"),
    ]
    for key, ok, expected in checks:
        if not ok:
            raise ConfigError(f"config key '{key}': expected {expected}, got {_lookup(config, key)!r}")
    device = config.runtime.device
    if not (device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
        raise ConfigError(f"config key 'runtime.device': expected auto, cpu, cuda or cuda:N, got {device!r}")


def _lookup(config: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


# -- building dataclasses from plain dicts, with type checks -------------------------------------
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (item,) = typing.get_args(tp)
        return f"a list of {_type_name(item)}"
    if dataclasses.is_dataclass(tp):
        return f"a mapping with keys {', '.join(f.name for f in dataclasses.fields(tp))}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a mapping"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


class _Mismatch(Exception):
    pass


def _convert(value: Any, tp: Any, key: str) -> Any:
    """``value`` as type ``tp``, or raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
        return _build(tp, value, key)
    try:
        if origin is Literal:
            if value in typing.get_args(tp) and type(value) is not bool:
                return value
            raise _Mismatch
        if origin in (typing.Union, types.UnionType):
            if value is None and type(None) in typing.get_args(tp):
                return None
            for option in typing.get_args(tp):
                if option is type(None):
                    continue
                try:
                    return _convert(value, option, key)
                except ConfigError:
                    pass
            raise _Mismatch
        if origin is list:
            (item_type,) = typing.get_args(tp)
            if not isinstance(value, (list, tuple)):
                raise _Mismatch
            return [_convert(item, item_type, f"{key}[{i}]") for i, item in enumerate(value)]
        if tp is bool:
            if isinstance(value, bool):
                return value
            raise _Mismatch
        if tp is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            raise _Mismatch
        if tp is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                number = float(value)
            elif isinstance(value, str):  # PyYAML reads "1e-3" (no dot) as a string
                try:
                    number = float(value)
                except ValueError:
                    raise _Mismatch from None
            else:
                raise _Mismatch
            # No setting of the schema means anything at inf or nan (null says "none" where allowed).
            if not math.isfinite(number):
                raise ConfigError(f"config key '{key}': expected a finite number, got {value!r}")
            return number
        if tp is str:
            if isinstance(value, str):
                return value
            raise _Mismatch
        if tp is dict:
            if isinstance(value, dict):
                return copy.deepcopy(value)
            raise _Mismatch
    except _Mismatch:
        raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}") from None
    raise TypeError(f"unsupported type {tp!r} in the config schema (key '{key}')")


def _unknown_key_message(key: str, section: str, allowed: Sequence[str], source: str) -> str:
    where = f"'{section}'" if section else "the top level"
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], allowed, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return (f"unknown config key '{key}'{source}{hint}; allowed keys in {where}: "
            + ", ".join(allowed))


def _build(cls: type, raw: dict, prefix: str = "", source: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(_unknown_key_message(dotted, prefix, names, source))
        kwargs[key] = _convert(value, hints[key], dotted)
    return cls(**kwargs)


def _check_keys(cls: type, raw: dict, prefix: str, source: str) -> None:
    """Only the key names (values are checked after merging): so errors name the file they are in."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config section '{prefix or '<top>'}'{source}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key, value in raw.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(_unknown_key_message(dotted, prefix, names, source))
        if dataclasses.is_dataclass(hints[key]) and isinstance(value, dict):
            _check_keys(hints[key], value, dotted, source)


def config_from_dict(raw: dict, source: str = "") -> TrainConfig:
    """Build a :class:`TrainConfig` from plain Python (missing keys take their defaults)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping{source}, got {type(raw).__name__}")
    return _build(TrainConfig, raw, "", source)


def config_to_dict(config: TrainConfig) -> dict:
    """Plain-Python form (YAML/JSON/checkpoint friendly); :func:`config_from_dict` inverts it."""
    return dataclasses.asdict(config)


# -- YAML files and overrides --------------------------------------------------------------------
def _deep_merge(base: dict, update: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    if path.resolve() in chain:
        raise ConfigError(f"config file {path}: 'base:' inheritance loops back to itself")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path}: expected a mapping of sections, got {type(raw).__name__}")
    base = raw.pop("base", None)
    _check_keys(TrainConfig, raw, "", f" (in {path})")
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"config key 'base' (in {path}): expected a file name, got {base!r}")
    parent = _read_yaml(path.parent / base, chain + (path.resolve(),))
    return _deep_merge(parent, raw)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=5e-4"`` -> (["optim", "lr"], "5e-4" parsed as YAML). Lists: ``key=[1,2]``."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. optim.lr=0.001")
    key, value_text = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: the key must be a dotted name like optim.lr")
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else ""
    except yaml.YAMLError:
        value = value_text  # not YAML: keep the text (a string field will take it)
    return key.split("."), value


def _apply_override(raw: dict, path: list[str], value: Any, text: str) -> None:
    """Set ``raw[path] = value`` after checking that ``path`` names a field (or a free dict's entry)."""
    source = f" (from the command-line override {text!r})"
    cls: Any = TrainConfig
    node = raw
    for depth, part in enumerate(path):
        dotted = ".".join(path[: depth + 1])
        if cls is dict:  # inside a free dict (model.options, ...): any key
            if depth == len(path) - 1:
                node[part] = value
            else:
                node = node.setdefault(part, {})
            continue
        names = [f.name for f in dataclasses.fields(cls)]
        if part not in names:
            raise ConfigError(_unknown_key_message(dotted, ".".join(path[:depth]), names, source))
        field_type = typing.get_type_hints(cls)[part]
        if depth == len(path) - 1:
            node[part] = value
            return
        if not (dataclasses.is_dataclass(field_type) or field_type is dict):
            raise ConfigError(f"config key '{dotted}'{source} is {_type_name(field_type)}, it has no sub-keys")
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node, cls = child, field_type


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML recipe (following ``base:``), apply ``key=value`` overrides, check everything.

    ``path=None`` starts from the defaults. Raises :class:`ConfigError` naming the offending key.
    """
    raw = _read_yaml(Path(path)) if path is not None else {}
    for text in overrides:
        key_path, value = parse_override(text)
        _apply_override(raw, key_path, value, text)
    source = f" (in {path})" if path is not None else ""
    return config_from_dict(raw, source)


def save_config(config: TrainConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (loadable with :func:`load_config`)."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False), encoding="utf-8")


def check_options(options: dict, allowed: Sequence[str], key: str) -> None:
    """Check that every entry of the free dict ``options`` (found at ``key``) is in ``allowed``.

    Used for ``model.options``, ``loss.options`` and ``augmentation.overrides``, whose allowed
    keys are defined by the method's builder / the augmentation settings.
    """
    for name in options:
        if name not in allowed:
            raise ConfigError(_unknown_key_message(f"{key}.{name}", key, list(allowed), ""))
