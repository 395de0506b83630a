"""The engine's data path: records -> face crops -> tensors, for training, validation and evaluation.

One pipeline for every use: :class:`CropDataset` crops each record with the run's
:class:`~facemark.data.transforms.CropConvention` through
:func:`~facemark.data.transforms.prepare_sample` (augmented for training, plain for evaluation) and
returns the crop as uint8 RGB, the target in normalised crop coordinates and the 2x3
original -> crop matrix that maps predictions back to the original image. :func:`model_input`
moves a batch of crops to the model's device and normalises it there (the crop convention's
input normalisation): a quarter of the bytes of float32 crops cross from the loader to the device.

Reproducibility: the augmentation of sample ``i`` in epoch ``e`` is drawn from
``np.random.default_rng([seed, e, i])``. It depends neither on the worker process that loads it
nor on how many workers there are, so a resumed run sees exactly the same crops. The epoch travels
with each index (:class:`EpochSampler` hands out ``(epoch, index)``), so worker processes that
live for the whole run (``persistent_workers``) draw each epoch's augmentations too.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Sequence

import numpy as np
import torch

from facemark.data.records import FaceRecord, LandmarkDataset
from facemark.data.transforms import (
    AugmentationConfig,
    CropConvention,
    crop_matrix,
    crop_to_tensor,
    normalise_crops,
    normalise_landmarks,
    prepare_sample,
    record_face_box,
    transform_points,
)
from facemark.engine.methods import TrainingShapes
from facemark.layouts import Layout

__all__ = ["CropDataset", "EpochSampler", "model_input", "carve_validation", "split_by_image", "config_splits",
           "write_splits_file", "check_splits_file", "SPLITS_FILE", "listed_split", "training_shapes", "worker_init",
           "fork_safely", "WorkerLoader"]

# The file in a run folder that lists the faces of each split (identifiers), so that evaluation
# of the run's checkpoints can check it scores the same test faces.
SPLITS_FILE = "splits.json"


class CropDataset(torch.utils.data.Dataset):
    """Face crops of ``records``, for :func:`model_input`.

    Each item is a dict: ``image`` (3, S, S) uint8 RGB (the crop, not yet normalised),
    ``target`` (N, 2) float32 in normalised crop coordinates (in the crop's point order: flipped
    samples are relabelled with the layout's flip permutation), ``matrix`` (2, 3) float64
    original -> crop, ``index`` the position in ``records``.

    ``augmentation=None`` is the evaluation path (crop only). Items are looked up by ``index``
    (augmented as in the epoch of the last :meth:`set_epoch`) or by ``(epoch, index)``, what
    :class:`EpochSampler` hands out: the epoch then comes with the index, also into worker
    processes that hold an old copy of the dataset.
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

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, index = (int(key[0]), int(key[1])) if isinstance(key, tuple) else (self.epoch, int(key))
        record = self.records[index]
        rng = None
        if self.augmentation is not None:
            rng = np.random.default_rng([self.seed, epoch, index])
        sample = prepare_sample(
            record.load_image(), record.landmarks, self.layout, record_face_box(record, self.crop),
            size=self.crop.size, augmentation=self.augmentation, rng=rng,
        )
        target = normalise_landmarks(sample.landmarks, self.crop.size)
        return {
            "image": crop_to_tensor(sample.image),
            "target": torch.from_numpy(target.astype(np.float32)),
            "matrix": torch.from_numpy(sample.matrix),
            "index": index,
        }


class EpochSampler(torch.utils.data.Sampler):
    """``(epoch, index)`` for each index of ``sampler`` (e.g. a ``DistributedSampler``), the epoch
    being the one of the last :meth:`set_epoch` (which is passed on to ``sampler``).

    The sampler runs in the main process each time a loader's iteration starts, also when its
    workers are persistent; the dataset copies in the workers do not see ``set_epoch`` calls, so
    the epoch reaches them with the indices."""

    def __init__(self, sampler: torch.utils.data.Sampler) -> None:
        self.sampler = sampler
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        epoch = self.epoch
        return ((epoch, index) for index in self.sampler)


def model_input(images: torch.Tensor, crop: CropConvention, device: torch.device | str,
                memory_format: torch.memory_format = torch.preserve_format) -> torch.Tensor:
    """A loader's ``(B, 3, S, S)`` uint8 crops as the model's float32 input on ``device``: copied as
    uint8 (in ``memory_format``), then normalised there as ``crop.normalisation`` says
    (:func:`~facemark.data.transforms.normalise_crops`; the same numbers as normalising on the CPU)."""
    images = images.to(device, non_blocking=True, memory_format=memory_format)
    return normalise_crops(images, crop.normalisation)


def _image_key(record: FaceRecord) -> str:
    """What identifies a record's image: its file, or (images stored inside an annotation file,
    COFW) its identifier, which names one image."""
    return str(record.image_path) if record.image_path is not None else record.identifier


def carve_validation(dataset: LandmarkDataset, fraction: float, seed: int) -> tuple[LandmarkDataset, LandmarkDataset]:
    """Split ``dataset`` into (train, validation): :func:`split_by_image` with the parts named
    ``<split>[train]`` and ``<split>[val]``."""
    return split_by_image(dataset, fraction, seed, ("train", "val"))


def split_by_image(dataset: LandmarkDataset, fraction: float, seed: int,
                   names: tuple[str, str]) -> tuple[LandmarkDataset, LandmarkDataset]:
    """Split ``dataset`` into (kept, held out) with ``fraction`` of its faces (at least 1) held out;
    the parts' splits are ``<split>[<names[0]>]`` and ``<split>[<names[1]>]``.

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
                         f"for {names[1]} (data.{names[1]}_fraction too large or the split too small)")

    def part(mask: np.ndarray, suffix: str) -> LandmarkDataset:
        return LandmarkDataset(dataset.name, f"{dataset.split}[{suffix}]", dataset.root, dataset.layout,
                               [records[i] for i in np.flatnonzero(mask)])

    return part(keep, names[0]), part(~keep, names[1])


def config_splits(data, layout=None, test: bool = True) -> tuple[LandmarkDataset, LandmarkDataset | None]:
    """The training and (with ``test``) test faces a run's data config names.

    ``data`` is the config's ``data`` section (a :class:`~facemark.engine.config.DataConfig` or its
    dict, e.g. from a checkpoint); ``layout`` replaces ``data.layout`` (a checkpoint's layout).
    With ``data.test_fraction > 0`` both come from ``data.train_split``, split by image with
    ``data.split_seed``: the test part is ``<train_split>[test]``.
    """
    from facemark.data import OWN_FORMATS, load_dataset
    from facemark.engine.config import ConfigError, DataConfig, config_from_dict

    if not isinstance(data, DataConfig):
        data = config_from_dict({"data": dict(data)}, " (the checkpoint's data config)").data
    layout = data.layout if layout is None else layout
    if data.test_fraction > 0:
        if data.dataset.lower() not in OWN_FORMATS:
            raise ConfigError(f"config key 'data.test_fraction' applies to own data ({', '.join(OWN_FORMATS)}); "
                              f"{data.dataset} has its own test split (data.test_split)")
        whole = load_dataset(data.dataset, data.root, data.train_split, layout=layout)
        return split_by_image(whole, data.test_fraction, data.split_seed, ("train", "test"))
    train = load_dataset(data.dataset, data.root, data.train_split, layout=layout)
    return train, load_dataset(data.dataset, data.root, data.test_split, layout=layout) if test else None


def write_splits_file(path, parts: dict[str, LandmarkDataset | None], data) -> None:
    """List the identifiers of each split's faces in ``path`` (JSON), with the data config that made them."""
    import json
    from pathlib import Path

    content = {
        "format": "facemark.splits", "version": 1,
        "dataset": data.dataset, "root": data.root, "layout": data.layout, "train_split": data.train_split,
        "test_split": f"{data.train_split}[test]" if data.test_fraction > 0 else data.test_split,
        "test_fraction": data.test_fraction, "split_seed": data.split_seed, "val_fraction": data.val_fraction,
        "counts": {name: None if part is None else len(part) for name, part in parts.items()},
        "faces": {name: None if part is None else [record.identifier for record in part] for name, part in parts.items()},
    }
    Path(path).write_text(json.dumps(content, indent=1) + "\n", encoding="utf-8")


def check_splits_file(path, split: str, dataset: LandmarkDataset) -> None:
    """``dataset`` must hold exactly the faces ``path`` (a run's splits.json) lists for ``split``:
    otherwise the data changed since training and the scores would not be the run's."""
    import json
    from pathlib import Path

    listed = json.loads(Path(path).read_text(encoding="utf-8-sig")).get("faces", {}).get(split)
    if listed is None:
        return
    given = [record.identifier for record in dataset]
    if given != listed:
        missing, extra = sorted(set(listed) - set(given)), sorted(set(given) - set(listed))
        raise ValueError(f"{path} lists {len(listed)} {split} faces of the run but the data now gives {len(given)} "
                         f"({len(missing)} listed faces missing, e.g. {missing[:3]}; {len(extra)} new, e.g. {extra[:3]}"
                         f"{'; same faces in another order' if not missing and not extra else ''}): the data changed "
                         "since training; restore it or pass --split to evaluate other faces")


def listed_split(path, dataset: str, root, split: str, layout) -> LandmarkDataset:
    """The faces of a held-out part of a run (``split`` such as ``train.json[test]``, carved by
    ``data.test_fraction`` or ``data.val_fraction``), read from its file and taken in the order
    ``path`` (the run's splits.json) lists them. The part is named by the last bracket: ``[test]``
    -> the listed test faces, ``[val]`` -> the selection faces, ``[train]`` -> the training faces."""
    import json
    from pathlib import Path

    from facemark.data import load_dataset

    base, part = split.split("[", 1)[0], split.rsplit("[", 1)[1].rstrip("]")
    content = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    if content.get("dataset") != dataset or content.get("train_split") != base:
        raise ValueError(f"{path} is the split file of a run on {content.get('dataset')} "
                         f"{content.get('train_split')!r}, not of {dataset} {base!r} ({split} is a part of that file)")
    listed = content.get("faces", {}).get(part)
    if listed is None:
        raise ValueError(f"{path} lists no {part!r} faces (its parts: "
                         f"{sorted(k for k, v in content.get('faces', {}).items() if v is not None)})")
    whole = load_dataset(dataset, root, base, layout=layout)
    by_identifier = {record.identifier: record for record in whole}
    missing = [identifier for identifier in listed if identifier not in by_identifier]
    if missing:
        raise ValueError(f"{path} lists {len(listed)} {part} faces of {base!r}, {len(missing)} of which {dataset} "
                         f"{Path(root) / base} no longer holds, e.g. {missing[:3]}: the data changed since training")
    return LandmarkDataset(whole.name, split, whole.root, whole.layout, [by_identifier[i] for i in listed])


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
    """Set-up of a loader worker: one torch thread (the workers already run in parallel).

    OpenCV is not touched here: :class:`WorkerLoader` forks the workers with OpenCV's threads
    off (see :func:`fork_safely`), so they run OpenCV on their own thread, and calling
    ``cv2.setNumThreads`` in a worker would rebuild an inherited pool and hang.
    """
    torch.set_num_threads(1)


@contextmanager
def fork_safely():
    """For the block, processes forked from this one never touch what they inherit but cannot
    use: OpenCV's thread pool and objects awaiting garbage collection. Both are restored after.

    A forked process has a copy of the parent's memory but none of its threads:
    - OpenCV runs without its pool (``cv2.setNumThreads(0)``) during the block, so a child runs
      OpenCV on its own thread. A child that used or rebuilt the inherited pool hung for good
      (in ``pthread_cond_destroy``; tests/test_train.py forks after the pool ran).
    - Everything that exists is frozen (``gc.freeze``) while the children are forked and unfrozen
      in this process after, so a child's garbage collector never frees an inherited object,
      such as an ONNX Runtime ``InferenceSession`` left unreachable here but not collected yet: freeing it
      in the child waits forever for its thread pool (``pthread_cond_destroy``; seen at the
      very start of a worker, when torch's worker loop seeds its generators, before any
      ``worker_init_fn``; tests/test_batch_predict.py). This process collects it as usual.
    """
    import gc

    import cv2

    threads = cv2.getNumThreads()
    frozen_before = gc.get_freeze_count() > 0  # someone else froze objects: leave them so
    cv2.setNumThreads(0)
    gc.freeze()
    try:
        yield
    finally:
        if not frozen_before:
            gc.unfreeze()
        cv2.setNumThreads(threads)


class WorkerLoader(torch.utils.data.DataLoader):
    """A torch ``DataLoader`` whose worker processes are forked safely (:func:`fork_safely`),
    with :func:`worker_init` as their set-up unless another ``worker_init_fn`` is given. Every
    loader of facemark that may have workers is one."""

    def __init__(self, dataset, **options) -> None:
        options.setdefault("worker_init_fn", worker_init)
        super().__init__(dataset, **options)

    def __iter__(self):
        if self.num_workers == 0:
            return super().__iter__()
        # The workers are forked here: when iteration starts (persistent workers: the first time).
        with fork_safely():
            return super().__iter__()
