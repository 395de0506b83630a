"""SynthFace rendering speed (goal: at least 100 images/s per core at 256 x 256).

Times sample + render + JPEG encode of ``--images`` faces in one process with OpenCV limited to
one thread, as process CPU time (so the number is per core even on a busy machine) and wall
time, next to a reference measured in the same run: plain JPEG encoding of the same images
(the least any generator writing JPEGs must do).

    python benchmarks/synthface_speed.py [--images 300] [--size 256]
"""
from __future__ import annotations

import argparse
import time

import cv2

from facemark.data.synthface import render_sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    render_sample(0, "train", 0, args.size)  # warm-up (first call builds caches)

    faces = []
    cpu, wall = time.process_time(), time.perf_counter()
    for index in range(args.images):
        face = render_sample(1, "train", index, args.size)
        cv2.imencode(".jpg", face.image, [cv2.IMWRITE_JPEG_QUALITY, face.jpeg_quality])
        faces.append(face)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall

    encode_cpu = time.process_time()
    for face in faces:
        cv2.imencode(".jpg", face.image, [cv2.IMWRITE_JPEG_QUALITY, face.jpeg_quality])
    encode_cpu = time.process_time() - encode_cpu

    print(f"SynthFace {args.size}x{args.size}: {args.images / cpu:7.1f} img/s per core (CPU time), {args.images / wall:7.1f} img/s wall")
    print(f"reference, JPEG encode only: {args.images / encode_cpu:7.1f} img/s per core; rendering costs {cpu / encode_cpu:.1f}x the encode")


if __name__ == "__main__":
    main()
