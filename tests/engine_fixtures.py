"""Shared fixtures of the engine tests: a tiny WFLW-format dataset and a tiny model obeying the
facemark model contract, with its method adapter (the engine trains it like SLPT or SDFL)."""
from __future__ import annotations

import ast
import os
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from facemark.data import wflw_annotation_path, write_wflw_annotations
from facemark.engine.config import load_config
from facemark.engine.methods import Method
from facemark.layouts import get_layout


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread in each test of a module that imports this fixture: bit-exact comparisons
    between runs need the same thread count everywhere, and tests share a 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_wflw_fixture(root: Path, num_train: int = 6, num_test: int = 3, size: int = 64, seed: int = 0) -> Path:
    """A tiny WFLW release under ``root``: synthetic ``size`` x ``size`` images with the 98 points
    drawn as bright dots (no third-party images)."""
    rng = np.random.default_rng(seed)
    layout = get_layout("wflw98")
    angles = np.linspace(0, 2 * np.pi, layout.num_points, endpoint=False)
    # A face-like ring of points; the eye corners (60, 72) must differ for the inter-ocular distance.
    unit_shape = np.stack([np.cos(angles), np.sin(angles)], axis=1) * np.linspace(0.5, 1.0, layout.num_points)[:, None]
    for split, count in (("train", num_train), ("test", num_test)):
        rows = []
        for index in range(count):
            centre = rng.uniform(0.4, 0.6, size=2) * size
            radius = rng.uniform(0.2, 0.3) * size
            landmarks = centre + radius * unit_shape + rng.normal(0, 0.5, size=unit_shape.shape)
            image = (rng.uniform(0, 40, size=(size, size, 3))).astype(np.uint8)
            for x, y in np.round(landmarks).astype(int):
                cv2.circle(image, (int(x), int(y)), 1, (255, 255, 255), -1)
            name = f"0--Fixture/{split}_{index}.png"
            path = root / "WFLW_images" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), image[:, :, ::-1])
            low, high = landmarks.min(axis=0), landmarks.max(axis=0)
            rect = np.round([low[0], low[1], high[0], high[1]]).astype(int)
            flags = tuple(int(v) for v in rng.integers(0, 2, size=6))
            rows.append((landmarks, rect, flags, name))
        write_wflw_annotations(wflw_annotation_path(root, split), rows)
    return root


@dataclass
class TinyOutput:
    landmarks: torch.Tensor


class TinyRegressor(nn.Module):
    """Two strided convs + BN + dropout + a linear offset from the mean face (normalised crop units)."""

    def __init__(self, num_points: int, mean_face: np.ndarray, width: int = 8, dropout: float = 0.1):
        super().__init__()
        self.register_buffer("mean_face", torch.as_tensor(np.asarray(mean_face), dtype=torch.float32))
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=4, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=4, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
        )
        self.head = nn.Linear(2 * width, num_points * 2)
        self.num_points = num_points

    def forward(self, images: torch.Tensor) -> TinyOutput:
        offsets = self.head(self.features(images)).view(-1, self.num_points, 2)
        return TinyOutput(self.mean_face + 0.1 * offsets)


def _tiny_statistics(shapes, layout, **_options) -> dict:
    return {"mean_face": shapes.crop.mean(axis=0)}


def _tiny_model(backbone, layout, statistics, image_size, *, width: int = 8, dropout: float = 0.1) -> nn.Module:
    return TinyRegressor(layout.num_points, statistics["mean_face"], width=width, dropout=dropout)


def _tiny_loss(layout, statistics, image_size, *, scale: float = 1.0, nan_after_steps: int | None = None,
               sleep_seconds: float = 0.0):
    """Mean point error; ``nan_after_steps`` makes it NaN from that call on (divergence tests),
    ``sleep_seconds`` slows each step down (kill-between-checkpoints tests)."""
    calls = [0]

    def loss(output, target):
        calls[0] += 1
        if sleep_seconds:
            time.sleep(sleep_seconds)
        value = scale * (output.landmarks - target).norm(dim=-1).mean()
        if nan_after_steps is not None and calls[0] > nan_after_steps:
            value = value * float("nan")
        return value

    return loss


TINY_METHODS = {"tiny": Method(_tiny_statistics, _tiny_model, _tiny_loss)}


def tiny_config(root: Path, output_dir: Path, *overrides: str):
    """A CPU config of the tiny method on the fixture: 64 px crops, batch 2, 2 epochs, no workers."""
    return load_config(None, [
        "data.dataset=wflw", f"data.root={root}", "data.val_fraction=0.34", "data.workers=0",
        "data.crop.size=64", "model.method=tiny", "model.backbone=none", "optim.lr=0.01",
        "optim.milestones=[1]", "optim.epochs=2", "optim.batch_size=2", "augmentation.preset=slpt",
        "runtime.device=cpu", f"runtime.output_dir={output_dir}", "runtime.progress=false",
        "runtime.tensorboard=false", "runtime.log_interval=1", "runtime.deterministic=true", *overrides,
    ])


def distributed_worker(rank: int, world_size: int, port: int, root: str, output_dir: str, result_dir: str,
                       overrides: tuple[str, ...] = (), resume: bool = False) -> None:
    """One process of a ``world_size``-process gloo run (``torch.multiprocessing.spawn`` target):
    trains the tiny config (plus ``overrides``; ``resume`` continues ``output_dir``'s run) and
    saves this rank's final weights as ``rank<rank>.pt``."""
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    from facemark.engine.train import train

    config = tiny_config(Path(root), Path(output_dir), "optim.batch_size=4", "data.val_fraction=0.2", *overrides)
    result = train(config, resume=resume, methods=TINY_METHODS)
    torch.save(result.model.state_dict(), Path(result_dir) / f"rank{rank}.pt")


# -- pretrained files in the real key layout ------------------------------------------------------
# Key and shape of every tensor of the ImageNet HRNet-W18-C file (hrnetv2_w18_imagenet_pretrained.pth),
# copied from shared/facts/hrnet_w18_imagenet_state_dict.txt so that CI needs nothing outside the repo.
HRNET_IMAGENET_KEYS = Path(__file__).resolve().parent / "data" / "hrnet_w18_imagenet_state_dict.txt"


def read_key_list(path: Path) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, shape = line.split("\t")
            shapes[key] = tuple(ast.literal_eval(shape))
    return shapes


def write_state_dict_like(path: Path, shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """A state dict with these keys and shapes; tensor k holds one value (see the module docstring):
    small weights, BatchNorm scale and variance near 1, so the network stays well-behaved."""
    state = {}
    for k, (key, shape) in enumerate(shapes.items()):
        if key.endswith("num_batches_tracked"):
            value = torch.tensor(k, dtype=torch.int64)
        else:
            near_one = key.endswith("running_var") or (key.endswith(".weight") and len(shape) == 1)
            value = torch.tensor((1.0 if near_one else 0.0) + 1e-3 * (1 + k / len(shapes)), dtype=torch.float32)
        state[key] = value.expand(shape)
    torch.save(state, path)
    return state
