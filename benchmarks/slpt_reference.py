"""A straightforward re-implementation of the AUTHORS' SLPT computation, for parity tests and
timing (``tests/test_slpt.py``, ``benchmarks/slpt_speed.py``).

Written from the facts in ``shared/facts/slpt.md`` (the authors' code is not available here and
is not copied): their module and parameter names (``feature_extractor``, ``Transformer.
Transformer_block.layers.{i}.self_attn`` ...) so an official-layout state dict loads with
``load_state_dict(strict=True)``; a Python loop over the batch; bilinear patch sampling by index
arithmetic and ``index_select`` at position ``q * (size - 1)`` clamped to the map; the patch
conv as a real ``Conv2d`` over (B*N, C, K, K); DETR-style pre-norm decoder layers on
``nn.MultiheadAttention`` in the (length, batch, d) layout.

The backbone is facemark's HRNetW18C-lite (its names are the release's; a second copy of HRNet
would add nothing to what is compared: the sampling, the patch embedding and the transformer).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from facemark.models.hrnet import hrnet_w18c_lite


class ReferenceDecoderLayer(nn.Module):
    def __init__(self, d_model: int = 256, nhead: int = 8, dim_feedforward: int = 1024, dropout: float = 0.1):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, tgt, memory, query_pos, pos):
        # all (length, batch, d)
        tgt2 = self.norm1(tgt)
        q = k = tgt2 + query_pos
        tgt = tgt + self.dropout1(self.self_attn(q, k, value=tgt2)[0])
        tgt2 = self.norm2(tgt)
        tgt2 = self.multihead_attn(query=tgt2 + query_pos, key=memory + pos, value=memory)[0]
        tgt = tgt + self.dropout2(tgt2)
        tgt2 = self.norm3(tgt)
        tgt2 = self.linear2(self.dropout(F.relu(self.linear1(tgt2))))
        return tgt + self.dropout3(tgt2)


class ReferenceDecoder(nn.Module):
    def __init__(self, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(ReferenceDecoderLayer() for _ in range(num_layers))
        self.norm = nn.LayerNorm(256)

    def forward(self, tgt, memory, query_pos, pos):
        intermediate = []
        for layer in self.layers:
            tgt = layer(tgt, memory, query_pos, pos)
            intermediate.append(self.norm(tgt))
        return torch.stack(intermediate)  # (L, N, B, d)


class ReferenceTransformer(nn.Module):
    def __init__(self, num_points: int, num_layers: int):
        super().__init__()
        self.structure_encoding = nn.Parameter(torch.randn(1, num_points, 256))
        self.landmark_query = nn.Parameter(torch.randn(1, num_points, 256))
        self.Transformer_block = ReferenceDecoder(num_layers)

    def forward(self, representations):  # (B, N, d)
        batch = representations.shape[0]
        memory = representations.permute(1, 0, 2)
        pos = self.structure_encoding.repeat(batch, 1, 1).permute(1, 0, 2)
        query_pos = self.landmark_query.repeat(batch, 1, 1).permute(1, 0, 2)
        tgt = torch.zeros_like(query_pos)
        out = self.Transformer_block(tgt, memory, query_pos, pos)  # (L, N, B, d)
        return out.permute(2, 0, 1, 3)  # (B, L, N, d)


def reference_crop(feature_map: torch.Tensor, landmarks: torch.Tensor, half_size: float, num_samples: int = 7):
    """Loop over the batch; per landmark a clamped box, K x K bilinear samples by index arithmetic."""
    batch, channels, height, width = feature_map.shape
    num_points = landmarks.shape[1]
    patches, box_mins, box_sizes = [], [], []
    for b in range(batch):
        points = landmarks[b].detach()
        box_min = (points - half_size).clamp(0, 1)
        box_max = (points + half_size).clamp(0, 1)
        steps = torch.arange(num_samples, dtype=points.dtype) / (num_samples - 1)
        samples = box_min[:, None, :] + (box_max - box_min)[:, None, :] * steps[None, :, None]  # (N, K, 2)
        px = (samples[..., 0] * (width - 1)).clamp(0, width - 1)  # (N, K)
        py = (samples[..., 1] * (height - 1)).clamp(0, height - 1)
        x0 = px.floor().long()
        y0 = py.floor().long()
        x1 = (x0 + 1).clamp(max=width - 1)
        y1 = (y0 + 1).clamp(max=height - 1)
        wx = (px - x0)[:, None, :]  # (N, 1, Kx)
        wy = (py - y0)[:, :, None]  # (N, Ky, 1)
        rows = feature_map[b].reshape(channels, height * width).t()  # (H*W, C): one row per pixel

        def gather(yi, xi):
            index = (yi[:, :, None] * width + xi[:, None, :]).reshape(-1)
            return rows.index_select(0, index).view(num_points, num_samples, num_samples, channels)

        wx, wy = wx[..., None], wy[..., None]  # broadcast over channels
        value = (gather(y0, x0) * ((1 - wy) * (1 - wx)) + gather(y0, x1) * ((1 - wy) * wx)
                 + gather(y1, x0) * (wy * (1 - wx)) + gather(y1, x1) * (wy * wx))
        patches.append(value.permute(0, 3, 1, 2))  # (N, C, Ky, Kx)
        box_mins.append(box_min)
        box_sizes.append(box_max - box_min)
    return torch.cat(patches), torch.stack(box_mins), torch.stack(box_sizes)


class ReferenceSLPT(nn.Module):
    """The authors' computation with their parameter names; ``forward`` returns the list of
    per-stage (B, L, N, 2) predictions in normalised crop coordinates."""

    def __init__(self, mean_face: torch.Tensor, num_layers: int = 6, num_stages: int = 3, patch_samples: int = 7):
        super().__init__()
        num_points = mean_face.shape[0]
        self.num_stages = num_stages
        self.patch_samples = patch_samples
        self.backbone = hrnet_w18c_lite()
        self.feature_extractor = nn.Conv2d(256, 256, patch_samples, bias=False)
        self.feature_norm = nn.LayerNorm(256)  # unused, as in the release
        self.Transformer = ReferenceTransformer(num_points, num_layers)
        self.out_layer = nn.Linear(256, 2)
        self.register_buffer("mean_face", torch.as_tensor(mean_face, dtype=torch.float32), persistent=False)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        feature_map = self.backbone(images)
        batch = images.shape[0]
        landmarks = self.mean_face[None].repeat(batch, 1, 1)
        half_size = 8 / 64
        stages = []
        for _ in range(self.num_stages):
            patches, box_min, box_size = reference_crop(feature_map, landmarks, half_size, self.patch_samples)
            tokens = self.feature_extractor(patches).view(batch, -1, 256)
            local = self.out_layer(self.Transformer(tokens))  # (B, L, N, 2)
            stage = box_min[:, None] + box_size[:, None] * local
            stages.append(stage)
            landmarks = stage[:, -1].detach()
            half_size = half_size / 2
        return stages
