"""Export a landmark model to ONNX or TorchScript, with its layout and crop convention inside.

The exported model is the network alone (no detector, no crop):

- input ``image``: ``(batch, 3, S, S)`` float32, normalised as the crop convention's
  ``normalisation`` says (:func:`facemark.data.transforms.image_to_tensor`): ``"imagenet_rgb"`` =
  RGB, ``(pixel / 255 - mean) / std`` with the ImageNet ``mean = (0.485, 0.456, 0.406)``,
  ``std = (0.229, 0.224, 0.225)``; ``"per_image_zscore_bgr"`` = BGR, each channel minus its mean
  over the crop, divided by its standard deviation (the SDFL release); S from the crop
  convention (256 for SLPT); the batch axis is dynamic;
- output ``landmarks``: ``(batch, N, 2)`` float32, x and y in normalised crop coordinates
  (crop pixels / S; 0-based, integer crop pixel = pixel centre). Multiply by S and apply the
  inverse of the crop affine to get image pixels (``facemark.Predictor`` does all of this).

The layout, crop convention and this description are stored as JSON under the key
``"facemark"`` (ONNX ``metadata_props``; TorchScript extra file ``facemark.json``), so that
``Predictor("model.onnx")`` needs nothing else.

ONNX uses the TorchScript-based exporter (``dynamo=False``; the newer exporter needs the
``onnxscript`` package) at opset 17. In an export SLPT samples its patches by row gathers (ONNX
``Gather``), which ONNX Runtime's CPU runs ~4x faster than its ``GridSample`` (see
:func:`facemark.models.slpt.sample_local_patches`).
"""
from __future__ import annotations

import argparse
import copy
import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from facemark.data.transforms import IMAGENET_MEAN, IMAGENET_STD, CropConvention
from facemark.inference.commands import DEFAULT_OPSET, MIN_OPSET
from facemark.layouts import Layout

__all__ = [
    "DEFAULT_OPSET",
    "LandmarksOnly",
    "export_metadata",
    "input_description",
    "onnx_model_bytes",
    "export_model",
    "run_export",
]



class LandmarksOnly(nn.Module):
    """Wraps a facemark model so that it returns the ``(B, N, 2)`` landmarks tensor only
    (exporters need tensors, not the model's output dataclass)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        output = self.model(image)
        return output.landmarks if hasattr(output, "landmarks") else output


def input_description(crop: CropConvention) -> dict:
    """How an exported model's input is made from an RGB crop: its colour order and normalisation
    (the crop convention's ``normalisation``, spelled out for users of the file outside facemark)."""
    if crop.normalisation == "imagenet_rgb":
        return {"colour_order": "RGB", "normalisation": "(pixel / 255 - mean) / std",
                "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    return {"colour_order": "BGR",
            "normalisation": "per image and channel: (pixel - mean) / std over the S x S crop (population std, "
                             "pixels in 0..255; std < 1e-6 -> 1)",
            "mean": "per image", "std": "per image"}


def export_metadata(layout: Layout, crop: CropConvention, description: str = "") -> dict:
    """The JSON stored inside an exported file (read back by :func:`facemark.inference.predictor.load_weights`).

    ``crop`` (with its ``normalisation``) is what facemark applies; ``input`` describes the same
    for other readers."""
    return {
        "format": "facemark-export",
        "version": 1,
        "source": description,
        "layout": layout.to_dict(),
        "crop": crop.to_dict(),
        "input": {
            "name": "image",
            "shape": ["batch", 3, crop.size, crop.size],
            "dtype": "float32",
            **input_description(crop),
        },
        "output": {
            "name": "landmarks",
            "shape": ["batch", layout.num_points, 2],
            "units": f"normalised crop coordinates: crop pixels / {crop.size}",
        },
    }


def _example_input(crop: CropConvention, batch: int = 2) -> torch.Tensor:
    # A fixed, image-like input: the trace only needs shapes, the verification needs values.
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, crop.size, crop.size, generator=generator)


def onnx_model_bytes(model: nn.Module, layout: Layout, crop: CropConvention, opset: int = DEFAULT_OPSET, description: str = "") -> bytes:
    """The model as a serialised ONNX graph with a dynamic batch axis and facemark metadata."""
    import onnx

    if opset < MIN_OPSET:
        raise ValueError(f"ONNX export: opset {opset} is below {MIN_OPSET}, the lowest opset facemark's exports are tested with")
    # The wrapper must be in eval mode too: the exporter restores the wrapper's training flag
    # afterwards, recursively, and would otherwise leave the model's dropout switched on.
    wrapper = LandmarksOnly(_cpu_copy(model)).eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The legacy exporter announces its deprecation, and the tracer warns about Python
        # control flow on shapes that are the same for every input of this model.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            (_example_input(crop),),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=["image"],
            output_names=["landmarks"],
            dynamic_axes={"image": {0: "batch"}, "landmarks": {0: "batch"}},
            do_constant_folding=True,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    entry = proto.metadata_props.add()
    entry.key = "facemark"
    entry.value = json.dumps(export_metadata(layout, crop, description))
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def _cpu_copy(model: nn.Module) -> nn.Module:
    """A CPU copy of ``model`` to export: the caller's model stays on its device, in its mode."""
    return copy.deepcopy(model).cpu()


def _torchscript(model: nn.Module, crop: CropConvention) -> torch.jit.ScriptModule:
    wrapper = LandmarksOnly(_cpu_copy(model)).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return torch.jit.trace(wrapper, (_example_input(crop),), check_trace=False)


def export_model(
    weights,
    out: str | Path,
    format: str = "onnx",
    opset: int = DEFAULT_OPSET,
    layout: str | Layout | None = None,
    crop_convention: CropConvention | None = None,
    check: bool = True,
    quantize: str | None = None,
    calibration: dict | None = None,
) -> dict:
    """Export ``weights`` (any form :class:`facemark.Predictor` accepts, except exported files)
    to ``out``. With ``check``, the exported model is run on a batch of 3 (a batch size the
    trace did not see) and compared with the torch model; returns ``{"path", "format",
    "max_difference_px"}`` (difference in crop pixels).

    ``quantize="int8"`` (ONNX only) writes an int8 model instead (:mod:`facemark.inference.quantize`),
    calibrated on ``calibration`` = ``{"data_root", "dataset", "split", "count", "threads"}`` (all
    optional; default: SynthFace faces rendered on the fly); its measurements against the fp32
    export are stored in the file's metadata under ``"quantization"`` and returned under the same key."""
    from facemark.inference.predictor import load_weights

    if format not in ("onnx", "torchscript"):
        raise ValueError(f"export: format must be 'onnx' or 'torchscript', got {format!r}")
    if quantize not in (None, "int8"):
        raise ValueError(f"export: quantize must be None or 'int8', got {quantize!r}")
    if quantize and format != "onnx":
        raise ValueError("export: quantize='int8' is an ONNX Runtime quantization; use format='onnx'")
    if quantize:
        from facemark.inference.quantize import check_calibration_options

        check_calibration_options(calibration or {})  # before the (slow) loading of the weights
    if isinstance(weights, nn.Module):
        weights = _cpu_copy(weights)  # loading puts the model on the CPU in eval mode: not the caller's
    bundle = load_weights(weights, "cpu", "torch", layout, crop_convention)
    if bundle.model is None:
        raise ValueError(f"export: {weights} is already an exported file; export from a checkpoint")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if format == "onnx" and quantize == "int8":
        data, measured = _int8_model_bytes(bundle, opset, calibration or {})
        out.write_bytes(data)
        return {"path": str(out), "format": format, "max_difference_px": None, "quantization": measured}
    if format == "onnx":
        out.write_bytes(onnx_model_bytes(bundle.model, bundle.layout, bundle.crop, opset, bundle.description))
    else:
        traced = _torchscript(bundle.model, bundle.crop)
        metadata = json.dumps(export_metadata(bundle.layout, bundle.crop, bundle.description))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated in torch >= 2.10
            torch.jit.save(traced, str(out), _extra_files={"facemark.json": metadata})
    result = {"path": str(out), "format": format, "max_difference_px": None}
    if check:
        # The file was written just above by this process: running it is safe.
        exported = load_weights(out, "cpu", "onnx" if format == "onnx" else "torch", trust_torchscript=True)
        example = _example_input(bundle.crop, batch=3).numpy()
        difference = np.abs(exported.run(example) - bundle.run(example)).max() * bundle.crop.size
        result["max_difference_px"] = float(difference)
    return result


def _int8_model_bytes(bundle, opset: int, calibration: dict) -> tuple[bytes, dict]:
    """The int8 ONNX model of ``bundle`` with its measurements in the metadata, and the measurements."""
    import onnx

    from facemark.inference.predictor import METADATA_KEY
    from facemark.inference.quantize import DEFAULT_CALIBRATION_COUNT, calibration_faces, face_crops, measure_int8, quantize_int8

    fp32 = onnx_model_bytes(bundle.model, bundle.layout, bundle.crop, opset, bundle.description)
    count = calibration.get("count") or DEFAULT_CALIBRATION_COUNT
    calibrate, validate, source = calibration_faces(bundle.layout, count, calibration.get("data_root"),
                                                    calibration.get("dataset"), calibration.get("split"))
    int8 = quantize_int8(fp32, face_crops(calibrate, bundle.layout, bundle.crop)[0])
    measured = {"type": "int8", "method": "ONNX Runtime quantize_static, QDQ, per-channel int8 weights, uint8 activations, min-max calibration",
                "calibration": source, **measure_int8(fp32, int8, validate, bundle.layout, bundle.crop, calibration.get("threads"))}
    proto = onnx.load_from_string(int8)
    for entry in proto.metadata_props:
        if entry.key == METADATA_KEY:
            metadata = json.loads(entry.value)
            metadata["quantization"] = measured
            entry.value = json.dumps(metadata)
    return proto.SerializeToString(), measured


# -- command line ---------------------------------------------------------------------------------
def run_export(args: argparse.Namespace) -> int:
    """``facemark export``: write the file, check it, print the input/output contract."""
    from facemark.errors import CommandError

    try:
        calibration = {"data_root": args.calibration_data, "dataset": args.dataset, "split": args.split,
                       "count": args.calibration_count, "threads": args.threads}
        result = export_model(args.weights, args.out, args.format, args.opset, args.layout, check=not args.no_check,
                              quantize=args.quantize, calibration=calibration if args.quantize else None)
    except (FileNotFoundError, ValueError) as error:  # unreadable weights (WeightsError), bad options
        raise CommandError(str(error)) from None
    print(f"wrote {result['path']} ({args.format}{', int8' if args.quantize else ''})")
    if result.get("quantization"):
        q = result["quantization"]
        print(f"int8 calibration: {q['calibration']}")
        print(f"int8 vs fp32, batch 1 latency: {q['latency_ms_batch1_int8']:.2f} ms vs {q['latency_ms_batch1_fp32']:.2f} ms "
              f"(speed-up x{q['speedup_batch1']:.2f}; {q['timing']})")
        print(f"int8 vs fp32, NME_io on {q['validation_faces']} validation faces: {100 * q['NME_io_int8']:.2f} % vs "
              f"{100 * q['NME_io_fp32']:.2f} % (change {100 * q['NME_io_change']:+.2f} points); landmarks differ by "
              f"{q['mean_difference_crop_px']:.2f} crop px on average, {q['max_difference_crop_px']:.2f} at most")
    if result["max_difference_px"] is not None:
        print(f"check: exported vs torch on a batch of 3, max difference {result['max_difference_px']:.2e} crop px")
    from facemark.inference.predictor import load_weights

    bundle = load_weights(args.out, "cpu", "onnx" if args.format == "onnx" else "torch", trust_torchscript=True)
    size = bundle.crop.size
    described = input_description(bundle.crop)
    print(f"input  'image': (batch, 3, {size}, {size}) float32, {described['colour_order']}, {described['normalisation']}"
          + (f", mean {described['mean']}, std {described['std']}" if bundle.crop.normalisation == "imagenet_rgb" else ""))
    print(f"output 'landmarks': (batch, {bundle.layout.num_points}, 2) float32, crop pixels / {size}")
    print(f"crop convention: {bundle.crop.to_dict()}; layout {bundle.layout.name}")
    return 0
