"""Where the time of ``facemark predict`` goes, part by part (docs/inference.md, "Many images").

    .venv/bin/python benchmarks/batch_predict_profile.py

On 200 SynthFace images of 128 x 128 with their landmark boxes (``benchmarks/batch_predict.py``'s
images and random-weight fast SLPT preset, in ``--work-dir``, by default the system's temporary
folder): decoding, cutting a face out (uint8 crop), normalising a batch, the model at batch 1, 8 and 32 with 1 and
2 threads (torch eager and ONNX Runtime, on 96 crops), and making one image's JSON record.
Milliseconds per image or face, each part timed once over all of them.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import batch_predict  # noqa: E402  (the benchmark's images and model)

from facemark.data.records import read_image_rgb  # noqa: E402
from facemark.data.transforms import crop_matrix, crop_to_tensor, normalise_crops, square_box, warp_image  # noqa: E402
from facemark.inference import Predictor  # noqa: E402


def milliseconds_each(work, count: int) -> float:
    start = time.perf_counter()
    work()
    return (time.perf_counter() - start) / count * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "facemark_batch_predict_profile",
                        help="where the images and the model are made (default: a folder in the temporary folder)")
    work = parser.parse_args().work_dir
    images, boxes_path = batch_predict.make_images(work / "synthface_200", 200, 128)
    files = sorted(images.rglob("*.jpg"))
    boxes = json.loads(boxes_path.read_text())
    print(f"decode: {milliseconds_each(lambda: [read_image_rgb(path) for path in files], len(files)):.1f} ms/image")
    decoded = [read_image_rgb(path) for path in files]

    def cut_out() -> torch.Tensor:
        crops = []
        for image, path in zip(decoded, files):
            matrix = crop_matrix(square_box(np.array(boxes[str(path)][0]), 1.2), 128)
            crops.append(crop_to_tensor(warp_image(image, matrix, 128)))
        return torch.stack(crops)

    print(f"crop: {milliseconds_each(cut_out, len(files)):.1f} ms/face")
    crops = cut_out()
    print(f"normalise (one batch of {len(crops)}): {milliseconds_each(lambda: normalise_crops(crops), len(crops)):.2f} ms/face")
    for backend in ("torch", "onnx"):
        weights = batch_predict.make_model(work, backend)
        for threads in (1, 2):
            run = Predictor(weights, detector=None, num_threads=threads).bundle.run_crops
            run(crops[:32])
            run(crops[:1])  # warm-up
            for batch in (1, 8, 32):
                each = milliseconds_each(lambda: [run(crops[i : i + batch]) for i in range(0, 96, batch)], 96)
                print(f"model, {backend}, {threads} thread(s), batch {batch}: {each:.1f} ms/face")
    predictor = Predictor(batch_predict.make_model(work, "onnx"), detector=None, num_threads=2)
    results = predictor.predict_batch(decoded[:32], [np.array(boxes[str(path)]) for path in files[:32]])
    record = milliseconds_each(lambda: [json.dumps({"faces": [face.to_dict() for face in faces]}) for faces in results], 32)
    print(f"JSON record: {record:.1f} ms/image")


if __name__ == "__main__":
    main()
