"""MobileNetV2 feature extractor (Sandler et al., CVPR 2018), written for facemark.

``forward`` returns [C2, C3, C4, C5] at strides 4, 8, 16, 32 with ``out_channels ==
(24, 32, 96, 1280)``; C5 is the output of the final 1x1 conv (1280 channels), the map a classifier
would pool. Parameter names follow torchvision's layout (``features.<i>...``), so a user's own
torchvision ImageNet file can be loaded with ``load_state_dict(..., strict=False)``; no classifier.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["InvertedResidual", "MobileNetV2", "mobilenet_v2"]


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Round channel counts to a multiple of 8 (as the MobileNet reference does), never below 90%."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _conv_bn_relu6(in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int,
                   bn_momentum: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels, momentum=bn_momentum),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expansion -> 3x3 depthwise -> 1x1 linear projection, residual when shapes allow."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int, bn_momentum: float):
        super().__init__()
        hidden = int(round(in_channels * expand_ratio))
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_bn_relu6(in_channels, hidden, 1, 1, 1, bn_momentum))
        layers += [
            _conv_bn_relu6(hidden, hidden, 3, stride, hidden, bn_momentum),
            nn.Conv2d(hidden, out_channels, 1, bias=False),  # linear bottleneck: no activation
            nn.BatchNorm2d(out_channels, momentum=bn_momentum),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 trunk; ``forward`` returns [C2, C3, C4, C5] (strides 4, 8, 16, 32)."""

    # (expansion t, channels c, repeats n, first stride s) -- Table 2 of the MobileNetV2 paper.
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, width_mult: float = 1.0, in_channels: int = 3, bn_momentum: float = 0.1, num_outputs: int = 4):
        super().__init__()
        if num_outputs not in (1, 2, 3, 4):
            raise ValueError(f"num_outputs must be 1..4 (C2..C5), got {num_outputs}")
        stem_channels = _make_divisible(32 * width_mult)
        last_channels = _make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [_conv_bn_relu6(in_channels, stem_channels, 3, 2, 1, bn_momentum)]
        previous = stem_channels
        # Index (in `features`) of the last block at each output stride, and its channels.
        tap_indices, tap_channels = {}, {}
        stride = 2
        for expand_ratio, channels, repeats, first_stride in self.SETTINGS:
            out_channels = _make_divisible(channels * width_mult)
            for repeat in range(repeats):
                block_stride = first_stride if repeat == 0 else 1
                layers.append(InvertedResidual(previous, out_channels, block_stride, expand_ratio, bn_momentum))
                previous = out_channels
                stride *= block_stride
                tap_indices[stride] = len(layers) - 1
                tap_channels[stride] = out_channels
        layers.append(_conv_bn_relu6(previous, last_channels, 1, 1, 1, bn_momentum))
        tap_indices[32] = len(layers) - 1
        tap_channels[32] = last_channels
        # num_outputs < 4 drops the blocks after the last map returned (they would cost compute
        # and parameters for nothing).
        self.strides = (4, 8, 16, 32)[:num_outputs]
        self._tap_indices = tuple(tap_indices[s] for s in self.strides)
        self.out_channels = tuple(tap_channels[s] for s in self.strides)
        self.features = nn.Sequential(*layers[: self._tap_indices[-1] + 1])

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self._tap_indices:
                outputs.append(x)
        return outputs


def mobilenet_v2(width_mult: float = 1.0, in_channels: int = 3, bn_momentum: float = 0.1, num_outputs: int = 4) -> MobileNetV2:
    """MobileNetV2 (width 1.0: 2,223,872 parameters without classifier); ``num_outputs`` = how
    many of [C2, C3, C4, C5] to compute (3: stop at stride 16)."""
    return MobileNetV2(width_mult=width_mult, in_channels=in_channels, bn_momentum=bn_momentum, num_outputs=num_outputs)
