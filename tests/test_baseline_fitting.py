"""The heatmap and DETR-style baselines can learn: each small model, trained on a few SynthFace
crops, fits them far better than their mean shape (the baseline every model must beat), and its
predictions follow each face instead of being one shape for all.

A few faces and a few dozen Adam steps, so each test takes seconds on a 2-core CPU.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine_fixtures import one_thread  # noqa: F401 (autouse fixture)
from facemark.data import load_dataset
from facemark.data.synthface import generate_dataset
from facemark.data.transforms import CropConvention, normalise_crops
from facemark.engine.config import load_config
from facemark.engine.data import CropDataset
from facemark.engine.methods import METHODS
from facemark.layouts import get_layout
from facemark.models.detr import build_detr
from facemark.models.heatmap import HeatmapRegression, heatmap_loss
from facemark.models.slpt import slpt_loss

NUM_FACES = 6
CROP = 64


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (F, 3, 64, 64), targets (F, 98, 2)) of SynthFace training faces in their crops."""
    root = tmp_path_factory.mktemp("synthface")
    generate_dataset(root, NUM_FACES, 0, seed=0, size=96, progress=False)
    dataset = load_dataset("wflw", root, "train")
    crops = CropDataset(dataset.records, dataset.layout, CropConvention(box_source="landmarks", enlarge=1.25, size=CROP))
    items = [crops[index] for index in range(len(crops))]
    images = normalise_crops(torch.stack([item["image"] for item in items]), crops.crop.normalisation)
    return images, torch.stack([item["target"] for item in items])


def inter_ocular_nme(predictions: torch.Tensor, targets: torch.Tensor) -> float:
    left, right = get_layout("wflw98").inter_ocular
    distance = (targets[:, left] - targets[:, right]).norm(dim=-1)
    return float(((predictions - targets).norm(dim=-1).mean(dim=-1) / distance).mean())


def fit(model: torch.nn.Module, loss_function, images: torch.Tensor, targets: torch.Tensor, steps: int,
        lr: float) -> torch.Tensor:
    """Full-batch Adam steps; returns the predictions of the trained model (eval mode)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = loss_function(model(images), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        return model(images).landmarks


def assert_fitted(predictions: torch.Tensor, targets: torch.Tensor) -> None:
    mean_shape = targets.mean(dim=0, keepdim=True).expand_as(targets)
    mean_shape_nme = inter_ocular_nme(mean_shape, targets)
    assert inter_ocular_nme(predictions, targets) < 0.5 * mean_shape_nme
    # Each face gets its own shape: the spread over faces is of the ground truth's size.
    assert float(predictions.std(dim=0).mean()) > 0.5 * float(targets.std(dim=0).mean())


def test_the_heatmap_model_fits_a_few_faces(faces):
    images, targets = faces
    torch.manual_seed(0)
    # The CPU preset's backbone on 16 x 16 maps.
    model = HeatmapRegression(98, backbone="mobilenet_v2_050")
    predictions = fit(model, lambda output, target: heatmap_loss(output, target, sigma=2.0), images, targets,
                      steps=100, lr=3e-3)
    assert_fitted(predictions, targets)


def test_the_detr_model_fits_a_few_faces(faces):
    images, targets = faces
    torch.manual_seed(0)
    layout = get_layout("wflw98")
    mean_face = targets.mean(dim=0).clamp(1e-3, 1 - 1e-3)
    model = build_detr(98, backbone="mobilenet_v2_050", patch_size=1, num_layers=2, embed_dim=64, num_heads=4,
                       feedforward_dim=128, dropout=0.0, initial_content="queries", reference=mean_face)
    predictions = fit(model, lambda output, target: slpt_loss(output, target, layout), images, targets,
                      steps=150, lr=1e-3)
    assert_fitted(predictions, targets)


def test_the_cpu_presets_build_the_models_their_docs_describe():
    configs = Path(__file__).resolve().parent.parent / "configs"
    layout = get_layout("wflw98")
    mean_face = {"mean_face": np.full((98, 2), 0.5)}
    heatmap = load_config(configs / "synthface_heatmap_cpu.yaml")
    model = METHODS["heatmap"].build_model(heatmap.model.backbone, layout, {}, heatmap.data.crop.size).eval()
    with torch.no_grad():
        maps = model(torch.zeros(1, 3, heatmap.data.crop.size, heatmap.data.crop.size)).heatmaps
    assert maps.shape[-2:] == (32, 32)  # 32 x 32 maps, not 16 x 16
    detr = load_config(configs / "synthface_detr_cpu.yaml")
    model = METHODS["detr"].build_model(detr.model.backbone, layout, mean_face, detr.data.crop.size, **detr.model.options)
    assert model.attention_prior == 0.1 and model.token_grid(torch.zeros(1, 3, 128, 128)) == (16, 16)
