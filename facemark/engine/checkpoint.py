"""Checkpoints: atomic writes, RNG state capture, and rebuilding a trained model from its file alone.

A facemark checkpoint is a ``torch.save``'d dict::

    format           "facemark-checkpoint", version 1
    model            the model's state_dict (never DDP-wrapped: no "module." prefix)
    optimizer, scheduler, scaler   their state_dicts (scaler None when AMP is off)
    rng              python / numpy / torch / cuda generator states (:func:`capture_rng_state`)
    epoch            number of COMPLETED epochs; global_step: optimisation steps done
    best_metric, best_epoch        the selection metric (validation NME) so far
    config           the TrainConfig as plain dict (:func:`facemark.engine.config.config_to_dict`)
    model_spec       everything :func:`load_model` needs to rebuild the model stand-alone:
                     method, backbone, options, layout (dict), statistics (mean face /
                     neighbourhood as numpy arrays), crop convention (dict), image size

Security: a checkpoint is data, never code. It is read with ``torch.load(weights_only=True)``,
whose unpickler builds tensors and plain Python values only, so a crafted file cannot run
anything. To make that possible the file holds nothing else: :func:`save_checkpoint` stores a
numpy array as ``{"__ndarray__": tensor, "dtype": "float64"}`` (and numpy scalars as Python
numbers, paths as strings) and :func:`load_checkpoint` turns those back into numpy arrays; any
other object is refused when saving, with the key that holds it. Format 1 files (which pickled
numpy arrays) are read with the same restricted unpickler, allowing numpy's array
reconstruction and nothing more.

Writes go to a temporary file in the same directory, are fsync'ed and then renamed over the
target with ``os.replace``: a run killed mid-write leaves the previous checkpoint intact.
"""
from __future__ import annotations

import collections
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from facemark.layouts import Layout
from facemark.errors import WeightsError, WeightsNotFoundError
from facemark.models.weights import read_weights_file

__all__ = [
    "CHECKPOINT_FORMAT",
    "read_weights_file",
    "to_plain",
    "from_plain",
    "save_checkpoint",
    "load_checkpoint",
    "remove_stale_temporaries",
    "read_resume_checkpoint",
    "capture_rng_state",
    "restore_rng_state",
    "LoadedModel",
    "load_model",
]

CHECKPOINT_FORMAT = "facemark-checkpoint"
CHECKPOINT_VERSION = 2
# Format 1 (facemark 0.1 before plain-type checkpoints) pickled numpy arrays; still readable.
_READABLE_VERSIONS = (1, 2)
_NDARRAY_TAG = "__ndarray__"


def to_plain(value: Any, key: str = "state") -> Any:
    """``value`` as tensors and plain Python values only (what ``weights_only`` loading accepts).

    Numpy arrays become ``{"__ndarray__": tensor, "dtype": name}``, numpy scalars Python numbers,
    paths strings; anything else that is not a tensor or a plain value is a ``TypeError`` naming
    ``key`` (the dotted path of the entry), so a checkpoint that could not be read back safely is
    never written.
    """
    if isinstance(value, torch.Tensor) or value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise TypeError(f"checkpoint entry {key}: a numpy array of Python objects cannot be stored safely")
        return {_NDARRAY_TAG: torch.from_numpy(np.ascontiguousarray(value).copy()), "dtype": value.dtype.str}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        plain = {}
        for name, item in value.items():
            if not isinstance(name, (str, int)):
                raise TypeError(f"checkpoint entry {key}: key {name!r} is a {type(name).__name__}, not a string or int")
            plain[name] = to_plain(item, f"{key}.{name}")
        # Keep the mapping's type where weights_only loading rebuilds it (OrderedDict, Counter):
        # schedulers' state dicts hold a Counter of milestones.
        return type(value)(plain) if type(value) in (collections.OrderedDict, collections.Counter) else plain
    if isinstance(value, (list, tuple)):
        items = [to_plain(item, f"{key}[{index}]") for index, item in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    raise TypeError(f"checkpoint entry {key}: a {type(value).__module__}.{type(value).__qualname__} is not a tensor "
                    "or a plain value and cannot be stored in a checkpoint that loads without running code")


def from_plain(value: Any) -> Any:
    """Inverse of :func:`to_plain`: tagged entries back to numpy arrays."""
    if isinstance(value, dict):
        if _NDARRAY_TAG in value and set(value) == {_NDARRAY_TAG, "dtype"}:
            return value[_NDARRAY_TAG].numpy().astype(np.dtype(value["dtype"]), copy=False)
        restored = {name: from_plain(item) for name, item in value.items()}
        return type(value)(restored) if type(value) in (collections.OrderedDict, collections.Counter) else restored
    if isinstance(value, list):
        return [from_plain(item) for item in value]
    if isinstance(value, tuple):
        return tuple(from_plain(item) for item in value)
    return value


def save_checkpoint(state: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file + fsync + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = to_plain({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state})
    # The temporary file must be in the same directory: os.replace is atomic only within a
    # file system.
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    # Make the rename itself durable (POSIX; directories cannot be opened on Windows).
    if hasattr(os, "O_DIRECTORY"):
        directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a facemark checkpoint without running code from it; errors name the file and what is
    wrong with it (:class:`facemark.errors.WeightsError`, a ``ValueError``; ``WeightsNotFoundError``, a
    ``FileNotFoundError``, when missing)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"checkpoint {path} does not exist")
    state = read_weights_file(path, "checkpoint", map_location, allow_numpy=True)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise WeightsError(f"{path} is not a facemark checkpoint (no format={CHECKPOINT_FORMAT!r} entry)")
    if state.get("version") not in _READABLE_VERSIONS:
        raise WeightsError(f"checkpoint {path} has version {state.get('version')!r}; this facemark reads "
                              f"{', '.join(map(str, _READABLE_VERSIONS))}")
    return from_plain(state)


def _temporary_pattern(name: str) -> str:
    return f".{name}.*.tmp"  # what save_checkpoint's mkstemp creates for ``name``


def remove_stale_temporaries(directory: str | Path, names: tuple[str, ...] = ("last.pt", "best.pt")) -> list[Path]:
    """Delete the temporary files of checkpoint writes that were killed before their rename.

    ``save_checkpoint`` writes ``.<name>.<random>.tmp`` beside the target; a process killed
    mid-write (SIGKILL, power loss) leaves it behind, up to the size of a checkpoint. Call this
    when a run starts in ``directory`` (before anything writes there); returns what was removed.
    """
    removed = []
    for name in names:
        for temporary in sorted(Path(directory).glob(_temporary_pattern(name))):
            if temporary.is_file():
                temporary.unlink()
                removed.append(temporary)
    return removed


def _describe_checkpoint(path: Path) -> str:
    try:
        state = load_checkpoint(path)
    except (OSError, ValueError) as error:
        return f"{path} (unreadable too: {str(error).split(': ', 1)[-1][:80]})"
    return f"{path} (after epoch {state.get('epoch')})"


def read_resume_checkpoint(output_dir: str | Path, resume_from: str | Path | None = None) -> tuple[dict, Path]:
    """The checkpoint a resumed run continues from: ``resume_from`` or ``<output_dir>/last.pt``.

    When it is missing or unreadable (a truncated ``last.pt``: a disk filled up, a copy cut
    short), the error lists the other checkpoints of the run (``best.pt``...) with their epochs
    and says how to continue from one of them (``--resume-from FILE``).
    """
    output_dir = Path(output_dir)
    path = Path(resume_from) if resume_from is not None else output_dir / "last.pt"
    try:
        return load_checkpoint(path), path
    except (FileNotFoundError, WeightsError) as error:
        others = [candidate for candidate in sorted(output_dir.glob("*.pt")) if candidate.resolve() != path.resolve()]
        if not others:
            raise
        listing = "; ".join(_describe_checkpoint(candidate) for candidate in others)
        raise type(error)(f"{error}. Other checkpoints of this run: {listing}. To continue from one of them: "
                          f"facemark train CONFIG [the same overrides] --resume-from {others[0]}") from None


# -- random number generators --------------------------------------------------------------------
def capture_rng_state() -> dict:
    """The states of every global RNG a training step may draw from."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states are restored when CUDA is available)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu() if isinstance(state["torch"], torch.Tensor) else state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        cuda_states = list(state["cuda"])
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])


# -- rebuilding the model ------------------------------------------------------------------------
@dataclass
class LoadedModel:
    """A trained model and what is needed to use it on new images.

    Attributes:
        model: the network in eval mode (the facemark model contract: ``model(images).landmarks``
            in normalised crop coordinates).
        layout: the landmark layout it predicts.
        crop: the crop convention it was trained with (``facemark.data.transforms.CropConvention``).
        method, backbone: what it is, e.g. ``"slpt"``, ``"hrnet_w18c_lite"``.
        epoch: completed training epochs; best_metric: its validation NME at selection.
        config: the training config as a plain dict.
        path: the checkpoint file.
    """

    model: nn.Module
    layout: Layout
    crop: Any
    method: str
    backbone: str
    epoch: int
    best_metric: float | None
    config: dict
    path: Path

    @property
    def name(self) -> str:
        """A short human-readable name: method, backbone and checkpoint file."""
        return f"{self.method} {self.backbone} ({self.path.name})"


def load_model(path: str | Path, device: str | torch.device = "cpu", methods: Mapping | None = None) -> LoadedModel:
    """Rebuild a trained model from a checkpoint file alone (no config file, no dataset needed).

    ``methods`` maps method names to :class:`facemark.engine.methods.Method` adapters; the
    default is :data:`facemark.engine.methods.METHODS`.
    """
    from facemark.data.transforms import CropConvention
    from facemark.engine.methods import METHODS, build_model_from_spec

    path = Path(path)
    state = load_checkpoint(path)
    spec = state.get("model_spec")
    if spec is None:
        raise WeightsError(f"checkpoint {path} has no 'model_spec' entry; it cannot be rebuilt stand-alone")
    model = build_model_from_spec(spec, METHODS if methods is None else methods)
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as error:
        raise WeightsError(f"checkpoint {path}: the weights do not fit the model described in it: {error}") from None
    model.to(device).eval()
    return LoadedModel(
        model=model,
        layout=Layout.from_dict(spec["layout"]),
        crop=CropConvention.from_dict(spec["crop"]),
        method=spec["method"],
        backbone=spec["backbone"],
        epoch=int(state.get("epoch", 0)),
        best_metric=state.get("best_metric"),
        config=state.get("config", {}),
        path=path,
    )
