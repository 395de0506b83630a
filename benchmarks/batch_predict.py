"""Throughput and memory of ``facemark predict`` on many images. Results: docs/inference.md
("Many images: streaming, resuming, workers, sharding").

    .venv/bin/python benchmarks/batch_predict.py --images 2000 --memory-images 20000

SynthFace images (``facemark synth``, 128 x 128) with the user's boxes (``--boxes``: the tight
box of each face's landmarks), the fast SLPT preset (``configs/synthface_slpt_fast.yaml``,
random weights: speed does not depend on them), exported to ONNX (``--backend onnx``) or as a
facemark checkpoint run in torch (``--backend torch``), on ``--threads`` threads.

1. Images/s of ``facemark predict`` with 1 and 2 ``--workers`` and ``--batch-size`` 1 and 32,
   against the one-at-a-time path (what ``facemark predict`` did before streaming: decode an
   image, ``Predictor.predict`` its faces, keep the result, write every result at the end),
   measured in the same run, before and after the others (the machine's speed drifts).
2. Peak memory (resident set: ``VmHWM`` of ``/proc/self/status``; ``ru_maxrss`` would include the
   benchmark's own resident set, which Linux carries over through fork and exec) of a ``facemark predict`` process on
   ``--memory-images`` small images (64 x 64) and a tenth of them, next to the one-at-a-time
   path: flat means the same peak for 10x the images.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from facemark.data import load_dataset
from facemark.data.synthface import generate_dataset
from facemark.data.transforms import landmark_box, slpt_crop_convention
from facemark.engine.checkpoint import save_checkpoint
from facemark.engine.config import load_config
from facemark.engine.demo import CONFIG_DIR
from facemark.inference.export import export_model
from facemark.layouts import get_layout
from facemark.models.slpt import SLPTConfig, build_slpt

ROOT = Path(__file__).resolve().parents[1]


def make_images(folder: Path, count: int, size: int) -> tuple[Path, Path]:
    """``count`` SynthFace images under ``folder`` (kept between runs) and their boxes file."""
    summary = folder / "synthface.json"
    if not (summary.is_file() and json.loads(summary.read_text())["splits"]["train"]["images"] == count):
        shutil.rmtree(folder, ignore_errors=True)
        generate_dataset(folder, count, 0, seed=0, size=size, workers=1, progress=False)
    boxes = folder / "boxes.json"
    if not boxes.is_file():
        records = load_dataset("wflw", folder, "train")
        boxes.write_text(json.dumps({str(record.image_path): [list(map(float, landmark_box(record.landmarks)))]
                                     for record in records}))
    return folder / "WFLW_images", boxes


def make_model(folder: Path, backend: str) -> Path:
    """The fast preset with random weights: a facemark checkpoint (what ``facemark train``
    writes; ``facemark predict`` runs it in torch) or its ONNX export."""
    path = folder / ("fast_preset.onnx" if backend == "onnx" else "fast_preset.pt")
    if not path.is_file():
        preset = load_config(CONFIG_DIR / "synthface_slpt_fast.yaml", [])
        torch.manual_seed(0)
        mean_face = torch.rand(98, 2) * 0.6 + 0.2
        model = build_slpt(SLPTConfig(num_points=98, backbone=preset.model.backbone, **preset.model.options),
                           mean_face=mean_face).eval()
        crop = slpt_crop_convention(128)
        if backend == "onnx":
            export_model(model, path, "onnx", layout="wflw98", crop_convention=crop)
        else:
            spec = {"method": "slpt", "backbone": preset.model.backbone, "options": dict(preset.model.options),
                    "layout": get_layout("wflw98").to_dict(), "statistics": {"mean_face": mean_face.numpy()},
                    "crop": crop.to_dict(), "image_size": crop.size}
            save_checkpoint({"model": model.state_dict(), "model_spec": spec, "epoch": 0, "config": {}}, path)
    return path


# Each measurement runs in a fresh process, so that its peak memory is its own.
# Both time everything after the imports: loading the model, every image, writing the results;
# CPU time counts this process and its (joined) worker processes.
CLOCKS = r"""
import resource, time
def peak_rss_mb():
    # This process's own high-water mark (reset by exec, unlike ru_maxrss, which keeps the
    # benchmark's, the parent's, resident set at the fork).
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
def cpu_seconds():
    return sum(getattr(resource.getrusage(who), field) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for field in ("ru_utime", "ru_stime"))
"""

ONE_AT_A_TIME = CLOCKS + r"""
import json, sys
from pathlib import Path
import numpy as np
from facemark.data.records import read_image_rgb
from facemark.inference import Predictor
images, weights, boxes_file, threads, out = sys.argv[1:6]
start, start_cpu = time.perf_counter(), cpu_seconds()
boxes = json.loads(Path(boxes_file).read_text())
predictor = Predictor(weights, detector=None, num_threads=int(threads))
files = sorted(path for path in Path(images).rglob("*.jpg"))
results = []
for path in files:
    image = read_image_rgb(path)
    faces = predictor.predict(image, np.array(boxes[str(path)]))
    results.append({"file": str(path), "width": image.shape[1], "height": image.shape[0], "faces": [f.to_dict() for f in faces]})
Path(out).mkdir(parents=True, exist_ok=True)
(Path(out) / "predictions.json").write_text(json.dumps({"images": results}, indent=1))
print(json.dumps({"seconds": time.perf_counter() - start, "cpu_seconds": cpu_seconds() - start_cpu,
                  "peak_rss_mb": peak_rss_mb()}))
"""

STREAMING = CLOCKS + r"""
import json, sys
import cv2, onnxruntime, torch, torch.utils.data, torch.distributed
import facemark.inference.batch, facemark.inference.predictor, facemark.inference.stream, facemark.engine.distributed
from facemark.cli import main
start, start_cpu = time.perf_counter(), cpu_seconds()
code = main(sys.argv[1:])
assert code == 0, code
print(json.dumps({"seconds": time.perf_counter() - start, "cpu_seconds": cpu_seconds() - start_cpu,
                  "peak_rss_mb": peak_rss_mb()}))
"""


def run(code: str, *argv) -> dict:
    result = subprocess.run([sys.executable, "-c", code, *map(str, argv)], capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"a measurement failed:\n{result.stdout}\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def streaming(images: Path, weights: Path, boxes: Path, out: Path, threads: int, workers: int, batch: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    return run(STREAMING, "predict", images, "--weights", weights, "--boxes", boxes, "--out", out, "--threads", threads,
               "--workers", workers, "--batch-size", batch, "--no-progress")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="images for the speed table (default 2000)")
    parser.add_argument("--memory-images", type=int, default=20000, help="small images for the memory rows, next to a tenth of them (default 20000; 0: skip)")
    parser.add_argument("--no-speed", action="store_true", help="only the memory rows")
    parser.add_argument("--threads", type=int, default=2, help="threads of the model (default 2)")
    parser.add_argument("--backend", choices=("torch", "onnx"), default="onnx",
                        help="onnx (default): an exported .onnx file in ONNX Runtime; torch: a facemark checkpoint")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "facemark_batch_predict",
                        help="folder for the images, the model and the outputs (kept, so that a rerun skips making them)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    weights = make_model(args.work, args.backend)
    runner = "ONNX Runtime" if args.backend == "onnx" else "torch eager"
    print(f"torch {torch.__version__}; fast SLPT preset ({runner}, {args.threads} threads); load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    if not args.no_speed:
        images, boxes = make_images(args.work / f"synthface_{args.images}", args.images, 128)
        print(f"\n{args.images} SynthFace images of 128 x 128 with --boxes:")
        speed_table(args, images, weights, boxes)
    memory_table(args, weights)


def speed_table(args, images: Path, weights: Path, boxes: Path) -> None:
    rows = []
    first = run(ONE_AT_A_TIME, images, weights, boxes, args.threads, args.work / "out_one")
    rows.append(("one at a time (before)", first))
    for workers, batch in ((1, 1), (2, 1), (1, 32), (2, 32)):
        measured = streaming(images, weights, boxes, args.work / "out_stream", args.threads, workers, batch)
        rows.append((f"--workers {workers} --batch-size {batch}", measured))
    last = run(ONE_AT_A_TIME, images, weights, boxes, args.threads, args.work / "out_one")
    rows.append(("one at a time (after)", last))
    baseline = args.images / ((first["seconds"] + last["seconds"]) / 2)
    baseline_cpu = (first["cpu_seconds"] + last["cpu_seconds"]) / 2 / args.images
    print("\n| path | images/s | vs one at a time | CPU ms/image | vs one at a time |\n|---|---|---|---|---|")
    for label, measured in rows:
        speed, cpu = args.images / measured["seconds"], measured["cpu_seconds"] / args.images
        print(f"| {label} | {speed:.1f} | x{speed / baseline:.2f} | {1000 * cpu:.1f} | x{cpu / baseline_cpu:.2f} |")


def memory_table(args, weights: Path) -> None:
    if args.memory_images:
        # --batch-size 1: the model's working memory is then the same as the one-at-a-time
        # path's, so the rows differ only in what is kept per image; --batch-size 32 adds the
        # working memory of 32-face batches, once.
        small_count = max(1, args.memory_images // 10)
        print(f"\nload average {os.getloadavg()[0]:.1f}; peak resident memory of the process, 64 x 64 images, --workers 0:")
        print("\n| path | images | peak RSS |\n|---|---|---|")
        for count in (small_count, args.memory_images):
            small, small_boxes = make_images(args.work / f"synthface_small_{count}", count, 64)
            for batch in (1, 32) if count == args.memory_images else (1,):
                measured = streaming(small, weights, small_boxes, args.work / "out_memory", args.threads, 0, batch)
                print(f"| facemark predict --batch-size {batch} | {count} | {measured['peak_rss_mb']:.0f} MB |")
            measured = run(ONE_AT_A_TIME, small, weights, small_boxes, args.threads, args.work / "out_one_memory")
            print(f"| one at a time (before) | {count} | {measured['peak_rss_mb']:.0f} MB |")


if __name__ == "__main__":
    main()
