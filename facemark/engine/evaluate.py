"""Evaluation: run a checkpoint on a benchmark split, save its predictions, score them.

The checkpoint is a facemark one, or a released file of another project that facemark loads
strictly: the SLPT authors' (``WFLW_6_layer.pth``...) or the HRNet facial-landmark release's
(``HR18-WFLW.pth``...), each evaluated with that release's crop convention.

``evaluate`` crops every face with the crop convention stored in the checkpoint, runs the model,
maps the predictions back to the ORIGINAL images through the exact inverse of the crop affine
(the protocol of ``shared/facts/evaluation.md``) and scores them with
:class:`facemark.metrics.EvaluationResults`. It writes, in the output folder:

* ``predictions.json``: identifiers and (K, 2) predictions in original-image pixels, with the
  dataset, split, layout, model and box source (``score`` re-scores this file without the model);
* ``results.json``: per-image NMEs and the summary; ``results.md``: the papers' table;
* ``ced.png``: the cumulative error distribution (inter-ocular).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from facemark.data.records import FaceRecord, LandmarkDataset
from facemark.data.transforms import CropConvention, crop_to_image
from facemark.engine.data import CropDataset, WorkerLoader, model_input
from facemark.layouts import Layout
from facemark.metrics import EvaluationResults, plot_ced

__all__ = [
    "predict_landmarks",
    "box_source_label",
    "Predictions",
    "save_predictions",
    "load_predictions",
    "evaluate",
    "score",
    "write_results",
    "PREDICTIONS_FORMAT",
    "default_output_dir",
    "load_evaluation_model",
]

PREDICTIONS_FORMAT = "facemark.predictions"


@torch.no_grad()
def predict_landmarks(model: nn.Module, records: Sequence[FaceRecord], layout: Layout, crop: CropConvention,
                      device: torch.device | str = "cpu", batch_size: int = 32, workers: int = 0,
                      progress: bool = False, description: str = "predict") -> np.ndarray:
    """Predictions for ``records`` in ORIGINAL-image pixels, ``(n, K, 2)`` float64.

    The model is run in eval mode on the plain crops (no augmentation) and restored to its
    previous mode afterwards.
    """
    from tqdm.auto import tqdm

    dataset = CropDataset(records, layout, crop)
    loader = WorkerLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
        pin_memory=torch.device(device).type == "cuda",
        generator=torch.Generator().manual_seed(0),  # never draw from the global RNG
    )
    predictions = np.full((len(dataset), layout.num_points, 2), np.nan)
    was_training = model.training
    model.eval()
    try:
        for batch in tqdm(loader, desc=description, unit="batch", disable=not progress, leave=False, dynamic_ncols=True):
            output = model(model_input(batch["image"], crop, device))
            crop_pixels = output.landmarks.detach().double().cpu().numpy() * crop.size
            predictions[batch["index"].numpy()] = crop_to_image(crop_pixels, batch["matrix"].numpy())
    finally:
        model.train(was_training)
    return predictions


def box_source_label(crop: CropConvention) -> str:
    """How results name the crop, e.g. ``"gt_landmarks x1.2"`` (box source and enlargement)."""
    name = {"landmarks": "gt_landmarks", "dataset": "dataset", "detector": "detector"}[crop.box_source]
    return f"{name} x{crop.enlarge:g}"


# -- predictions files ---------------------------------------------------------------------------
@dataclass
class Predictions:
    """A predictions file: ``landmarks[i]`` (K, 2) original-image pixels of ``identifiers[i]``."""

    identifiers: list[str]
    landmarks: np.ndarray
    dataset: str
    split: str
    layout: str
    box_source: str
    model: str
    # The whole layout (Layout.to_dict): own data's layouts are not built in, and score needs them.
    layout_spec: dict | None = None


def save_predictions(path: str | Path, predictions: Predictions) -> Path:
    """Write a predictions file (JSON; floats are written exactly, so re-scoring is exact)."""
    path = Path(path)
    landmarks = np.asarray(predictions.landmarks, dtype=np.float64)
    if landmarks.ndim != 3 or landmarks.shape[2] != 2 or len(landmarks) != len(predictions.identifiers):
        raise ValueError(f"predictions: expected ({len(predictions.identifiers)}, K, 2) landmarks, got {landmarks.shape}")
    data = {
        "format": PREDICTIONS_FORMAT,
        "version": 1,
        "dataset": predictions.dataset,
        "split": predictions.split,
        "layout": predictions.layout,
        "box_source": predictions.box_source,
        "model": predictions.model,
        "coordinates": "original-image pixels, 0-based, x y per point",
        **({"layout_spec": predictions.layout_spec} if predictions.layout_spec is not None else {}),
        "predictions": {identifier: points.tolist() for identifier, points in zip(predictions.identifiers, landmarks)},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data) + "\n")
    return path


def load_predictions(path: str | Path) -> Predictions:
    """Read a predictions file; errors name the file and the offending entry."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as error:
        raise ValueError(f"predictions file {path} is not valid JSON ({error})") from None
    if not isinstance(data, dict) or data.get("format") != PREDICTIONS_FORMAT:
        raise ValueError(f"{path} is not a facemark predictions file (key 'format' is not {PREDICTIONS_FORMAT!r})")
    required = ("dataset", "split", "layout", "box_source", "model", "predictions")
    missing = [key for key in required if key not in data]
    if missing:
        raise ValueError(f"predictions file {path}: missing key(s) {missing}")
    identifiers = list(data["predictions"])
    if not identifiers:
        raise ValueError(f"predictions file {path}: no predictions")
    arrays = []
    for identifier in identifiers:
        points = np.asarray(data["predictions"][identifier], dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != 2 or not np.isfinite(points).all():
            raise ValueError(f"predictions file {path}: entry {identifier!r} must be a list of finite [x, y] pairs, "
                             f"got an array of shape {points.shape}")
        if arrays and points.shape != arrays[0].shape:
            raise ValueError(f"predictions file {path}: entry {identifier!r} has {len(points)} points, "
                             f"entry {identifiers[0]!r} has {len(arrays[0])}")
        arrays.append(points)
    return Predictions(identifiers, np.stack(arrays), str(data["dataset"]), str(data["split"]), str(data["layout"]),
                       str(data["box_source"]), str(data["model"]), data.get("layout_spec"))


def _align(predictions: Predictions, dataset: LandmarkDataset, source: str) -> np.ndarray:
    """Predictions in the dataset's record order; missing or extra identifiers are errors."""
    expected = [record.identifier for record in dataset]
    given = dict(zip(predictions.identifiers, predictions.landmarks))
    missing = [identifier for identifier in expected if identifier not in given]
    extra = sorted(set(given) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} record(s) of {dataset.name}/{dataset.split} have no prediction, e.g. {missing[:5]}")
        if extra:
            parts.append(f"{len(extra)} prediction(s) match no record, e.g. {extra[:5]}")
        raise ValueError(f"{source}: " + "; ".join(parts))
    if predictions.landmarks.shape[1] != dataset.layout.num_points:
        raise ValueError(f"{source}: predictions have {predictions.landmarks.shape[1]} points, "
                         f"{dataset.name} ({dataset.layout.name}) has {dataset.layout.num_points}")
    return np.stack([given[identifier] for identifier in expected])


# -- results -------------------------------------------------------------------------------------
def write_results(results: EvaluationResults, output_dir: str | Path) -> dict[str, Path]:
    """``results.json``, ``results.md`` and ``ced.png`` (CED per subset under the results' normalisation,
    inter-ocular for the benchmarks) in ``output_dir``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": results.to_json(output_dir / "results.json")}
    markdown = output_dir / "results.md"
    markdown.write_text(results.markdown() + "\n")
    paths["markdown"] = markdown
    curves = {"all": results.per_image()}
    for subset, mask in results.subsets.items():
        if mask.any():
            curves[subset] = results.per_image(subset=subset)
    paths["ced"] = plot_ced(curves, output_dir / "ced.png", threshold=0.10, norm=results.normalisation,
                            title=f"CED: {results.model} on {results.dataset} {results.split}")
    return paths


def default_output_dir(checkpoint: Path, dataset: str, split: str) -> Path:
    """Where ``evaluate`` writes by default: ``<checkpoint folder>/eval_<dataset>_<split>``."""
    return checkpoint.parent / f"eval_{dataset}_{split.replace('/', '_').replace('[', '_').replace(']', '')}"


def load_evaluation_model(checkpoint: str | Path, device: torch.device | str = "cpu",
                          methods: Mapping | None = None):
    """A :class:`~facemark.engine.checkpoint.LoadedModel` for a facemark checkpoint or a released
    SLPT / HRNet facial-landmark file (layout from its number of points, the release's crop
    convention; no training config, so ``evaluate`` needs the dataset)."""
    from facemark.engine.checkpoint import LoadedModel, load_model
    from facemark.inference.predictor import read_torch_weights, weights_kind

    checkpoint = Path(checkpoint)
    kind = weights_kind(checkpoint)
    if kind == "facemark":
        return load_model(checkpoint, device=device, methods=methods)
    releases = {"official_slpt": ("slpt (authors' release)", "hrnet_w18c_lite"),
                "hrnet_fld": ("heatmap (HRNet facial-landmark release)", "hrnet_w18c")}
    if kind not in releases:
        raise ValueError(f"{checkpoint}: a {kind} file; evaluate takes a facemark checkpoint or a released SLPT or "
                         "HRNet facial-landmark .pth file")
    model, layout, crop, _ = read_torch_weights(checkpoint)
    method, backbone = releases[kind]
    return LoadedModel(model=model.to(device).eval(), layout=layout, crop=crop, method=method, backbone=backbone,
                       epoch=0, best_metric=None, config={}, path=checkpoint)


def evaluate(checkpoint: str | Path, data_root: str | Path, dataset: str | None = None, split: str | None = None,
             output_dir: str | Path | None = None, device: str = "auto", batch_size: int = 32, workers: int = 2,
             progress: bool = True, methods: Mapping | None = None) -> EvaluationResults:
    """Evaluate a checkpoint on ``dataset``/``split`` under ``data_root`` and write the outputs.

    ``dataset`` and ``split`` default to the training config's dataset and test split (with
    ``data.test_fraction``: the test part carved from its training file; when the run folder holds
    ``splits.json`` the faces must be the ones listed there; a released checkpoint has none: give
    ``dataset``). Own data is read with the checkpoint's layout. The output folder defaults to
    ``<checkpoint folder>/eval_<dataset>_<split>``.
    """
    from facemark.data import OWN_FORMATS, load_dataset
    from facemark.data.image_check import check_dataset_images
    from facemark.engine.data import SPLITS_FILE, check_splits_file, config_splits
    from facemark.engine.distributed import resolve_device
    from facemark.models.weights import weights_file_errors

    checkpoint = Path(checkpoint)
    target = resolve_device(device)
    with weights_file_errors(checkpoint, "checkpoint"):
        loaded = load_evaluation_model(checkpoint, device=target, methods=methods)
    data_config = loaded.config.get("data", {})
    own_layout = loaded.layout if str(dataset or data_config.get("dataset", "")).lower() in OWN_FORMATS else None
    if (dataset is None or dataset == data_config.get("dataset")) and split is None and data_config:
        # The run's own test faces (carved from the training file with data.test_fraction).
        if data_config.get("test_fraction", 0) > 0:
            _, records = config_splits({**data_config, "root": str(data_root)}, layout=own_layout)
        else:
            records = load_dataset(data_config["dataset"], data_root, data_config.get("test_split", "test"),
                                   layout=own_layout)
        dataset, split = records.name, records.split
        splits_file = checkpoint.parent / SPLITS_FILE
        if splits_file.is_file():
            check_splits_file(splits_file, "test", records)
    else:
        dataset = dataset or data_config.get("dataset")
        split = split or data_config.get("test_split", "test")
        if not dataset:
            raise ValueError(f"checkpoint {checkpoint} records no dataset (a released checkpoint has no training "
                             "config); pass dataset= (command line: --dataset)")
        records = load_dataset(dataset, data_root, split, layout=own_layout)
    check_dataset_images(records)  # every unreadable image at once, before the model runs
    if records.layout.num_points != loaded.layout.num_points:
        raise ValueError(f"checkpoint {checkpoint} predicts {loaded.layout.num_points} points ({loaded.layout.name}) "
                         f"but {dataset}/{split} has {records.layout.num_points} ({records.layout.name})")
    landmarks = predict_landmarks(loaded.model, records.records, records.layout, loaded.crop, target,
                                  batch_size=batch_size, workers=workers, progress=progress,
                                  description=f"evaluate {dataset}/{split}")
    box_source = box_source_label(loaded.crop)
    output_dir = Path(output_dir) if output_dir is not None else default_output_dir(checkpoint, dataset, split)
    predictions = Predictions([r.identifier for r in records], landmarks, records.name, records.split,
                              records.layout.name, box_source, loaded.name,
                              records.layout.to_dict() if own_layout is not None else None)
    save_predictions(output_dir / "predictions.json", predictions)
    results = EvaluationResults.from_predictions(
        landmarks, records, model_name=loaded.name, box_source=box_source,
        extra={"checkpoint": str(checkpoint), "epoch": loaded.epoch, "crop": loaded.crop.to_dict()},
    )
    write_results(results, output_dir)
    return results


def score(predictions_file: str | Path, data_root: str | Path, dataset: str | None = None, split: str | None = None,
          output_dir: str | Path | None = None, splits_file: str | Path | None = None) -> EvaluationResults:
    """Re-score a predictions file against the ground truth, without the model.

    ``dataset``/``split`` default to those recorded in the file. Every record of the split
    must have exactly one prediction (errors name missing and extra identifiers). Outputs are
    written to ``output_dir`` when given.

    A part of own data held out by a training run (``train.json[test]``, ``data.test_fraction``)
    is no file: its faces are the ones the run's ``splits.json`` lists, read from
    ``splits_file`` or, by default, from beside the predictions file or its parent folder (where
    ``facemark evaluate`` puts its output folder: inside the run folder).
    """
    from facemark.data import OWN_FORMATS, load_dataset
    from facemark.data.image_check import check_dataset_images
    from facemark.engine.data import SPLITS_FILE, listed_split

    predictions_file = Path(predictions_file)
    predictions = load_predictions(predictions_file)
    dataset = dataset or predictions.dataset
    split = split or predictions.split
    layout = None
    if str(dataset).lower() in OWN_FORMATS:
        if predictions.layout_spec is None:
            raise ValueError(f"predictions file {predictions_file} holds no layout_spec; own data ({dataset}) needs "
                             "the layout of the points (a predictions file written by facemark evaluate has it)")
        layout = Layout.from_dict(predictions.layout_spec, source=f"{predictions_file} (layout_spec)")
    if layout is not None and split.endswith("]") and "[" in split:
        if splits_file is None:
            candidates = [folder / SPLITS_FILE for folder in (predictions_file.parent, predictions_file.parent.parent)]
            splits_file = next((path for path in candidates if path.is_file()), None)
            if splits_file is None:
                raise ValueError(f"split {split!r} of {predictions_file} is a part of {split.split('[', 1)[0]!r} held "
                                 f"out by a training run; its faces are listed in the run's {SPLITS_FILE}, found neither "
                                 f"at {candidates[0]} nor at {candidates[1]}: give it (command line: --splits "
                                 f"RUN/{SPLITS_FILE})")
        records = listed_split(splits_file, dataset, data_root, split, layout)
    else:
        records = load_dataset(dataset, data_root, split, layout=layout)
    check_dataset_images(records)  # warns about faces outside their image, as evaluate does
    landmarks = _align(predictions, records, f"predictions file {predictions_file}")
    results = EvaluationResults.from_predictions(
        landmarks, records, model_name=predictions.model, box_source=predictions.box_source,
        extra={"predictions_file": str(predictions_file)},
    )
    if output_dir is not None:
        write_results(results, output_dir)
    return results

