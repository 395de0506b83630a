"""Inference speed per face: ONNX Runtime and torch eager against the authors' approach.

    .venv/bin/python benchmarks/inference_speed.py --threads 2

The authors' approach is ``benchmarks/slpt_reference.py`` (a re-implementation of their SLPT
computation, holding the SAME weights as facemark's model; their code is not available here).
The three runners are timed in alternation, run by run, so that load from other processes hits
them alike; medians of batch-1 latency are printed with the ratios, and the largest difference of
the ONNX output from the reference in 256-pixel crop units (goal: < 1e-3 px; speed goal: ONNX
Runtime at least 2x faster per face than the reference).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from slpt_speed import alternate_timings, calibrated_models  # noqa: E402

from facemark.data.transforms import slpt_crop_convention  # noqa: E402
from facemark.inference.export import onnx_model_bytes  # noqa: E402
from facemark.inference.predictor import onnx_session  # noqa: E402
from facemark.layouts import get_layout  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads (default 2)")
    parser.add_argument("--points", type=int, default=98, choices=(98, 68))
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per runner (default 15)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, reference = calibrated_models(args.points, args.layers)
    layout = get_layout("wflw98" if args.points == 98 else "300w68")
    session = onnx_session(onnx_model_bytes(model, layout, slpt_crop_convention()), "cpu", args.threads)
    image = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    feed = {session.get_inputs()[0].name: image.numpy()}

    with torch.inference_mode():
        theirs = reference(image)[-1][:, -1].numpy()
        ours = model(image).landmarks.numpy()
    onnx_output = session.run(None, feed)[0]
    print(f"torch {torch.__version__}, {args.threads} threads, SLPT HRNetW18C-lite, {args.points} points, {args.layers} layers")
    print(f"max |ONNX - reference| = {np.abs(onnx_output - theirs).max() * 256:.2e} px (256 crop); "
          f"max |facemark torch - reference| = {np.abs(ours - theirs).max() * 256:.2e} px")

    def run_reference():
        with torch.inference_mode():
            reference(image)

    def run_torch():
        with torch.inference_mode():
            model(image)

    times = alternate_timings(
        {"reference (authors' approach)": run_reference, "facemark torch eager": run_torch,
         "facemark ONNX Runtime": lambda: session.run(None, feed)},
        args.repeats, warmup=2,
    )
    baseline = statistics.median(times["reference (authors' approach)"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:30s} batch 1: median {median * 1e3:7.1f} ms/face (min {min(values) * 1e3:7.1f}), "
              f"x{baseline / median:.2f} vs reference")


if __name__ == "__main__":
    main()
