"""SLPT: Sparse Local Patch Transformer (Xia et al., CVPR 2022), written for facemark.

Pipeline (paper Sec. 3, Fig. 2; released details in ``shared/facts/slpt.md``)::

    image (B,3,256,256) -> backbone -> feature map F (B,256,64,64)
    landmarks S_0 = mean face                                        (Sec. 3.2)
    for stage s = 1..num_stages (weights shared by all stages):      (Algorithm 1)
        box of landmark i = clamp(S_{s-1,i} -/+ h_s, 0, 1)            (h_1 = patch/2, halved per stage)
        patch_i = K x K bilinear samples of F on the box (positions detached)
        R_i = patch_embedding(patch_i)                                (one KxK conv -> 256-d token)
        T = 0; for each inherent relation layer (pre-norm):           (eqs. 1-4)
            T += MSA(LN(T) + Q, LN(T));  T += MCA(LN(T) + Q, R + P, R);  T += FFN(LN(T))
        t = prediction_head(final_norm(T)) for EVERY layer           (intermediate supervision)
        S_s = box_min + box_size * t                                  (eq. 7)
        next stage starts from the last layer of S_s, detached

Coordinates are normalised crop coordinates (x / S, y / S) throughout. The model returns
:class:`SLPTOutput` with ``.stages`` (one (B, L, N, 2) tensor per stage) and ``.landmarks``.

The attention runs on :func:`torch.nn.functional.scaled_dot_product_attention` while keeping
``nn.MultiheadAttention``'s parameter layout (packed ``in_proj_weight``), so the authors'
checkpoints load (see :mod:`facemark.models.official_slpt`). Module names say what things are;
the explicit name map to the release is in that module.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import Callable, Sequence
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facemark.models.hrnet import hrnet_w18c, hrnet_w18c_lite

__all__ = [
    "SLPTConfig",
    "SLPTOutput",
    "SLPT",
    "build_slpt",
    "MultiheadAttention",
    "Tap",
    "InherentRelationLayer",
    "MultiScaleFusion",
    "resnet34_fused",
    "mobilenet_v2_fused",
    "mobilenet_v2_050_fused",
    "resnet18_fused",
    "BACKBONES",
    "sample_local_patches",
    "slpt_loss",
    "stage_nme",
    "RELEASE_STAGE_WEIGHTS",
    "compute_mean_face",
    "load_official_mean_face",
]

RELEASE_STAGE_WEIGHTS = (0.2, 0.3, 0.5)  # stage weights of the authors' training code, 3 stages


# ------------------------------------------------------------------------------------------------
# Configuration and output
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SLPTConfig:
    """Every architectural switch of SLPT; defaults = the released WFLW model.

    Attributes:
        num_points: N landmarks (any N >= 2).
        num_stages: coarse-to-fine stages (paper Table 5: 1..4; release 3).
        num_layers: inherent relation layers L (release 6 or 12).
        patch_samples: K, samples per axis of each local patch (paper: 7).
        initial_patch_size: side of the stage-1 patch as a fraction of the crop side (Algorithm 1:
            W/4 = 0.25, i.e. 16 feature pixels of 64); the side halves at every stage.
        embed_dim, num_heads, feedforward_dim: token width d, heads H, FFN hidden width.
        dropout: dropout of attention weights, residual branches and FFN (release 0.1).
        use_self_attention: MSA block on/off (Table 6).
        use_cross_attention: MCA block on/off (Table 6). Without it the patch representations
            are no longer reached through attention; as Sec. 4.5 says, "we utilize the landmark
            representations as the queries input": the first layer's input T starts at R (+ P with
            structure encoding) instead of zeros.
        use_structure_encoding: learnable P added to the representations R (Table 7).
        backbone: key of :data:`BACKBONES` ("hrnet_w18c_lite", "hrnet_w18c", "resnet34",
            "mobilenet_v2": a light CPU backbone, 128 channels; "mobilenet_v2_050": the same at
            half width).
        head_init: "release" (xavier-uniform prediction head, as the authors' code: the first
            predictions land up to ~1.4 patch sides away from the patch centres) or "centre"
            (zero weights and bias 0.5: every stage starts exactly at its patch centre, i.e. stage 1
            at the mean face; facemark's option for short training budgets).
        embedding_init: "release" (the authors' code: xavier-uniform over the (1, N, d) landmark
            queries Q and structure encoding P, whose fan-in N*d makes them tiny, std ~0.009 at
            N=98, d=256) or "normal" (N(0, 1), as DETR's query embeddings; facemark's option for
            short training budgets). With the release init a landmark's query and key hardly say
            which landmark they belong to next to the patch content (LN(T) has unit scale, R
            grows to several units), so cross-attention stays near uniform until Adam has grown
            Q and P ~100x: on SynthFace after 450 steps the attention's largest weight was 0.015
            against 0.010 for uniform.
        initial_content: "zeros" (the paper, Sec. 3.1: T^1 is a zero matrix) or "queries" (T^1 = Q,
            facemark's option for short training budgets; no new parameters). With zeros, a
            landmark's identity reaches its token T only through WHICH patches its attention
            weights pick (Q enters queries and keys, never values), the slow start DETR-style
            decoders are known for; with T^1 = Q it is in the token from the first layer, so the
            shared FFN and prediction head can give each landmark its own offset (measured in
            docs/slpt.md). Needs cross-attention (without MCA, T^1 = R + P: an error otherwise).
        keep_unused_feature_norm: the release holds a LayerNorm ``feature_norm`` that its forward
            never uses (512 parameters, counted in the paper's 13.19 M). Kept (frozen) by default so
            parameter counts and checkpoints match exactly.
    """

    num_points: int = 98
    num_stages: int = 3
    num_layers: int = 6
    patch_samples: int = 7
    initial_patch_size: float = 0.25
    embed_dim: int = 256
    num_heads: int = 8
    feedforward_dim: int = 1024
    dropout: float = 0.1
    use_self_attention: bool = True
    use_cross_attention: bool = True
    use_structure_encoding: bool = True
    backbone: str = "hrnet_w18c_lite"
    head_init: str = "release"
    embedding_init: str = "release"
    initial_content: str = "zeros"
    keep_unused_feature_norm: bool = True

    def __post_init__(self) -> None:
        checks = [
            ("num_points", self.num_points >= 2, ">= 2"),
            ("num_stages", self.num_stages >= 1, ">= 1"),
            ("num_layers", self.num_layers >= 1, ">= 1"),
            ("patch_samples", self.patch_samples >= 2, ">= 2"),
            ("initial_patch_size", 0 < self.initial_patch_size <= 2, "in (0, 2]"),
            ("embed_dim", self.embed_dim >= 1 and self.embed_dim % self.num_heads == 0,
             f"a positive multiple of num_heads={self.num_heads}"),
            ("dropout", 0 <= self.dropout < 1, "in [0, 1)"),
            ("backbone", self.backbone in BACKBONES, f"one of {sorted(BACKBONES)}"),
            ("head_init", self.head_init in ("release", "centre"), "'release' or 'centre'"),
            ("embedding_init", self.embedding_init in ("release", "normal"), "'release' or 'normal'"),
            ("initial_content", self.initial_content in ("zeros", "queries"), "'zeros' or 'queries'"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"SLPTConfig.{name} = {getattr(self, name)!r}; expected {expected}")
        if self.initial_content == "queries" and not self.use_cross_attention:
            raise ValueError("SLPTConfig.initial_content = 'queries' needs use_cross_attention=True "
                             "(without MCA the layers start from R + P, Table 6)")


@dataclass
class SLPTOutput:
    """``stages``: one (B, L, N, 2) tensor per stage (every layer's prediction, normalised crop
    coordinates); ``landmarks``: (B, N, 2) = last stage, last layer."""

    stages: list[torch.Tensor]
    landmarks: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.landmarks = self.stages[-1][:, -1]


# ------------------------------------------------------------------------------------------------
# Backbones: each maps (B, 3, S, S) to one (B, C, S/4, S/4) map and has ``.out_channels``.
# ------------------------------------------------------------------------------------------------
class MultiScaleFusion(nn.Module):
    """A trunk's multi-scale maps fused into one map at its finest scale (stride 4).

    The HRNetV2 landmark head of the HRNet variant, applied to another trunk: the coarser maps
    are upsampled to the finest one's resolution (bilinear, align_corners=False), concatenated
    with it, then 1x1 conv + BN + ReLU to ``out_channels`` and a 1x1 conv (with bias). The first
    1x1 conv is applied before the upsampling (same map, see ``forward``): a ResNet18 fusion's
    training step (forward + backward, batch 16, 128 crops, 2 threads) went from 857 to 564 ms.
    ``trunk(x)`` must return the list of maps, finest first, with ``trunk.out_channels``.
    """

    def __init__(self, trunk: nn.Module, out_channels: int, bn_momentum: float):
        super().__init__()
        self.trunk = trunk
        self.out_channels = out_channels
        self.head = nn.Sequential(
            nn.Conv2d(sum(trunk.out_channels), out_channels, 1),
            nn.BatchNorm2d(out_channels, momentum=bn_momentum),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.trunk(x)
        size = features[0].shape[-2:]
        # conv1x1(cat(upsample(f_k))) computed as sum_k upsample(conv1x1_k(f_k)): the same map
        # (the 1x1 conv mixes channels within a pixel, bilinear upsampling mixes pixels within a
        # channel; both are linear, so they commute; the bias is added once), but the coarse maps are projected to ``out_channels`` before they are upsampled, so neither the
        # upsampling nor its backward touches the trunk's wide coarse maps (512 channels for a
        # ResNet's C5) at the fine resolution. Parameters are unchanged (``head.0`` still spans
        # the concatenated channels).
        first = self.head[0]
        weights = first.weight.split(list(self.trunk.out_channels), dim=1)
        fused = F.conv2d(features[0], weights[0], first.bias)
        for feature, weight in zip(features[1:], weights[1:]):
            fused = fused + F.interpolate(F.conv2d(feature, weight), size=size, mode="bilinear", align_corners=False)
        return self.head[1:](fused)


def resnet34_fused(out_channels: int = 256) -> MultiScaleFusion:
    """ResNet34 C2..C5 fused into one 256-channel stride-4 map: the paper's SLPT-ResNet34 rows.

    The paper only says that representations are extracted "from the output feature maps of
    stages C2 through C5" (Sec. 4.3; its Appendix A.1 is not available to us), so the fusion is
    our design: :class:`MultiScaleFusion` over 64 + 128 + 256 + 512 = 960 channels, giving
    (B, 256, S/4, S/4) like HRNetW18C-lite. BN momentum 0.01 as in the released HRNet.
    """
    from facemark.models.resnet import resnet34

    return MultiScaleFusion(resnet34(bn_momentum=0.01), out_channels, bn_momentum=0.01)


def resnet18_fused(out_channels: int = 128) -> MultiScaleFusion:
    """A CPU backbone (facemark's own, not in the paper): ResNet18 C2..C5 (64 + 128 + 256 + 512 =
    960 channels) fused into one 128-channel stride-4 map, as :func:`resnet34_fused` but shallower
    and narrower (128 channels, see :func:`mobilenet_v2_fused` on why). Measured on SynthFace
    (light preset, 128 crops, 2-core CPU, batch 16): a training step takes 0.94 s against 0.74 s
    with MobileNetV2, and over 3 epochs it learned no faster (validation NME_io 31.0 / 24.4 /
    22.5 % against 31.0 / 26.4 / 20.4 %), so the fast preset keeps MobileNetV2 (docs/slpt.md)."""
    from facemark.models.resnet import resnet18

    return MultiScaleFusion(resnet18(), out_channels, bn_momentum=0.1)


def mobilenet_v2_fused(out_channels: int = 128, width_mult: float = 1.0) -> MultiScaleFusion:
    """A light CPU backbone (facemark's own, not in the paper): MobileNetV2 up to stride 16,
    C2..C4 (24 + 32 + 96 = 152 channels at ``width_mult`` 1) fused into one 128-channel stride-4 map.

    The stride-32 blocks are dropped: a landmark patch needs local detail more than image-level
    context, and they would be about half the compute. 128 channels, not 256: the patch embedding
    costs N x C x K^2 x d multiply-adds per stage (98 x 256 x 49 x 256 = 315 M at C = d = 256,
    more than the whole trunk at a 128 crop), so the light preset narrows both C and d.
    """
    from facemark.models.mobilenet import mobilenet_v2

    return MultiScaleFusion(mobilenet_v2(width_mult=width_mult, num_outputs=3), out_channels, bn_momentum=0.1)


def mobilenet_v2_050_fused(out_channels: int = 128) -> MultiScaleFusion:
    """:func:`mobilenet_v2_fused` at half width (C2..C4: 16 + 16 + 48 = 80 channels): the demo's
    backbone. With 128 crops, batch 16 and channels-last on a 2-core CPU a training step of the
    fast preset is ~1.7x faster than at full width, which buys more epochs in a fixed time budget
    than the width costs in accuracy (docs/experiments.md)."""
    return mobilenet_v2_fused(out_channels, width_mult=0.5)


BACKBONES: dict[str, Callable[[], nn.Module]] = {
    "hrnet_w18c_lite": hrnet_w18c_lite,
    "hrnet_w18c": hrnet_w18c,
    "resnet34": resnet34_fused,
    "mobilenet_v2": mobilenet_v2_fused,
    "mobilenet_v2_050": mobilenet_v2_050_fused,
    "resnet18": resnet18_fused,
}


# ------------------------------------------------------------------------------------------------
# Sparse local patches
# ------------------------------------------------------------------------------------------------
def sample_local_patches(feature_map: torch.Tensor, centres: torch.Tensor, half_size: float,
                         num_samples: int, steps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Crop one K x K patch per landmark from ``feature_map`` by bilinear sampling.

    The box of landmark i is ``clamp(centre - half_size, 0, 1) .. clamp(centre + half_size, 0, 1)``
    per axis (clamped at the border, not shifted: border patches are smaller, as released); the K
    samples per axis lie at ``linspace(box_min, box_max, K)``; a position q in [0, 1] is read at
    feature pixel ``q * (size - 1)`` with bilinear interpolation, i.e. ``grid_sample`` with
    ``align_corners=True`` and border padding. Positions are detached (paper: no gradient flows
    to the coordinates through the crop).

    Three implementations of the same sampling (equal to float rounding, see
    ``tests/test_slpt.py``), each where it is fastest: ``grid_sample`` by default; when a CPU
    training step needs the gradient of the feature map, a product with a sparse
    (B*N*K*K, B*H*W) matrix of bilinear weights (4 per row), whose backward is a transposed sparse
    product, about 2x faster on CPU than ``grid_sample``'s backward (which was the largest single
    cost of a CPU training step); and in ONNX exports, four row gathers of the channels-last
    pixels (ONNX ``Gather``), which ONNX Runtime's CPU runs ~4x faster than its ``GridSample``.

    Args:
        feature_map: (B, C, H, W), H and W >= 2.
        centres: (B, N, 2) landmark (x, y) in normalised crop coordinates.
        half_size: half the patch side, normalised (stage 1 of the release: 8 / 64).
        num_samples: K.
        steps: ``linspace(0, 1, K)`` on the centres' device, if the caller keeps it (SLPT does, in a
            buffer, so that a TorchScript trace holds no device constant: traced on the CPU, it
            runs on a GPU); None makes it here.

    Returns:
        patches (B, N, C, K, K) with rows = y samples and columns = x samples (from the sparse
        product: a view of (B, N, K, K, C) memory, which :meth:`SLPT.embed_patches` reads without a
        copy), and the boxes' ``box_min`` and ``box_size`` (B, N, 2) for eq. 7.
    """
    batch, channels = feature_map.shape[:2]
    num_points = centres.shape[1]
    centres = centres.detach()
    box_min = (centres - half_size).clamp(0.0, 1.0)
    box_size = (centres + half_size).clamp(0.0, 1.0) - box_min
    if steps is None:
        steps = torch.linspace(0.0, 1.0, num_samples, device=centres.device, dtype=centres.dtype)
    steps = steps.to(centres.dtype)
    samples = box_min.unsqueeze(-2) + box_size.unsqueeze(-2) * steps[:, None]  # (B, N, K, 2)
    x = samples[..., 0].unsqueeze(-2).expand(batch, num_points, num_samples, num_samples)  # [.., row, col] = x_col
    y = samples[..., 1].unsqueeze(-1).expand(batch, num_points, num_samples, num_samples)  # [.., row, col] = y_row
    if _sample_by_sparse_product(feature_map):
        sample = _bilinear_by_sparse_product
    elif torch.onnx.is_in_onnx_export():
        sample = _bilinear_by_row_gather
    else:
        sample = None
    if sample is not None:
        patches = sample(feature_map, x, y)  # (B, N*K*K, C)
        patches = patches.view(batch, num_points, num_samples, num_samples, channels).permute(0, 1, 4, 2, 3)
    else:
        grid = torch.stack((x, y), dim=-1) * 2.0 - 1.0  # grid_sample wants [-1, 1]
        grid = grid.reshape(batch, num_points * num_samples, num_samples, 2).to(feature_map.dtype)
        patches = F.grid_sample(feature_map, grid, mode="bilinear", padding_mode="border", align_corners=True)
        patches = patches.view(batch, channels, num_points, num_samples, num_samples).transpose(1, 2)
    return patches, box_min, box_size


def _sample_by_sparse_product(feature_map: torch.Tensor) -> bool:
    """The sparse product serves CPU steps that need the feature map's gradient, in eager mode;
    exports (ONNX, TorchScript) and torch.compile get grid_sample, which they support."""
    return (feature_map.device.type == "cpu" and feature_map.requires_grad and torch.is_grad_enabled()
            and not torch.jit.is_tracing() and not torch.jit.is_scripting()
            and not torch.onnx.is_in_onnx_export() and not torch.compiler.is_compiling())


def _bilinear_neighbours(feature_map: torch.Tensor, x: torch.Tensor, y: torch.Tensor):
    """What bilinear sampling (align_corners=True; x, y in [0, 1], any shape (B, ...)) of
    ``feature_map`` (B, C, H, W) reads: its pixels as (B*H*W, C) rows, and for every sample the
    row indices (B*S, 4) of its 4 neighbours (top-left, top-right, bottom-left, bottom-right) and
    their weights (B*S, 4)."""
    batch, channels, height, width = feature_map.shape
    column = x.reshape(batch, -1).to(feature_map.dtype) * (width - 1)
    row = y.reshape(batch, -1).to(feature_map.dtype) * (height - 1)
    # The top-left neighbour, kept one pixel inside so that a sample on the last row / column is
    # read with weight 1 on it (no out-of-range index).
    column0 = column.floor().clamp(0, width - 2)
    row0 = row.floor().clamp(0, height - 2)
    weight_x, weight_y = (column - column0).reshape(-1), (row - row0).reshape(-1)
    image_offset = torch.arange(batch, device=feature_map.device).unsqueeze(1) * (height * width)
    top_left = (image_offset + row0.long() * width + column0.long()).reshape(-1)
    indices = torch.stack((top_left, top_left + 1, top_left + width, top_left + width + 1), dim=1)
    weights = torch.stack(((1 - weight_x) * (1 - weight_y), weight_x * (1 - weight_y),
                           (1 - weight_x) * weight_y, weight_x * weight_y), dim=1)
    pixels = feature_map.permute(0, 2, 3, 1).reshape(batch * height * width, channels)
    return pixels, indices, weights



def _bilinear_by_row_gather(feature_map: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``feature_map`` (see :func:`_bilinear_neighbours`) from four row
    gathers of its pixels. Returns (B, samples per image, C)."""
    pixels, indices, weights = _bilinear_neighbours(feature_map, x, y)
    samples = sum(pixels.index_select(0, indices[:, corner]) * weights[:, corner, None] for corner in range(4))
    return samples.view(feature_map.shape[0], -1, feature_map.shape[1])


def _bilinear_by_sparse_product(feature_map: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``feature_map`` (see :func:`_bilinear_neighbours`) as
    ``weights @ pixels``: a sparse CSR matrix with the 4 bilinear weights of each sample times the
    pixel rows. Returns (B, samples per image, C)."""
    pixels, indices, weights = _bilinear_neighbours(feature_map, x, y)
    num_samples = indices.shape[0]
    row_starts = torch.arange(0, 4 * num_samples + 1, 4, device=feature_map.device)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": this use is covered by tests
        warnings.simplefilter("ignore", UserWarning)
        matrix = torch.sparse_csr_tensor(row_starts, indices.reshape(-1), weights.reshape(-1),
                                         size=(num_samples, pixels.shape[0]), check_invariants=False)
    return (matrix @ pixels).view(feature_map.shape[0], -1, feature_map.shape[1])


# ------------------------------------------------------------------------------------------------
# Inherent relation layers
# ------------------------------------------------------------------------------------------------
class Tap(nn.Identity):
    """A named point of the forward pass where a forward hook can read an intermediate tensor
    (``facemark explain``); returns its input unchanged and holds no parameters."""


class MultiheadAttention(nn.Module):
    """Multi-head attention with ``nn.MultiheadAttention``'s parameters (packed ``in_proj_weight``
    = [W_q; W_k; W_v], ``in_proj_bias``, ``out_proj``) computed with ``scaled_dot_product_attention``.
    Inputs are batch-first (B, length, embed_dim). ``dropout`` acts on the attention weights.

    ``expose_weights = True`` (off by default; ``facemark explain`` sets it) computes the softmax
    weights explicitly, passes them (B, heads, queries, keys) through ``weights_tap`` where a forward
    hook reads them, and applies them: the same output as the fused kernel up to float rounding.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.expose_weights = False
        self.weights_tap = Tap()
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, -1).transpose(1, 2)

    def attention_weights(self, query: torch.Tensor, key: torch.Tensor,
                          attention_bias: torch.Tensor | None = None) -> torch.Tensor:
        """The softmax weights (B, heads, queries, keys) that ``forward`` applies (for inspection;
        ``forward`` never materialises them)."""
        d = self.embed_dim
        q = self._split_heads(F.linear(query, self.in_proj_weight[:d], self.in_proj_bias[:d]))
        k = self._split_heads(F.linear(key, self.in_proj_weight[d: 2 * d], self.in_proj_bias[d: 2 * d]))
        logits = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
        return torch.softmax(logits if attention_bias is None else logits + attention_bias, dim=-1)

    def forward(self, query: torch.Tensor, key: torch.Tensor | None, value: torch.Tensor,
                attention_bias: torch.Tensor | None = None) -> torch.Tensor:
        """``key=None`` means key == query (self-attention): q and k are projected in one matmul.
        ``attention_bias``: added to the attention logits before the softmax, (queries, keys) or
        broadcastable to (B, heads, queries, keys); None adds nothing."""
        d = self.embed_dim
        weight, bias = self.in_proj_weight, self.in_proj_bias
        if key is None:
            q, k = F.linear(query, weight[: 2 * d], bias[: 2 * d]).chunk(2, dim=-1)
        else:
            q = F.linear(query, weight[:d], bias[:d])
            k = F.linear(key, weight[d: 2 * d], bias[d: 2 * d])
        v = F.linear(value, weight[2 * d:], bias[2 * d:])
        if self.expose_weights:
            q, k = self._split_heads(q), self._split_heads(k)
            logits = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
            if attention_bias is not None:
                logits = logits + attention_bias
            weights = self.weights_tap(torch.softmax(logits, dim=-1))
            weights = F.dropout(weights, self.dropout, self.training)
            attended = weights @ self._split_heads(v)
        else:
            attended = F.scaled_dot_product_attention(
                self._split_heads(q), self._split_heads(k), self._split_heads(v),
                attn_mask=None if attention_bias is None else attention_bias.to(q.dtype),
                dropout_p=self.dropout if self.training else 0.0,
            )
        batch, _, length, _ = attended.shape
        return self.out_proj(attended.transpose(1, 2).reshape(batch, length, d))


class InherentRelationLayer(nn.Module):
    """One pre-norm inherent relation layer: MSA, MCA, FFN, each behind a LayerNorm (Sec. 3.1).

    ``T += drop(MSA(q = k = LN(T) + Q, v = LN(T)))``          (eqs. 1-2)
    ``T += drop(MCA(q = LN(T) + Q, k = R + P, v = R))``       (eqs. 3-4)
    ``T += drop(FFN(LN(T)))``, FFN = Linear -> ReLU -> dropout -> Linear.
    """

    def __init__(self, embed_dim: int, num_heads: int, feedforward_dim: int, dropout: float,
                 use_self_attention: bool = True, use_cross_attention: bool = True):
        super().__init__()
        self.norm_before_self_attention = nn.LayerNorm(embed_dim) if use_self_attention else None
        self.self_attention = MultiheadAttention(embed_dim, num_heads, dropout) if use_self_attention else None
        self.norm_before_cross_attention = nn.LayerNorm(embed_dim) if use_cross_attention else None
        self.cross_attention = MultiheadAttention(embed_dim, num_heads, dropout) if use_cross_attention else None
        self.norm_before_feedforward = nn.LayerNorm(embed_dim)
        self.feedforward_hidden = nn.Linear(embed_dim, feedforward_dim)
        self.feedforward_output = nn.Linear(feedforward_dim, embed_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, content: torch.Tensor, queries: torch.Tensor | None, memory_keys: torch.Tensor | None,
                memory_values: torch.Tensor | None, cross_attention_bias: torch.Tensor | None = None) -> torch.Tensor:
        """content T (B, N, d); queries Q (1, N, d); memory keys R + P and values R (B, N, d);
        ``cross_attention_bias`` (N, tokens): added to the cross-attention logits (the DETR-style
        baseline's spatial prior), None for SLPT."""
        if self.self_attention is not None:
            normed = self.norm_before_self_attention(content)
            content = content + self.dropout(self.self_attention(normed + queries, None, normed))
        if self.cross_attention is not None:
            normed = self.norm_before_cross_attention(content)
            content = content + self.dropout(self.cross_attention(normed + queries, memory_keys, memory_values,
                                                                  attention_bias=cross_attention_bias))
        normed = self.norm_before_feedforward(content)
        hidden = self.dropout(F.relu(self.feedforward_hidden(normed)))
        return content + self.dropout(self.feedforward_output(hidden))


# ------------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------------
class SLPT(nn.Module):
    """Sparse Local Patch Transformer with a coarse-to-fine loop (use :func:`build_slpt`).

    Args:
        config: the architecture.
        mean_face: (N, 2) initial landmarks S_0 in normalised crop coordinates; stored as the
            ``mean_face`` buffer (saved in facemark checkpoints).
        channels_last: run the backbone on channels-last (NHWC) tensors (also settable later:
            ``model.channels_last = True``). A speed setting, not part of the architecture: on CPU
            the HRNet runs markedly faster, but oneDNN then sums the convolutions in another order,
            so float32 results move by rounding (measured 0.8-1.9e-5 in normalised coordinates,
            < 0.005 px at 256, vs 1e-6 in NCHW). Off by default so that outputs agree with NCHW
            code such as the authors' to < 1e-5.
    """

    def __init__(self, config: SLPTConfig, mean_face: torch.Tensor | np.ndarray, channels_last: bool = False):
        super().__init__()
        self.config = config
        self.channels_last = channels_last
        mean_face = torch.as_tensor(np.asarray(mean_face, dtype=np.float32))
        if mean_face.shape != (config.num_points, 2):
            raise ValueError(f"mean_face has shape {tuple(mean_face.shape)}; expected ({config.num_points}, 2)")
        if not torch.isfinite(mean_face).all():
            raise ValueError("mean_face holds non-finite values")
        self.register_buffer("mean_face", mean_face)
        # The patch sampling positions: a buffer moves with the model, where a tensor made in
        # forward() would be a device constant in a TorchScript trace. Not saved (persistent=False):
        # it follows from patch_samples, and checkpoints stay as released.
        self.register_buffer("patch_steps", torch.linspace(0.0, 1.0, config.patch_samples), persistent=False)

        d = config.embed_dim
        self.backbone = BACKBONES[config.backbone]()
        # One KxK conv over each KxK patch = a linear map of the flattened patch to a d-dim token.
        self.patch_embedding = nn.Conv2d(self.backbone.out_channels, d, config.patch_samples, bias=False)
        if config.keep_unused_feature_norm:
            # Present in the release, never used by its forward: frozen, kept only so parameter
            # counts and checkpoints match (see SLPTConfig.keep_unused_feature_norm).
            self.unused_feature_norm = nn.LayerNorm(d).requires_grad_(False)
        queries_used = config.use_self_attention or config.use_cross_attention
        self.landmark_queries = nn.Parameter(torch.empty(1, config.num_points, d)) if queries_used else None
        self.structure_encoding = (nn.Parameter(torch.empty(1, config.num_points, d))
                                   if config.use_structure_encoding else None)
        self.layers = nn.ModuleList(
            InherentRelationLayer(d, config.num_heads, config.feedforward_dim, config.dropout,
                                  config.use_self_attention, config.use_cross_attention)
            for _ in range(config.num_layers)
        )
        self.final_norm = nn.LayerNorm(d)  # shared by every layer's output (prediction head's LN)
        self.prediction_head = nn.Linear(d, 2)  # local position t in the patch (eq. 7)
        # Where a forward hook reads each stage's patch boxes (box_min, box_size), for Fig. 1.
        self.patch_box_tap = Tap()
        self._reset_head_parameters()

    def _reset_head_parameters(self) -> None:
        """Release init of the non-backbone part: xavier_uniform on every weight with dim > 1
        (queries and structure encoding included)."""
        for name, parameter in self.named_parameters():
            if not name.startswith("backbone.") and parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)
        if self.config.embedding_init == "normal":
            for embedding in (self.landmark_queries, self.structure_encoding):
                if embedding is not None:
                    nn.init.normal_(embedding)
        if self.config.head_init == "centre":
            # t = 0.5 for every input: each stage's first guess is its patch centre (eq. 7).
            nn.init.zeros_(self.prediction_head.weight)
            nn.init.constant_(self.prediction_head.bias, 0.5)

    def stage_half_sizes(self) -> list[float]:
        """Half patch side per stage (release: 8/64, 4/64, 2/64): halved at every stage."""
        return [self.config.initial_patch_size / 2 / 2 ** stage for stage in range(self.config.num_stages)]

    def embed_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, N, C, K, K) patches -> (B, N, d) tokens: the KxK conv as one matmul. Patches held
        channels-last in memory (the training path's sparse product) meet the conv weight permuted
        to that order, a small copy; others are flattened in the conv's (C, K, K) order."""
        weight = self.patch_embedding.weight  # (d, C, K, K)
        if patches.permute(0, 1, 3, 4, 2).is_contiguous():
            return F.linear(patches.permute(0, 1, 3, 4, 2).flatten(2), weight.permute(0, 2, 3, 1).flatten(1))
        return F.linear(patches.flatten(2), weight.flatten(1))

    def relate(self, representations: torch.Tensor) -> torch.Tensor:
        """Inherent relation layers on the tokens R (B, N, d) -> normalised outputs (B, L, N, d)."""
        keys = representations
        if self.structure_encoding is not None:
            keys = representations + self.structure_encoding
        if self.config.use_cross_attention:
            content = torch.zeros_like(representations)  # T^1 is a zero matrix (Sec. 3.1)
            if self.config.initial_content == "queries":
                content = content + self.landmark_queries
        else:
            content = keys  # Table 6 without MCA: the representations are the queries input
        outputs = []
        for layer in self.layers:
            content = layer(content, self.landmark_queries, keys, representations)
            outputs.append(content)
        return self.final_norm(torch.stack(outputs, dim=1))  # the shared LN, applied to every layer's output

    def refine(self, feature_map: torch.Tensor, landmarks: torch.Tensor, half_size: float) -> torch.Tensor:
        """One coarse-to-fine stage: (B, N, 2) landmarks -> (B, L, N, 2), one prediction per layer."""
        patches, box_min, box_size = sample_local_patches(feature_map, landmarks, half_size,
                                                          self.config.patch_samples, self.patch_steps)
        box_min, box_size = self.patch_box_tap((box_min, box_size))
        local = self.prediction_head(self.relate(self.embed_patches(patches)))  # (B, L, N, 2)
        return box_min.unsqueeze(1) + box_size.unsqueeze(1) * local  # eq. 7

    def forward(self, images: torch.Tensor) -> SLPTOutput:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"SLPT expects images of shape (B, 3, S, S), got {tuple(images.shape)}")
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        feature_map = self.backbone(images)
        # grid_sample reads channels-last maps ~2x faster on CPU; the values are identical.
        feature_map = feature_map.contiguous(memory_format=torch.channels_last)
        # The coordinates stay in the model's own dtype (float32) under autocast: a float16 coordinate
        # at 256 px has 0.125 px steps. Only the sampling grid follows the feature map's dtype.
        landmarks = self.mean_face.expand(images.shape[0], -1, -1)
        stages = []
        for half_size in self.stage_half_sizes():
            stage = self.refine(feature_map, landmarks, half_size)
            stages.append(stage)
            landmarks = stage[:, -1].detach()  # the next stage starts from the last layer, detached
        return SLPTOutput(stages)


def build_slpt(config: SLPTConfig | None = None, mean_face: torch.Tensor | np.ndarray | None = None,
               channels_last: bool = False) -> SLPT:
    """Build SLPT. ``mean_face`` (N, 2) in normalised crop coordinates, e.g. from
    :func:`compute_mean_face` on the training set; if omitted, the authors' mean face is used for
    N = 98 or 68 (:func:`load_official_mean_face`), and any other N is an error."""
    config = config or SLPTConfig()
    if mean_face is None:
        if config.num_points not in (98, 68):
            raise ValueError(f"no default mean face for {config.num_points} points: pass mean_face "
                             "(e.g. compute_mean_face(training_landmarks))")
        mean_face = load_official_mean_face(config.num_points)
    return SLPT(config, mean_face, channels_last=channels_last)


# ------------------------------------------------------------------------------------------------
# Loss (eq. 8) and per-stage error
# ------------------------------------------------------------------------------------------------
def _inter_ocular_distance(target: torch.Tensor, inter_ocular) -> torch.Tensor:
    first, second = getattr(inter_ocular, "inter_ocular", inter_ocular)  # a Layout or two indices
    distance = (target[:, first] - target[:, second]).norm(dim=-1)
    # Checked where it is free (CPU). On a GPU the check would wait for the device every step;
    # a zero distance there makes the loss infinite, which stops training with the step named.
    if distance.device.type == "cpu" and not torch.all(distance > 0):
        bad = torch.nonzero(distance <= 0).flatten().tolist()
        raise ValueError(f"ground-truth inter-ocular distance (points {first}, {second}) is 0 for samples {bad}")
    return distance


def slpt_loss(output: SLPTOutput, target: torch.Tensor, inter_ocular,
              stage_weights: Sequence[float] | None = None, normalisation: str = "inter_ocular") -> torch.Tensor:
    """Normalised L2 loss over all stages and all layers (eq. 8).

    Per stage: mean over batch, layers and points of ``||pred - gt|| / d``, with d the ground-truth
    distance between the layout's inter-ocular points; stages are summed with ``stage_weights``.

    Args:
        output: the model output.
        target: (B, N, 2) ground truth in normalised crop coordinates.
        inter_ocular: a :class:`facemark.layouts.Layout` or the two point indices (WFLW (60, 72),
            300W (36, 45), COFW (8, 9)).
        stage_weights: one weight per stage. ``None``: the release's (0.2, 0.3, 0.5) for 3 stages,
            else uniform 1/S as in eq. 8.
        normalisation: "inter_ocular" (eq. 8) or "crop" (d = 1: the error in crop sides, a
            facemark option). With eq. 8 a face in profile, whose eye corners nearly coincide,
            weighs many times a frontal one; "crop" weighs every face alike.
    """
    num_stages = len(output.stages)
    if stage_weights is None:
        stage_weights = RELEASE_STAGE_WEIGHTS if num_stages == 3 else [1.0 / num_stages] * num_stages
    if len(stage_weights) != num_stages:
        raise ValueError(f"{len(stage_weights)} stage weights for {num_stages} stages")
    if target.shape != output.landmarks.shape:
        raise ValueError(f"target shape {tuple(target.shape)} != prediction shape {tuple(output.landmarks.shape)}")
    if normalisation == "inter_ocular":
        distance = _inter_ocular_distance(target, inter_ocular)
    elif normalisation == "crop":
        distance = target.new_ones(target.shape[0])
    else:
        raise ValueError(f"normalisation = {normalisation!r}; expected 'inter_ocular' or 'crop'")
    loss = target.new_zeros(())
    for weight, stage in zip(stage_weights, output.stages):
        error = (stage - target.unsqueeze(1)).norm(dim=-1)  # (B, L, N)
        loss = loss + weight * (error.mean(dim=(1, 2)) / distance).mean()
    return loss


@torch.no_grad()
def stage_nme(output: SLPTOutput, target: torch.Tensor, inter_ocular) -> torch.Tensor:
    """Mean inter-ocular NME (in crop space) of each stage's last layer: (num_stages,), for
    monitoring that the stages improve (the benchmark NME is computed in the original image)."""
    distance = _inter_ocular_distance(target, inter_ocular)
    return torch.stack([((stage[:, -1] - target).norm(dim=-1).mean(dim=1) / distance).mean()
                        for stage in output.stages])


# ------------------------------------------------------------------------------------------------
# Mean face
# ------------------------------------------------------------------------------------------------
def compute_mean_face(landmarks: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Mean face S_0 (Sec. 3.2) from training landmarks (M, N, 2) already in normalised crop
    coordinates (e.g. the training crops' landmarks / crop size). Any layout, any N."""
    landmarks = torch.as_tensor(np.asarray(landmarks, dtype=np.float64))
    if landmarks.dim() != 3 or landmarks.shape[-1] != 2 or landmarks.shape[0] == 0:
        raise ValueError(f"expected training landmarks of shape (M > 0, N, 2), got {tuple(landmarks.shape)}")
    if not torch.isfinite(landmarks).all():
        bad = torch.nonzero(~torch.isfinite(landmarks).all(dim=-1).all(dim=-1)).flatten().tolist()
        raise ValueError(f"training landmarks of samples {bad[:10]} are not finite")
    return landmarks.mean(dim=0).float()


def load_official_mean_face(num_points: int) -> torch.Tensor:
    """The authors' mean face for their 98- (WFLW) or 68-point (300W) checkpoints, (N, 2) in
    normalised crop coordinates (the shipped file holds 256-pixel crop coordinates; / 256 as the
    release does)."""
    if num_points not in (98, 68):
        raise ValueError(f"the authors released mean faces for 98 and 68 points, not {num_points}")
    name = f"slpt_meanface_{num_points}.txt"
    text = resources.files("facemark").joinpath("resources", name).read_text()
    rows = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        values = line.split()
        if len(values) != 2:
            raise ValueError(f"facemark/resources/{name} line {line_number}: expected 'x y', got {line!r}")
        rows.append([float(values[0]), float(values[1])])
    if len(rows) != num_points:
        raise ValueError(f"facemark/resources/{name}: {len(rows)} points, expected {num_points}")
    return torch.tensor(rows, dtype=torch.float64).div(256.0).float()
