"""How long the image check before training / evaluation takes (goal: seconds for 10,000 images).

Writes one 1000 x 700 image (about WFLW's size) as JPEG and as PNG to a temporary folder, gives
each ``--count`` names (hard links: the files are then in the page cache, so this times the
parsing, not the disk), and times ``facemark.data.image_check.read_image_size`` over all of them
against a full decode (``read_image_rgb``) of the first 100.

    python benchmarks/image_check_speed.py [--count 10000]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from facemark.data.image_check import read_image_size
from facemark.data.records import read_image_rgb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=10000)
    args = parser.parse_args()
    y, x = np.mgrid[0:700, 0:1000]
    image = np.stack([(x * 0.2) % 255, (y * 0.3) % 255, ((x + y) * 0.1) % 255], axis=2).astype(np.uint8)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for extension in ("jpg", "png"):
            original = root / f"original.{extension}"
            cv2.imwrite(str(original), image)
            paths = []
            for index in range(args.count):
                path = root / f"{index}.{extension}"
                os.link(original, path)
                paths.append(path)
            start = time.perf_counter()
            for path in paths:
                read_image_size(path)
            headers = time.perf_counter() - start
            start = time.perf_counter()
            for path in paths[:100]:
                read_image_rgb(path)
            decode = (time.perf_counter() - start) / min(100, len(paths))
            print(f"{extension}: header check of {args.count} files {headers:.2f} s; "
                  f"full decode {1000 * decode:.1f} ms per image ({decode * args.count:.0f} s for {args.count})")


if __name__ == "__main__":
    main()
