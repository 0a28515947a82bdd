"""Exceptions raised by anomalens; every message names the offending path or value."""


class AnomalensError(Exception):
    """Base class of every user-facing anomalens error (the CLI prints these as one line)."""


class DataError(AnomalensError, ValueError):
    """Bad input data: missing root, empty folder, corrupt image, mask/image mismatch."""


class WeightsError(AnomalensError, RuntimeError):
    """Pretrained weights could not be resolved (offline, missing file, bad checksum)."""


class NotFittedError(AnomalensError, RuntimeError):
    """A detector was used before the call that learns its state."""


class ModelFormatError(AnomalensError, ValueError):
    """A saved model is missing, corrupt or of an unknown format version."""


class UnknownModelError(AnomalensError, KeyError):
    """`create()` was asked for a name that is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class SettingError(AnomalensError, ValueError):
    """A model setting has the wrong type or is out of range (named, with what was expected)."""


class OutputExistsError(AnomalensError, FileExistsError):
    """Writing would replace files the user did not ask to replace."""
