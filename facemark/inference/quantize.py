"""int8 ONNX exports: ONNX Runtime static quantization, calibrated on face crops, and measured.

``facemark export --quantize int8`` writes an ONNX file whose convolutions and matrix products run
in 8-bit integers (ONNX Runtime's ``quantize_static``, QDQ format: int8 per-channel weights,
uint8 activations whose ranges come from calibration crops). It measures, in the same process,
what the quantization costs and gains against the fp32 export of the same model:

- speed: batch-1 latency of fp32 and int8, runs alternating (fp32, int8, fp32, ...) so that both
  see the same machine load; the median of each; ``speedup = fp32 / int8``;
- accuracy: NME_io (inter-ocular, :func:`facemark.metrics.nme`) of both on validation faces
  (mapped back to the original images), and the int8 - fp32 change; plus the largest difference
  between the two models' landmarks in crop pixels.

Calibration and validation faces are either a dataset split (``data_root``/``dataset``/``split``;
the first ``count`` faces of a seeded shuffle calibrate, the next ``count`` validate) or, by
default, SynthFace faces rendered on the fly (calibration: the ``train`` split's renderer,
validation: the ``test`` split's; never the images of a dataset written with the same seed).
The measurements are stored in the file's facemark metadata under ``"quantization"``.
"""
from __future__ import annotations

import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from facemark.data.records import FaceRecord
from facemark.data.transforms import CropConvention, crop_to_image
from facemark.layouts import Layout

__all__ = ["check_calibration_options", "calibration_faces", "face_crops", "quantize_int8", "measure_int8", "DEFAULT_CALIBRATION_COUNT"]

DEFAULT_CALIBRATION_COUNT = 200
QUANTIZED_OPERATORS = ["Conv", "MatMul", "Gemm"]
SYNTHFACE_SEED = 12345  # not 0, the seed of `facemark synth`'s default datasets, so no face is one a model trained on


def _synthface_records(layout: Layout, split: str, count: int) -> list[FaceRecord]:
    from facemark.data.synthface.generate import render_sample

    records = []
    for index in range(count):
        face = render_sample(SYNTHFACE_SEED, split, index)
        if layout.name not in face.landmarks:
            raise ValueError(f"int8 calibration: SynthFace has no {layout.name} landmarks (it renders {sorted(face.landmarks)}); "
                             "give --calibration-data with faces in the model's layout")
        records.append(FaceRecord(f"synthface/{split}/{index}", face.landmarks[layout.name].astype(np.float64), layout,
                                  box=tuple(float(v) for v in face.box), image_loader=(lambda image=face.image: image)))
    return records


def check_calibration_options(calibration: dict) -> None:
    """Raise a ``ValueError`` naming the command-line option when ``calibration`` (the options of
    :func:`facemark.inference.export.export_model`) is inconsistent."""
    unknown = sorted(set(calibration) - {"data_root", "dataset", "split", "count", "threads"})
    if unknown:
        raise ValueError(f"int8 calibration: unknown options {unknown}; expected data_root, dataset, split, count, threads")
    given = {key: calibration.get(key) is not None for key in ("data_root", "dataset", "split")}
    if not given["data_root"] and (given["dataset"] or given["split"]):
        raise ValueError("int8 calibration: --dataset/--split need --calibration-data ROOT")
    if given["data_root"] and not (given["dataset"] and given["split"]):
        raise ValueError("int8 calibration: --calibration-data needs --dataset and --split")
    count = calibration.get("count")
    if count is not None and (not isinstance(count, int) or count < 1):
        raise ValueError(f"int8 calibration: --calibration-count must be an integer >= 1, got {count!r}")


def calibration_faces(layout: Layout, count: int = DEFAULT_CALIBRATION_COUNT, data_root=None, dataset: str | None = None,
                      split: str | None = None) -> tuple[list[FaceRecord], list[FaceRecord], str]:
    """``(calibration records, validation records, description)`` for a model of ``layout``."""
    check_calibration_options({"data_root": data_root, "dataset": dataset, "split": split, "count": count})
    if data_root is None:
        description = f"SynthFace rendered on the fly (seed {SYNTHFACE_SEED}): {count} train-split faces calibrate, {count} test-split faces validate"
        return _synthface_records(layout, "train", count), _synthface_records(layout, "test", count), description
    from facemark.data import load_dataset

    records = load_dataset(dataset, data_root, split).records
    if records and records[0].layout.num_points != layout.num_points:
        raise ValueError(f"int8 calibration: {dataset}/{split} has {records[0].layout.num_points} points but the model predicts {layout.num_points}")
    order = np.random.default_rng(0).permutation(len(records))
    calibration = [records[i] for i in order[:count]]
    validation = [records[i] for i in order[count : 2 * count]]
    if validation:
        description = f"{dataset}/{split} under {data_root}: {len(calibration)} faces calibrate, {len(validation)} others validate"
    else:
        validation = calibration
        description = f"{dataset}/{split} under {data_root}: {len(calibration)} faces calibrate and validate (no others in the split)"
    return calibration, validation, description


def face_crops(records: list[FaceRecord], layout: Layout, crop: CropConvention) -> tuple[np.ndarray, np.ndarray]:
    """The model inputs ``(n, 3, S, S)`` float32 of ``records`` (plain evaluation crops) and their
    crop matrices ``(n, 2, 3)`` (original image -> crop)."""
    import torch

    from facemark.engine.data import CropDataset, model_input

    dataset = CropDataset(records, layout, crop)
    items = [dataset[i] for i in range(len(dataset))]
    crops = model_input(torch.stack([item["image"] for item in items]), crop, "cpu").numpy()
    return crops, np.stack([item["matrix"].numpy() for item in items])


class _CropReader:
    """ONNX Runtime's calibration reader: the crops, 8 per call (the exported graph takes any batch)."""

    def __init__(self, input_name: str, crops: np.ndarray) -> None:
        self.input_name = input_name
        self.crops = crops
        self.position = 0

    def get_next(self):
        if self.position >= len(self.crops):
            return None
        batch = self.crops[self.position : self.position + 8]
        self.position += 8
        return {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}

    def rewind(self) -> None:
        self.position = 0


def quantize_int8(fp32_model: bytes, calibration_crops: np.ndarray) -> bytes:
    """The fp32 ONNX model (serialised) quantized to int8 (QDQ: per-channel int8 weights, uint8
    activations calibrated on ``calibration_crops`` by min-max; the operators of
    :data:`QUANTIZED_OPERATORS` only). Metadata is carried over."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    proto = onnx.load_from_string(fp32_model)
    metadata = {entry.key: entry.value for entry in proto.metadata_props}
    with tempfile.TemporaryDirectory(prefix="facemark_int8_") as folder:
        source, prepared, target = (os.path.join(folder, name) for name in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        Path(source).write_bytes(fp32_model)
        # Shape inference and graph clean-up first, as ONNX Runtime recommends before quantization.
        quant_pre_process(source, prepared, skip_symbolic_shape=True)
        # Only the operators with int8 kernels that carry the cost (convolutions, matrix products):
        # quantizing the rest (layer norms, gathers, element-wise) only adds (de)quantize steps.
        # The library logs through the root logger; its per-tensor notes are silenced here.
        previous_level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)
        try:
            quantize_static(
                prepared, target, _CropReader(proto.graph.input[0].name, calibration_crops),
                quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                per_channel=True, calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=QUANTIZED_OPERATORS,
            )
        finally:
            logging.getLogger().setLevel(previous_level)
        quantized = onnx.load(target)
    del quantized.metadata_props[:]
    for key, value in metadata.items():
        entry = quantized.metadata_props.add()
        entry.key, entry.value = key, value
    return quantized.SerializeToString()


def measure_int8(fp32_model: bytes, int8_model: bytes, records: list[FaceRecord], layout: Layout, crop: CropConvention,
                 threads: int | None = None, repeats: int = 20) -> dict:
    """Speed and NME_io of the int8 model against the fp32 one, measured in this process (see
    the module docstring). ``threads``: ONNX Runtime intra-op threads for both (None: its default)."""
    from facemark.inference.predictor import onnx_session
    from facemark.metrics import nme

    crops, matrices = face_crops(records, layout, crop)
    crops = np.ascontiguousarray(crops, dtype=np.float32)
    fp32, int8 = onnx_session(fp32_model, "cpu", threads), onnx_session(int8_model, "cpu", threads)
    truth = np.stack([record.landmarks for record in records])
    crop_fp32 = _crop_pixels(fp32, crops, crop.size)
    crop_int8 = _crop_pixels(int8, crops, crop.size)
    nme_fp32 = float(np.mean(nme(crop_to_image(crop_fp32, matrices), truth, layout, "inter_ocular")))
    nme_int8 = float(np.mean(nme(crop_to_image(crop_int8, matrices), truth, layout, "inter_ocular")))

    single = crops[:1]
    times = {"fp32": [], "int8": []}
    sessions = {"fp32": fp32, "int8": int8}
    for session in sessions.values():  # warm-up: first runs allocate
        for _ in range(3):
            session.run(None, {session.get_inputs()[0].name: single})
    for _ in range(repeats):
        for key, session in sessions.items():  # alternating, so that both see the same load
            start = time.perf_counter()
            session.run(None, {session.get_inputs()[0].name: single})
            times[key].append(time.perf_counter() - start)
    latency_fp32, latency_int8 = statistics.median(times["fp32"]), statistics.median(times["int8"])
    return {
        "latency_ms_batch1_fp32": latency_fp32 * 1e3,
        "latency_ms_batch1_int8": latency_int8 * 1e3,
        "speedup_batch1": latency_fp32 / latency_int8,
        "timing": f"ONNX Runtime CPU, {threads if threads is not None else 'default'} threads, median of {repeats} alternating runs each",
        "validation_faces": len(records),
        "NME_io_fp32": nme_fp32,
        "NME_io_int8": nme_int8,
        "NME_io_change": nme_int8 - nme_fp32,
        "max_difference_crop_px": float(np.abs(crop_int8 - crop_fp32).max()),
        "mean_difference_crop_px": float(np.linalg.norm(crop_int8 - crop_fp32, axis=-1).mean()),
    }


def _crop_pixels(session, crops: np.ndarray, size: int, batch: int = 16) -> np.ndarray:
    """The session's landmarks for ``crops`` in crop pixels, ``(n, N, 2)`` float64."""
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: crops[s : s + batch]})[0] for s in range(0, len(crops), batch)]).astype(np.float64) * size
