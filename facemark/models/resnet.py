"""ResNet-18 / ResNet-34 feature extractors (He et al., CVPR 2016), written for facemark.

The module returns the four stage outputs [C2, C3, C4, C5] (strides 4, 8, 16, 32); there is no
ImageNet classifier (``fc``) since no landmark head uses it. Parameter names follow the torchvision
layout (``conv1``, ``bn1``, ``layer1`` .. ``layer4``, ``downsample.0/1``), so that a user's own
torchvision ImageNet ``.pth`` file can be loaded with :func:`load_imagenet_resnet` (nothing is ever
downloaded).

    >>> backbone = resnet34(bn_momentum=0.01)
    >>> c2, c3, c4, c5 = backbone(torch.zeros(1, 3, 256, 256))   # c5: (1, 512, 8, 8)
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from facemark.models.weights import load_matching_weights

__all__ = ["BasicBlock", "ResNet", "resnet18", "resnet34", "load_imagenet_resnet"]


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN projection) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, bn_momentum: float = 0.1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels, momentum=bn_momentum)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels, momentum=bn_momentum)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            # Projection shortcut when the shape changes ("option B" of the ResNet paper).
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels, momentum=bn_momentum),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class ResNet(nn.Module):
    """ResNet with BasicBlocks; ``forward`` returns [C2, C3, C4, C5] at strides 4, 8, 16, 32."""

    def __init__(self, blocks_per_stage: tuple[int, int, int, int], in_channels: int = 3,
                 bn_momentum: float = 0.1, zero_init_last_bn: bool = False):
        super().__init__()
        if len(blocks_per_stage) != 4:
            raise ValueError(f"blocks_per_stage must have 4 entries, got {blocks_per_stage!r}")
        stage_channels = (64, 128, 256, 512)
        self.out_channels = stage_channels
        self.strides = (4, 8, 16, 32)

        # Stem: 7x7/2 conv + 3x3/2 max-pool -> stride 4.
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64, momentum=bn_momentum)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        previous = 64
        for stage_index, (channels, num_blocks) in enumerate(zip(stage_channels, blocks_per_stage)):
            first_stride = 1 if stage_index == 0 else 2
            blocks = [BasicBlock(previous, channels, first_stride, bn_momentum)]
            blocks += [BasicBlock(channels, channels, 1, bn_momentum) for _ in range(num_blocks - 1)]
            setattr(self, f"layer{stage_index + 1}", nn.Sequential(*blocks))
            previous = channels

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_last_bn:
            # Each residual block then starts as the identity (Goyal et al. 2017).
            for module in self.modules():
                if isinstance(module, BasicBlock):
                    nn.init.zeros_(module.bn2.weight)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c2, c3, c4, c5]


def resnet18(in_channels: int = 3, bn_momentum: float = 0.1, zero_init_last_bn: bool = False) -> ResNet:
    """ResNet-18 feature extractor (2, 2, 2, 2 basic blocks); 11,176,512 parameters (no fc)."""
    return ResNet((2, 2, 2, 2), in_channels=in_channels, bn_momentum=bn_momentum,
                  zero_init_last_bn=zero_init_last_bn)


def resnet34(in_channels: int = 3, bn_momentum: float = 0.1, zero_init_last_bn: bool = False) -> ResNet:
    """ResNet-34 feature extractor (3, 4, 6, 3 basic blocks); 21,284,672 parameters (no fc)."""
    return ResNet((3, 4, 6, 3), in_channels=in_channels, bn_momentum=bn_momentum,
                  zero_init_last_bn=zero_init_last_bn)


def load_imagenet_resnet(module: ResNet, path: str | Path, strict: bool = False) -> dict[str, list[str]]:
    """Load a torchvision-layout ImageNet ResNet ``state_dict`` file into ``module``.

    Accepts a plain state dict or a checkpoint dict with a ``"state_dict"`` / ``"model"`` entry, and
    strips a leading ``"module."`` (DataParallel) or ``"backbone."`` prefix. Keys of the classifier
    (``fc.*``) are expected to be unused. Returns ``{"matched": [...], "missing": [...],
    "unexpected": [...], "shape_mismatch": [...]}`` (key names); with ``strict=True`` any missing or
    mismatched key raises. Nothing is downloaded: ``path`` must be a local file.
    """
    return load_matching_weights(module, path, "ImageNet ResNet", strict=strict)
