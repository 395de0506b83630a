"""``facemark predict``: landmarks for image files, folders (recursively) and videos.

Every input file is processed on its own: a file that cannot be read (or fails) is reported with
the reason and skipped, the others go on, and the exit code is 1 when any failed. Symbolic links
in folders that lead nowhere (dangling, loops) are warned about and counted; inputs holding
nothing to process are an error.

Results are written as they come, one JSON line per image or video, to ``--out`` (default
``facemark_output/``) ``predictions.jsonl`` (:mod:`facemark.inference.stream`), and
``predictions.json`` or ``predictions.csv`` are made from it at the end; with ``--draw`` the
images / videos with the landmarks drawn go under ``drawn/``. An ``--out`` that already holds
predictions is refused unless ``--resume`` is given, which skips the inputs already there.

Images are decoded and their faces found in ``--workers`` processes while the model runs on the
faces of many images at once (``--batch-size`` faces per forward pass). Under ``torchrun`` each
rank takes every ``WORLD_SIZE``-th input of the deterministic order of the inputs, writes
``predictions.rank<r>.jsonl``, and rank 0 merges them into the final file.
"""
from __future__ import annotations

import argparse
import errno
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


def _header(predictor, args: argparse.Namespace) -> dict:
    """What the landmarks depend on: the first line of each stream file and the head of predictions.json."""
    return {
        "weights": str(args.weights),
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


def _draw(image: np.ndarray, faces, layout) -> np.ndarray:
    from facemark.visualize import draw_landmarks

    canvas = image
    for face in faces:
        canvas = draw_landmarks(canvas, face.landmarks, layout, box=face.crop_box)
    return canvas


@dataclass
class _Loaded:
    """One image after decoding and face finding (what a worker process hands back)."""

    item: InputFile
    image: np.ndarray | None = None
    faces: dict | None = None  # Predictor._boxes_for's request: boxes, scores, source, calibration
    crops: object = None  # Predictor.crop_request: the faces cut out for the model's first pass
    error: str | None = None


class _ImageLoading:
    """Decoding, face detection and cropping of the images, indexed by ``(position, boxes or error)``.

    This is the work that runs in ``--workers`` processes (a torch DataLoader): the boxes are
    looked up in the main process (:class:`_BoxRequests`, so that the box file's bookkeeping stays
    there), the image is read, the detector runs and the faces are cut out (uint8 crops, normalised
    where the model runs) where the index is handed; the main process only runs the model.
    """

    def __init__(self, items: list[InputFile], predictor) -> None:
        self.items = items
        self.predictor = predictor  # only its detector and calibrations are used here

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, request: tuple[int, np.ndarray | None, str | None]) -> _Loaded:
        from facemark.data.records import read_image_rgb

        position, boxes, error = request
        item = self.items[position]
        if error is not None:
            return _Loaded(item, error=error)
        try:
            image = read_image_rgb(item.path)
            faces = self.predictor._boxes_for(image, boxes)
            return _Loaded(item, image, faces, self.predictor.crop_request(image, faces))
        except (OSError, ValueError, RuntimeError) as failure:
            return _Loaded(item, error=str(failure))


class _BoxRequests:
    """The DataLoader's sampler: ``(position, boxes, error)`` for each image, the boxes looked up
    in the main process as the images are handed out (one at a time: nothing held per image)."""

    def __init__(self, items: list[InputFile], boxes_for) -> None:
        self.items = items
        self.boxes_for = boxes_for

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        for position, item in enumerate(self.items):
            try:
                yield position, self.boxes_for(item), None
            except ValueError as error:  # e.g. an image name that several box entries share
                yield position, None, str(error)


def _as_is(sample):
    return sample


def _loaded_images(items: list[InputFile], predictor, boxes_for, workers: int):
    """The images of ``items``, decoded and with their faces found, in order; in ``workers``
    processes (0: in this one). At most a few images per worker wait at any time."""
    dataset, requests = _ImageLoading(items, predictor), _BoxRequests(items, boxes_for)
    if workers == 0 or not items:
        return (dataset[request] for request in requests)
    import multiprocessing

    # fork: the workers share the predictor's detector without pickling it (a cv2 cascade cannot
    # be pickled) and never touch the model.
    if "fork" not in multiprocessing.get_all_start_methods():
        raise _error("--workers needs the 'fork' start method of multiprocessing, which this platform lacks; use --workers 0")
    return _from_workers(dataset, requests, workers)


def _from_workers(dataset: _ImageLoading, requests: _BoxRequests, workers: int):
    from facemark.engine.data import WorkerLoader

    # WorkerLoader forks the workers safely (facemark.engine.data.fork_safely).
    yield from WorkerLoader(dataset, batch_size=None, sampler=requests, num_workers=workers, collate_fn=_as_is,
                            multiprocessing_context="fork", prefetch_factor=4)


class _Run:
    """One process's share of ``facemark predict``: results go to the stream as they come."""

    def __init__(self, predictor, args: argparse.Namespace, writer, drawn_folder: Path | None, progress: bool) -> None:
        self.predictor = predictor
        self.args = args
        self.writer = writer
        self.drawn_folder = drawn_folder
        self.progress = progress
        self.failures = 0
        self.drawings = 0  # files written under drawn/

    def note(self, text: str) -> None:
        from tqdm import tqdm

        tqdm.write(f"note: {text}", file=sys.stderr)

    def fail(self, name: str, reason: str) -> None:
        from tqdm import tqdm

        self.failures += 1
        self.writer.write({"type": "failed", "file": name, "reason": reason})
        tqdm.write(f"facemark predict: {name}: {reason}", file=sys.stderr)

    def images(self, items: list[InputFile], boxes_for, bar) -> None:
        """Faces of many images share forward passes: images wait until ``--batch-size`` faces
        (or as many images) are ready, then one :meth:`_finish` runs the model on all of them."""
        batch_size = self.args.batch_size
        waiting: list[_Loaded] = []
        faces = 0
        for loaded in _loaded_images(items, self.predictor, boxes_for, self.args.workers):
            if loaded.error is not None:
                self.fail(str(loaded.item.path), loaded.error)
                bar.update()
                continue
            waiting.append(loaded)
            faces += len(loaded.faces["boxes"])
            if faces >= batch_size or len(waiting) >= batch_size:
                self._finish(waiting, bar)
                waiting, faces = [], 0
        self._finish(waiting, bar)

    def _finish(self, group: list[_Loaded], bar) -> None:
        if not group:
            return
        try:
            results = self.predictor._predict_from_boxes([loaded.image for loaded in group], [loaded.faces for loaded in group],
                                                         first_crops=[loaded.crops for loaded in group])
        except (ValueError, RuntimeError) as error:
            if len(group) == 1:
                self.fail(str(group[0].item.path), str(error))
                bar.update()
                return
            for loaded in group:  # find the image the error belongs to; the others go on
                self._finish([loaded], bar)
            return
        for loaded, found in zip(group, results):
            item, image = loaded.item, loaded.image
            try:
                if self.drawn_folder is not None:
                    self._draw_image(item, image, found)
            except OSError as error:
                self.fail(str(item.path), str(error))
            else:
                if not found:
                    self.note(f"{item.path}: no face found")
                self.writer.write({"type": "image", "file": str(item.path), "width": image.shape[1], "height": image.shape[0],
                                   "faces": [face.to_dict() for face in found]})
            bar.update()

    def _draw_image(self, item: InputFile, image: np.ndarray, faces) -> None:
        import cv2

        target = (self.drawn_folder / item.name).with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        canvas = _draw(image, faces, self.predictor.output_layout)
        if not cv2.imwrite(str(target), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {target}")
        self.drawings += 1

    def video(self, item: InputFile) -> None:
        from tqdm import tqdm

        from facemark.inference.smoothing import OneEuroSettings
        from facemark.inference.video import FaceTracker, VideoReader, VideoWriter

        args, predictor = self.args, self.predictor
        reader = VideoReader(item.path)
        smoothing = None if args.no_smoothing else OneEuroSettings(args.min_cutoff, args.beta, args.derivative_cutoff)
        tracker = FaceTracker(predictor, detect_every=args.detect_every, smoothing=smoothing, fps=reader.fps, max_faces=args.max_faces)
        writer = None
        frames = []
        try:
            bar = tqdm(reader, total=reader.frame_count, desc=item.path.name, unit="frame", disable=not self.progress, leave=False)
            for index, frame in enumerate(bar):
                tracked = tracker.update(frame)
                frames.append({"frame": index, "faces": [face.to_dict() for face in tracked]})
                if self.drawn_folder is not None:
                    if writer is None:
                        writer = VideoWriter((self.drawn_folder / item.name).with_suffix(".mp4"), reader.fps, (frame.shape[1], frame.shape[0]))
                    writer.write(_draw(frame, [t.face for t in tracked], predictor.output_layout))
        finally:
            if writer is not None:
                writer.close()
                self.drawings += 1
        record = {"type": "video", "file": str(item.path), "fps": reader.fps, "frames_announced": reader.frame_count,
                  "frames_read": reader.frames_read, "smoothing": None if smoothing is None else smoothing.to_dict()}
        shortfall = reader.shortfall()
        if shortfall is not None:
            record["warning"] = shortfall
            tqdm.write(f"facemark predict: warning: {shortfall}", file=sys.stderr)
        self.writer.write({**record, "frames": frames})


# A rank that finishes its share waits for the others before rank 0 merges; the shares are
# equal, but a slow disk or detector can make one rank hours late.
_DISTRIBUTED_TIMEOUT_MINUTES = 24 * 60


def run_predict(args: argparse.Namespace) -> int:
    """``facemark predict``: returns 0 when every input was processed, 1 when any failed."""
    from facemark.engine.distributed import cleanup_distributed, init_distributed
    from facemark.inference.detectors import BoxesFromFile, load_boxes, parse_box

    try:
        fixed_boxes = np.stack([parse_box(text, "--box") for text in args.box]) if args.box else None
        boxes_file = BoxesFromFile(load_boxes(args.boxes), source=str(args.boxes)) if args.boxes else None
    except (FileNotFoundError, ValueError) as error:
        raise _error(str(error)) from None
    if args.passes < 1 or args.batch_size < 1 or args.detect_every < 0 or args.workers < 0:
        raise _error("--passes and --batch-size must be >= 1, --detect-every and --workers >= 0")
    found = collect_inputs(args.inputs)
    if not found.files:
        reasons = [f"{name}: {reason}" for name, reason in found.problems]
        reasons += [f"{folder}: no image or video files in this folder" for folder in found.empty_folders]
        reasons += [f"{link}: {reason}" for link, _, reason in found.bad_links]
        if found.skipped:
            reasons.append(f"{found.skipped} files in the folders are neither images ({', '.join(IMAGE_EXTENSIONS)}) "
                           "nor videos")
        raise _error("nothing to process: " + "; ".join(reasons))
    try:  # under torchrun: this process's rank; alone: rank 0 of 1
        context = init_distributed(args.device, timeout_minutes=_DISTRIBUTED_TIMEOUT_MINUTES)
    except RuntimeError as error:
        raise _error(str(error)) from None
    try:
        if context.distributed:
            args.device = str(context.device)  # cuda -> cuda:<local rank>
        return _predict(args, found, fixed_boxes, boxes_file, context)
    finally:
        cleanup_distributed(context)


def _predict(args, found: CollectedInputs, fixed_boxes, boxes_file, context) -> int:
    from tqdm import tqdm

    from facemark.engine.distributed import broadcast_flag, sum_over_ranks
    from facemark.inference.stream import StreamWriter, existing_outputs, finished_inputs, merge_streams, stream_path

    predictor = _make_predictor(args)
    header = _header(predictor, args)
    out = Path(args.out)
    existing = existing_outputs(out)
    # Every rank looks before any writes (the flag is a collective: all ranks wait for each other).
    if broadcast_flag(bool(existing) and not args.resume, context):
        names = ", ".join(path.name for path in existing) or "predictions of another rank"
        raise _error(f"{out} already holds predictions ({names}); pass --resume to add to them (inputs already "
                     "there are skipped) or give another --out")
    try:
        done = finished_inputs(out, header) if args.resume else set()
        writer = StreamWriter(stream_path(out, context.rank, context.world_size), header)
    except (OSError, ValueError, RuntimeError) as error:
        raise _error(str(error)) from None
    if writer.dropped_tail:
        tqdm.write(f"facemark predict: warning: {writer.path}: dropped a cut-off last record ({writer.dropped_tail} "
                   "bytes, from a run that was stopped); that input is processed again", file=sys.stderr)
    drawn_folder = out / "drawn" if args.draw else None
    progress = not args.no_progress and context.is_main
    run = _Run(predictor, args, writer, drawn_folder, progress)

    def boxes_for(item):
        if fixed_boxes is not None:
            return fixed_boxes
        if boxes_file is not None:
            boxes = boxes_file.lookup(item.path, item.root)
            if boxes is None:
                run.note(f"{item.path}: no entry in {args.boxes}, used the detector")
            return boxes
        return None

    # The deterministic order of the inputs (folders sorted, images before videos); rank r of W
    # takes every W-th of them, and skips those the output already has (--resume).
    work = [item for item in found.files if item.kind == "image"] + [item for item in found.files if item.kind == "video"]
    share = [item for item in work[context.rank :: context.world_size] if str(item.path) not in done]
    already = sum(1 for item in work if str(item.path) in done)
    with writer:
        if context.is_main:  # inputs that lead nowhere: written once, by rank 0
            for name, reason in found.problems:
                run.fail(name, reason)
            for link, _, reason in found.bad_links:
                writer.write({"type": "skipped_link", "file": link, "reason": reason})
                tqdm.write(f"facemark predict: warning: {link}: {reason}; skipped", file=sys.stderr)
            for folder in found.empty_folders:
                run.note(f"{folder}: no image or video files in this folder")
        images = [item for item in share if item.kind == "image"]
        where = f" (rank {context.rank} of {context.world_size})" if context.distributed else ""
        with tqdm(total=len(images), desc="images" + where, unit="image", disable=not progress or not images) as bar:
            run.images(images, boxes_for, bar)
        for item in share:
            if item.kind == "video":
                try:
                    run.video(item)
                except (OSError, ValueError, RuntimeError) as error:
                    run.fail(str(item.path), str(error))
    failures, drawings = sum_over_ranks([run.failures, run.drawings], context)  # also: every rank has finished
    if not context.is_main:
        return 1 if run.failures else 0

    if boxes_file is not None:
        for key in boxes_file.unused():
            run.note(f"{args.boxes}: entry {key!r} matched no input image")
    order = [name for name, _ in found.problems] + [str(item.path) for item in work] + [link for link, _, _ in found.bad_links]
    try:
        path, counts = merge_streams(out, header, order, args.format, predictor.output_layout.num_points)
    except ValueError as error:
        raise _error(str(error)) from None
    this_run = set(order)
    failed = [name for name in counts["failed"] if name in this_run]
    warnings = [text for name, text in counts["warnings"] if name in this_run]
    summary = f"{counts['images']} images ({counts['faces']} faces), {counts['videos']} videos ({counts['frames']} frames) -> {path}"
    if already:
        summary += f"; {already} inputs already in {out} were skipped (--resume)"
    if found.skipped:
        summary += f"; {found.skipped} files in the folders were not images or videos and were skipped"
    if found.bad_links:
        kinds = [kind for _, kind, _ in found.bad_links]
        link_counts = ", ".join(f"{kinds.count(kind)} {kind}" for kind in ("dangling", "loop", "unreadable") if kind in kinds)
        summary += f"; {len(kinds)} symbolic links lead nowhere and were skipped ({link_counts})"
    if drawn_folder is not None:
        summary += (f"; {drawings} drawing{'s' if drawings != 1 else ''} in {drawn_folder}" if drawings else "; no drawings written")
    if warnings:
        summary += f"; {len(warnings)} warning(s): " + "; ".join(warnings)
    print(summary)
    if failed:
        print(f"facemark predict: {len(failed)} input(s) failed: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 1 if failures else 0
