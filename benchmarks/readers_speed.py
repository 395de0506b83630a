"""How long loading the full WFLW annotation takes (goal: well under a second for 10,000 lines).

Writes a 7,500 + 2,500-line annotation in WFLW's native format to a temporary folder (random
landmarks, empty image files), then loads both splits with ``facemark.data.load_dataset`` and
prints the times, next to the time of a plain ``str.split`` of the same text as a reference
(the least any parser must do).

    python benchmarks/readers_speed.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from facemark.data import load_dataset, wflw_annotation_path, write_wflw_annotations


def make_wflw(root: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for split, count in (("train", 7500), ("test", 2500)):
        rows = [
            (rng.uniform(0, 1000, (98, 2)), rng.integers(0, 1000, 4), rng.integers(0, 2, 6), f"{i % 60}--Event/img_{i // 2}.jpg")
            for i in range(count)
        ]
        write_wflw_annotations(wflw_annotation_path(root, split), rows)
        for _, _, _, relative in rows:
            image = root / "WFLW_images" / relative
            image.parent.mkdir(parents=True, exist_ok=True)
            image.touch()


def best_of(repeats: int, function) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        make_wflw(root)
        texts = [wflw_annotation_path(root, s) for s in ("train", "test")]
        reference = best_of(args.repeats, lambda: [line.split() for p in texts for line in p.read_text().splitlines()])
        print(f"reference: str.split of the 10,000 lines      {reference:7.3f} s")
        for check in (False, True):
            seconds = best_of(
                args.repeats,
                lambda: (load_dataset("wflw", root, "train", check_images=check), load_dataset("wflw", root, "test", check_images=check)),
            )
            print(f"load_dataset train+test, check_images={check!s:5}  {seconds:7.3f} s  ({seconds / reference:.2f}x the reference)")


if __name__ == "__main__":
    main()
