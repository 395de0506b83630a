"""The engine's data path: records -> face crops -> tensors, for training, validation and evaluation.

One pipeline for every use: :class:`CropDataset` crops each record with the run's
:class:`~facemark.data.transforms.CropConvention` through
:func:`~facemark.data.transforms.prepare_sample` (augmented for training, plain for evaluation) and
returns the normalised image (the crop convention's input normalisation), the target in normalised crop coordinates and the 2x3
original -> crop matrix that maps predictions back to the original image.

Reproducibility: the augmentation of sample ``i`` in epoch ``e`` is drawn from
``np.random.default_rng([seed, e, i])``. It depends neither on the worker process that loads it
nor on how many workers there are, so a resumed run sees exactly the same crops.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from facemark.data.records import FaceRecord, LandmarkDataset
from facemark.data.transforms import (
    AugmentationConfig,
    CropConvention,
    crop_matrix,
    image_to_tensor,
    normalise_landmarks,
    prepare_sample,
    record_face_box,
    transform_points,
)
from facemark.engine.methods import TrainingShapes
from facemark.layouts import Layout

__all__ = ["CropDataset", "carve_validation", "training_shapes", "worker_init"]


class CropDataset(torch.utils.data.Dataset):
    """Face crops of ``records`` as model inputs.

    Each item is a dict: ``image`` (3, S, S) float32 (normalised as ``crop.normalisation`` says), ``target`` (N, 2)
    float32 in normalised crop coordinates (in the crop's point order: flipped samples are
    relabelled with the layout's flip permutation), ``matrix`` (2, 3) float64 original -> crop,
    ``index`` the position in ``records``.

    ``augmentation=None`` is the evaluation path (crop only). Call :meth:`set_epoch` before each
    training epoch so every epoch draws new augmentations.
    """

    def __init__(self, records: Sequence[FaceRecord], layout: Layout, crop: CropConvention,
                 augmentation: AugmentationConfig | None = None, seed: int = 0):
        self.records = list(records)
        self.layout = layout
        self.crop = crop
        self.augmentation = augmentation
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        rng = None
        if self.augmentation is not None:
            rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        sample = prepare_sample(
            record.load_image(), record.landmarks, self.layout, record_face_box(record, self.crop),
            size=self.crop.size, augmentation=self.augmentation, rng=rng,
        )
        target = normalise_landmarks(sample.landmarks, self.crop.size)
        return {
            "image": image_to_tensor(sample.image, self.crop.normalisation),
            "target": torch.from_numpy(target.astype(np.float32)),
            "matrix": torch.from_numpy(sample.matrix),
            "index": int(index),
        }


def _image_key(record: FaceRecord) -> str:
    """What identifies a record's image: its file, or (images stored inside an annotation file,
    COFW) its identifier, which names one image."""
    return str(record.image_path) if record.image_path is not None else record.identifier


def carve_validation(dataset: LandmarkDataset, fraction: float, seed: int) -> tuple[LandmarkDataset, LandmarkDataset]:
    """Split ``dataset`` into (train, validation) with ``fraction`` of its faces (at least 1) held out.

    The split is by image: every face of one image (several faces, or a repeated annotation
    line) lands on the same side, so nothing of the validation images is trained on. Images are
    taken in a seeded random order until ``round(fraction * faces)`` faces are held out, so the
    same seed always holds out the same images (with one face per image: the same faces as a
    split by face). Both parts keep the original record order.
    """
    count = len(dataset)
    num_val = max(1, int(round(fraction * count)))
    records = dataset.records
    groups: dict[str, list[int]] = {}
    for index, record in enumerate(records):
        groups.setdefault(_image_key(record), []).append(index)
    images = list(groups.values())
    keep = np.ones(count, dtype=bool)
    held_out = 0
    for group in np.random.default_rng(seed).permutation(len(images)):
        if held_out >= num_val:
            break
        keep[images[group]] = False
        held_out += len(images[group])
    if keep.sum() == 0 or num_val >= count:
        raise ValueError(f"cannot hold out {num_val} of {count} faces ({len(images)} images) of {dataset.name}/{dataset.split} "
                         "for validation (data.val_fraction too large or the split too small)")

    def part(mask: np.ndarray, suffix: str) -> LandmarkDataset:
        return LandmarkDataset(dataset.name, f"{dataset.split}{suffix}", dataset.root, dataset.layout,
                               [records[i] for i in np.flatnonzero(mask)])

    return part(keep, "[train]"), part(~keep, "[val]")


def training_shapes(dataset: LandmarkDataset, crop: CropConvention) -> TrainingShapes:
    """The landmarks of ``dataset`` in original pixels and in its (un-augmented) normalised crops.

    No image is read: the crop box comes from the landmarks or the dataset's rectangle.
    """
    if crop.box_source == "detector":
        raise ValueError("training needs data.crop.box_source 'landmarks' or 'dataset' (detector boxes exist at inference only)")
    original = dataset.landmarks()
    crop_points = np.empty_like(original)
    for i, record in enumerate(dataset.records):
        matrix = crop_matrix(record_face_box(record, crop), crop.size)
        crop_points[i] = normalise_landmarks(transform_points(record.landmarks, matrix), crop.size)
    return TrainingShapes(original=original, crop=crop_points)


def worker_init(worker_id: int) -> None:
    """DataLoader worker set-up: one thread each (workers already run in parallel)."""
    import cv2

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
