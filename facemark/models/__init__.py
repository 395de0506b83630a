"""Landmark models: SLPT (``slpt.py``), SDFL and the FC baseline (``sdfl.py``), the heatmap-regression
baseline and the HRNet facial-landmark release's checkpoints (``heatmap.py``), their backbones
(``hrnet.py``, ``resnet.py``, ``mobilenet.py``, ``vgg.py``) and losses (``losses.py``).

Every model maps a ``(B, 3, S, S)`` normalised crop (``CropConvention.normalisation``: ImageNet RGB
by default) to an output whose ``.landmarks`` is ``(B, N, 2)`` in normalised crop coordinates
(crop pixels / S).
"""
from facemark.models.heatmap import HeatmapOutput, HeatmapRegression, heatmap_loss, load_hrnet_fld
from facemark.models.official_slpt import convert_official_state_dict, load_official_slpt, to_official_state_dict
from facemark.models.sdfl import build_neighbourhood, sdfl_fc_model, sdfl_graph_model, sdfl_loss
from facemark.models.slpt import SLPT, SLPTConfig, SLPTOutput, build_slpt, slpt_loss

__all__ = [
    "SLPT",
    "SLPTConfig",
    "SLPTOutput",
    "build_slpt",
    "slpt_loss",
    "load_official_slpt",
    "convert_official_state_dict",
    "to_official_state_dict",
    "sdfl_graph_model",
    "sdfl_fc_model",
    "sdfl_loss",
    "build_neighbourhood",
    "HeatmapRegression",
    "HeatmapOutput",
    "heatmap_loss",
    "load_hrnet_fld",
]
