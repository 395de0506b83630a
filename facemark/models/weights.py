"""Loading pretrained weight files by parameter name (the ImageNet initialisation of backbones).

One implementation for every backbone (:func:`facemark.models.hrnet.load_imagenet_hrnet`,
:func:`facemark.models.resnet.load_imagenet_resnet`): nothing is downloaded, nothing is skipped
silently -- every key ends up in the returned report as matched, missing, unexpected or
shape-mismatched.
"""
from __future__ import annotations

import logging
import re
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from facemark.errors import WeightsError, WeightsNotFoundError

__all__ = ["read_weights_file", "read_state_dict", "load_matching_weights", "weights_file_errors", "key_listing",
           "strict_load_problems"]

logger = logging.getLogger(__name__)

# Prefixes that wrapping adds to key names: DataParallel ("module.") and a model holding the
# network as its backbone ("backbone.").
_WRAPPER_PREFIXES = ("module.", "backbone.")


def _numpy_reconstruction_globals() -> list:
    """What the restricted unpickler needs, besides its defaults, to rebuild a pickled numpy array
    (format 1 checkpoints): numpy's array reconstruction and dtype classes -- no callable that
    can do anything but allocate an array."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    dtype_classes = [type(np.dtype(name)) for name in
                     ("bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64",
                      "float16", "float32", "float64")]
    return [_reconstruct, np.ndarray, np.dtype, *dtype_classes]


def read_weights_file(path: str | Path, what: str = "weights", map_location: str | torch.device = "cpu",
                      allow_numpy: bool = False, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` with errors that name the file.

    The one place facemark reads a ``.pt`` / ``.pth`` file: the restricted unpickler rebuilds
    tensors and plain Python values and refuses everything else, so a crafted file cannot run
    code. ``allow_numpy`` also admits pickled numpy arrays (format 1 checkpoints). ``mmap``
    (zip-format files only) maps the tensors' bytes instead of reading them: a cheap look at the
    file's structure and key names.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"{what} file {path} does not exist")
    try:
        with warnings.catch_warnings():
            # Files pickled with protocol > 2 (plain pickle.dump) get a warning from the restricted
            # unpickler; it reads them, or refuses them below.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            if allow_numpy:
                with torch.serialization.safe_globals(_numpy_reconstruction_globals()):
                    return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as error:  # truncated, not a torch file, or holding something not allowed
        message = str(error)
        with open(path, "rb") as file:
            start = file.read(4)
        # Pickles of protocol 2 and above (what torch.save writes, also inside its zip archives)
        # start with PROTO (0x80); a zip archive with "PK".
        if not start.startswith((b"\x80", b"PK")):
            raise WeightsError(f"{what} file {path} could not be read: it is not a PyTorch weights file "
                               "(neither torch.save's zip archive nor a pickle)") from None
        if "WeightsUnpickler error" in message or "Unsupported global" in message:
            found = re.search(r"Unsupported global: GLOBAL (\S+)", message) or re.search(r"WeightsUnpickler error:\s*(.+)", message)
            reason = (f"it holds pickled Python objects, not only tensors and plain values ({found.group(1).strip()}); "
                      "facemark never runs code from a weights file")
        else:
            reason = f"{type(error).__name__}: {message.splitlines()[0] if message else ''}"
        raise WeightsError(f"{what} file {path} could not be read: {reason}") from None


@contextmanager
def weights_file_errors(path: str | Path, what: str = "weights file") -> Iterator[None]:
    """Around the code that reads and uses the weights file ``path``: any failure there becomes a
    one-line :class:`~facemark.errors.WeightsError` naming the file (a missing file:
    :class:`~facemark.errors.WeightsNotFoundError`), whatever the reader raised (pickle, zip,
    protobuf and TorchScript errors all differ). The original error's type and first line are
    kept in the message."""
    try:
        yield
    except WeightsError:
        raise
    except Exception as error:  # noqa: BLE001 -- every reader's failure, named once
        lines = str(error).strip().splitlines()
        first = lines[0].strip() if lines else ""
        if isinstance(error, FileNotFoundError):
            raise WeightsNotFoundError(first if str(path) in first else f"{what} {path} does not exist") from None
        if str(path) in first:  # the reader already named the file (facemark's own loaders do)
            raise WeightsError(first) from None
        detail = f"{type(error).__name__}: {first}" if first else type(error).__name__
        raise WeightsError(f"{what} {path} could not be read ({detail})") from None


def read_state_dict(path: str | Path, what: str, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a local ``.pth`` state dict (a plain one, or inside a ``"state_dict"`` / ``"model"``
    entry) with ``weights_only=True``; ``what`` names the weights in the errors."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"{what} weights not found: {path} (facemark never downloads weights)")
    loaded = read_weights_file(path, f"{what} weights", map_location)
    if isinstance(loaded, dict):
        for wrapper_key in ("state_dict", "model"):
            if isinstance(loaded.get(wrapper_key), dict):
                loaded = loaded[wrapper_key]
                break
    if not isinstance(loaded, dict):
        raise WeightsError(f"{path}: expected a state dict (name -> tensor), got {type(loaded).__name__}")
    return loaded


def load_matching_weights(module: nn.Module, path: str | Path, what: str, strict: bool = False,
                          map_location: str | torch.device = "cpu") -> dict[str, list[str]]:
    """Load the tensors of ``path`` whose names (wrapper prefixes removed) and shapes fit ``module``.

    Returns ``{"matched", "missing", "unexpected", "shape_mismatch"}`` lists of key names
    (``shape_mismatch`` entries read ``"key: file (..) vs module (..)"``), also logged. With
    ``strict=True`` a missing or mis-shaped key is an error.
    """
    file_state = {}
    for key, value in read_state_dict(path, what, map_location).items():
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        file_state[key] = value

    own_state = module.state_dict()
    report: dict[str, list[str]] = {"matched": [], "missing": [], "unexpected": [], "shape_mismatch": []}
    to_load = {}
    for key, value in file_state.items():
        if key not in own_state:
            report["unexpected"].append(key)
        elif tuple(value.shape) != tuple(own_state[key].shape):
            report["shape_mismatch"].append(f"{key}: file {tuple(value.shape)} vs module {tuple(own_state[key].shape)}")
        else:
            to_load[key] = value
            report["matched"].append(key)
    report["missing"] = [key for key in own_state if key not in file_state]
    if strict and (report["missing"] or report["shape_mismatch"]):
        raise ValueError(f"{path}: {len(report['missing'])} missing keys (e.g. {report['missing'][:3]}), "
                         f"shape mismatches: {report['shape_mismatch'][:3]}")
    module.load_state_dict(to_load, strict=False)
    log = logger.warning if report["shape_mismatch"] else logger.info
    log("%s weights from %s: %s", what, path, summarise(report))
    return report


def summarise(report: dict[str, list[str]]) -> str:
    """One line: the count of each kind of key, with examples of the non-matching ones."""
    return "; ".join(f"{name} {len(keys)}" + (f" (e.g. {', '.join(keys[:3])})" if keys and name != "matched" else "")
                     for name, keys in report.items())


def key_listing(keys: list[str], limit: int = 12) -> str:
    """``keys`` for an error message: the first ``limit`` of them, and how many there are in all."""
    return ", ".join(keys[:limit]) + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def strict_load_problems(found: dict, expected: dict, name=lambda key: key) -> list[str]:
    """Why the state dict ``found`` would not load strictly where ``expected`` (a module's
    ``state_dict()``) is: ``"missing keys (n): ..."``, ``"unexpected keys (n): ..."`` and
    ``"shape mismatches (n): key: file (..) vs model (..)"``, each only when there are any (an empty
    list: it fits). ``name`` turns a key into the name the user knows (e.g. the release's)."""
    missing = [name(key) for key in expected if key not in found]
    unexpected = [name(key) for key in found if key not in expected]
    mismatched = [f"{name(key)}: file {tuple(value.shape)} vs model {tuple(expected[key].shape)}"
                  for key, value in found.items() if key in expected and value.shape != expected[key].shape]
    return [f"{kind} ({len(keys)}): {key_listing(keys)}"
            for kind, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                               ("shape mismatches", mismatched)) if keys]
