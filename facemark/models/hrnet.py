"""HRNet backbones for landmark detection (Wang et al., "Deep High-Resolution Representation
Learning", TPAMI 2020), written for facemark.

Two configurations, both with the HRNetV2 landmark head (all four branches upsampled to the
stride-4 branch, concatenated, two 1x1 convs):

* :func:`hrnet_w18c_lite` -- the backbone of the released SLPT checkpoints: stages 2, 3, 4 have
  ONE multi-resolution module each (``shared/facts/slpt.md``); output 256 x 64 x 64 at 256 input.
* :func:`hrnet_w18c` -- the full HRNetV2-W18: stages 2, 3, 4 with 1, 4, 3 modules.

Every branch holds 4 BasicBlocks; branch widths are 18, 36, 72, 144 at strides 4, 8, 16, 32.
BatchNorm momentum is 0.01 everywhere, as released. Parameter names follow the reference HRNet
layout (``conv1``, ``layer1``, ``transition1``, ``stage2.0.branches...``, ``fuse_layers``), so the
SLPT checkpoints' ``backbone.*`` keys and the standard ImageNet file
``hrnetv2_w18_imagenet_pretrained.pth`` map by name (see :func:`load_imagenet_hrnet`).

    >>> backbone = hrnet_w18c_lite()
    >>> features = backbone(torch.zeros(1, 3, 256, 256))        # (1, 256, 64, 64)
    >>> branches = backbone.forward_branches(torch.zeros(1, 3, 256, 256))  # 4 maps, 18..144 channels
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from facemark.models.weights import load_matching_weights, summarise

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "HighResolutionModule",
    "HRNet",
    "hrnet_w18c_lite",
    "hrnet_w18c",
    "load_imagenet_hrnet",
]


BN_MOMENTUM = 0.01  # as in the released HRNet / SLPT code
BRANCH_WIDTHS_W18 = (18, 36, 72, 144)


def _conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, relu: bool = True) -> nn.Sequential:
    """conv (no bias) + BN [+ ReLU] as an nn.Sequential, so keys read ``.0.weight`` / ``.1.weight``."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels, momentum=BN_MOMENTUM),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity shortcut (1x1 projection if the width changes)."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels, momentum=BN_MOMENTUM)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _conv_bn(in_channels, channels, 1, relu=False) if in_channels != channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 (x4 expansion) conv-BN bottleneck with a shortcut; used by ``layer1``."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels, momentum=BN_MOMENTUM)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels, momentum=BN_MOMENTUM)
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _conv_bn(in_channels, out_channels, 1, relu=False) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


class HighResolutionModule(nn.Module):
    """Parallel branches (4 BasicBlocks each) followed by multi-resolution fusion.

    Output ``i`` = ReLU(sum over branches ``j`` of branch ``j`` resampled to resolution ``i``):
    ``j > i`` (coarser): 1x1 conv + BN, then bilinear upsampling (align_corners=False);
    ``j < i`` (finer): ``i - j`` stride-2 3x3 conv + BN steps, ReLU between steps, none after the last;
    ``j == i``: identity.
    """

    def __init__(self, widths: tuple[int, ...], blocks_per_branch: int = 4):
        super().__init__()
        self.widths = tuple(widths)
        self.branches = nn.ModuleList(
            nn.Sequential(*(BasicBlock(width, width) for _ in range(blocks_per_branch))) for width in widths
        )
        self.fuse_layers = nn.ModuleList()
        for i, width_i in enumerate(widths):
            row = nn.ModuleList()
            for j, width_j in enumerate(widths):
                if j > i:
                    row.append(_conv_bn(width_j, width_i, 1, relu=False))
                elif j == i:
                    row.append(nn.Identity())  # no parameters: keys stay as in the reference layout
                else:
                    steps = [_conv_bn(width_j, width_j, 3, stride=2, relu=True) for _ in range(i - j - 1)]
                    steps.append(_conv_bn(width_j, width_i, 3, stride=2, relu=False))
                    row.append(nn.Sequential(*steps))
            self.fuse_layers.append(row)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        branch_outputs = [branch(x) for branch, x in zip(self.branches, inputs)]
        fused = []
        for i, row in enumerate(self.fuse_layers):
            height, width = branch_outputs[i].shape[-2:]
            total = None
            for j, resample in enumerate(row):
                y = resample(branch_outputs[j])
                if j > i:
                    y = F.interpolate(y, size=(height, width), mode="bilinear", align_corners=False)
                total = y if total is None else total + y
            fused.append(self.relu(total))
        return fused


class HRNet(nn.Module):
    """HRNetV2 with the landmark head: ``forward(x)`` -> (B, out_channels, H/4, W/4).

    Args:
        modules_per_stage: multi-resolution modules in stages 2, 3, 4 ((1, 1, 1) = "lite",
            (1, 4, 3) = full HRNetV2-W18).
        branch_widths: channels of the 4 branches (W18: 18, 36, 72, 144).
        out_channels: channels of the head output (SLPT: 256).
        blocks_per_branch: BasicBlocks per branch in every module (4).
    """

    def __init__(self, modules_per_stage: tuple[int, int, int] = (1, 1, 1),
                 branch_widths: tuple[int, int, int, int] = BRANCH_WIDTHS_W18,
                 out_channels: int = 256, blocks_per_branch: int = 4):
        super().__init__()
        if len(modules_per_stage) != 3 or len(branch_widths) != 4:
            raise ValueError(f"modules_per_stage needs 3 entries and branch_widths 4; got {modules_per_stage!r}, "
                             f"{branch_widths!r}")
        self.branch_widths = tuple(branch_widths)
        self.out_channels = out_channels
        self.branch_strides = (4, 8, 16, 32)
        # Stem: two stride-2 3x3 convs -> stride 4.
        self.conv1 = nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, momentum=BN_MOMENTUM)
        self.conv2 = nn.Conv2d(64, 64, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(64, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(Bottleneck(64, 64), *(Bottleneck(256, 64) for _ in range(3)))

        # Transition k opens branch k (a stride-2 conv from the coarsest existing branch); the
        # first transition also maps layer1's 256 channels to the stride-4 branch width.
        widths = self.branch_widths
        self.transition1 = nn.ModuleList([
            _conv_bn(256, widths[0], 3),
            nn.Sequential(_conv_bn(256, widths[1], 3, stride=2)),
        ])
        self.stage2 = nn.Sequential(*(HighResolutionModule(widths[:2], blocks_per_branch)
                                      for _ in range(modules_per_stage[0])))
        self.transition2 = nn.ModuleList([nn.Identity(), nn.Identity(),
                                          nn.Sequential(_conv_bn(widths[1], widths[2], 3, stride=2))])
        self.stage3 = nn.Sequential(*(HighResolutionModule(widths[:3], blocks_per_branch)
                                      for _ in range(modules_per_stage[1])))
        self.transition3 = nn.ModuleList([nn.Identity(), nn.Identity(), nn.Identity(),
                                          nn.Sequential(_conv_bn(widths[2], widths[3], 3, stride=2))])
        self.stage4 = nn.Sequential(*(HighResolutionModule(widths, blocks_per_branch)
                                      for _ in range(modules_per_stage[2])))

        concatenated = sum(widths)  # 270 for W18
        self.head = nn.Sequential(
            nn.Conv2d(concatenated, concatenated, 1),
            nn.BatchNorm2d(concatenated, momentum=BN_MOMENTUM),
            nn.ReLU(inplace=True),
            nn.Conv2d(concatenated, out_channels, 1),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialisation of the released code: convs N(0, 0.001), BN weight 1 / bias 0."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.001)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward_branches(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The 4 branch maps of the last stage: channels ``branch_widths`` at strides 4, 8, 16, 32."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.layer1(x)
        branches = [transition(x) for transition in self.transition1]
        branches = self.stage2(branches)
        branches = [transition(branches[min(i, 1)]) for i, transition in enumerate(self.transition2)]
        branches = self.stage3(branches)
        branches = [transition(branches[min(i, 2)]) for i, transition in enumerate(self.transition3)]
        return self.stage4(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = self.forward_branches(x)
        size = branches[0].shape[-2:]
        upsampled = [branches[0]] + [F.interpolate(b, size=size, mode="bilinear", align_corners=False)
                                     for b in branches[1:]]
        return self.head(torch.cat(upsampled, dim=1))


def hrnet_w18c_lite(out_channels: int = 256) -> HRNet:
    """HRNetW18C-lite as in the released SLPT: one module in each of stages 2, 3, 4 (3.61 M params)."""
    return HRNet(modules_per_stage=(1, 1, 1), out_channels=out_channels)


def hrnet_w18c(out_channels: int = 256) -> HRNet:
    """Full HRNetV2-W18 (HRNetW18C): stages 2, 3, 4 with 1, 4, 3 modules."""
    return HRNet(modules_per_stage=(1, 4, 3), out_channels=out_channels)


def load_imagenet_hrnet(module: nn.Module, path: str | Path, map_location: str = "cpu") -> dict[str, list[str]]:
    """Initialise an HRNet from the standard ImageNet file (``hrnetv2_w18_imagenet_pretrained.pth``).

    Keys are matched by name, as the released SLPT training code does: the stem, ``layer1``,
    transitions and the stage modules present in ``module`` load; the classifier parts of the file
    (``incre_modules``, ``downsamp_modules``, ``final_layer``, ``classifier``) and, for the lite
    net, stage modules beyond the first come back as ``unexpected``; the landmark ``head`` as
    ``missing``. Nothing is skipped silently: the report is returned and logged, shape
    mismatches are listed and not loaded, and a file that matches no key at all is an error.

    Args:
        module: the HRNet (for an SLPT model pass ``model.backbone``).
        path: a local ``.pth`` file (a state dict, or a dict holding one under ``"state_dict"``;
            a ``"module."`` / ``"backbone."`` prefix is removed). Nothing is downloaded.

    Returns:
        ``{"matched": [...], "missing": [...], "unexpected": [...], "shape_mismatch": [...]}``
        (key names; ``shape_mismatch`` entries read ``"key: file (..) vs module (..)"``), the same
        form as :func:`facemark.models.resnet.load_imagenet_resnet`.
    """
    report = load_matching_weights(module, path, "ImageNet HRNet", map_location=map_location)
    if not report["matched"]:
        raise ValueError(f"{path}: no key of the file fits the module ({summarise(report)}); is it an HRNet state dict?")
    return report
