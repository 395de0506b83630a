"""``model.pretrained``: starting a backbone from an ImageNet weight file, checked and reported.

The paper recipes name the file the authors start from (``configs/slpt_hrnet_*.yaml``: the
ImageNet HRNet-W18-C file ``hrnetv2_w18_imagenet_pretrained.pth``). facemark never downloads
weights: a missing file is a :class:`PretrainedWeightsError` that names it, links the official
download page and shows the override that trains from scratch (``model.pretrained=null``).

The file is matched to the backbone by tensor name, as the authors' code does (SLPT_Training
``backbone/HRnet.py:457-467``). Unlike that code, a partial load never passes silently: every
tensor the backbone's ImageNet network should receive from such a file must be matched with its
shape, otherwise the run stops with an error listing what did not match (a ResNet file given to
an HRNet recipe, a truncated file, another width). The parts of the network that an ImageNet
classifier does not have (the HRNet landmark ``head``) keep their own initialisation. The
report -- tensors matched, missing, unused, shape mismatches -- goes to the log and to
``pretrained_report.json`` in the run folder.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

__all__ = ["PretrainedWeightsError", "PretrainedReport", "PRETRAINED_SOURCES", "check_pretrained_file",
           "load_pretrained_backbone"]

# Where each backbone family's ImageNet file comes from (shown when the file is missing).
PRETRAINED_SOURCES = {
    "hrnet": ("the ImageNet HRNet-W18-C file hrnetv2_w18_imagenet_pretrained.pth: row 'HRNet-W18-C' of the "
              "ImageNet pretrained models table in https://github.com/HRNet/HRNet-Image-Classification"
              "#imagenet-pretrained-models"),
    "resnet": ("torchvision's ImageNet ResNet file (resnet34: resnet34-b627a593.pth, "
               "https://download.pytorch.org/models/resnet34-b627a593.pth, listed at "
               "https://pytorch.org/vision/stable/models.html)"),
}
# Tensors of the backbone network that no ImageNet classification file holds (they keep their
# own initialisation): the HRNet landmark head (shared/facts/slpt.md, "Backbone").
_NOT_IN_IMAGENET_FILES = {"hrnet": ("head.",), "resnet": ()}


class PretrainedWeightsError(ValueError):
    """``model.pretrained`` is missing or does not fit the backbone; the message says what to do."""


@dataclass
class PretrainedReport:
    """What a pretrained file gave the model. Key names are those of the file (prefixes removed)."""

    file: str
    loaded_into: str  # the module path inside the model, e.g. "backbone"
    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # network tensors the file lacks (keep their init)
    unused: list[str] = field(default_factory=list)  # file tensors the network has no place for
    shape_mismatch: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"model.pretrained: {len(self.matched)} tensors of {self.file} loaded into {self.loaded_into} "
                f"({len(self.missing)} missing, keeping their initialisation"
                f"{': ' + _examples(self.missing) if self.missing else ''}; {len(self.unused)} unused; "
                f"{len(self.shape_mismatch)} shape mismatches)")

    def to_dict(self) -> dict:
        return {
            "format": "facemark.pretrained_report", "version": 1, "file": self.file, "loaded_into": self.loaded_into,
            "counts": {name: len(getattr(self, name)) for name in ("matched", "missing", "unused", "shape_mismatch")},
            "matched": self.matched, "missing": self.missing, "unused": self.unused,
            "shape_mismatch": self.shape_mismatch,
        }

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path


def _examples(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _family(backbone: str) -> str | None:
    return next((name for name in PRETRAINED_SOURCES if backbone.startswith(name)), None)


def check_pretrained_file(path: str | Path, backbone: str) -> None:
    """Raise :class:`PretrainedWeightsError` if ``path`` (``model.pretrained``) is not a file."""
    path = Path(path)
    if path.is_file():
        return
    source = PRETRAINED_SOURCES.get(_family(backbone) or "", "an ImageNet checkpoint of this backbone")
    raise PretrainedWeightsError(
        f"config key 'model.pretrained': the file {path} does not exist (resolved from the current folder: "
        f"{path.absolute()}). This recipe starts the {backbone} backbone from {source}. facemark never downloads "
        f"weights: download it, then put it at {path} or pass model.pretrained=PATH. "
        "To train from scratch instead (random initialisation; not the authors' recipe): model.pretrained=null")


def load_pretrained_backbone(model: nn.Module, path: str | Path) -> PretrainedReport:
    """Load an ImageNet file into the HRNet or ResNet inside ``model.backbone`` (possibly wrapped,
    e.g. SLPT's ResNet34 fusion or SDFL's last-feature-map wrapper), by tensor name.

    Raises :class:`PretrainedWeightsError` when the file does not hold every tensor of that
    network that an ImageNet file of it has (see the module docstring); the model must then be
    discarded (the matching tensors may have been copied already).
    """
    from facemark.models.hrnet import HRNet
    from facemark.models.resnet import ResNet
    from facemark.models.weights import load_matching_weights

    backbone = getattr(model, "backbone", None)
    if backbone is None:
        raise PretrainedWeightsError(f"model.pretrained={path}: this model has no .backbone to load it into")
    for name, module in backbone.named_modules():
        family = "hrnet" if isinstance(module, HRNet) else "resnet" if isinstance(module, ResNet) else None
        if family is None:
            continue
        where = f"backbone.{name}" if name else "backbone"
        result = load_matching_weights(module, path, f"ImageNet {type(module).__name__}")
        report = PretrainedReport(str(path), where, result["matched"], result["missing"], result["unexpected"],
                                  result["shape_mismatch"])
        kept = _NOT_IN_IMAGENET_FILES[family]
        not_loaded = [key for key in report.missing if not key.startswith(kept)] if kept else list(report.missing)
        if not_loaded or report.shape_mismatch:
            raise PretrainedWeightsError(
                f"config key 'model.pretrained': {path} does not fit the {type(module).__name__} of this recipe "
                f"({where}); a partial load is refused. {len(report.matched)} tensors matched; "
                f"{len(not_loaded)} tensors of the network are not in the file ({_examples(not_loaded)}); "
                f"{len(report.shape_mismatch)} have another shape in the file ({_examples(report.shape_mismatch)}); "
                f"{len(report.unused)} file tensors have no place in the network ({_examples(report.unused)}). "
                f"Expected {PRETRAINED_SOURCES[family]}; model.pretrained=null trains from scratch.")
        return report
    raise PretrainedWeightsError(f"model.pretrained={path}: no HRNet or ResNet inside this model's backbone "
                                 f"({type(backbone).__name__}); ImageNet loading is supported for those two")
