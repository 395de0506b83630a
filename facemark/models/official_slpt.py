"""Load the authors' released SLPT checkpoints (WFLW, 6 or 12 layers; 98 or 68 points) into
facemark's :class:`~facemark.models.slpt.SLPT`, strictly, and export back.

The release's parameter names (``shared/facts/slpt_official_state_dict_wflw98_*layers.txt``) map
one to one to facemark's by the explicit table below; the authors' mean face is not in their
files and comes from ``facemark/resources`` (``mean_face`` buffer on our side).

    >>> model = load_official_slpt("WFLW_6_layer.pth")       # eval mode, 6 layers, 98 points
    >>> output = model(images)                                # images: (B, 3, 256, 256), ImageNet-normalised RGB
    >>> output.landmarks * 256                                # (B, 98, 2) in 256-px crop pixels

Unlike the authors' loader (which silently drops keys that do not fit, so a 12-layer file
"loads" into a 6-layer model), every load here is strict: a mismatch raises
:class:`OfficialCheckpointError` naming the missing and unexpected keys and the shape mismatches.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import torch

from facemark.models.slpt import SLPT, SLPTConfig, load_official_mean_face
from facemark.errors import WeightsError
from facemark.models.weights import key_listing, read_weights_file, strict_load_problems

__all__ = [
    "OFFICIAL_TO_FACEMARK",
    "OFFICIAL_LAYER_TO_FACEMARK",
    "OfficialCheckpointError",
    "official_to_facemark_key",
    "facemark_to_official_key",
    "convert_official_state_dict",
    "to_official_state_dict",
    "infer_official_config",
    "load_official_state_dict",
    "load_official_slpt",
]

# Whole-key or prefix renames: official name -> facemark name.
OFFICIAL_TO_FACEMARK: dict[str, str] = {
    "backbone.": "backbone.",  # HRNetW18C-lite: identical names
    "feature_extractor.": "patch_embedding.",
    "feature_norm.": "unused_feature_norm.",
    "Transformer.structure_encoding": "structure_encoding",
    "Transformer.landmark_query": "landmark_queries",
    "Transformer.Transformer_block.norm.": "final_norm.",
    "out_layer.": "prediction_head.",
}
# Inside ``Transformer.Transformer_block.layers.{i}.`` <-> ``layers.{i}.``
OFFICIAL_LAYER_TO_FACEMARK: dict[str, str] = {
    "self_attn.": "self_attention.",
    "multihead_attn.": "cross_attention.",
    "linear1.": "feedforward_hidden.",
    "linear2.": "feedforward_output.",
    "norm1.": "norm_before_self_attention.",
    "norm2.": "norm_before_cross_attention.",
    "norm3.": "norm_before_feedforward.",
}
_OFFICIAL_LAYER = re.compile(r"^Transformer\.Transformer_block\.layers\.(\d+)\.(.+)$")
_FACEMARK_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")


class OfficialCheckpointError(WeightsError):
    """A checkpoint does not fit the model; the message lists every offending key."""


def _rename(key: str, table: dict[str, str]) -> str | None:
    for old, new in table.items():
        if key == old or (old.endswith(".") and key.startswith(old)):
            return new + key[len(old):]
    return None


def official_to_facemark_key(key: str) -> str | None:
    """facemark's name of an official key, or ``None`` if the release has no such key."""
    layer = _OFFICIAL_LAYER.match(key)
    if layer:
        rest = _rename(layer.group(2), OFFICIAL_LAYER_TO_FACEMARK)
        return None if rest is None else f"layers.{layer.group(1)}.{rest}"
    return _rename(key, OFFICIAL_TO_FACEMARK)


def facemark_to_official_key(key: str) -> str | None:
    """The official name of a facemark key, or ``None`` (``mean_face`` and switches the release
    lacks)."""
    layer = _FACEMARK_LAYER.match(key)
    if layer:
        rest = _rename(layer.group(2), {v: k for k, v in OFFICIAL_LAYER_TO_FACEMARK.items()})
        return None if rest is None else f"Transformer.Transformer_block.layers.{layer.group(1)}.{rest}"
    return _rename(key, {v: k for k, v in OFFICIAL_TO_FACEMARK.items()})


def convert_official_state_dict(official: dict[str, torch.Tensor],
                                mean_face: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Official state dict -> facemark state dict (adds the ``mean_face`` buffer: ``mean_face``
    if given, else the authors' one for 98 or 68 points). Unknown keys raise."""
    unknown = [key for key in official if official_to_facemark_key(key) is None]
    if unknown:
        raise OfficialCheckpointError(f"{len(unknown)} keys are not SLPT release keys: {key_listing(unknown)}")
    converted = {official_to_facemark_key(key): value for key, value in official.items()}
    if mean_face is None:
        num_points = infer_official_config(official).num_points
        mean_face = load_official_mean_face(num_points)
    converted["mean_face"] = torch.as_tensor(mean_face, dtype=torch.float32).clone()
    return converted


def to_official_state_dict(model: SLPT | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """facemark SLPT (or its state dict) -> state dict with the release's key names (the mean face
    is dropped: the release keeps it outside). Only the released architecture can be exported."""
    if isinstance(model, SLPT):
        config = model.config
        released = dataclasses.replace(SLPTConfig(), num_points=config.num_points, num_layers=config.num_layers,
                                       dropout=config.dropout)
        differing = [f"{f.name}={getattr(config, f.name)!r} (release {getattr(released, f.name)!r})"
                     for f in dataclasses.fields(SLPTConfig) if getattr(config, f.name) != getattr(released, f.name)]
        if differing:
            raise OfficialCheckpointError("only the released architecture can be exported; this model has "
                                          + ", ".join(differing))
    state = model.state_dict() if isinstance(model, torch.nn.Module) else model
    exported, unmapped = {}, []
    for key, value in state.items():
        if key == "mean_face":
            continue
        official = facemark_to_official_key(key)
        if official is None:
            unmapped.append(key)
        else:
            exported[official] = value
    if unmapped:
        raise OfficialCheckpointError(f"{len(unmapped)} facemark keys have no place in the release format: "
                                      f"{key_listing(unmapped)}")
    release_keys = {"feature_extractor.weight", "feature_norm.weight", "feature_norm.bias",
                    "Transformer.structure_encoding", "Transformer.landmark_query", "out_layer.weight",
                    "out_layer.bias", "Transformer.Transformer_block.norm.weight",
                    "Transformer.Transformer_block.norm.bias"}
    absent = sorted(release_keys - exported.keys())
    if absent:
        raise OfficialCheckpointError(f"the release format needs {key_listing(absent)}, which this model lacks")
    return exported


def infer_official_config(official: dict[str, torch.Tensor]) -> SLPTConfig:
    """Number of layers and points of an official state dict (the rest is the released config)."""
    layers = {int(m.group(1)) for key in official if (m := _OFFICIAL_LAYER.match(key))}
    if not layers or "Transformer.landmark_query" not in official:
        raise OfficialCheckpointError("not an SLPT release state dict: no Transformer.Transformer_block.layers.* "
                                      "or Transformer.landmark_query keys")
    if layers != set(range(len(layers))):
        raise OfficialCheckpointError(f"layer indices {sorted(layers)} are not 0..{len(layers) - 1}")
    query_shape = tuple(official["Transformer.landmark_query"].shape)
    if len(query_shape) != 3 or query_shape[0] != 1:
        raise OfficialCheckpointError(f"Transformer.landmark_query has shape {query_shape}; expected (1, N, 256)")
    return SLPTConfig(num_points=query_shape[1], num_layers=len(layers))


def load_official_state_dict(model: SLPT, official: dict[str, torch.Tensor], source: str = "state dict") -> None:
    """Load an official state dict into ``model`` strictly (the model's ``mean_face`` is kept).

    Raises :class:`OfficialCheckpointError` listing, in the release's key names, the keys the
    model needs and the file lacks, the file's keys the model has no place for, and shape
    mismatches. Nothing is loaded unless everything fits.
    """
    converted = convert_official_state_dict(official, mean_face=model.mean_face)
    problems = strict_load_problems(converted, model.state_dict(), name=lambda key: facemark_to_official_key(key) or key)
    if problems:
        raise OfficialCheckpointError(f"{source} does not fit this SLPT ({model.config.num_layers} layers, "
                                      f"{model.config.num_points} points): " + "; ".join(problems))
    model.load_state_dict(converted, strict=True)


def load_official_slpt(path: str | Path, map_location: str | torch.device = "cpu",
                       mean_face: torch.Tensor | None = None) -> SLPT:
    """Build facemark's SLPT for an authors' checkpoint file and load it strictly; eval mode.

    The number of layers (6 or 12) and of points (98 or 68) are read from the file; the mean face
    is the authors' for that number of points unless ``mean_face`` (N, 2, normalised) is given.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SLPT checkpoint not found: {path}")
    official = read_weights_file(path, "SLPT checkpoint", map_location)
    if isinstance(official, dict) and isinstance(official.get("state_dict"), dict):
        official = official["state_dict"]
    if not isinstance(official, dict) or not all(isinstance(v, torch.Tensor) for v in official.values()):
        raise OfficialCheckpointError(f"{path}: expected a state dict (name -> tensor)")
    config = infer_official_config(official)
    if mean_face is None:
        if config.num_points not in (98, 68):
            raise OfficialCheckpointError(f"{path}: {config.num_points} points; the authors' mean faces cover 98 "
                                          "and 68 points, pass mean_face")
        mean_face = load_official_mean_face(config.num_points)
    model = SLPT(config, mean_face)
    load_official_state_dict(model, official, source=str(path))
    return model.to(map_location).eval()
