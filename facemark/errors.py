"""The exceptions facemark raises for a user's mistake, defined low so that every layer can use
them without importing the command line (which imports the layers).

- :class:`CommandError`: a command cannot do what was asked; ``facemark`` prints it as one line
  ``facemark <command>: error: ...`` and exits with status 2.
- :class:`WeightsError`: a weights or checkpoint file exists but cannot be used (not a file
  facemark reads, truncated, or not matching the model it describes). Its message names the file.
  A weights file that does not exist is a :class:`FileNotFoundError` naming it.
"""
from __future__ import annotations

__all__ = ["CommandError", "WeightsError"]


class CommandError(Exception):
    """A user-facing error: printed as ``facemark <command>: error: ...`` with exit code 2."""


class WeightsError(ValueError):
    """A weights file that exists but cannot be used; the message names the file and why."""
