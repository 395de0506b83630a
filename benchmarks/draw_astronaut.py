"""Draw docs/images/astronaut_detectors.png: the face detector ``auto`` picks on scikit-image's
astronaut (a public-domain NASA photograph that scikit-image ships), its box, the box after its
calibration (the estimate of the tight landmark box the model's crop starts from) and the
landmarks the Predictor returns for a model that always answers the authors' WFLW mean face:
where the crop lands, not a trained model's answer.

Usage: python benchmarks/draw_astronaut.py [--out docs/images/astronaut_detectors.png]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from facemark.data.transforms import slpt_crop_convention  # noqa: E402
from facemark.inference.detectors import AUTO_ORDER, detector_installed, make_detector  # noqa: E402
from facemark.inference.predictor import Predictor  # noqa: E402
from facemark.models.slpt import load_official_mean_face  # noqa: E402
from facemark.visualize import draw_landmarks  # noqa: E402

class MeanFace(nn.Module):
    """Always answers the mean face (normalised crop coordinates), in the facemark model contract."""

    def __init__(self, mean_face: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean_face", mean_face.float())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.mean_face.expand(images.shape[0], -1, -1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "images" / "astronaut_detectors.png"))
    args = parser.parse_args(argv)
    from skimage import data

    image = data.astronaut()
    best = next(name for name in AUTO_ORDER if detector_installed(name))
    detector = make_detector(best)
    predictor = Predictor(MeanFace(load_official_mean_face(98)), layout="wflw98", crop_convention=slpt_crop_convention(), detector=detector)
    canvas = image.copy()
    for face in predictor.predict(image)[:1]:
        x0, y0, x1, y1 = np.round(face.box).astype(int)
        cv2.rectangle(canvas, (x0, y0), (x1, y1), (255, 64, 64), 1)  # the detector's box
        c = np.round(predictor.detector_calibration.apply(face.box[None])[0]).astype(int)
        cv2.rectangle(canvas, (c[0], c[1]), (c[2], c[3]), (64, 255, 64), 1)  # calibrated: the landmark box estimate
        canvas = draw_landmarks(canvas, face.landmarks, face.layout, radius=1)
    crop = np.ascontiguousarray(cv2.resize(canvas[20:276, 96:352], (384, 384), interpolation=cv2.INTER_CUBIC))  # the head
    cv2.putText(crop, f"red: {best} box, green: calibrated", (8, 372), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(args.out, cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"{args.out}: landmarks through {best}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
