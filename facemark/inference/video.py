"""Landmarks on video: reading and writing frames, tracking faces from the previous frame's
landmarks, and One-Euro smoothing.

Tracking. Running the detector on every frame is slow (Haar) and jittery (its box jumps by a few
pixels from frame to frame). A model trained on tight-landmark-box crops (SLPT) does not need it:
the tight box of the landmarks it predicted on the previous frame IS its training box, so each
frame is cropped from the previous frame's landmarks (no detector, no calibration error). The
detector runs on the first frame, every ``detect_every`` frames (to find new faces and to drop
tracks the detector no longer confirms), and whenever a track is lost. The model gives no
confidence, so "lost" is geometric: the landmark box changed size by more than ``max_scale_change``
or its centre moved by more than ``max_shift`` box sides in one frame, or left the image.
Models trained on other box sources (dataset or detector boxes) are re-detected every frame.

Smoothing: each track has a :class:`~facemark.inference.smoothing.LandmarkSmoother`; the crop
of the next frame is made from the UNsmoothed landmarks (smoothing would add lag to the tracking).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from facemark.data.transforms import landmark_box
from facemark.inference.detectors import IDENTITY_CALIBRATION, box_iou
from facemark.inference.predictor import FaceLandmarks, Predictor
from facemark.inference.smoothing import LandmarkSmoother, OneEuroSettings

__all__ = ["TrackedFace", "FaceTracker", "VideoReader", "VideoWriter", "VIDEO_EXTENSIONS"]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")


@dataclass
class TrackedFace:
    """One face in one frame: ``face.landmarks`` are smoothed (when smoothing is on),
    ``raw_landmarks`` are the model's output for this frame."""

    track_id: int
    face: FaceLandmarks
    raw_landmarks: np.ndarray
    detected: bool  # True when this frame's crop came from the detector, False when tracked

    def to_dict(self) -> dict:
        return {"track": self.track_id, "detected": self.detected, **self.face.to_dict()}


@dataclass
class _Track:
    track_id: int
    landmarks: np.ndarray  # the last raw prediction (model layout)
    smoother: LandmarkSmoother | None
    missed_detections: int = 0
    box: np.ndarray = field(default=None)  # the last detector box, for non-landmark models


def _side(box: np.ndarray) -> float:
    return float(max(box[2] - box[0], box[3] - box[1]))


class FaceTracker:
    """Frame-by-frame landmarks with tracking and smoothing (see the module docstring).

    Args:
        predictor: the :class:`~facemark.inference.predictor.Predictor` (its detector is used).
        detect_every: run the detector every this many frames (0: only on the first frame and
            when a track is lost).
        smoothing: One-Euro settings, or None for raw landmarks.
        fps: frames per second (the filter's time step).
        max_faces: keep at most this many faces (highest detector score first); None: all.
        max_scale_change, max_shift: when a track counts as lost.
        keep_unconfirmed: a track the detector does not confirm survives this many detections.
    """

    def __init__(
        self,
        predictor: Predictor,
        detect_every: int = 10,
        smoothing: OneEuroSettings | None = OneEuroSettings(),
        fps: float = 30.0,
        max_faces: int | None = None,
        max_scale_change: float = 1.5,
        max_shift: float = 0.5,
        keep_unconfirmed: int = 1,
        match_iou: float = 0.3,
    ) -> None:
        if predictor.detector is None:
            raise ValueError("FaceTracker: the predictor has no detector (detector=None)")
        if detect_every < 0:
            raise ValueError(f"FaceTracker: detect_every must be >= 0, got {detect_every}")
        self.predictor = predictor
        self.detect_every = detect_every
        self.smoothing = smoothing
        self.fps = fps
        self.max_faces = max_faces
        self.max_scale_change = max_scale_change
        self.max_shift = max_shift
        self.keep_unconfirmed = keep_unconfirmed
        self.match_iou = match_iou
        self.tracking = predictor.crop.box_source == "landmarks"
        self.tracks: list[_Track] = []
        self.frame_index = 0
        self._ids = itertools.count()

    def _new_track(self, landmarks: np.ndarray, box: np.ndarray | None = None) -> _Track:
        smoother = LandmarkSmoother(self.smoothing, frequency=self.fps) if self.smoothing is not None else None
        return _Track(next(self._ids), landmarks, smoother, box=box)

    def _lost(self, previous: np.ndarray, current: np.ndarray, shape: tuple[int, ...]) -> bool:
        before, after = np.asarray(landmark_box(previous)), np.asarray(landmark_box(current))
        ratio = _side(after) / max(_side(before), 1e-6)
        shift = np.linalg.norm((after[:2] + after[2:]) / 2 - (before[:2] + before[2:]) / 2) / max(_side(before), 1e-6)
        centre_x, centre_y = (after[0] + after[2]) / 2, (after[1] + after[3]) / 2
        outside = not (0 <= centre_x < shape[1] and 0 <= centre_y < shape[0])
        return ratio > self.max_scale_change or ratio < 1 / self.max_scale_change or shift > self.max_shift or outside

    def update(self, frame: np.ndarray) -> list[TrackedFace]:
        """Landmarks of the faces in the next frame (``(H, W, 3)`` uint8 RGB)."""
        predictor = self.predictor
        index = self.frame_index
        self.frame_index += 1
        time = index / self.fps

        # 1. Track: crop every live track from its previous landmarks (identity calibration:
        #    the landmark box is the model's box source).
        survivors: list[tuple[_Track, FaceLandmarks]] = []
        lost_any = False
        if self.tracking and self.tracks:
            boxes = np.array([landmark_box(track.landmarks) for track in self.tracks])
            request = {"boxes": boxes, "scores": [None] * len(boxes), "source": "tracking", "calibration": IDENTITY_CALIBRATION}
            faces = predictor._predict_from_boxes([frame], [request], convert_layout=False)[0]
            for track, face in zip(self.tracks, faces):
                if self._lost(track.landmarks, face.landmarks, frame.shape):
                    lost_any = True
                else:
                    survivors.append((track, face))
        detect = (
            not self.tracking
            or not survivors
            or lost_any
            or (self.detect_every > 0 and index % self.detect_every == 0)
        )

        # 2. Detect: new faces; confirm the tracks (or, for non-landmark models, continue them).
        detected: list[tuple[_Track | None, FaceLandmarks]] = []
        if detect:
            found, scores = predictor.detect(frame)
            if self.max_faces is not None:
                found, scores = found[: self.max_faces], scores[: self.max_faces]
            if self.tracking:  # compare like with like: calibrated detections and landmark boxes
                candidates = survivors
                detection_boxes = predictor.detector_calibration.apply(found)
                candidate_boxes = [landmark_box(track.landmarks) for track, _ in candidates]
            else:  # this frame's detector boxes and the last frame's
                candidates = [(track, None) for track in self.tracks]
                detection_boxes = found
                candidate_boxes = [track.box for track, _ in candidates]
            matches = _match(detection_boxes, np.array(candidate_boxes).reshape(-1, 4), self.match_iou)
            confirmed = set(matches.values())
            kept = []
            for position, (track, face) in enumerate(candidates):
                track.missed_detections = 0 if position in confirmed else track.missed_detections + 1
                if self.tracking and track.missed_detections <= self.keep_unconfirmed:
                    kept.append((track, face))
            survivors = kept
            # With tracking, a confirmed face keeps its tracked crop and only new faces are
            # cropped from the detector; without, every detection is, continuing its track.
            use = [d for d in range(len(found)) if not (self.tracking and d in matches)]
            if use:
                name = getattr(predictor.detector, "name", type(predictor.detector).__name__)
                request = {
                    "boxes": found[use],
                    "scores": [scores[d] for d in use],
                    "source": f"detector:{name}",
                    "calibration": predictor.detector_calibration,
                }
                faces = predictor._predict_from_boxes([frame], [request], convert_layout=False)[0]
                owners = [candidates[matches[d]][0] if d in matches else None for d in use]
                detected = list(zip(owners, faces))
        # 3. Commit: update the tracks and smooth.
        results: list[TrackedFace] = []
        next_tracks: list[_Track] = []
        for track, face, from_detector in [(t, f, False) for t, f in survivors] + [(t, f, True) for t, f in detected]:
            if track is None:
                track = self._new_track(face.landmarks)
            track.landmarks, track.box = face.landmarks, face.box
            # Smoothed and output in the predictor's output layout (e.g. 68 points from 98);
            # the track itself keeps the model's points.
            raw = predictor.convert_layout(face.landmarks)
            smoothed = raw if track.smoother is None else track.smoother(raw, _side(face.crop_box), time)
            next_tracks.append(track)
            output = FaceLandmarks(smoothed, predictor.output_layout, face.box, face.crop_box, face.score, face.box_source)
            results.append(TrackedFace(track.track_id, output, raw, from_detector))
        self.tracks = next_tracks
        return results


def _match(detections: np.ndarray, tracks: np.ndarray, min_iou: float) -> dict[int, int]:
    """Greedy one-to-one matching by IoU (highest first): detection index -> track index."""
    if len(detections) == 0 or len(tracks) == 0:
        return {}
    overlap = box_iou(detections, tracks)
    matches: dict[int, int] = {}
    for flat in np.argsort(-overlap, axis=None, kind="stable"):
        detection, track = divmod(int(flat), overlap.shape[1])
        if overlap[detection, track] < min_iou:
            break
        if detection not in matches and track not in matches.values():
            matches[detection] = track
    return matches


# -- video files ------------------------------------------------------------------------------------
class VideoReader:
    """Frames of a video file as ``(H, W, 3)`` uint8 RGB; errors name the file.

    ``frame_count`` is the number of frames the container announces (None when it does not say);
    after iterating, ``frames_read`` is the number decoded and :meth:`shortfall` says whether a
    truncated or damaged file stopped decoding early (OpenCV just ends the stream there).
    """

    def __init__(self, path: str | Path) -> None:
        import cv2

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"video file {self.path} does not exist")
        self.capture = cv2.VideoCapture(str(self.path))
        if not self.capture.isOpened():
            raise ValueError(f"video file {self.path} could not be opened (not a video OpenCV can read)")
        fps = self.capture.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and np.isfinite(fps) and fps > 0 else 30.0
        count = int(self.capture.get(cv2.CAP_PROP_FRAME_COUNT))
        self.frame_count = count if count > 0 else None
        self.frames_read = 0

    def __iter__(self) -> Iterator[np.ndarray]:
        import cv2

        while True:
            ok, frame = self.capture.read()
            if not ok:
                break
            self.frames_read += 1
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        self.capture.release()
        if self.frames_read == 0:
            raise ValueError(f"video file {self.path}: no frame could be decoded")

    def shortfall(self) -> str | None:
        """After iterating: a one-line warning naming the file when fewer frames were decoded
        than the container announces, else None."""
        if self.frame_count is None or self.frames_read >= self.frame_count:
            return None
        return (f"{self.path}: only {self.frames_read} of the {self.frame_count} frames the file announces could be "
                f"decoded (truncated or damaged file?); landmarks cover frames 0-{self.frames_read - 1}")


class VideoWriter:
    """Writes RGB frames to a video file (``.mp4`` with the mp4v codec, ``.avi`` with MJPG)."""

    def __init__(self, path: str | Path, fps: float, size: tuple[int, int]) -> None:
        import cv2

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        codec = "MJPG" if self.path.suffix.lower() == ".avi" else "mp4v"
        self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*codec), fps, size)
        if not self.writer.isOpened():
            raise RuntimeError(f"could not open {self.path} for writing with codec {codec} (OpenCV build without it?)")

    def write(self, frame: np.ndarray) -> None:
        import cv2

        self.writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        self.writer.release()
