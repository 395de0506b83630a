"""int8 against fp32 for a checkpoint or a randomly initialised preset, as `facemark export --quantize int8` measures it.

    python benchmarks/int8_speed.py --weights runs/demo/slpt/best.pt --threads 2
    python benchmarks/int8_speed.py --preset slpt --faces 50 --threads 2

Without ``--weights`` the model is the preset of ``facemark bench`` (random weights with realistic
activations): its speed is meaningful, its NME_io is not (an untrained model), so only the
speed-up is printed for it. Calibration and validation faces: SynthFace rendered on the fly.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from facemark.inference.bench import PRESETS, build_preset  # noqa: E402
from facemark.inference.export import export_model  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None, help="a facemark or authors' SLPT checkpoint (default: a random --preset model)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="slpt")
    parser.add_argument("--faces", type=int, default=200, help="calibration faces (and as many validation faces)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="int8_speed_") as folder:
        out = Path(folder) / "int8.onnx"
        calibration = {"count": args.faces, "threads": args.threads}
        if args.weights:
            measured = export_model(args.weights, out, quantize="int8", calibration=calibration)["quantization"]
            name = args.weights
        else:
            model, layout, crop = build_preset(args.preset)
            measured = export_model(model, out, layout=layout, crop_convention=crop, quantize="int8", calibration=calibration)["quantization"]
            name = f"{PRESETS[args.preset]} (random weights)"
    print(f"model: {name}; torch {torch.__version__}; {time.perf_counter() - start:.0f} s")
    print(f"calibration: {measured['calibration']}")
    print(f"batch 1 latency: fp32 {measured['latency_ms_batch1_fp32']:.1f} ms, int8 {measured['latency_ms_batch1_int8']:.1f} ms, "
          f"speed-up x{measured['speedup_batch1']:.2f} ({measured['timing']})")
    print(f"landmarks int8 vs fp32: mean {measured['mean_difference_crop_px']:.2f}, max {measured['max_difference_crop_px']:.2f} crop px")
    if args.weights:
        print(f"NME_io on {measured['validation_faces']} validation faces: fp32 {100 * measured['NME_io_fp32']:.2f} %, "
              f"int8 {100 * measured['NME_io_int8']:.2f} % (change {100 * measured['NME_io_change']:+.2f} points)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
