"""Pose-based data balancing (PDB; Feng et al., "Wing loss", CVPR 2018), as SDFL trains with it.

Faces are binned by a one-dimensional "pose" score: the projection of each landmark vector on the
first principal component of the training shapes (mostly yaw), in absolute value, histogrammed in
``num_bins`` equal-width bins (SDFL uses 9). Samples of rare bins are then repeated so that every bin
is seen about as often as the most populated one: each sample is repeated
``round(max_bin_count / its_bin_count)`` times, as in the SDFL release.

A training loop uses :func:`pdb_indices` (an index list with repetitions, to shuffle each epoch) or
:func:`pdb_sampling_weights` (for ``torch.utils.data.WeightedRandomSampler``).

Shapes should be in a common frame (the training crops). :func:`shapes_in_box_frame` moves shapes
given in original-image pixels to that frame: centred on the landmark box, divided by its larger side.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["shapes_in_box_frame", "PoseBins", "pose_bins", "pdb_repeat_counts", "pdb_indices", "pdb_sampling_weights"]


def _check_shapes(landmarks: np.ndarray, where: str) -> np.ndarray:
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.ndim != 3 or landmarks.shape[2] != 2:
        raise ValueError(f"{where}: landmarks must be an (n, N, 2) array, got shape {landmarks.shape}")
    if landmarks.shape[0] < 2:
        raise ValueError(f"{where}: need at least 2 shapes, got {landmarks.shape[0]}")
    if not np.all(np.isfinite(landmarks)):
        bad = sorted(set(np.argwhere(~np.isfinite(landmarks))[:, 0].tolist()))
        raise ValueError(f"{where}: landmarks of shapes {bad[:10]} are not finite")
    return landmarks


def shapes_in_box_frame(landmarks: np.ndarray) -> np.ndarray:
    """(n, N, 2) shapes centred on their landmark box and divided by its larger side.

    This is the frame of the square crops SDFL trains on (a square around the landmark box), without
    committing to a crop size; it removes the face's position and size in the original image, which
    would otherwise dominate any statistic taken over the shapes.
    """
    landmarks = _check_shapes(landmarks, "shapes_in_box_frame")
    low, high = landmarks.min(axis=1, keepdims=True), landmarks.max(axis=1, keepdims=True)
    size = (high - low).max(axis=2, keepdims=True)
    if np.any(size <= 0):
        bad = np.flatnonzero(size.ravel() <= 0)
        raise ValueError(f"shapes_in_box_frame: shapes {bad[:10].tolist()} have all points at one position")
    return (landmarks - (low + high) / 2) / size


@dataclass
class PoseBins:
    """Result of :func:`pose_bins`: per-sample bin, bin counts and edges, and the pose scores."""

    bin_index: np.ndarray  # (n,) int, 0 .. num_bins - 1
    counts: np.ndarray  # (num_bins,) int
    edges: np.ndarray  # (num_bins + 1,) float
    scores: np.ndarray  # (n,) float, |projection on the first principal component|


def pose_bins(landmarks: np.ndarray, num_bins: int = 9) -> PoseBins:
    """Bin shapes by |projection on the first principal component| in ``num_bins`` equal-width bins.

    ``landmarks`` (n, N, 2) are used as given (flattened to 2N-vectors, as the release does with its
    pre-cropped shapes); use :func:`shapes_in_box_frame` first for original-image coordinates.
    """
    landmarks = _check_shapes(landmarks, "pose_bins")
    if num_bins < 1:
        raise ValueError(f"pose_bins: num_bins must be >= 1, got {num_bins}")
    vectors = landmarks.reshape(len(landmarks), -1)
    centred = vectors - vectors.mean(axis=0)
    # First right-singular vector = first principal axis of the centred shape vectors.
    _, _, right = np.linalg.svd(centred, full_matrices=False)
    scores = np.abs(centred @ right[0])
    edges = np.histogram_bin_edges(scores, bins=num_bins)
    # Bins are [e_b, e_b+1), the last one closed on the right (as np.histogram); counting from the
    # per-sample bins keeps the counts and the assignment consistent at the edges.
    bin_index = np.clip(np.searchsorted(edges[1:-1], scores, side="right"), 0, num_bins - 1)
    counts = np.bincount(bin_index, minlength=num_bins)
    return PoseBins(bin_index=bin_index, counts=counts, edges=edges, scores=scores)


def pdb_repeat_counts(landmarks: np.ndarray, num_bins: int = 9) -> np.ndarray:
    """(n,) int: how many times each sample is used per epoch, ``round(max_count / count(bin))``."""
    bins = pose_bins(landmarks, num_bins)
    per_bin = np.zeros(num_bins, dtype=np.int64)
    filled = bins.counts > 0
    per_bin[filled] = np.rint(bins.counts.max() / bins.counts[filled]).astype(np.int64)
    return per_bin[bins.bin_index]


def pdb_indices(landmarks: np.ndarray, num_bins: int = 9, shuffle_seed: int | None = None) -> np.ndarray:
    """Sample indices for one balanced epoch: index ``i`` appears ``pdb_repeat_counts[i]`` times.

    Sorted by index unless ``shuffle_seed`` is given (then permuted with that seed).
    """
    repeats = pdb_repeat_counts(landmarks, num_bins)
    indices = np.repeat(np.arange(len(repeats)), repeats)
    if shuffle_seed is not None:
        indices = np.random.default_rng(shuffle_seed).permutation(indices)
    return indices


def pdb_sampling_weights(landmarks: np.ndarray, num_bins: int = 9) -> np.ndarray:
    """(n,) float weights proportional to the repeat counts, summing to 1 (for weighted sampling)."""
    repeats = pdb_repeat_counts(landmarks, num_bins).astype(np.float64)
    return repeats / repeats.sum()
