"""``facemark predict``: landmarks for image files, folders (recursively) and videos.

Every input file is processed on its own: a file that cannot be read (or fails) is reported with
the reason and skipped, the others go on, and the exit code is 1 when any failed. Symbolic links
in folders that lead nowhere (dangling, loops) are warned about and counted; inputs holding
nothing to process are an error. Results go to
``--out`` (default ``facemark_output/``): ``predictions.json`` or ``predictions.csv``, and with
``--draw`` the images / videos with the landmarks drawn under ``drawn/``.
"""
from __future__ import annotations

import argparse
import csv
import errno
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["IMAGE_EXTENSIONS", "CollectedInputs", "collect_inputs", "run_predict"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".jp2")


@dataclass
class InputFile:
    """One file to process: its path, the folder it was found in (or None), its output name."""

    path: Path
    root: Path | None
    name: str  # relative output name (unique within the run)
    kind: str  # "image" or "video"


@dataclass
class CollectedInputs:
    """What :func:`collect_inputs` found.

    ``files``: the files to process. ``problems``: ``(input, reason)`` for inputs that do not
    exist or cannot be listed. ``skipped``: files inside folders that are neither images nor
    videos. ``bad_links``: ``(path, kind, reason)`` for symbolic links inside folders that lead
    nowhere, kind "dangling" or "loop" (or "unreadable"). ``empty_folders``: input folders
    holding no image or video.
    """

    files: list[InputFile] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)
    skipped: int = 0
    bad_links: list[tuple[str, str, str]] = field(default_factory=list)
    empty_folders: list[str] = field(default_factory=list)


def _folder_files(folder: Path, bad_links: list[tuple[str, str, str]], problems: list[tuple[str, str]]) -> list[Path]:
    """The files under ``folder``, recursively, in sorted order, following symbolic links.

    A link whose target does not exist, a link loop, and a link back to a folder above it are
    recorded in ``bad_links`` (a folder reached twice through links is searched once).
    """
    files: list[Path] = []
    searched: set[tuple[int, int]] = set()

    def identity(path: Path) -> tuple[int, int]:
        status = path.stat()
        return status.st_dev, status.st_ino

    def visit(directory: Path, ancestors: tuple[tuple[int, int], ...]) -> None:
        try:
            entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
        except OSError as error:
            problems.append((str(directory), f"cannot list the folder ({error.strerror or error})"))
            return
        for entry in entries:
            path = Path(entry.path)
            if entry.is_symlink():
                try:
                    target = identity(path)  # follows the link
                except OSError as error:
                    if error.errno == errno.ELOOP:
                        bad_links.append((str(path), "loop", "symbolic link loop"))
                    elif error.errno == errno.ENOENT:
                        bad_links.append((str(path), "dangling",
                                          f"dangling symbolic link (its target {os.readlink(path)} does not exist)"))
                    else:
                        bad_links.append((str(path), "unreadable", f"unreadable symbolic link ({error.strerror})"))
                    continue
                if path.is_dir() and target in ancestors:
                    bad_links.append((str(path), "loop",
                                      f"symbolic link loop (leads back to {os.readlink(path)}, a folder above it)"))
                    continue
            if entry.is_dir():  # follows links
                key = identity(path)
                if key not in searched:
                    searched.add(key)
                    visit(path, ancestors + (key,))
            elif entry.is_file():
                files.append(path)

    root_key = identity(folder)
    searched.add(root_key)
    visit(folder, (root_key,))
    return files


def collect_inputs(inputs: list[str]) -> CollectedInputs:
    """Expand files and folders (recursively, following symbolic links) into the files to process.

    Files given explicitly are processed whatever their extension (an unreadable one is
    reported); inside folders only image and video files are taken, the others are counted.
    """
    from facemark.inference.video import VIDEO_EXTENSIONS

    found = CollectedInputs()
    used_names: set[str] = set()

    def unique(name: str) -> str:
        candidate, counter = name, 1
        while candidate in used_names:
            stem, dot, suffix = name.rpartition(".")
            candidate = f"{stem}_{counter}.{suffix}" if dot else f"{name}_{counter}"
            counter += 1
        used_names.add(candidate)
        return candidate

    def kind_of(path: Path) -> str:
        return "video" if path.suffix.lower() in VIDEO_EXTENSIONS else "image"

    for text in inputs:
        path = Path(text)
        if path.is_dir():
            taken = 0
            for child in _folder_files(path, found.bad_links, found.problems):
                suffix = child.suffix.lower()
                if suffix not in IMAGE_EXTENSIONS and suffix not in VIDEO_EXTENSIONS:
                    found.skipped += 1
                    continue
                name = unique((Path(path.name) / child.relative_to(path)).as_posix())
                found.files.append(InputFile(child, path, name, kind_of(child)))
                taken += 1
            if not taken:
                found.empty_folders.append(text)
        elif path.is_file():
            found.files.append(InputFile(path, None, unique(path.name), kind_of(path)))
        elif path.is_symlink():
            found.problems.append((text, "a symbolic link leading nowhere (dangling or a loop)"))
        else:
            found.problems.append((text, "no such file or folder"))
    return found


def _error(message: str) -> Exception:
    from facemark.errors import CommandError

    return CommandError(message)


def _make_predictor(args: argparse.Namespace):
    from facemark.inference.detectors import IDENTITY_CALIBRATION, BoxCalibration, make_detector
    from facemark.inference.predictor import Predictor

    try:
        box_calibration = BoxCalibration.parse(args.box_calibration) if args.box_calibration else IDENTITY_CALIBRATION
        detector_calibration = BoxCalibration.parse(args.detector_calibration) if args.detector_calibration else None
        detector = make_detector(args.detector, yunet_model=args.yunet_model, min_face_size=args.min_face_size, haar_cascade=args.haar_cascade)
        return Predictor(
            args.weights,
            device=args.device,
            backend=args.backend,  # None: the file's own (ONNX Runtime for .onnx)
            detector=detector,
            detector_calibration=detector_calibration,
            box_calibration=box_calibration,
            output_layout="300w68" if args.points == 68 else None,
            passes=args.passes,
            batch_size=args.batch_size,
            num_threads=args.threads,
            trust_torchscript=args.trust_torchscript,
        )
    except (FileNotFoundError, ValueError, RuntimeError, TypeError) as error:
        raise _error(str(error)) from None


class _Results:
    """Collects per-file results and writes predictions.json / predictions.csv."""

    def __init__(self, predictor, args: argparse.Namespace) -> None:
        self.predictor = predictor
        self.args = args
        self.images: list[dict] = []
        self.videos: list[dict] = []
        self.failed: list[dict] = []
        self.skipped_links: list[dict] = []
        self.notes: list[str] = []
        self.drawings = 0  # files written under drawn/
        self.warnings: list[str] = []  # processed, but not completely (e.g. a partly decodable video)

    def header(self) -> dict:
        predictor = self.predictor
        return {
            "weights": str(self.args.weights),
            "model": predictor.bundle.description,
            "backend": predictor.bundle.backend,
            "layout": predictor.output_layout.name,
            "crop_convention": predictor.crop.to_dict(),
            "detector": getattr(predictor.detector, "name", None),
            "detector_calibration": predictor.detector_calibration.to_dict(),
            "box_calibration": predictor.box_calibration.to_dict(),
            "passes": predictor.passes,
            "coordinates": "0-based pixels of the original image (integer = pixel centre)",
        }

    def write(self, out: Path) -> Path:
        out.mkdir(parents=True, exist_ok=True)
        if self.args.format == "json":
            path = out / "predictions.json"
            document = {**self.header(), "images": self.images, "videos": self.videos, "failed": self.failed,
                        "skipped_links": self.skipped_links}
            path.write_text(json.dumps(document, indent=1))
            return path
        path = out / "predictions.csv"
        num_points = self.predictor.output_layout.num_points
        columns = ["file", "frame", "face", "track", "box_source", "score", "box_x_min", "box_y_min", "box_x_max", "box_y_max"]
        columns += [f"{axis}{i}" for i in range(num_points) for axis in ("x", "y")]
        with path.open("w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(columns)
            rows = [(entry["file"], "", entry["faces"]) for entry in self.images]
            rows += [(entry["file"], frame["frame"], frame["faces"]) for entry in self.videos for frame in entry["frames"]]
            for name, frame, faces in rows:
                for index, face in enumerate(faces):
                    score = "" if face["score"] is None else face["score"]
                    row = [name, frame, index, face.get("track", ""), face["box_source"], score, *face["box"]]
                    row += [value for point in face["landmarks"] for value in point]
                    writer.writerow(row)
        return path


def _draw(image: np.ndarray, faces, layout) -> np.ndarray:
    from facemark.visualize import draw_landmarks

    canvas = image
    for face in faces:
        canvas = draw_landmarks(canvas, face.landmarks, layout, box=face.crop_box)
    return canvas


def _process_image(predictor, item, boxes_for, results: _Results, drawn_folder: Path | None) -> None:
    from facemark.data.records import read_image_rgb

    image = read_image_rgb(item.path)
    boxes = boxes_for(item)
    faces = predictor.predict(image, boxes)
    if not faces:
        results.notes.append(f"{item.path}: no face found")
    results.images.append(
        {"file": str(item.path), "width": image.shape[1], "height": image.shape[0], "faces": [face.to_dict() for face in faces]}
    )
    if drawn_folder is not None:
        import cv2

        target = (drawn_folder / item.name).with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        canvas = _draw(image, faces, predictor.output_layout)
        if not cv2.imwrite(str(target), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {target}")
        results.drawings += 1


def _process_video(predictor, item, args, results: _Results, drawn_folder: Path | None, progress: bool) -> None:
    from tqdm import tqdm

    from facemark.inference.smoothing import OneEuroSettings
    from facemark.inference.video import FaceTracker, VideoReader, VideoWriter

    reader = VideoReader(item.path)
    smoothing = None if args.no_smoothing else OneEuroSettings(args.min_cutoff, args.beta, args.derivative_cutoff)
    tracker = FaceTracker(predictor, detect_every=args.detect_every, smoothing=smoothing, fps=reader.fps, max_faces=args.max_faces)
    writer = None
    frames = []
    try:
        bar = tqdm(reader, total=reader.frame_count, desc=item.path.name, unit="frame", disable=not progress, leave=False)
        for index, frame in enumerate(bar):
            tracked = tracker.update(frame)
            frames.append({"frame": index, "faces": [face.to_dict() for face in tracked]})
            if drawn_folder is not None:
                if writer is None:
                    writer = VideoWriter((drawn_folder / item.name).with_suffix(".mp4"), reader.fps, (frame.shape[1], frame.shape[0]))
                writer.write(_draw(frame, [t.face for t in tracked], predictor.output_layout))
    finally:
        if writer is not None:
            writer.close()
            results.drawings += 1
    entry = {"file": str(item.path), "fps": reader.fps, "frames_announced": reader.frame_count, "frames_read": reader.frames_read,
             "smoothing": None if smoothing is None else smoothing.to_dict()}
    shortfall = reader.shortfall()
    if shortfall is not None:
        entry["warning"] = shortfall
        results.warnings.append(shortfall)
        tqdm.write(f"facemark predict: warning: {shortfall}", file=sys.stderr)
    results.videos.append({**entry, "frames": frames})


def run_predict(args: argparse.Namespace) -> int:
    """``facemark predict``: returns 0 when every input was processed, 1 when any failed."""
    from tqdm import tqdm

    from facemark.inference.detectors import BoxesFromFile, load_boxes, parse_box

    try:
        fixed_boxes = np.stack([parse_box(text, "--box") for text in args.box]) if args.box else None
        boxes_file = BoxesFromFile(load_boxes(args.boxes), source=str(args.boxes)) if args.boxes else None
    except (FileNotFoundError, ValueError) as error:
        raise _error(str(error)) from None
    if args.passes < 1 or args.batch_size < 1 or args.detect_every < 0:
        raise _error("--passes and --batch-size must be >= 1 and --detect-every >= 0")
    found = collect_inputs(args.inputs)
    if not found.files:
        reasons = [f"{name}: {reason}" for name, reason in found.problems]
        reasons += [f"{folder}: no image or video files in this folder" for folder in found.empty_folders]
        reasons += [f"{link}: {reason}" for link, _, reason in found.bad_links]
        if found.skipped:
            reasons.append(f"{found.skipped} files in the folders are neither images ({', '.join(IMAGE_EXTENSIONS)}) "
                           "nor videos")
        raise _error("nothing to process: " + "; ".join(reasons))
    predictor = _make_predictor(args)
    results = _Results(predictor, args)
    results.skipped_links = [{"file": link, "reason": reason} for link, _, reason in found.bad_links]
    out = Path(args.out)
    drawn_folder = out / "drawn" if args.draw else None
    progress = not args.no_progress

    def report(name: str, reason: str) -> None:
        results.failed.append({"file": name, "reason": reason})
        tqdm.write(f"facemark predict: {name}: {reason}", file=sys.stderr)

    for name, reason in found.problems:
        report(name, reason)
    for link, _, reason in found.bad_links:
        tqdm.write(f"facemark predict: warning: {link}: {reason}; skipped", file=sys.stderr)
    for folder in found.empty_folders:
        results.notes.append(f"{folder}: no image or video files in this folder")

    def boxes_for(item):
        if fixed_boxes is not None:
            return fixed_boxes
        if boxes_file is not None:
            found = boxes_file.lookup(item.path, item.root)
            if found is None:
                results.notes.append(f"{item.path}: no entry in {args.boxes}, used the detector")
            return found
        return None

    images = [item for item in found.files if item.kind == "image"]
    videos = [item for item in found.files if item.kind == "video"]
    for item in tqdm(images, desc="images", unit="image", disable=not progress or not images):
        try:
            _process_image(predictor, item, boxes_for, results, drawn_folder)
        except (OSError, ValueError, RuntimeError) as error:
            report(str(item.path), str(error))
    for item in videos:
        try:
            _process_video(predictor, item, args, results, drawn_folder, progress)
        except (OSError, ValueError, RuntimeError) as error:
            report(str(item.path), str(error))

    path = results.write(out)
    if boxes_file is not None:
        for key in boxes_file.unused():
            results.notes.append(f"{args.boxes}: entry {key!r} matched no input image")
    for note in results.notes:
        print(f"note: {note}", file=sys.stderr)
    faces = sum(len(entry["faces"]) for entry in results.images)
    frames = sum(len(entry["frames"]) for entry in results.videos)
    summary = f"{len(results.images)} images ({faces} faces), {len(results.videos)} videos ({frames} frames) -> {path}"
    if found.skipped:
        summary += f"; {found.skipped} files in the folders were not images or videos and were skipped"
    if found.bad_links:
        kinds = [kind for _, kind, _ in found.bad_links]
        counts = ", ".join(f"{kinds.count(kind)} {kind}" for kind in ("dangling", "loop", "unreadable") if kind in kinds)
        summary += f"; {len(kinds)} symbolic links lead nowhere and were skipped ({counts})"
    if drawn_folder is not None:
        summary += (f"; {results.drawings} drawing{'s' if results.drawings != 1 else ''} in {drawn_folder}"
                    if results.drawings else "; no drawings written")
    if results.warnings:
        summary += f"; {len(results.warnings)} warning(s): " + "; ".join(results.warnings)
    print(summary)
    if results.failed:
        print(f"facemark predict: {len(results.failed)} input(s) failed: " + ", ".join(f["file"] for f in results.failed), file=sys.stderr)
        return 1
    return 0
