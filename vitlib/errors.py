"""The errors a user of vitlib sees: one base class, one subclass per layer.

Each message says what was expected and what to do. The command line catches `VitlibError`
and prints its message in one line (exit status 2); anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DownloadError",
    "ExperimentError",
    "NonFiniteLossError",
    "ReportError",
    "VitlibError",
]


class VitlibError(Exception):
    """An input or state vitlib cannot work with; the message says what to do."""


class ConfigError(VitlibError, ValueError):
    """An unknown profile or setting, or a setting of the wrong type or out of range."""


class DataError(VitlibError, ValueError):
    """The data folder is missing, unrecognised or unusable."""


class DownloadError(VitlibError, RuntimeError):
    """A download could not be completed (offline, refused, interrupted, not found)."""


class CheckpointError(VitlibError, ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


class ExperimentError(VitlibError, RuntimeError):
    """An experiment that cannot start or go on."""


class NonFiniteLossError(ExperimentError):
    """The loss became NaN or infinite; the last good checkpoint is left as it was."""


class ReportError(VitlibError, RuntimeError):
    """A report that could not be built; the message names the notebook and cell."""
