"""The per-method adapters of the training engine: how to build, initialise and train each method.

The engine (:mod:`facemark.engine.train`) is method-agnostic: everything it needs to know about a
method is one :class:`Method`, and :data:`METHODS` maps ``model.method`` of a config to it. A new
method is a new entry (tests pass their own dict). Every model obeys the facemark model contract:
``model(images).landmarks`` is ``(B, N, 2)`` in normalised crop coordinates.

A method's three functions:

* ``compute_statistics(shapes, layout, **model_options)`` -> dict of numpy arrays computed ONCE from
  the training split (never validation or test) and stored in the checkpoint: SLPT's mean face,
  SDFL's neighbourhood (with ``graph: release`` also the graph of the release's Laplacian loss);
  nothing for the heatmap baseline, nor for the DETR-style baseline (its training mean face with
  ``reference: mean_face``).
  ``shapes`` is a :class:`TrainingShapes`.
* ``build_model(backbone, layout, statistics, image_size, **model_options)`` -> nn.Module. Its
  keyword-only arguments are the allowed keys of ``model.options`` in a config.
* ``build_loss(layout, statistics, image_size, **loss_options)`` -> ``loss(output, target)``
  with ``target`` (B, N, 2) in normalised crop coordinates. Its keyword-only arguments are the
  allowed keys of ``loss.options``.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from facemark.engine.config import ConfigError, check_options
from facemark.layouts import Layout

__all__ = ["TrainingShapes", "Method", "METHODS", "option_names", "build_model_from_spec"]


@dataclass
class TrainingShapes:
    """The training split's landmarks, from which method statistics are computed.

    ``original``: (n, N, 2) in original-image pixels. ``crop``: (n, N, 2) in normalised crop
    coordinates of the un-augmented training crops (the models' units).
    """

    original: np.ndarray
    crop: np.ndarray


@dataclass(frozen=True)
class Method:
    """How the engine builds and trains one method (see the module docstring)."""

    compute_statistics: Callable[..., dict]
    build_model: Callable[..., nn.Module]
    build_loss: Callable[..., Callable[[Any, torch.Tensor], torch.Tensor]]


def option_names(function: Callable) -> list[str]:
    """The keyword-only parameters of ``function``: the knobs a config may set."""
    return [name for name, parameter in inspect.signature(function).parameters.items()
            if parameter.kind is parameter.KEYWORD_ONLY]


def _statistics_options(function: Callable, options: Mapping) -> dict:
    """The subset of the model options that ``compute_statistics`` takes (e.g. SDFL's ``k``)."""
    names = option_names(function)
    return {key: value for key, value in options.items() if key in names}


def _check_backbone(backbone: str, method: str, known: Mapping, also: str = "") -> None:
    """An unknown ``model.backbone`` is an error naming that config key (not the model's own field)."""
    if backbone not in known:
        raise ConfigError(f"config key 'model.backbone': unknown backbone {backbone!r} for model.method={method}; "
                          f"expected one of {sorted(known)}{also}")


# -- SLPT ----------------------------------------------------------------------------------------
SLPT_MEAN_FACES = ("training", "authors")


def _slpt_statistics(shapes: TrainingShapes, layout: Layout, *, mean_face: str = "training") -> dict:
    from facemark.models.slpt import compute_mean_face, load_official_mean_face

    # The initial landmarks S_0. "training": the mean face of the training crops (paper Sec. 3.2).
    # "authors": the release's fixed init_98.npz / init_68.npz (SLPT_Training model.py:35,
    # Config/default.py:92,107), shipped in facemark/resources; none exists for other layouts.
    if mean_face == "authors":
        if layout.num_points not in (98, 68):
            raise ConfigError(f"config key 'model.options.mean_face': the SLPT authors released mean faces for 98 "
                              f"and 68 points only, this layout ({layout.name}) has {layout.num_points}; use "
                              "model.options.mean_face=training")
        return {"mean_face": load_official_mean_face(layout.num_points).numpy()}
    if mean_face != "training":
        raise ConfigError(f"config key 'model.options.mean_face': expected one of {list(SLPT_MEAN_FACES)}, "
                          f"got {mean_face!r}")
    return {"mean_face": compute_mean_face(shapes.crop).numpy()}


def _slpt_model(backbone: str, layout: Layout, statistics: Mapping, image_size: int, *,
                num_stages: int = 3, num_layers: int = 6, patch_samples: int = 7,
                initial_patch_size: float = 0.25, embed_dim: int = 256, num_heads: int = 8,
                feedforward_dim: int = 1024, dropout: float = 0.1, use_self_attention: bool = True,
                use_cross_attention: bool = True, use_structure_encoding: bool = True,
                head_init: str = "release", embedding_init: str = "release",
                initial_content: str = "zeros", mean_face: str = "training") -> nn.Module:
    from facemark.models.slpt import BACKBONES, SLPTConfig, build_slpt

    _check_backbone(backbone, "slpt", BACKBONES)
    del mean_face  # used by _slpt_statistics only (the model takes the statistics' mean face)
    config = SLPTConfig(
        num_points=layout.num_points, backbone=backbone, num_stages=num_stages, num_layers=num_layers,
        patch_samples=patch_samples, initial_patch_size=initial_patch_size, embed_dim=embed_dim,
        num_heads=num_heads, feedforward_dim=feedforward_dim, dropout=dropout,
        use_self_attention=use_self_attention, use_cross_attention=use_cross_attention,
        use_structure_encoding=use_structure_encoding, head_init=head_init, embedding_init=embedding_init,
        initial_content=initial_content,
    )
    return build_slpt(config, mean_face=statistics["mean_face"])


def _slpt_loss(layout: Layout, statistics: Mapping, image_size: int, *,
               stage_weights: list[float] | None = None, normalisation: str = "inter_ocular") -> Callable:
    from facemark.models.slpt import slpt_loss

    # Eq. 8: L2 error normalised by the inter-ocular distance, summed over stages with
    # weights (release: 0.2, 0.3, 0.5), averaged over every layer (intermediate supervision).
    # normalisation="crop" (facemark's option) drops the inter-ocular division.
    if normalisation not in ("inter_ocular", "crop"):
        raise ConfigError(f"config key 'loss.options.normalisation': expected 'inter_ocular' or 'crop', "
                          f"got {normalisation!r}")
    if normalisation == "inter_ocular" and layout.inter_ocular is None:
        raise ConfigError(f"config key 'loss.options.normalisation': the layout {layout.name!r} has no inter_ocular "
                          "points to normalise the SLPT loss by; set loss.options.normalisation=crop")

    def loss(output, target: torch.Tensor) -> torch.Tensor:
        return slpt_loss(output, target, layout, stage_weights=stage_weights, normalisation=normalisation)

    return loss


# -- DETR-style baseline (SLPT Table 1 and 8, Appendix A.3) --------------------------------------
DETR_REFERENCES = ("none", "mean_face")


def _detr_statistics(shapes: TrainingShapes, layout: Layout, *, reference: str = "none") -> dict:
    from facemark.models.slpt import compute_mean_face

    # DETR (reference none): nothing from the training split, the queries are learned and the head
    # predicts coordinates directly. reference mean_face (facemark's option for short budgets): the
    # head predicts offsets from the mean face of the training crops, as SLPT starts from it.
    if reference == "none":
        return {}
    if reference != "mean_face":
        raise ConfigError(f"config key 'model.options.reference': expected one of {list(DETR_REFERENCES)}, "
                          f"got {reference!r}")
    return {"mean_face": compute_mean_face(shapes.crop).clamp(1e-3, 1 - 1e-3).numpy()}


def _detr_model(backbone: str, layout: Layout, statistics: Mapping, image_size: int, *,
                num_layers: int = 6, patch_size: int = 4, embed_dim: int = 256, num_heads: int = 8,
                feedforward_dim: int = 1024, dropout: float = 0.1, embedding_init: str = "normal",
                initial_content: str = "zeros", reference: str = "none",
                attention_prior: float | None = None) -> nn.Module:
    from facemark.models.detr import EMBEDDING_INITS, INITIAL_CONTENTS, build_detr
    from facemark.models.slpt import BACKBONES

    _check_backbone(backbone, "detr", BACKBONES)
    feature_side = image_size // 4
    if patch_size < 1 or feature_side % patch_size:
        raise ConfigError(f"config key 'model.options.patch_size': {patch_size} does not divide the {feature_side} x "
                          f"{feature_side} feature map of a {image_size}-px crop (data.crop.size / 4); 16 x 16 "
                          f"tokens as in the paper: patch_size = data.crop.size / 64")
    if embedding_init not in EMBEDDING_INITS:
        raise ConfigError(f"config key 'model.options.embedding_init': expected one of {list(EMBEDDING_INITS)}, "
                          f"got {embedding_init!r}")
    if initial_content not in INITIAL_CONTENTS:
        raise ConfigError(f"config key 'model.options.initial_content': expected one of {list(INITIAL_CONTENTS)}, "
                          f"got {initial_content!r}")
    if attention_prior is not None:
        # The spatial prior of the cross-attention is centred on each landmark's reference point.
        if isinstance(attention_prior, bool) or not isinstance(attention_prior, (int, float)) or not attention_prior > 0:
            raise ConfigError(f"config key 'model.options.attention_prior': expected a width > 0 in normalised crop "
                              f"units (e.g. 0.1) or null, got {attention_prior!r}")
        if reference != "mean_face":
            raise ConfigError("config key 'model.options.attention_prior' needs model.options.reference=mean_face "
                              "(the prior is centred on each landmark's reference point)")
    return build_detr(layout.num_points, backbone=backbone, patch_size=patch_size, num_layers=num_layers,
                      embed_dim=embed_dim, num_heads=num_heads, feedforward_dim=feedforward_dim, dropout=dropout,
                      embedding_init=embedding_init, initial_content=initial_content,
                      reference=statistics["mean_face"] if reference == "mean_face" else None,
                      attention_prior=attention_prior)


def _detr_loss(layout: Layout, statistics: Mapping, image_size: int, *,
               normalisation: str = "inter_ocular") -> Callable:
    # SLPT's eq. 8 with one stage: every layer's prediction, L2 / inter-ocular distance.
    return _slpt_loss(layout, statistics, image_size, normalisation=normalisation)


# -- SDFL (graph head) and the FC baseline -------------------------------------------------------
SDFL_GRAPHS = ("computed", "release")


SDFL_INITIAL_SHAPES = ("centre", "training")


def _sdfl_statistics(shapes: TrainingShapes, layout: Layout, *, neighbours: int = 3, graph: str = "computed",
                     initial_shape: str = "centre") -> dict:
    from facemark.models.sdfl import build_neighbourhood, release_neighbourhood

    if initial_shape not in SDFL_INITIAL_SHAPES:
        raise ConfigError(f"config key 'model.options.initial_shape': expected one of {list(SDFL_INITIAL_SHAPES)}, "
                          f"got {initial_shape!r}")
    # initial_shape=training: the mean of the training crops, which the untrained model predicts.
    start = {"initial_shape": shapes.crop.mean(axis=0)} if initial_shape == "training" else {}
    if graph == "computed":
        # Sec. III-B, eq. 1-2: top-k Pearson correlations of the training shapes' x and y coordinates.
        return {"neighbourhood": build_neighbourhood(shapes.original, k=neighbours), **start}
    if graph == "release":
        # The release's shipped graph for this layout (WFLW top-3 lists, hand-made 68 / 29 points):
        # symmetrised with self-loops for the head, as its graph layers use it; its Laplacian loss
        # takes the edges as listed, in one direction (its losses/wing_loss.py).
        if neighbours != 3:
            raise ConfigError(f"config key 'model.options.neighbours' ({neighbours}) applies to graph=computed; "
                              "the release's graphs are fixed (WFLW: its top-3 lists)")
        try:
            return {"neighbourhood": release_neighbourhood(layout.name),
                    "laplacian_graph": release_neighbourhood(layout.name, symmetric=False, self_loops=False), **start}
        except ValueError as error:
            raise ConfigError(f"config key 'model.options.graph': {error}") from None
    raise ConfigError(f"config key 'model.options.graph': expected one of {list(SDFL_GRAPHS)}, got {graph!r}")


def _check_sdfl_backbone(backbone: str, method: str) -> None:
    from facemark.models.sdfl import BACKBONES

    if not backbone.startswith("timm:"):
        _check_backbone(backbone, method, BACKBONES, " or 'timm:<model name>'")


def _sdfl_model(backbone: str, layout: Layout, statistics: Mapping, image_size: int, *,
                neighbours: int = 3, graph: str = "computed", adjacency: str = "dynamic", hidden_features: int = 128,
                num_blocks: int = 4, expansion: int = 4, bn_momentum: float = 0.1,
                initial_shape: str = "centre") -> nn.Module:
    from facemark.models.sdfl import sdfl_graph_model

    _check_sdfl_backbone(backbone, "sdfl")
    del neighbours, graph  # used by _sdfl_statistics only
    # initial_shape: "centre" (every point starts at the crop centre) or "training" (the training
    # crops' mean shape, computed by _sdfl_statistics and stored with the statistics).
    start = statistics.get("initial_shape") if initial_shape == "training" else None
    if initial_shape == "training" and start is None:
        raise ConfigError("config key 'model.options.initial_shape' is 'training' but the statistics hold no "
                          "initial_shape (a checkpoint trained with initial_shape=centre)")
    return sdfl_graph_model(layout.num_points, statistics["neighbourhood"], backbone=backbone, adjacency=adjacency,
                            input_size=image_size, hidden_features=hidden_features, num_blocks=num_blocks,
                            expansion=expansion, bn_momentum=bn_momentum, initial_shape=start)


def _fc_model(backbone: str, layout: Layout, statistics: Mapping, image_size: int, *,
              neighbours: int = 3, graph: str = "computed", hidden_features: int = 256,
              bn_momentum: float = 0.1) -> nn.Module:
    from facemark.models.sdfl import sdfl_fc_model

    _check_sdfl_backbone(backbone, "fc")
    # neighbours, graph: used by _sdfl_statistics only (the relative-location loss needs the graph)
    del neighbours, graph
    return sdfl_fc_model(layout.num_points, backbone=backbone, input_size=image_size,
                         hidden_features=hidden_features, bn_momentum=bn_momentum,
                         neighbourhood=statistics["neighbourhood"])


def _sdfl_loss(layout: Layout, statistics: Mapping, image_size: int, *,
               point_loss: str = "soft_wing", relative_weight: float = 1.0,
               point_loss_parameters: Mapping | None = None) -> Callable:
    import functools

    from facemark.models import losses
    from facemark.models.sdfl import sdfl_loss

    point_losses = {"soft_wing": losses.soft_wing_loss, "l1": losses.l1_loss, "l2": losses.l2_loss,
                    "wing": losses.wing_loss}
    if point_loss not in point_losses:
        raise ConfigError(f"config key 'loss.options.point_loss': expected one of {list(point_losses)}, got {point_loss!r}")
    point_function = point_losses[point_loss]
    if point_loss_parameters:
        # The point loss's own parameters, e.g. {omega: 20, epsilon: 0.1} for SDFL Table VII's Wing.
        key = "loss.options.point_loss_parameters"
        if not isinstance(point_loss_parameters, Mapping):
            raise ConfigError(f"config key '{key}': expected a mapping such as {{epsilon: 0.5}}, "
                              f"got {point_loss_parameters!r}")
        check_options(dict(point_loss_parameters), list(inspect.signature(point_function).parameters)[1:], key)
        point_function = functools.partial(point_function, **point_loss_parameters)
        try:
            point_function(torch.zeros(1))
        except (TypeError, ValueError) as error:
            raise ConfigError(f"config key '{key}': {error}") from None
    neighbourhood = torch.as_tensor(np.asarray(statistics["neighbourhood"]))
    laplacian = None
    if "laplacian_graph" in statistics:
        # The release's Laplacian (graph=release): uniform weights over each point's listed edges;
        # a point its lists give no neighbour keeps only its own position, as there.
        laplacian = losses.uniform_laplacian(torch.as_tensor(np.asarray(statistics["laplacian_graph"])),
                                             allow_isolated=True)
    elif relative_weight:
        laplacian = losses.uniform_laplacian(neighbourhood)
    # The Laplacian is built once and copied to each device once, not rebuilt from host data at
    # every step.
    on_device: dict[torch.device, torch.Tensor] = {}

    # Eq. 10: Soft Wing on absolute positions + relative_weight x Soft Wing on the Laplacian
    # coordinates (eq. 6-7), in crop pixels.
    def loss(output, target: torch.Tensor) -> torch.Tensor:
        device = output.landmarks.device
        if laplacian is not None and device not in on_device:
            on_device[device] = laplacian.to(device)
        return sdfl_loss(output, target, crop_size=image_size, neighbourhood=neighbourhood,
                         point_loss=point_function, relative_weight=relative_weight,
                         laplacian=on_device.get(device))

    return loss


# -- heatmap regression (the HRNet facial-landmark release) ---------------------------------------
def _heatmap_statistics(shapes: TrainingShapes, layout: Layout) -> dict:
    return {}  # nothing is computed from the training split


def _heatmap_model(backbone: str, layout: Layout, statistics: Mapping, image_size: int) -> nn.Module:
    from facemark.models.heatmap import BACKBONES, HEATMAP_STRIDE, HeatmapRegression

    _check_backbone(backbone, "heatmap", BACKBONES)
    if image_size % (8 * HEATMAP_STRIDE):
        # HRNet halves the stride-4 map three times; the fused branches must line up exactly.
        raise ConfigError(f"config key 'data.crop.size': the heatmap model needs a multiple of 32, got {image_size}")
    return HeatmapRegression(layout.num_points, backbone=backbone)


def _heatmap_loss(layout: Layout, statistics: Mapping, image_size: int, *, sigma: float = 1.5) -> Callable:
    from facemark.models.heatmap import heatmap_loss

    # MSE between the predicted maps and Gaussian targets of sigma heatmap pixels (the release: 1.5;
    # 1.0 in its 300W config), drawn from the (augmented) target landmarks.
    if not (isinstance(sigma, (int, float)) and sigma > 0):
        raise ConfigError(f"config key 'loss.options.sigma': expected a positive number, got {sigma!r}")

    def loss(output, target: torch.Tensor) -> torch.Tensor:
        return heatmap_loss(output, target, sigma=float(sigma))

    return loss


METHODS: dict[str, Method] = {
    "slpt": Method(_slpt_statistics, _slpt_model, _slpt_loss),
    "sdfl": Method(_sdfl_statistics, _sdfl_model, _sdfl_loss),
    "fc": Method(_sdfl_statistics, _fc_model, _sdfl_loss),
    "heatmap": Method(_heatmap_statistics, _heatmap_model, _heatmap_loss),
    "detr": Method(_detr_statistics, _detr_model, _detr_loss),
}


# -- used by the engine --------------------------------------------------------------------------
def get_method(name: str, methods: Mapping[str, Method]) -> Method:
    if name not in methods:
        raise ConfigError(f"config key 'model.method': unknown method {name!r}; expected one of {list(methods)}")
    return methods[name]


def check_method_options(method: Method, model_options: Mapping, loss_options: Mapping) -> None:
    """Unknown ``model.options`` / ``loss.options`` keys are errors listing the allowed ones."""
    check_options(model_options, option_names(method.build_model), "model.options")
    check_options(loss_options, option_names(method.build_loss), "loss.options")


def compute_method_statistics(method: Method, shapes: TrainingShapes, layout: Layout, model_options: Mapping) -> dict:
    return method.compute_statistics(shapes, layout, **_statistics_options(method.compute_statistics, model_options))


def build_model_from_spec(spec: Mapping, methods: Mapping[str, Method]) -> nn.Module:
    """Build a model from a checkpoint's ``model_spec`` (weights are loaded by the caller)."""
    method = get_method(spec["method"], methods)
    layout = Layout.from_dict(spec["layout"])
    return method.build_model(spec["backbone"], layout, spec["statistics"], int(spec["image_size"]), **spec["options"])
