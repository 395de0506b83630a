"""Heatmap regression on HRNetV2-W18: the face-alignment model of the HRNet facial-landmark
release (github.com/HRNet/HRNet-Facial-Landmark-Detection, "the release" below), the
"HRNetW18C heatmap regression" rows of SLPT's Tables 1-3. Written for facemark from
``shared/facts/heatmap_baseline.md`` and the release's ``lib/core/evaluation.py``,
``lib/utils/transforms.py`` and ``lib/datasets/*.py``.

* Network: facemark's full :func:`~facemark.models.hrnet.hrnet_w18c` whose landmark head (the
  four branches upsampled to the stride-4 one, concatenated to 270 channels, 1x1 conv + BN +
  ReLU, 1x1 conv) has one output channel per landmark: N heatmaps of ``S/4 x S/4`` (64 x 64 for
  a 256 crop). Its tensor names are the release's (``conv1``, ``stage4.2...``, ``head.3``), so
  the released HR18-WFLW / 300W / COFW files load strictly (:func:`load_hrnet_fld`).
* Targets (:func:`gaussian_heatmaps`): per landmark a Gaussian of peak 1 and ``sigma`` heatmap
  pixels (release: 1.5; 1.0 in its 300W config), drawn on a window of ``ceil(6 sigma + 1)``
  pixels whose centre is the integer part of the landmark's heatmap position
  (``lib/utils/transforms.py:216-245``); zero elsewhere. Loss: MSE over every map element
  (``tools/train.py:65``, ``torch.nn.MSELoss``).
* Decoding (:func:`decode_heatmaps`): per map the argmax, a shift of 0.25 pixel towards the
  higher neighbour in x and in y when the peak is not on the map's border, then +0.5 pixel
  (``lib/core/evaluation.py:64-77``): a landmark drawn at integer position ``p`` decodes to
  ``p + 0.5``, the middle of the cell ``[p, p + 1)`` whose points are all drawn at ``p``.
  Heatmap pixel ``x`` is crop pixel ``4 x`` (``get_transform``, ``transforms.py:115-126``, maps the
  crop centre to the map centre), so the model outputs ``(x + 0.5 +- 0.25) / W`` in normalised crop
  coordinates: the facemark model contract (``model(images).landmarks``), with no data-dependent
  Python control flow, so the decoding exports to ONNX.

Departures from the release's decoding (documented in ``docs/baselines.md``):
- its last step rounds the image position to whole pixels, ``astype(int) + 1``
  (``transforms.py:150-152``); facemark maps back through the exact inverse of the crop.
- a map whose maximum is not positive decodes to a fixed corner there (``evaluation.py:31-32``);
  here it decodes to its argmax like any other map.

    >>> model = HeatmapRegression(98)                 # random init; load_hrnet_fld("HR18-WFLW.pth") for the release's
    >>> output = model(images)                        # images: (B, 3, 256, 256), ImageNet-normalised RGB
    >>> output.heatmaps.shape, output.landmarks.shape  # (B, 98, 64, 64), (B, 98, 2) normalised crop coordinates
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from facemark.errors import WeightsError
from facemark.models.hrnet import hrnet_w18c, hrnet_w18c_lite
from facemark.models.weights import key_listing, read_weights_file, strict_load_problems

__all__ = [
    "BACKBONES",
    "HEATMAP_STRIDE",
    "HeatmapOutput",
    "HeatmapRegression",
    "decode_heatmaps",
    "gaussian_heatmaps",
    "heatmap_loss",
    "HRNetFLDCheckpointError",
    "HRNET_FLD_MARKER_KEYS",
    "hrnet_fld_state_dict",
    "load_hrnet_fld",
]

def mobilenet_v2_050_heatmaps(out_channels: int) -> nn.Module:
    """facemark's half-width MobileNetV2 (the fast SLPT and DETR CPU presets' backbone, not in the
    paper) with the HRNetV2 landmark head over its C2..C4 maps (:class:`~facemark.models.slpt.MultiScaleFusion`):
    ``out_channels`` maps at stride 4, like the HRNet's."""
    from facemark.models.slpt import mobilenet_v2_fused

    return mobilenet_v2_fused(out_channels, width_mult=0.5)


# The release's network is the full HRNetV2-W18; the lite one (SLPT's backbone) and the half-width
# MobileNetV2 of the CPU presets are offered for quick CPU runs.
BACKBONES = {"hrnet_w18c": hrnet_w18c, "hrnet_w18c_lite": hrnet_w18c_lite, "mobilenet_v2_050": mobilenet_v2_050_heatmaps}
HEATMAP_STRIDE = 4  # the HRNet head's maps are at the stride-4 branch: 64 x 64 for a 256 crop
# Keys every released file has (shared/facts/hrnet_fld_wflw_state_dict.txt): the heatmap head's last
# conv and the third (last) module of stage 4, which only the full HRNetV2-W18 has.
HRNET_FLD_MARKER_KEYS = ("head.3.weight", "head.0.weight", "stage4.2.fuse_layers.3.2.0.0.weight")


@dataclass
class HeatmapOutput:
    """``heatmaps``: (B, N, H, W) raw maps; ``landmarks``: (B, N, 2) their decoded positions in
    normalised crop coordinates."""

    heatmaps: torch.Tensor
    landmarks: torch.Tensor


def decode_heatmaps(heatmaps: torch.Tensor) -> torch.Tensor:
    """(B, N, H, W) maps -> (B, N, 2) positions ``(x, y)`` in normalised crop coordinates.

    Argmax, then 0.25 map pixel towards the higher of the two neighbours in x and in y (no shift
    on a tie) when the peak is at least one pixel inside the map on every side, then +0.5 pixel;
    divided by the map's width and height. Tensor operations only (exportable to ONNX).
    """
    if heatmaps.dim() != 4:
        raise ValueError(f"decode_heatmaps: expected (B, N, H, W) maps, got shape {tuple(heatmaps.shape)}")
    height, width = heatmaps.shape[-2:]
    flat = heatmaps.flatten(2)
    index = flat.argmax(dim=2)
    column = index % width
    row = torch.div(index, width, rounding_mode="floor")

    def value_at(r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        # Clamped so that a border peak reads inside the map; its shift is masked out below.
        where = r.clamp(0, height - 1) * width + c.clamp(0, width - 1)
        return flat.gather(2, where.unsqueeze(-1)).squeeze(-1)

    towards_x = torch.sign(value_at(row, column + 1) - value_at(row, column - 1))
    towards_y = torch.sign(value_at(row + 1, column) - value_at(row - 1, column))
    inside = (column >= 1) & (column <= width - 2) & (row >= 1) & (row <= height - 2)
    shift = 0.25 * torch.stack((towards_x, towards_y), dim=-1) * inside.unsqueeze(-1).to(heatmaps.dtype)
    peak = torch.stack((column, row), dim=-1).to(heatmaps.dtype)
    size = torch.tensor([width, height], dtype=heatmaps.dtype, device=heatmaps.device)
    return (peak + shift + 0.5) / size


def gaussian_heatmaps(landmarks: torch.Tensor, height: int, width: int, sigma: float) -> torch.Tensor:
    """Target maps (B, N, H, W) for landmarks (B, N, 2) in normalised crop coordinates.

    The landmark's map position ``p = landmarks x (W, H)`` is drawn at ``floor(p)``: a Gaussian of
    peak 1 on a window of ``n = ceil(6 sigma + 1)`` pixels, offsets ``-floor(n / 2) .. n - 1 -
    floor(n / 2)`` from the centre (the release's ``generate_target``: offsets -5..4 for sigma
    1.5, -3..3 for sigma 1), cut at the map's border; zero outside the window.
    """
    if not sigma > 0:
        raise ValueError(f"gaussian_heatmaps: sigma must be positive, got {sigma!r}")
    window = math.ceil(6 * sigma + 1)  # len(np.arange(0, 6 sigma + 1)) in the release
    before, after = window // 2, window - 1 - window // 2
    size = torch.tensor([width, height], dtype=landmarks.dtype, device=landmarks.device)
    centre = torch.floor(landmarks * size)  # (B, N, 2)
    xs = torch.arange(width, dtype=landmarks.dtype, device=landmarks.device)
    ys = torch.arange(height, dtype=landmarks.dtype, device=landmarks.device)
    dx = xs.view(1, 1, width) - centre[..., 0:1]  # (B, N, W)
    dy = ys.view(1, 1, height) - centre[..., 1:2]  # (B, N, H)
    gx = torch.exp(-dx.square() / (2 * sigma ** 2)) * ((dx >= -before) & (dx <= after)).to(landmarks.dtype)
    gy = torch.exp(-dy.square() / (2 * sigma ** 2)) * ((dy >= -before) & (dy <= after)).to(landmarks.dtype)
    return gy.unsqueeze(-1) * gx.unsqueeze(-2)  # separable: exp(-(dx^2 + dy^2) / 2 sigma^2)


def heatmap_loss(output: HeatmapOutput, target: torch.Tensor, sigma: float = 1.5) -> torch.Tensor:
    """MSE (mean over every element) between the predicted maps and the Gaussian targets of
    ``target`` (B, N, 2) in normalised crop coordinates."""
    heatmaps = output.heatmaps
    maps = gaussian_heatmaps(target.to(heatmaps.dtype), heatmaps.shape[-2], heatmaps.shape[-1], sigma)
    return F.mse_loss(heatmaps, maps)


class HeatmapRegression(nn.Module):
    """HRNet with the heatmap head (``backbone``: an :class:`~facemark.models.hrnet.HRNet` whose
    head has ``num_points`` output channels, or for ``"mobilenet_v2_050"`` the same head over the
    MobileNetV2's maps) and the release's decoding."""

    def __init__(self, num_points: int, backbone: str = "hrnet_w18c"):
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"HeatmapRegression: unknown backbone {backbone!r}; expected one of {sorted(BACKBONES)}")
        if not (isinstance(num_points, int) and num_points >= 1):
            raise ValueError(f"HeatmapRegression: num_points must be a positive integer, got {num_points!r}")
        self.num_points = num_points
        self.backbone_name = backbone
        self.backbone: nn.Module = BACKBONES[backbone](out_channels=num_points)

    def forward(self, images: torch.Tensor) -> HeatmapOutput:
        heatmaps = self.backbone(images)
        return HeatmapOutput(heatmaps, decode_heatmaps(heatmaps))


# -- the release's checkpoints -------------------------------------------------------------------
class HRNetFLDCheckpointError(WeightsError):
    """A file is not, or does not fit, an HRNet facial-landmark release model; the message lists
    every offending key."""


def hrnet_fld_state_dict(content, source: str = "state dict") -> dict[str, torch.Tensor]:
    """The release's state dict inside what a file held: a ``{"state_dict": ...}`` wrapper is
    opened and a ``module.`` prefix on every key (a DataParallel save) removed."""
    if isinstance(content, dict) and isinstance(content.get("state_dict"), dict):
        content = content["state_dict"]
    if not isinstance(content, dict) or not content or not all(
            isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in content.items()):
        raise HRNetFLDCheckpointError(f"{source}: expected a state dict (name -> tensor) of the HRNet facial-landmark "
                                      "release")
    if all(key.startswith("module.") for key in content):
        content = {key[len("module."):]: value for key, value in content.items()}
    return content


def load_hrnet_fld(path: str | Path, map_location: str | torch.device = "cpu") -> HeatmapRegression:
    """A released HRNet facial-landmark file (HR18-WFLW.pth, HR18-300W.pth, HR18-COFW.pth) as a
    :class:`HeatmapRegression` in eval mode, loaded strictly.

    The number of landmarks (98, 68, 29) is read from the head's last conv. Raises
    :class:`HRNetFLDCheckpointError` naming the missing keys, the keys the model has no place for
    and the shape mismatches (release names); nothing is loaded unless everything fits.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"HRNet facial-landmark checkpoint not found: {path}")
    state = hrnet_fld_state_dict(read_weights_file(path, "HRNet facial-landmark checkpoint", map_location), str(path))
    last_conv = state.get("head.3.weight")
    if last_conv is None or last_conv.dim() != 4:
        found = "absent" if last_conv is None else f"of shape {tuple(last_conv.shape)}"
        raise HRNetFLDCheckpointError(f"{path}: key 'head.3.weight' (the heatmap head's last conv, (N, 270, 1, 1)) is "
                                      f"{found}; is this an HRNet facial-landmark release file?")
    model = HeatmapRegression(int(last_conv.shape[0]), backbone="hrnet_w18c")
    problems = strict_load_problems(state, model.backbone.state_dict())
    if problems:
        raise HRNetFLDCheckpointError(f"{path} does not fit the HRNetV2-W18 heatmap model ({model.num_points} "
                                      "points): " + "; ".join(problems))
    model.backbone.load_state_dict(state, strict=True)
    return model.to(map_location).eval()
