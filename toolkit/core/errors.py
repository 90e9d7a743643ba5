"""One exception family. Each carries a one-line message and the exit code the CLI uses.

Only `toolkit.cli` catches these; library code raises them and lets them travel.
"""

from __future__ import annotations


class ToolkitError(Exception):
    """Base class: message says what happened, what was expected, and how to fix it."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(ToolkitError):
    """Unknown spec, format, option or a conflicting combination of options."""

    exit_code = 2


class DataError(ToolkitError):
    """The dataset is missing, truncated or corrupted."""

    exit_code = 3


class ArtifactError(ToolkitError):
    """A model or result file is missing, corrupted or was never produced."""

    exit_code = 4


class UnsupportedImageError(DataError):
    """An image in a format (or pixel mode) the toolkit does not accept, though Pillow may read it."""


class NewerRecordError(ArtifactError):
    """A record was written by a newer toolkit (its schema_version is above what this one reads)."""


class ContractError(ArtifactError):
    """A model file's inputs or outputs differ from the model contract (toolkit.contract)."""


class ParityError(ToolkitError):
    """An exported model does not predict what the Keras model predicts."""

    exit_code = 5


class DeviceUnavailableError(ToolkitError):
    """The requested device (e.g. a CUDA GPU) is not available here."""

    exit_code = 6


class PartialFailure(ToolkitError):
    """Some items of a multi-item command failed while the others completed."""

    exit_code = 7


class BusyError(ToolkitError):
    """Another process holds the lock of the run this command wants to write."""

    exit_code = 8


class Interrupted(ToolkitError):
    """Ctrl-C or SIGTERM; nothing half-written was left behind."""

    exit_code = 130
