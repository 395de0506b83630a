"""Temporal smoothing of landmark tracks: the One-Euro filter.

The One-Euro filter (Casiez, Roussel and Vogel, "1 Euro Filter: A Simple Speed-based Low-pass
Filter for Noisy Input in Interactive Systems", CHI 2012) is a first-order low-pass filter whose
cut-off frequency rises with the signal's speed: a still face is smoothed hard (no jitter), a
moving face is followed with little lag. Per sample, with ``dt`` the time since the last one::

    alpha(f) = 1 / (1 + 1 / (2 * pi * f * dt))            # smoothing factor of cut-off f
    speed    = lowpass((x - x_prev_filtered) / dt, alpha(derivative_cutoff))
    cutoff   = min_cutoff + beta * |speed|
    x_filtered = lowpass(x, alpha(cutoff))

``min_cutoff`` (Hz) sets the jitter removed at rest (lower = smoother); ``beta`` sets how fast
the cut-off rises with speed (higher = less lag). Both depend on the units of ``x``: facemark
filters landmarks in units of the face size (see :class:`LandmarkSmoother`) so one setting works
for small and large faces.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["OneEuroSettings", "OneEuroFilter", "LandmarkSmoother"]


@dataclass(frozen=True)
class OneEuroSettings:
    """The filter's three parameters (units: Hz, and 1/(units of x) for ``beta``).

    The defaults are for landmarks measured in face sizes (:class:`LandmarkSmoother`): at rest the
    cut-off is 1 Hz; a face moving at one face-size per second raises it by ``beta`` Hz.
    """

    min_cutoff: float = 1.0
    beta: float = 5.0
    derivative_cutoff: float = 1.0

    def __post_init__(self) -> None:
        for name in ("min_cutoff", "derivative_cutoff"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"One-Euro filter: {name} must be a positive number of Hz, got {value!r}")
        if not (math.isfinite(self.beta) and self.beta >= 0):
            raise ValueError(f"One-Euro filter: beta must be >= 0, got {self.beta!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def _smoothing_factor(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
    # Exponential smoothing factor of a first-order low-pass filter with the given cut-off.
    tau = 1.0 / (2.0 * math.pi * np.asarray(cutoff))
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """Element-wise One-Euro filter for arrays of any (fixed) shape.

    Call :meth:`__call__` with each new sample and its time stamp in seconds (or leave the time
    out and give ``frequency``: samples are then ``1 / frequency`` apart). The first sample is
    returned unchanged.
    """

    def __init__(self, settings: OneEuroSettings | None = None, frequency: float | None = None) -> None:
        self.settings = settings or OneEuroSettings()
        if frequency is not None and not (math.isfinite(frequency) and frequency > 0):
            raise ValueError(f"One-Euro filter: frequency must be a positive number of Hz, got {frequency!r}")
        self.frequency = frequency
        self.reset()

    def reset(self) -> None:
        """Forget the past: the next sample starts a new track."""
        self._previous: np.ndarray | None = None
        self._previous_speed: np.ndarray | None = None
        self._previous_time: float | None = None

    def __call__(self, sample: np.ndarray, time: float | None = None) -> np.ndarray:
        sample = np.asarray(sample, dtype=np.float64)
        if time is None:
            if self.frequency is None:
                raise ValueError("One-Euro filter: give each sample's time or construct the filter with a frequency")
            time = (self._previous_time + 1.0 / self.frequency) if self._previous_time is not None else 0.0
        if self._previous is None:
            self._previous, self._previous_speed, self._previous_time = sample.copy(), np.zeros_like(sample), time
            return sample.copy()
        if sample.shape != self._previous.shape:
            raise ValueError(f"One-Euro filter: sample shape {sample.shape} differs from the track's {self._previous.shape}")
        dt = time - self._previous_time
        if not dt > 0:
            raise ValueError(f"One-Euro filter: time stamps must increase (got {time} after {self._previous_time})")
        settings = self.settings
        speed = (sample - self._previous) / dt
        alpha_speed = _smoothing_factor(settings.derivative_cutoff, dt)
        # Low-pass written as prev + alpha * (new - prev): a constant signal stays bit-exact.
        speed = self._previous_speed + alpha_speed * (speed - self._previous_speed)
        cutoff = settings.min_cutoff + settings.beta * np.abs(speed)
        alpha = _smoothing_factor(cutoff, dt)
        filtered = self._previous + alpha * (sample - self._previous)
        self._previous, self._previous_speed, self._previous_time = filtered, speed, time
        return filtered.copy()


class LandmarkSmoother:
    """One-Euro smoothing of one face's ``(K, 2)`` landmarks in units of the face size.

    Landmarks are divided by the face size (the side of the face's crop, passed with each
    frame) before filtering and multiplied back after, so the same settings smooth a 50-pixel and
    a 500-pixel face alike. The size of the FIRST frame of the track is used throughout, so the
    scale itself is not a source of jitter.
    """

    def __init__(self, settings: OneEuroSettings | None = None, frequency: float = 30.0) -> None:
        self.filter = OneEuroFilter(settings, frequency=frequency)
        self._scale: float | None = None

    def reset(self) -> None:
        self.filter.reset()
        self._scale = None

    def __call__(self, landmarks: np.ndarray, face_size: float, time: float | None = None) -> np.ndarray:
        if self._scale is None:
            if not face_size > 0:
                raise ValueError(f"LandmarkSmoother: face_size must be positive, got {face_size!r}")
            self._scale = float(face_size)
        return self.filter(np.asarray(landmarks, dtype=np.float64) / self._scale, time) * self._scale
