"""One error hierarchy for every mistake a user can make.

Each error is raised with one sentence that names the thing that is wrong and the fix.
Catch :class:`SmartTransferError` to handle all of them.
"""

from __future__ import annotations


class SmartTransferError(Exception):
    """Base class of every error smart-transfer raises on purpose."""


class ConfigError(SmartTransferError, ValueError):
    """An argument is out of range, missing, or conflicts with another one."""


class UnknownNameError(SmartTransferError, KeyError):
    """A measure, backbone, layer or dataset name that is not registered."""

    def __str__(self) -> str:  # KeyError would otherwise wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class UnknownLayerError(UnknownNameError, ConfigError):
    """A layer name or pattern (``layers=``, ``exclude=``) that matches no module of the model."""


class DataError(SmartTransferError, ValueError):
    """Input data is missing, empty, corrupt or of the wrong shape."""


class ProfileError(SmartTransferError, RuntimeError):
    """Profiling could not produce valid statistics (NaN/Inf activations, nothing hooked...)."""


class IncompatibleError(SmartTransferError, ValueError):
    """Two objects do not fit together: profiles with no common layer, a plan for another
    model..."""


class TrainingError(SmartTransferError, RuntimeError):
    """Training cannot go on: the loss became NaN or infinite."""


class MissingDependencyError(SmartTransferError, ImportError):
    """An optional package is needed; the message gives the pip command."""


class StorageError(SmartTransferError, OSError):
    """A file could not be written: the disk is full, a file-size limit was hit, a read-only
    or virtual file system (``/proc``) refused it. The message names the file."""
