"""Batch-1 latency of the fast SLPT preset (``configs/synthface_slpt_fast.yaml``, read from the
file: half-width MobileNetV2 backbone, d = 128, 1 layer, 2 stages, K = 4, 4 heads, 128 x 128
crops) in torch eager and ONNX Runtime: the preset and two neighbours (3 stages; the previous
preset: full-width MobileNetV2, 2 layers, K = 5), with the ONNX / torch ratio measured in the
same run. Results: docs/inference.md ("Speed").

    .venv/bin/python benchmarks/fast_preset_speed.py --threads 2

The goal: under 15 ms per face on the project's 2-core CPU. Random weights (speed does not
depend on them); medians of ``--repeats`` runs after a warm-up.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from facemark.data.transforms import slpt_crop_convention
from facemark.engine.config import load_config
from facemark.engine.demo import CONFIG_DIR
from facemark.inference.export import onnx_model_bytes
from facemark.inference.predictor import onnx_session
from facemark.layouts import get_layout
from facemark.models.slpt import SLPTConfig, build_slpt


def median_ms(function, repeats: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    layout, crop = get_layout("wflw98"), slpt_crop_convention(128)
    image = torch.randn(1, 3, 128, 128)
    print(f"torch {torch.__version__}, {args.threads} threads, fast SLPT preset, 98 points, 128 x 128, batch 1")
    preset = load_config(CONFIG_DIR / "synthface_slpt_fast.yaml", [])
    preset_config = SLPTConfig(num_points=98, backbone=preset.model.backbone, **preset.model.options)
    variants = {"the preset": preset_config,
                "3 stages": dataclasses.replace(preset_config, num_stages=3),
                "previous preset": dataclasses.replace(preset_config, backbone="mobilenet_v2", num_layers=2,
                                                       patch_samples=5)}
    for label, config in variants.items():
        model = build_slpt(config, mean_face=torch.rand(98, 2) * 0.6 + 0.2).eval()
        with torch.inference_mode():
            eager = median_ms(lambda: model(image), args.repeats)
            backbone = median_ms(lambda: model.backbone(image), args.repeats)
        session = onnx_session(onnx_model_bytes(model, layout, crop), "cpu", args.threads)
        feed = {session.get_inputs()[0].name: image.numpy()}
        onnx = median_ms(lambda: session.run(None, feed), args.repeats)
        print(f"{label} ({config.backbone}, {config.num_layers} layer(s), K={config.patch_samples}, "
              f"{config.num_stages} stages): torch eager "
              f"{eager:.1f} ms (backbone {backbone:.1f} ms), ONNX Runtime {onnx:.1f} ms (x{eager / onnx:.2f} vs eager)")

if __name__ == "__main__":
    main()
