"""The exceptions facemark raises for a user's mistake, defined low so that every layer can use
them without importing the command line (which imports the layers).

- :class:`CommandError`: a command cannot do what was asked; ``facemark`` prints it as one line
  ``facemark <command>: error: ...`` and exits with status 2.
- :class:`WeightsError`: a weights or checkpoint file cannot be used (not a file facemark reads,
  truncated, or not matching the model it describes); :class:`WeightsNotFoundError` (also a
  :class:`FileNotFoundError`) when it does not exist. The message is one line naming the file.
  Every entry point that reads weights (``facemark.Predictor``, ``predict``, ``export``, ``bench``,
  ``evaluate``) raises these, through :func:`facemark.models.weights.weights_file_errors`, and the
  command line prints them as one line like a :class:`CommandError`.
"""
from __future__ import annotations

__all__ = ["CommandError", "WeightsError", "WeightsNotFoundError"]


class CommandError(Exception):
    """A user-facing error: printed as ``facemark <command>: error: ...`` with exit code 2."""


class WeightsError(ValueError):
    """A weights file that exists but cannot be used; the message names the file and why."""


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """A weights file that does not exist (both a :class:`WeightsError` and a :class:`FileNotFoundError`)."""
