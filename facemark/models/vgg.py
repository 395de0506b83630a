"""VGG-16 feature extractor (Simonyan and Zisserman, ICLR 2015), written for facemark.

``forward`` returns [C2, C3, C4, C5]: the outputs of the 2nd to 5th max-pool (strides 4, 8, 16, 32),
``out_channels == (128, 256, 512, 512)``. With ``batch_norm=True`` (the default: SDFL trains from
scratch, where plain VGG-16 trains poorly) each conv is followed by BatchNorm. Parameter names follow
torchvision's ``features.<i>`` layout; there is no classifier.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["VGG", "vgg16"]

# Channels of each 3x3 conv; "pool" is a 2x2 max-pool (configuration "D" of the VGG paper).
VGG16_LAYERS = (64, 64, "pool", 128, 128, "pool", 256, 256, 256, "pool", 512, 512, 512, "pool", 512, 512, 512, "pool")


class VGG(nn.Module):
    """Plain VGG trunk; ``forward`` returns the outputs of the last four max-pools."""

    def __init__(self, layers=VGG16_LAYERS, in_channels: int = 3, batch_norm: bool = True, bn_momentum: float = 0.1):
        super().__init__()
        modules: list[nn.Module] = []
        pool_indices, pool_channels = [], []
        previous = in_channels
        for item in layers:
            if item == "pool":
                modules.append(nn.MaxPool2d(kernel_size=2, stride=2))
                pool_indices.append(len(modules) - 1)
                pool_channels.append(previous)
                continue
            modules.append(nn.Conv2d(previous, int(item), kernel_size=3, padding=1))
            if batch_norm:
                modules.append(nn.BatchNorm2d(int(item), momentum=bn_momentum))
            modules.append(nn.ReLU(inplace=True))
            previous = int(item)
        if len(pool_indices) < 4:
            raise ValueError(f"VGG layers need at least 4 'pool' entries to give strides 4..32, got {len(pool_indices)}")
        self.features = nn.Sequential(*modules)
        self._tap_indices = tuple(pool_indices[-4:])
        self.out_channels = tuple(pool_channels[-4:])
        self.strides = tuple(2 ** (len(pool_indices) - 3 + i) for i in range(4))

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
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


def vgg16(in_channels: int = 3, batch_norm: bool = True, bn_momentum: float = 0.1) -> VGG:
    """VGG-16 convolutional trunk (14,723,136 parameters with BN, 14,714,688 without)."""
    return VGG(VGG16_LAYERS, in_channels=in_channels, batch_norm=batch_norm, bn_momentum=bn_momentum)
