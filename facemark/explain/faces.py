"""The model to explain and the face crops it sees."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from facemark.data.transforms import CropBox, CropConvention, crop_matrix, image_to_tensor, transform_points, warp_image
from facemark.layouts import Layout

__all__ = ["ExplainedModel", "Faces", "load_explained_model", "faces_from_image", "faces_from_split", "model_kind", "nme_io",
           "cosine_similarity_matrix"]


@dataclass
class ExplainedModel:
    """A torch model (eval mode, CPU), the layout it predicts, its crop convention and a name."""

    model: nn.Module
    layout: Layout
    crop: CropConvention
    description: str
    path: Path


@dataclass
class Faces:
    """Face crops as the model sees them.

    ``crops``: (B, S, S, 3) uint8 RGB (for drawing and occluding); ``targets``: (B, N, 2) ground
    truth in normalised crop coordinates, or None for a face without annotation; ``names``: one
    per face; ``source``: what they are, for the page.
    """

    crops: np.ndarray
    targets: np.ndarray | None
    names: list[str]
    source: str

    def label(self, index: int) -> str:
        """A short title for face ``index``: its file name (identifiers can be long paths)."""
        name = Path(self.names[index].split("#")[0]).name
        return f"face {index}: {name[-22:]}"

    def tensors(self, crop: CropConvention, crops: np.ndarray | None = None) -> torch.Tensor:
        """The model input (B, 3, S, S) of ``crops`` (default: these faces' crops)."""
        crops = self.crops if crops is None else crops
        return torch.stack([image_to_tensor(image, crop.normalisation) for image in crops])


def model_kind(model: nn.Module) -> str:
    """``"slpt"`` or ``"sdfl"``, from the model class; anything else cannot be explained."""
    from facemark.models.sdfl import SDFLModel
    from facemark.models.slpt import SLPT

    if isinstance(model, SLPT):
        return "slpt"
    if isinstance(model, SDFLModel):
        return "sdfl"
    raise ValueError(f"facemark explain: a {type(model).__name__} model has no figures to explain "
                     "(SLPT and SDFL checkpoints, facemark's or the authors' SLPT files)")


def load_explained_model(path: str | Path) -> ExplainedModel:
    """A facemark checkpoint or an authors' SLPT file, on the CPU in eval mode (the Predictor's
    loader: the same recognition of file kinds and the same crop conventions)."""
    from facemark.inference.predictor import load_weights

    bundle = load_weights(path, device="cpu", backend="torch")
    if bundle.model is None:
        raise ValueError(f"{path}: facemark explain needs a torch checkpoint, not a {bundle.backend} file")
    return ExplainedModel(bundle.model.eval(), bundle.layout, bundle.crop, bundle.description, Path(path))


def faces_from_image(explained: ExplainedModel, image_path: str | Path, box: Sequence[float] | None = None,
                     detector: str = "auto") -> Faces:
    """The crop of one face of an image: the box given (the model's box source), else the first
    face the detector finds; cropped exactly as :class:`facemark.Predictor` crops it."""
    from facemark.data.records import read_image_rgb
    from facemark.inference.predictor import Predictor

    image = read_image_rgb(image_path)
    predictor = Predictor(explained.model, layout=explained.layout, crop_convention=explained.crop,
                          detector=None if box is not None else detector)
    found = predictor.predict(image, None if box is None else [list(box)])
    if not found:
        raise ValueError(f"{image_path}: no face found; give its box with --box X_MIN Y_MIN X_MAX Y_MAX")
    x_min, y_min, x_max, y_max = found[0].crop_box
    matrix = crop_matrix(CropBox((x_min + x_max) / 2, (y_min + y_max) / 2, x_max - x_min), explained.crop.size)
    crop = warp_image(image, matrix, explained.crop.size)
    return Faces(crop[None], None, [Path(image_path).name], f"image {image_path}")


def faces_from_split(explained: ExplainedModel, root: str | Path, dataset: str, split: str,
                     limit: int | None = None) -> Faces:
    """The crops and ground truth of a benchmark split (the first ``limit`` faces), cropped with
    the model's crop convention as evaluation does (no augmentation)."""
    from facemark.data import load_dataset
    from facemark.data.transforms import record_face_box

    records = load_dataset(dataset, root, split)
    if records.layout.num_points != explained.layout.num_points:
        raise ValueError(f"{explained.path} predicts {explained.layout.num_points} points but {dataset}/{split} "
                         f"has {records.layout.num_points}")
    chosen = list(records.records)[: limit if limit else None]
    if not chosen:
        raise ValueError(f"{dataset}/{split} under {root} holds no faces")
    size = explained.crop.size
    crops, targets = [], []
    for record in chosen:
        matrix = crop_matrix(record_face_box(record, explained.crop), size)
        crops.append(warp_image(record.load_image(), matrix, size))
        targets.append(transform_points(np.asarray(record.landmarks, dtype=np.float64), matrix) / size)
    return Faces(np.stack(crops), np.stack(targets), [r.identifier for r in chosen],
                 f"{dataset}/{split} under {root} ({len(chosen)} faces)")


def nme_io(predictions: np.ndarray, targets: np.ndarray, layout: Layout) -> np.ndarray:
    """Per-face NME_io: mean point error / ground-truth inter-ocular distance, (..., B) from
    (..., B, N, 2) predictions and (B, N, 2) targets. The crop is a similarity of the original
    image, so the ratio is the one of the original pixels."""
    first, second = layout.inter_ocular
    distance = np.linalg.norm(targets[:, first] - targets[:, second], axis=-1)
    return np.linalg.norm(predictions - targets, axis=-1).mean(axis=-1) / distance


def cosine_similarity_matrix(features: np.ndarray) -> np.ndarray:
    """(N, F) -> (N, N) cosine similarities (symmetric, unit diagonal for non-zero rows)."""
    features = np.asarray(features, dtype=np.float64)
    unit = features / np.maximum(np.linalg.norm(features, axis=-1, keepdims=True), 1e-12)
    similarity = unit @ np.swapaxes(unit, -1, -2)
    return np.clip((similarity + np.swapaxes(similarity, -1, -2)) / 2, -1.0, 1.0)
