"""``facemark bench``: how fast a landmark model runs, per backend and device.

Measured, each as the median of ``--repeats`` timed runs after warm-up:

- latency per face: one crop at a time (batch 1), in ms;
- throughput: ``--batch`` crops per forward pass, in faces per second;
- for torch eager, ``torch.compile`` (where it works: a failure is caught and reported) and ONNX
  Runtime, on the CPU with a fixed thread count and on the GPU when one is present;
- separately: face detection (OpenCV Haar, one 512 x 512 photo) and the crop + normalisation of
  one face, so that the whole per-face cost is visible.

Without ``--weights`` a randomly initialised model of the chosen ``--preset`` is timed (speed does
not depend on the weights; the batch-norm statistics are set from one forward pass so that
activations have realistic magnitudes, as denormal numbers would slow the CPU down).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from facemark.inference.commands import BENCH_PRESETS as PRESETS

__all__ = ["PRESETS", "build_preset", "time_function", "run_bench"]


def build_preset(name: str):
    """A randomly initialised model of a preset, with realistic activation magnitudes, and its
    layout and crop convention."""
    from facemark.data.transforms import slpt_crop_convention
    from facemark.layouts import WFLW98
    from facemark.models.slpt import SLPTConfig, build_slpt

    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    torch.manual_seed(0)
    model = build_slpt(SLPTConfig(num_points=98, num_layers=12 if name == "slpt-12" else 6))
    _calibrate_batch_norm(model, 256)
    return model.eval(), WFLW98, slpt_crop_convention()


def _calibrate_batch_norm(model: torch.nn.Module, size: int) -> None:
    # He-initialised convolutions and batch-norm statistics of one random batch: activations of
    # order one everywhere (the release's N(0, 0.001) init gives tiny, denormal-prone values).
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    momenta = [m.momentum for m in norms]
    for module in norms:
        module.momentum = 1.0
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, size, size))
    for module, momentum in zip(norms, momenta):
        module.momentum = momentum
    model.eval()


def time_function(function: Callable[[], object], repeats: int, warmup: int = 2, synchronise: Callable[[], None] | None = None) -> list[float]:
    """Seconds per call of ``repeats`` timed calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        function()
    if synchronise:
        synchronise()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        if synchronise:
            synchronise()
        times.append(time.perf_counter() - start)
    return times


def _bench_image() -> tuple[np.ndarray, str]:
    try:
        from skimage import data

        return data.astronaut(), "scikit-image astronaut, 512 x 512"
    except ImportError:  # scikit-image is a test dependency only
        gradient = np.linspace(0, 255, 512, dtype=np.float32)
        return np.repeat(np.add.outer(gradient, gradient)[:, :, None] / 2, 3, axis=2).astype(np.uint8), "synthetic 512 x 512"


def _rows_for_device(model, layout, crop, device: str, backends: list[str], batch: int, repeats: int, threads: int) -> list[dict]:
    size = crop.size
    rows = []
    synchronise = torch.cuda.synchronize if device.startswith("cuda") else None
    single = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    many = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(2))

    def measure(name: str, run: Callable[[torch.Tensor], object], prepare: Callable[[torch.Tensor], object], note: str = "") -> None:
        inputs_single, inputs_many = prepare(single), prepare(many)
        latency = statistics.median(time_function(lambda: run(inputs_single), repeats, 3, synchronise))
        throughput_time = statistics.median(time_function(lambda: run(inputs_many), max(3, repeats // 3), 1, synchronise))
        rows.append({"device": device, "backend": name, "latency_ms": latency * 1e3, "faces_per_s": batch / throughput_time, "note": note})

    torch_model = model.to(device).eval()
    # Every row times what a user's batch costs: host input in, host landmarks out (on a GPU, the
    # copies both ways; ONNX Runtime's rows include them too).
    on_host = lambda x: x  # noqa: E731

    def eager(x):
        with torch.inference_mode():
            return torch_model(x.to(device)).landmarks.cpu()

    if "eager" in backends:
        measure("torch eager", eager, on_host)
    if "compile" in backends:
        try:
            compiled = torch.compile(torch_model)
            start = time.perf_counter()
            with torch.inference_mode():
                compiled(single.to(device))
                compiled(many.to(device))
            compile_seconds = time.perf_counter() - start

            def compiled_run(x):
                with torch.inference_mode():
                    return compiled(x.to(device)).landmarks.cpu()

            measure("torch.compile", compiled_run, on_host, f"compiled in {compile_seconds:.0f} s")
        except Exception as error:  # inductor needs a C++ compiler, Triton on GPU, ...
            reason = str(error).strip().splitlines()[0][:120] if str(error).strip() else type(error).__name__
            rows.append({"device": device, "backend": "torch.compile", "latency_ms": None, "faces_per_s": None, "note": f"failed: {type(error).__name__}: {reason}"})
        finally:
            torch._dynamo.reset()  # free the compiled graphs before the next backend
    if "onnx" in backends:
        try:
            from facemark.inference.export import onnx_model_bytes
            from facemark.inference.predictor import onnx_session

            session = onnx_session(onnx_model_bytes(model, layout, crop), device, threads)  # exports a CPU copy
            name = session.get_inputs()[0].name
            measure("ONNX Runtime", lambda x: session.run(None, {name: x}), lambda x: x.numpy(), ", ".join(session.get_providers()[:1]))
        except Exception as error:
            rows.append({"device": device, "backend": "ONNX Runtime", "latency_ms": None, "faces_per_s": None, "note": f"failed: {type(error).__name__}: {str(error).splitlines()[0][:120]}"})
    return rows


def run_bench(args: argparse.Namespace) -> int:
    """``facemark bench``: prints the table; returns 0."""
    from facemark.data.transforms import crop_matrix, image_to_tensor, square_box, warp_image
    from facemark.inference.detectors import HaarFaceDetector

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(backends) - {"eager", "compile", "onnx"})
    if unknown or not backends:
        from facemark.errors import CommandError

        raise CommandError(f"--backends: unknown {unknown}; expected a comma-separated subset of eager, compile, onnx")
    torch.set_num_threads(args.threads)
    if args.weights:
        from facemark.inference.predictor import load_weights

        bundle = load_weights(args.weights, "cpu", "torch")
        if bundle.model is None:
            from facemark.errors import CommandError

            raise CommandError(f"--weights {args.weights}: time a checkpoint, not an exported file")
        model, layout, crop, description = bundle.model, bundle.layout, bundle.crop, bundle.description
    else:
        model, layout, crop = build_preset(args.preset)
        description = f"{PRESETS[args.preset]} (random weights)"
    devices = ["cpu"] if args.device == "cpu" else ["cuda"] if args.device == "cuda" else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if "cuda" in devices and not torch.cuda.is_available():
        from facemark.errors import CommandError

        raise CommandError("--device cuda: no CUDA device is available to torch")

    image, image_name = _bench_image()
    detector = HaarFaceDetector()
    detection = statistics.median(time_function(lambda: detector.detect(image), args.repeats, 1))
    box = detector.detect(image)
    box = box[0, :4] if len(box) else np.array([180.0, 90.0, 270.0, 170.0])

    def crop_one():
        matrix = crop_matrix(square_box(box, crop.enlarge), crop.size)
        return image_to_tensor(warp_image(image, matrix, crop.size), crop.normalisation)

    cropping = statistics.median(time_function(crop_one, args.repeats * 5, 2))
    parameters = sum(p.numel() for p in model.parameters())
    rows = []
    for device in devices:
        rows += _rows_for_device(model, layout, crop, device, backends, args.batch, args.repeats, args.threads)

    print(f"model: {description}; {parameters / 1e6:.2f} M parameters; input {crop.size} x {crop.size}, {layout.num_points} points")
    print(f"torch {torch.__version__}, {args.threads} CPU threads" + (f", GPU {torch.cuda.get_device_name(0)}" if "cuda" in devices else ""))
    print(f"face detection (OpenCV Haar, {image_name}): {detection * 1e3:.1f} ms per image")
    print(f"crop + normalisation: {cropping * 1e3:.2f} ms per face")
    header = f"| {'device':6s} | {'backend':14s} | {'latency, batch 1':>16s} | {f'throughput, batch {args.batch}':>20s} | note"
    print(header)
    print("|" + "-" * 8 + "|" + "-" * 16 + "|" + "-" * 18 + "|" + "-" * 22 + "|------")
    for row in rows:
        latency = "" if row["latency_ms"] is None else f"{row['latency_ms']:.1f} ms/face"
        throughput = "" if row["faces_per_s"] is None else f"{row['faces_per_s']:.1f} faces/s"
        print(f"| {row['device']:6s} | {row['backend']:14s} | {latency:>16s} | {throughput:>20s} | {row['note']}")
    if args.json:
        document = {
            "model": description, "parameters": parameters, "threads": args.threads, "batch": args.batch,
            "torch": torch.__version__, "detection_ms": detection * 1e3, "detection_image": image_name,
            "crop_ms": cropping * 1e3, "rows": rows,
        }
        Path(args.json).write_text(json.dumps(document, indent=1))
    return 0
